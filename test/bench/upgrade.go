package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/consul-rehydrate/consul-rehydrate/internal/cloud/local"
)

// oldConsulEnv names the older Consul binary the upgrade rolls start from; the
// Makefile's bench target builds it and sets it.
const oldConsulEnv = "REHYDRATE_CONSUL_OLD"

// upgradeRoll rolls a fresh cluster of servers servers whose image A runs the older
// Consul ($REHYDRATE_CONSUL_OLD) to image B, the pinned Consul, through the real
// watches, under load: the versions are mixed while it runs.
func (b *bench) upgradeRoll(ctx context.Context, servers int) (r Roll) {
	name := fmt.Sprintf("upgrade-%d", servers)
	r = Roll{Case: name, Kind: "ours", Servers: servers, Target: "B"}
	old := os.Getenv(oldConsulEnv)
	if old == "" {
		r.Error = oldConsulEnv + " is not set: it must name the older Consul binary the upgrade roll starts from (`make bench` builds it and sets it)"
		return r
	}
	if _, err := os.Stat(old); err != nil {
		r.Error = fmt.Sprintf("%s: %v", oldConsulEnv, err)
		return r
	}
	cl, err := b.newCluster(ctx, name, servers, true, local.ImageOptions{ConsulBinary: old})
	if err != nil {
		r.Error = err.Error()
		return r
	}
	defer cl.down(b.logs)
	from, err := cl.agentVersions(ctx)
	if err != nil {
		r.Error = err.Error()
		return r
	}
	if _, err := cl.p.RegisterImage(ctx, "B", local.ImageOptions{}); err != nil {
		r.Error = err.Error()
		return r
	}
	vw := watchVersions(cl.c, time.Second)
	r = b.rollOurs(ctx, cl, name, "B", 0)
	r.MixedVersions = ptr(vw.Stop())
	r.FromVersion = from
	if r.Completed {
		to, err := cl.agentVersions(ctx)
		if err != nil && r.Error == "" {
			r.Error = err.Error()
		}
		r.ToVersion = to
	}
	progress("%s: from %s to %s, versions mixed during the roll: %v", name, r.FromVersion, r.ToVersion, *r.MixedVersions)
	return r
}

// agentVersions asks every live server its version (GET /v1/agent/self on the
// server itself: Config.Version) and returns it, or an error if they differ.
func (cl *cluster) agentVersions(ctx context.Context) (string, error) {
	insts, err := cl.p.Instances(ctx)
	if err != nil {
		return "", err
	}
	seen := map[string][]string{}
	for _, in := range insts {
		if !in.Live() {
			continue
		}
		cfg, err := cl.p.APIConfig()
		if err != nil {
			return "", err
		}
		cfg.Address = in.Address + ":8501"
		c, err := api.NewClient(cfg)
		if err != nil {
			return "", err
		}
		qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		var self map[string]map[string]any
		_, err = c.Raw().Query("/v1/agent/self", &self, (&api.QueryOptions{}).WithContext(qctx))
		cancel()
		if err != nil {
			return "", fmt.Errorf("version of %s: %w", in.ID, err)
		}
		v, _ := self["Config"]["Version"].(string)
		if v == "" {
			return "", fmt.Errorf("version of %s: no Config.Version in /v1/agent/self", in.ID)
		}
		seen[v] = append(seen[v], in.ID)
	}
	if len(seen) != 1 {
		return "", fmt.Errorf("servers run different versions: %v", seen)
	}
	for v := range seen {
		return v, nil
	}
	return "", errors.New("no live server")
}

// versionWatch samples the versions autopilot lists for the servers (each server's
// own build tag) and remembers whether one sample had more than one.
type versionWatch struct {
	mu    sync.Mutex
	mixed bool
	stop  context.CancelFunc
	done  chan struct{}
}

func watchVersions(c *api.Client, every time.Duration) *versionWatch {
	ctx, cancel := context.WithCancel(context.Background())
	w := &versionWatch{stop: cancel, done: make(chan struct{})}
	go func() {
		defer close(w.done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			qctx, qcancel := context.WithTimeout(ctx, 2*time.Second)
			st, err := c.Operator().AutopilotState((&api.QueryOptions{}).WithContext(qctx))
			qcancel()
			if err != nil {
				continue
			}
			var vs []string
			for _, s := range st.Servers {
				if !slices.Contains(vs, s.Version) && strings.TrimSpace(s.Version) != "" {
					vs = append(vs, s.Version)
				}
			}
			if len(vs) > 1 {
				w.mu.Lock()
				w.mixed = true
				w.mu.Unlock()
			}
		}
	}()
	return w
}

// Stop stops sampling and reports whether the versions were ever seen mixed.
func (w *versionWatch) Stop() bool {
	w.stop()
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.mixed
}
