package main

import (
	"context"
	"errors"
	"fmt"
	"os"
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
	r = b.rollOurs(ctx, cl, name, "B", 0)
	r.MixedVersions = ptr(r.versionsAtOnce > 1)
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
