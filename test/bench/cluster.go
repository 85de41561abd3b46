package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-cleanhttp"

	"github.com/consul-rehydrate/consul-rehydrate/config"
	"github.com/consul-rehydrate/consul-rehydrate/internal/cloud"
	"github.com/consul-rehydrate/consul-rehydrate/internal/cloud/local"
	"github.com/consul-rehydrate/consul-rehydrate/internal/command"
	"github.com/consul-rehydrate/consul-rehydrate/internal/coord"
)

const (
	clusterName = "bench"
	// Loopback /24 blocks for the benchmark's clusters: 127.0.200.0/24 ... 127.0.250.0/24.
	firstBlock, lastBlock = 200, 250
	// upBound bounds bringing a cluster up (the provider waits at most a minute itself).
	upBound = 2 * time.Minute
	// downBound bounds tearing one down; it never takes the run's context, which may
	// be the reason we are tearing down.
	downBound = time.Minute
)

// cluster is one local cluster of the benchmark.
type cluster struct {
	name    string // for progress lines and log copies
	servers int
	dir     string // config and state
	cfgPath string
	state   string
	p       *local.Provider
	// c talks to the client agent; writes and reads use clients of their own, from
	// their own source addresses (Consul limits connections per client address).
	c, writeC, readC, casC *api.Client
	clientAddr             string
	block                  int
	lock                   *os.File
}

// newCluster brings up servers servers on image A (imageA: its binary, default the
// pinned Consul) in a fresh block, with the real watches (the handlers in b.binDir)
// if watches is set. On error it has torn down
// whatever it started; otherwise the caller must call down.
func (b *bench) newCluster(ctx context.Context, name string, servers int, watches bool, imageA local.ImageOptions) (cl *cluster, err error) {
	cl = &cluster{name: name, servers: servers}
	if cl.block, cl.lock, err = allocateBlock(); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			cl.down(b.logs)
			cl = nil
		}
	}()
	if cl.dir, err = os.MkdirTemp("", "rehydrate-bench-"+name+"-"); err != nil {
		return cl, err
	}
	cl.cfgPath, cl.state = filepath.Join(cl.dir, "rehydrate.hcl"), filepath.Join(cl.dir, "state")
	prefix := netip.MustParsePrefix(fmt.Sprintf("127.0.%d.0/24", cl.block))
	// As the demo configures it.
	if err = command.WriteLocalConfig(cl.cfgPath, clusterName, servers, cl.state, prefix); err != nil {
		return cl, err
	}
	lc := local.Config{StateDir: cl.state, Addresses: prefix}
	if watches {
		lc.BinDir, lc.ConfigPath = b.binDir, cl.cfgPath
		lc.Cluster, lc.EventName = clusterName, config.DefaultRollEventName
	}
	if cl.p, err = local.New(lc); err != nil {
		return cl, err
	}
	upCtx, cancel := context.WithTimeout(ctx, upBound)
	defer cancel()
	if _, err = cl.p.RegisterImage(upCtx, "A", imageA); err != nil {
		return cl, err
	}
	progress("%s: starting %d servers on image A in 127.0.%d.0/24 (watches: %v)", name, servers, cl.block, watches)
	if _, err = cl.p.Up(upCtx, servers, "A"); err != nil {
		return cl, err
	}
	if cl.clientAddr, err = cl.p.ClientAddr(); err != nil {
		return cl, err
	}
	// The workload is the cluster's operator: HTTPS with its CA, the management token.
	if cl.c, err = cl.newClient(nil); err != nil {
		return cl, err
	}
	if cl.writeC, err = cl.newClient(sources(cl.block, 200)); err != nil {
		return cl, err
	}
	if cl.readC, err = cl.newClient(sources(cl.block, 220)); err != nil {
		return cl, err
	}
	if cl.casC, err = cl.newClient(sources(cl.block, 180)); err != nil {
		return cl, err
	}
	return cl, nil
}

// down stops every process of the cluster and removes its files, bounded, whatever
// state the run is in; logs, if set, gets a copy of the logs first.
func (cl *cluster) down(logs string) {
	if cl.p != nil {
		if logs != "" {
			if err := copyLogs(cl.state, logs, cl.name); err != nil {
				progress("%s: copy logs: %v", cl.name, err)
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), downBound)
		if err := cl.p.Down(ctx); err != nil {
			progress("%s: tear down: %v", cl.name, err)
		}
		cancel()
	}
	if cl.dir != "" {
		os.RemoveAll(cl.dir)
	}
	if cl.lock != nil {
		cl.lock.Close() // drops the block's flock
	}
}

// allocateBlock reserves a free /24 for as long as the returned file stays open:
// flock(2)ed files shared by every benchmark process on the machine, as the tests'
// harness does for its own range.
func allocateBlock() (int, *os.File, error) {
	dir := filepath.Join(os.TempDir(), "consul-rehydrate-bench-blocks")
	if err := os.MkdirAll(dir, 0o777); err != nil {
		return 0, nil, fmt.Errorf("allocate block: %w", err)
	}
	for n := firstBlock; n <= lastBlock; n++ {
		f, err := os.OpenFile(filepath.Join(dir, fmt.Sprintf("%d.lock", n)), os.O_CREATE|os.O_RDWR, 0o666)
		if err != nil {
			return 0, nil, fmt.Errorf("allocate block: %w", err)
		}
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
			f.Close()
			continue
		}
		return n, f, nil
	}
	return 0, nil, errors.New("allocate block: every block in 127.0.200-250 is in use")
}

// sources returns 20 loopback addresses of the block from .first on (.180, .200,
// .220), which the provider never gives an agent in a benchmark: it counts up from .1
// and no case launches more than 20 agents.
func sources(block, first int) []net.IP {
	var out []net.IP
	for i := range 20 {
		out = append(out, net.IPv4(127, 0, byte(block), byte(first+i)))
	}
	return out
}

// newClient returns a client of the cluster's client agent as its operator: HTTPS
// verified with the cluster's CA, the management token. Its connections come from
// the addresses in from in turn (none: the kernel's choice): Consul refuses more than
// 200 concurrent connections from one address (429), and a load that stalls 15 s at
// 20 operations a second holds 300, as many clients would.
func (cl *cluster) newClient(from []net.IP) (*api.Client, error) {
	cfg, err := cl.p.APIConfig()
	if err != nil {
		return nil, err
	}
	cfg.HttpAuth = nil
	tr := cleanhttp.DefaultPooledTransport()
	if len(from) > 0 {
		var next atomic.Uint64
		tr.DialContext = func(ctx context.Context, network, address string) (net.Conn, error) {
			ip := from[next.Add(1)%uint64(len(from))]
			d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: ip}}
			return d.DialContext(ctx, network, address)
		}
	}
	cfg.Transport = tr
	return api.NewClient(cfg)
}

// healthWatch samples autopilot every interval and remembers when each server was
// first seen healthy, and first seen healthy and a voter; and how exposed the
// cluster was: the fewest healthy voters and the lowest failure tolerance autopilot
// reported, and how long it had fewer than n healthy voters. A roll clients cannot
// see may still leave a cluster one failure from losing quorum; this shows it.
type healthWatch struct {
	mu           sync.Mutex
	firstHealthy map[string]time.Time
	firstVoter   map[string]time.Time
	exposure     Exposure
	// versionsAtOnce is the most Consul versions autopilot listed in one sample:
	// more than one while an upgrade roll runs mixed.
	versionsAtOnce int
	stop           context.CancelFunc
	done           chan struct{}
}

// Exposure is how close to losing quorum a cluster came, as autopilot saw it.
type Exposure struct {
	// MinHealthyVoters and MinFailureTolerance: the lowest seen in any sample.
	MinHealthyVoters    int `json:"min_healthy_voters"`
	MinFailureTolerance int `json:"min_failure_tolerance"`
	// SecondsBelowN: samples with fewer than N healthy voters, times the interval.
	SecondsBelowN float64 `json:"seconds_below_n_voters"`
	Samples       int     `json:"samples"`
}

func watchHealth(c *api.Client, interval time.Duration, n int) *healthWatch {
	ctx, cancel := context.WithCancel(context.Background())
	h := &healthWatch{firstHealthy: map[string]time.Time{}, firstVoter: map[string]time.Time{}, stop: cancel, done: make(chan struct{}),
		exposure: Exposure{MinHealthyVoters: n, MinFailureTolerance: (n - 1) / 2}}
	go func() {
		defer close(h.done)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			// Bounded: without a leader the request waits for one.
			qctx, qcancel := context.WithTimeout(ctx, 2*time.Second)
			rep, err := c.Operator().AutopilotServerHealth((&api.QueryOptions{}).WithContext(qctx))
			qcancel()
			if err != nil {
				continue
			}
			now := time.Now()
			h.mu.Lock()
			voters := 0
			for _, s := range rep.Servers {
				if s.Healthy && s.Voter {
					voters++
				}
			}
			e := &h.exposure
			e.Samples++
			e.MinHealthyVoters = min(e.MinHealthyVoters, voters)
			e.MinFailureTolerance = min(e.MinFailureTolerance, rep.FailureTolerance)
			if voters < n {
				e.SecondsBelowN += interval.Seconds()
			}
			versions := map[string]bool{}
			for _, s := range rep.Servers {
				if v := strings.TrimSpace(s.Version); v != "" {
					versions[v] = true
				}
			}
			h.versionsAtOnce = max(h.versionsAtOnce, len(versions))
			for _, s := range rep.Servers {
				if _, seen := h.firstHealthy[s.Name]; s.Healthy && !seen {
					h.firstHealthy[s.Name] = now
				}
				if _, seen := h.firstVoter[s.Name]; s.Healthy && s.Voter && !seen {
					h.firstVoter[s.Name] = now
				}
			}
			h.mu.Unlock()
		}
	}()
	return h
}

// Stop stops sampling and returns what was seen (node name = instance ID).
func (h *healthWatch) Stop() (firstHealthy, firstVoter map[string]time.Time, exposure Exposure) {
	h.stop()
	<-h.done
	exposure = h.exposure
	exposure.SecondsBelowN = round1(exposure.SecondsBelowN)
	return h.firstHealthy, h.firstVoter, exposure
}

// waitRolled polls until the roll record says done on image and the live servers
// are exactly N, all on it, or the roll failed, or timeout. It returns the record and
// every instance seen on image (with its launch time). A retired server that has
// left raft but whose process is still exiting (shutting-down) is no longer one of
// the cluster's servers: see waitOldGone.
func (cl *cluster) waitRolled(ctx context.Context, image string, timeout time.Duration) (*coord.Roll, map[string]cloud.Instance, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	store := coord.New(cl.c, clusterName)
	seen := map[string]cloud.Instance{}
	var rec *coord.Roll
	last := ""
	for {
		r, err := store.Roll(ctx)
		if err == nil && r != nil {
			rec = r
		}
		insts, ierr := cl.p.Instances(ctx)
		on, live := 0, 0
		for _, i := range insts {
			if i.ImageID == image {
				seen[i.ID] = i
			}
			if i.Live() {
				live++
				if i.ImageID == image {
					on++
				}
			}
		}
		switch {
		case rec != nil && rec.Phase == coord.PhaseFailed:
			return rec, seen, fmt.Errorf("roll failed: %s", rec.Failure)
		case err == nil && ierr == nil && rec != nil && rec.Phase == coord.PhaseDone && rec.Target == image && on == cl.servers && live == cl.servers:
			return rec, seen, nil
		}
		if n := progressLine(rec, on, live, len(insts)); n != last {
			progress("%s: %s", cl.name, n)
			last = n
		}
		select {
		case <-ctx.Done():
			return rec, seen, fmt.Errorf("roll not done (bound %s): %v (last: %s; %v)", timeout, context.Cause(ctx), last, errors.Join(err, ierr))
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// waitOldGone waits, bounded, until no instance is left but the N on image: the
// retired servers' processes have exited.
func (cl *cluster) waitOldGone(ctx context.Context, image string, bound time.Duration) bool {
	ctx, cancel := context.WithTimeout(ctx, bound)
	defer cancel()
	for {
		insts, err := cl.p.Instances(ctx)
		if err == nil && len(insts) == cl.servers && !slices.ContainsFunc(insts, func(i cloud.Instance) bool { return i.ImageID != image }) {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func progressLine(rec *coord.Roll, on, live, insts int) string {
	s := fmt.Sprintf("%d instances, %d live, %d live on target", insts, live, on)
	if rec != nil && len(rec.History) > 0 {
		h := rec.History[len(rec.History)-1]
		s += fmt.Sprintf("; roll %s, last step %s %s", rec.Phase, h.Step, h.Instance)
	}
	return s
}
