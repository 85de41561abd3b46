package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/consul-rehydrate/consul-rehydrate/config"
	"github.com/consul-rehydrate/consul-rehydrate/internal/cloud"
	"github.com/consul-rehydrate/consul-rehydrate/internal/coord"
)

const (
	rate        = 20 // writes/s and consistent reads/s, through the client agent
	casRate     = 10 // check-and-set read-modify-writes/s, over casKeys
	attempts    = 3  // per operation, 100ms apart, as the demo's writer
	opTimeout   = 5 * time.Second
	readKey     = "bench/read"
	readValue   = "written before the roll"
	sampleEvery = 200 * time.Millisecond // autopilot samples for catch-up
	// warmUp is how long the load runs before a roll starts.
	warmUp = 5 * time.Second
	// rollBoundPerServer bounds our roll: N x this.
	rollBoundPerServer = 90 * time.Second
	// settleBound is how long the instance refresh's cluster gets, after its last
	// step, to be a healthy cluster of N voters again (the load goes on meanwhile).
	settleBound = 30 * time.Second
	// checkBound bounds each linearizability check.
	checkBound  = 30 * time.Second
	invocations = 50
)

// casKeys are the hot keys of the check-and-set load.
var casKeys = []string{"bench/hot/0", "bench/hot/1", "bench/hot/2"}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// waitRecovered polls autopilot until it reports a healthy cluster whose servers are
// exactly ids, all voters, one leading; bounded.
func waitRecovered(ctx context.Context, c *api.Client, ids map[string]bool, bound time.Duration) (time.Duration, bool) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, bound)
	defer cancel()
	for {
		qctx, qcancel := context.WithTimeout(ctx, 2*time.Second)
		h, err := c.Operator().AutopilotServerHealth((&api.QueryOptions{}).WithContext(qctx))
		qcancel()
		if err == nil && h.Healthy && len(h.Servers) == len(ids) {
			ok, leader := true, false
			for _, s := range h.Servers {
				ok = ok && ids[s.Name] && s.Voter && s.Healthy
				leader = leader || s.Leader
			}
			if ok && leader {
				return time.Since(start), true
			}
		}
		select {
		case <-ctx.Done():
			return time.Since(start), false
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func newServer(in cloud.Instance, firstHealthy, firstVoter map[string]time.Time) NewServer {
	ns := NewServer{Instance: in.ID}
	if t, ok := firstHealthy[in.ID]; ok {
		ns.HealthySeconds = ptr(round1(t.Sub(in.Launched).Seconds()))
	}
	if t, ok := firstVoter[in.ID]; ok {
		ns.CatchUpSeconds = ptr(round1(t.Sub(in.Launched).Seconds()))
	}
	return ns
}

func sortedByLaunch(m map[string]cloud.Instance) []cloud.Instance {
	var out []cloud.Instance
	for _, in := range m {
		out = append(out, in)
	}
	slices.SortFunc(out, func(a, b cloud.Instance) int { return a.Launched.Compare(b.Launched) })
	return out
}

// loadKeys writes keys keys of ~1 KB under bench/data/ in KV transactions of 64
// operations, from 4 goroutines, and checks they are all there.
func loadKeys(ctx context.Context, c *api.Client, keys int) error {
	const batch = 64
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	value := bytes.Repeat([]byte("0123456789abcdef"), 64) // 1 KiB
	err := parallel(ctx, (keys+batch-1)/batch, 4, func(ctx context.Context, b int) error {
		var ops api.TxnOps
		for k := b * batch; k < min((b+1)*batch, keys); k++ {
			ops = append(ops, &api.TxnOp{KV: &api.KVTxnOp{Verb: api.KVSet, Key: fmt.Sprintf("bench/data/%06d", k), Value: value}})
		}
		ok, resp, _, err := c.Txn().Txn(ops, (&api.QueryOptions{}).WithContext(ctx))
		if err == nil && !ok {
			err = fmt.Errorf("transaction rolled back: %v", resp.Errors)
		}
		if err != nil {
			return fmt.Errorf("load keys %d..: %w", b*batch, err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	return countKeys(ctx, c, "bench/data/", keys)
}

// parallel calls do(ctx, i) for i in [0, n), workers at a time, and returns the
// first error, after which it starts no more calls (ctx, as do sees it, is then
// cancelled); bounded by ctx.
func parallel(ctx context.Context, n, workers int, do func(ctx context.Context, i int) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	next := make(chan int)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for i := range next {
				if err := do(ctx, i); err != nil {
					cancel(err)
				}
			}
		})
	}
feed:
	for i := range n {
		select {
		case next <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()
	return context.Cause(ctx)
}

// countKeys checks, with a consistent read, that prefix holds want keys.
func countKeys(ctx context.Context, c *api.Client, prefix string, want int) error {
	got, _, err := c.KV().Keys(prefix, "", (&api.QueryOptions{RequireConsistent: true}).WithContext(ctx))
	if err != nil {
		return fmt.Errorf("count loaded keys: %w", err)
	}
	if len(got) != want {
		return fmt.Errorf("loaded %d keys, %d are there", want, len(got))
	}
	return nil
}

// invocations runs each watch handler invocations times with nothing to do, through
// the real binary and a real payload, against a proxy that counts its requests.
func (b *bench) invocations(ctx context.Context, cl *cluster) (handlers, baselines []Invocation, err error) {
	var count atomic.Int64
	// The handlers run as a server's watches run them: on that server's agent (over
	// HTTPS, verified with the cluster's CA), with its handler token, which may take
	// sessions on that node only. The proxy counting their requests speaks plain HTTP
	// to them on 127.0.0.1 and HTTPS to the agent.
	insts, err := cl.p.Instances(ctx)
	if err != nil || len(insts) == 0 {
		return nil, nil, fmt.Errorf("a server for the handlers: %v (%d instances)", err, len(insts))
	}
	server := insts[0]
	target, err := url.Parse("https://" + server.Address + ":8501")
	if err != nil {
		return nil, nil, err
	}
	tlsCfg, err := api.SetupTLSConfig(&api.TLSConfig{CAFile: cl.p.CAFile()})
	if err != nil {
		return nil, nil, err
	}
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.Transport = &http.Transport{TLSClientConfig: tlsCfg}
	handlerEnv := []string{"CONSUL_HTTP_TOKEN_FILE=" + cl.p.HandlerTokenFile(server.ID)}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, nil, err
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		count.Add(1)
		rp.ServeHTTP(w, r)
	}), ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	defer srv.Close()
	proxy := ln.Addr().String()

	entries, _, err := cl.c.Health().Service("consul", "", false, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, nil, fmt.Errorf("read the service watch's payload: %w", err)
	}
	services, err := json.Marshal(entries)
	if err != nil {
		return nil, nil, err
	}
	b.observe("invocations start")
	defer b.observe("invocations end")
	progress("invocations: %d x spindown (service payload of %d servers), %d x spinup (one event, no payload)", invocations, len(entries), invocations)
	down, err := b.invoke(ctx, cl, "spindown", proxy, handlerEnv, &count, func() ([]byte, string, error) { return services, "", nil })
	if err != nil {
		return nil, nil, err
	}
	up, err := b.invoke(ctx, cl, "spinup", proxy, handlerEnv, &count, func() ([]byte, string, error) {
		id, err := uuid()
		if err != nil {
			return nil, "", err
		}
		ev, err := json.Marshal([]*api.UserEvent{{ID: id, Name: config.DefaultRollEventName, Version: 1, LTime: 1}})
		return ev, id, err
	})
	if err != nil {
		return nil, nil, err
	}
	baselines, err = b.baselines(ctx)
	return []Invocation{down, up}, baselines, err
}

// invoke runs the handler invocations times in a row, with nothing to do. stdin
// returns its input and, for an event, the event ID, whose handled record must then
// say "nothing".
func (b *bench) invoke(ctx context.Context, cl *cluster, handler, proxy string, env []string, count *atomic.Int64, stdin func() ([]byte, string, error)) (Invocation, error) {
	return b.timeRuns(ctx, handler, count, func() (runSpec, error) {
		in, eventID, err := stdin()
		spec := runSpec{args: []string{filepath.Join(b.binDir, handler), "-config", cl.cfgPath, "-http-addr", proxy}, stdin: in, env: env}
		if eventID != "" {
			spec.check = func() error {
				kv, _, err := cl.c.KV().Get(coord.New(cl.c, clusterName).Key("events/"+eventID), (&api.QueryOptions{}).WithContext(ctx))
				if err != nil || kv == nil || !strings.HasPrefix(string(kv.Value), "nothing") {
					return fmt.Errorf("event %s not recorded as nothing to do: %v %s", eventID, err, kvValue(kv))
				}
				return nil
			}
		}
		return spec, err
	})
}

// baselines times, for scale, what a handler run costs before it does anything: an
// empty Go program, and `spindown -h` (process start, package init, flag parsing;
// no Consul, exit 11).
func (b *bench) baselines(ctx context.Context) ([]Invocation, error) {
	empty, err := b.timeRuns(ctx, "empty Go program", nil, func() (runSpec, error) {
		return runSpec{args: []string{filepath.Join(b.binDir, "empty")}}, nil
	})
	if err != nil {
		return nil, err
	}
	help, err := b.timeRuns(ctx, "spindown -h", nil, func() (runSpec, error) {
		return runSpec{args: []string{filepath.Join(b.binDir, "spindown"), "-h"}, code: 11}, nil
	})
	return []Invocation{empty, help}, err
}

// launchSrc is a small parent for the timed runs. Linux reports as a child's peak RSS
// the larger of its own and that of the process it was forked from at exec time
// (here, the benchmark with its clusters' clients: some 17 MB), so the runs are
// forked from this 2 MB program, which times the child and reads its rusage.
const launchSrc = `package main

import (
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"time"
)

// launch REPORT CMD [ARG...] runs CMD, then writes "<wall ns> <maxrss KiB> <exit code>" to REPORT.
func main() {
	cmd := exec.Command(os.Args[2], os.Args[3:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	t := time.Now()
	err := cmd.Run()
	wall := time.Since(t)
	if cmd.ProcessState == nil {
		fmt.Fprintln(os.Stderr, "launch:", err)
		os.Exit(1)
	}
	rss := cmd.ProcessState.SysUsage().(*syscall.Rusage).Maxrss
	report := fmt.Sprintf("%d %d %d\n", wall.Nanoseconds(), rss, cmd.ProcessState.ExitCode())
	if err := os.WriteFile(os.Args[1], []byte(report), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "launch:", err)
		os.Exit(1)
	}
}
`

// buildHelpers builds, into b.binDir, the launcher and an empty Go program.
func (b *bench) buildHelpers(ctx context.Context) error {
	dir := filepath.Join(b.binDir, "src")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for name, src := range map[string]string{"launch": launchSrc, "empty": "package main\n\nfunc main() {}\n"} {
		if err := os.WriteFile(filepath.Join(dir, name+".go"), []byte(src), 0o644); err != nil {
			return err
		}
		build := exec.CommandContext(ctx, "go", "build", "-o", filepath.Join(b.binDir, name), name+".go")
		build.Dir = dir
		if out, err := build.CombinedOutput(); err != nil {
			return fmt.Errorf("build %s: %v\n%s", name, err, out)
		}
	}
	return nil
}

// runSpec is one timed run: the command line, its stdin, the exit code it must end
// with, and a check of what it did.
type runSpec struct {
	args  []string
	env   []string // added to the handler's own environment
	stdin []byte
	code  int
	check func() error
}

// timeRuns runs next's commands invocations times in a row, each through the
// launcher, and summarizes their wall time, peak RSS and, if count is set, the
// requests count saw during each.
func (b *bench) timeRuns(ctx context.Context, name string, count *atomic.Int64, next func() (runSpec, error)) (Invocation, error) {
	var wall, rss, reqs []float64
	// The handler's own environment: no Consul address, token or log file from ours.
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "CONSUL_") && !strings.HasPrefix(kv, "REHYDRATE_") {
			env = append(env, kv)
		}
	}
	if count == nil {
		count = new(atomic.Int64)
	}
	report := filepath.Join(b.binDir, "src", "report")
	for i := range invocations {
		spec, err := next()
		if err != nil {
			return Invocation{}, err
		}
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		cmd := exec.CommandContext(rctx, filepath.Join(b.binDir, "launch"), append([]string{report}, spec.args...)...)
		var out bytes.Buffer
		cmd.Stdin, cmd.Stdout, cmd.Stderr, cmd.Env = bytes.NewReader(spec.stdin), &out, &out, append(slices.Clip(env), spec.env...)
		count.Store(0)
		err = cmd.Run()
		cancel()
		var ns, kib int64
		code := -1
		if err == nil {
			var line []byte
			if line, err = os.ReadFile(report); err == nil {
				_, err = fmt.Sscanf(string(line), "%d %d %d", &ns, &kib, &code)
			}
		}
		if err != nil || code != spec.code {
			return Invocation{}, fmt.Errorf("%s run %d: exit %d, want %d (%v)\n%s", name, i+1, code, spec.code, err, out.String())
		}
		wall = append(wall, float64(ns)/1e6)
		rss = append(rss, float64(kib))
		reqs = append(reqs, float64(count.Load()))
		if spec.check != nil {
			if err := spec.check(); err != nil {
				return Invocation{}, fmt.Errorf("%s run %d: %w", name, i+1, err)
			}
		}
	}
	inv := Invocation{Handler: name, Runs: invocations,
		WallMS:    Spread{P50: round2(median(wall)), P95: round2(pct(wall, 95)), Max: round2(pct(wall, 100))},
		MaxRSSKiB: Spread{P50: median(rss), P95: pct(rss, 95), Max: pct(rss, 100)},
		Requests:  Spread{P50: median(reqs), P95: pct(reqs, 95), Max: pct(reqs, 100)},
	}
	progress("invocations: %s: wall p50 %.1fms p95 %.1fms, peak RSS p50 %.0f KiB, requests p50 %.0f max %.0f",
		name, inv.WallMS.P50, inv.WallMS.P95, inv.MaxRSSKiB.P50, inv.Requests.P50, inv.Requests.Max)
	return inv, nil
}

func kvValue(kv *api.KVPair) string {
	if kv == nil {
		return "(no record)"
	}
	return string(kv.Value)
}

func uuid() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	b[6], b[8] = b[6]&0x0f|0x40, b[8]&0x3f|0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16]), nil
}

// plannerBench runs the planner's Go benchmark 5 times and returns the medians.
func plannerBench(ctx context.Context) (*Planner, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "go", "test", "-run", "^$", "-bench", "BenchmarkNext", "-benchmem", "-count", "5", "./internal/plan").CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("%v\n%s", err, out)
	}
	re := regexp.MustCompile(`(?m)^BenchmarkNext\S*\s+\d+\s+([\d.]+) ns/op\s+(\d+) B/op\s+(\d+) allocs/op`)
	var ns, bytes, allocs []float64
	for _, m := range re.FindAllStringSubmatch(string(out), -1) {
		for i, dst := range []*[]float64{&ns, &bytes, &allocs} {
			v, err := strconv.ParseFloat(m[i+1], 64)
			if err != nil {
				return nil, err
			}
			*dst = append(*dst, v)
		}
	}
	if len(ns) == 0 {
		return nil, errors.New("no BenchmarkNext results in:\n" + string(out))
	}
	return &Planner{Runs: len(ns), NsPerOp: pct(ns, 50), BytesPerOp: pct(bytes, 50), AllocsPerOp: pct(allocs, 50)}, nil
}
