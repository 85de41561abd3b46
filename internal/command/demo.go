package command

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/consul-rehydrate/consul-rehydrate/internal/app"
	"github.com/consul-rehydrate/consul-rehydrate/internal/cloud"
	"github.com/consul-rehydrate/consul-rehydrate/internal/cloud/local"
	"github.com/consul-rehydrate/consul-rehydrate/internal/coord"
	"github.com/consul-rehydrate/consul-rehydrate/internal/payload"
	"github.com/consul-rehydrate/consul-rehydrate/internal/poll"
	"github.com/consul-rehydrate/consul-rehydrate/internal/workload"
)

// errRollFailed: the roll record says the roll failed.
var errRollFailed = errors.New("roll failed")

// demoTimeout bounds the whole demo, cluster start and teardown included.
const demoTimeout = 15 * time.Minute

// DemoResult is the demo's final JSON line.
type DemoResult struct {
	Servers       int     `json:"servers"`
	Image         string  `json:"image"`
	AllOnTarget   bool    `json:"all_on_target"`
	RollSeconds   float64 `json:"roll_seconds"`
	WritesOK      int     `json:"writes_ok"`
	WritesFailed  int     `json:"writes_failed"`
	WritesLost    int     `json:"writes_lost"`
	MaxWriteMS    int64   `json:"max_write_ms"`
	LeaderChanges int     `json:"leader_changes"`
	// Linearizable is whether the recorded history of the load (writes, consistent
	// reads, check-and-sets) admits a linearization; nil when it was not checked.
	Linearizable *bool `json:"linearizable,omitempty"`
}

// demoCheckTimeout bounds the linearizability check of the demo's history: a
// check that runs out of time counts as not linearizable.
const demoCheckTimeout = time.Minute

// DemoConfig writes the configuration `local demo` uses when given none: a cluster
// on 127.0.1.0/24 with Consul's default stabilization time, state under dir.
func DemoConfig(dir string, servers int) (string, error) {
	path := filepath.Join(dir, "demo.hcl")
	return path, WriteLocalConfig(path, "demo", servers, filepath.Join(dir, "state"), netip.MustParsePrefix("127.0.1.0/24"))
}

// WriteLocalConfig writes a handler configuration for a local cluster as the demo
// and the benchmarks run it: 10s stabilization, 3m launch timeout, 500ms polls.
func WriteLocalConfig(path, cluster string, servers int, stateDir string, addresses netip.Prefix) error {
	src := fmt.Sprintf(`cluster = %q
servers = %d

roll {
  stabilization  = "10s"
  launch_timeout = "3m"
  poll_interval  = "500ms"
}

provider "local" {
  state_dir     = %q
  consul_binary = "consul"
  addresses     = %q
}
`, cluster, servers, stateDir, addresses)
	return os.WriteFile(path, []byte(src), 0o644)
}

// demo brings up a local cluster on image A, writes to it steadily, rolls it to
// image B through the real watches, and reports what the roll cost.
func (a *prog) demo(servers int) int {
	out := a.env.Stdout
	p, err := a.localProvider()
	if err != nil {
		a.log.Error("local provider", "error", err)
		return app.ExitConfig
	}
	ctx, cancel := withTimeout(demoTimeout)
	defer cancel()
	// Interrupted, the demo still tears its cluster down.
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	defer func() {
		fmt.Fprintln(out, "tearing the cluster down")
		downCtx, c := withTimeout(time.Minute)
		defer c()
		if err := p.Down(downCtx); err != nil {
			a.log.Error("local down", "error", err)
		}
	}()

	fmt.Fprint(out, demoBanner(servers, a.cfg.Provider.Local.StateDir))
	if err := ensureImage(ctx, p, "A"); err != nil {
		a.log.Error("register image A", "error", err)
		return app.ExitCloud
	}
	if _, err := p.Up(ctx, servers, "A"); err != nil {
		a.log.Error("local up", "error", err)
		return app.ExitCloud
	}
	c, err := a.cliConsul()
	if err != nil {
		a.log.Error("consul client", "error", err)
		return app.ExitConsul
	}

	// Every attempt is recorded and the history checked for linearizability at the
	// end: the check-and-sets on 3 hot keys are where a stale read or a lost
	// update would show.
	rec := workload.NewRecorder()
	writer := workload.StartWriterRecorded(c, "demo/writes/", 20, 3, 5*time.Second, rec)
	caser := workload.StartCAS(c, []string{"demo/cas/0", "demo/cas/1", "demo/cas/2"}, 5, 3, 5*time.Second, rec)
	leaders := workload.WatchLeader(c, 100*time.Millisecond)
	fmt.Fprintln(out, "writing 20 keys/s and check-and-setting 3 hot keys 5 times/s through the client agent")

	if _, err := p.RegisterImage(ctx, "B", local.ImageOptions{}); err != nil {
		a.log.Error("register image B", "error", err)
		return app.ExitCloud
	}
	body, _ := payload.NewRequestPayload("B")
	start := time.Now()
	if _, _, err := c.Event().Fire(&api.UserEvent{Name: a.cfg.Roll.EventName, Payload: body}, nil); err != nil {
		a.log.Error("fire event", "error", err)
		return app.ExitConsul
	}
	fmt.Fprintf(out, "registered image B and fired %s; the servers' watches take it from here\n", a.cfg.Roll.EventName)

	done, err := a.follow(ctx, p, c, "B", servers, start)
	changes, _ := leaders.Stop()
	cas := caser.Stop()
	readCtx, readCancel := withTimeout(30 * time.Second) // even when ctx was interrupted
	defer readCancel()
	res, werr := writer.Stop(readCtx)
	rollSeconds := time.Since(start).Round(100 * time.Millisecond).Seconds()
	if err != nil {
		a.log.Error("roll", "error", err)
	}
	if werr != nil {
		a.log.Error("verify writes", "error", werr)
	}
	lin := rec.Check(demoCheckTimeout)
	summary := DemoResult{
		Servers: servers, Image: "B", AllOnTarget: done, RollSeconds: rollSeconds,
		WritesOK: res.OK, WritesFailed: res.Failed, WritesLost: res.Lost, MaxWriteMS: res.Max.Milliseconds(), LeaderChanges: changes,
		Linearizable: &lin.Linearizable,
	}
	fmt.Fprintf(out, "\nrolled %d servers from A to B in %.1fs: %d writes ok, %d failed, %d lost, slowest %dms, %d leader change(s)\n",
		servers, summary.RollSeconds, res.OK, res.Failed, res.Lost, summary.MaxWriteMS, changes)
	fmt.Fprintf(out, "check-and-sets: %d ok, %d conflicts, %d failed\n", cas.OK, cas.Conflicts, cas.Failed)
	switch {
	case lin.Linearizable:
		fmt.Fprintf(out, "the history of %d operations (%d with unknown outcome) is linearizable\n", lin.Ops, lin.Unknown)
	case lin.TimedOut:
		fmt.Fprintf(out, "the history of %d operations could not be checked within %v: counted as not linearizable\n", lin.Ops, demoCheckTimeout)
	default:
		fmt.Fprintf(out, "the history of %d operations is NOT linearizable: %s\n", lin.Ops, lin.Detail)
	}
	line, _ := json.Marshal(summary)
	fmt.Fprintln(out, string(line))
	// A write lost or a history no order explains is the roll being visible to
	// clients, whatever else went right.
	if !done || err != nil || werr != nil || res.Lost > 0 || !lin.Linearizable {
		return app.ExitError
	}
	return app.ExitOK
}

// follow prints each roll step as it happens and returns when every server runs
// image and the roll is recorded done (true), or when it failed or ran out of time
// (false, and why).
func (a *prog) follow(ctx context.Context, p *local.Provider, c *api.Client, image string, servers int, start time.Time) (bool, error) {
	store := coord.New(c, a.cfg.Cluster)
	seen := 0
	err := poll.Until(ctx, 500*time.Millisecond, demoTimeout, func(ctx context.Context) (bool, error) {
		rec, err := store.Roll(ctx)
		if err == nil && rec != nil {
			for _, e := range rec.History[min(seen, len(rec.History)):] {
				fmt.Fprintf(a.env.Stdout, "  +%5.1fs  %-8s %s\n", e.Time.Sub(start).Seconds(), e.Step, e.Detail)
			}
			seen = len(rec.History)
			if rec.Phase == coord.PhaseFailed {
				return false, fmt.Errorf("%w: %s", errRollFailed, rec.Failure)
			}
		}
		insts, ierr := p.Instances(ctx)
		return err == nil && ierr == nil && rec != nil && rec.Phase == coord.PhaseDone && rec.Target == image &&
			onImage(insts, image) == servers && live(insts) == servers, nil
	})
	if err != nil {
		if !errors.Is(err, errRollFailed) {
			err = fmt.Errorf("roll did not finish: %w", err)
		}
		return false, err
	}
	return true, nil
}

// live counts the live instances: a retired one still draining its RPCs after its
// leave is shutting down, no longer part of the cluster.
func live(insts []cloud.Instance) int {
	n := 0
	for _, i := range insts {
		if i.Live() {
			n++
		}
	}
	return n
}

func onImage(insts []cloud.Instance, image string) int {
	n := 0
	for _, i := range insts {
		if i.Live() && i.ImageID == image {
			n++
		}
	}
	return n
}

// demoBanner is the demo's first lines: what it starts and how it is secured, so a
// reader knows from the start that the figures it ends with are paid for with gossip
// encryption, TLS and ACLs, as the shipped image runs.
func demoBanner(servers int, stateDir string) string {
	return fmt.Sprintf("starting %d servers on image A, secured as the shipped image is:\n", servers) +
		"  gossip encryption (verified both ways), TLS on RPC and HTTPS (verify_incoming, verify_outgoing,\n" +
		"  verify_server_hostname; no plain HTTP), ACLs on with default deny; each server's watches hold\n" +
		"  only their node's rehydrate-handlers token (the local provider, playing the cloud inside spinup,\n" +
		"  mints a new server's tokens with the management token); secrets in " + filepath.Join(stateDir, "secrets") + "\n"
}
