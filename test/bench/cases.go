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
	"github.com/consul-rehydrate/consul-rehydrate/internal/cloud/local"
	"github.com/consul-rehydrate/consul-rehydrate/internal/coord"
	"github.com/consul-rehydrate/consul-rehydrate/internal/payload"
	"github.com/consul-rehydrate/consul-rehydrate/internal/workload"
)

const (
	rate        = 20 // writes/s and consistent reads/s, through the client agent
	attempts    = 3  // per write and per read, 100ms apart, as the demo's writer
	opTimeout   = 5 * time.Second
	readKey     = "bench/read"
	readValue   = "written before the roll"
	sampleEvery = 200 * time.Millisecond // autopilot samples for catch-up
	// warmUp is how long the load runs before a roll starts.
	warmUp = 5 * time.Second
	// rollBoundPerServer bounds our roll: N x this.
	rollBoundPerServer = 90 * time.Second
	// answerBound bounds the naive roll's wait for a replacement to answer HTTP.
	answerBound = time.Minute
	// settleBound is how long the naive roll's cluster gets, after the last
	// replacement answers, to be a healthy cluster of N voters again.
	settleBound = 30 * time.Second
	invocations = 50
)

// load is the workload running during a roll.
type load struct {
	w       *workload.Writer
	r       *workload.Reader
	leaders *workload.LeaderWatch
	health  *healthWatch
}

func startLoad(ctx context.Context, cl *cluster) (*load, error) {
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if _, err := cl.c.KV().Put(&api.KVPair{Key: readKey, Value: []byte(readValue)}, (&api.WriteOptions{}).WithContext(wctx)); err != nil {
		return nil, fmt.Errorf("write %s: %w", readKey, err)
	}
	return &load{
		w:       workload.StartWriter(cl.writeC, "bench/writes/", rate, attempts, opTimeout),
		r:       workload.StartReader(cl.readC, readKey, []byte(readValue), rate, attempts, opTimeout),
		leaders: workload.WatchLeader(cl.c, 100*time.Millisecond),
		health:  watchHealth(cl.c, sampleEvery),
	}, nil
}

// stop stops the workload and records what it saw in r; it returns when each server
// was first seen healthy, and healthy and a voter.
func (l *load) stop(r *Roll) (firstHealthy, firstVoter map[string]time.Time) {
	firstHealthy, firstVoter = l.health.Stop()
	changes, noLeader := l.leaders.Stop()
	r.LeaderChanges, r.NoLeaderSeconds = changes, round1(noLeader.Seconds())
	// Both stop at once: each waits for its operations in flight, up to 15 s.
	reads := make(chan workload.ReadResult)
	go func() { reads <- l.r.Stop() }()
	// The read-back needs a leader; a cluster that lost quorum has none, and then
	// lost writes are unknown, not zero.
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	wr, err := l.w.Stop(ctx)
	rr := <-reads
	r.Reads = &Reads{OK: rr.OK, Failed: rr.Failed, LatencyMS: ms(rr.Latency), SpentMS: ms(rr.Spent)}
	r.Writes = &Writes{OK: wr.OK, Failed: wr.Failed,
		LatencyMS: Latency{P50: msOf(wr.P50), P99: msOf(wr.P99), Max: msOf(wr.Max)}, SpentMS: ms(wr.Spent)}
	if err == nil {
		r.Writes.Lost = &wr.Lost
	} else {
		r.Writes.LostUnknown = err.Error()
	}
	return firstHealthy, firstVoter
}

// ourRoll rolls a fresh cluster of servers servers (keys keys of ~1 KB loaded first)
// from A to B through the real watches, under load. after, if set, runs on the
// cluster once it rolled, before it is torn down.
func (b *bench) ourRoll(ctx context.Context, servers, keys int, after func(context.Context, *cluster) error) (r Roll) {
	name := fmt.Sprintf("ours-%d", servers)
	if keys > 0 {
		name += fmt.Sprintf("-%dkeys", keys)
	}
	r = Roll{Kind: "ours", Servers: servers, Keys: keys}
	fail := func(err error) Roll {
		r.Error = err.Error()
		return r
	}
	cl, err := b.newCluster(ctx, name, servers, true)
	if err != nil {
		return fail(err)
	}
	defer cl.down(b.logs)
	if keys > 0 {
		progress("%s: loading %d keys of ~1 KB", name, keys)
		t := time.Now()
		if err := loadKeys(ctx, cl.c, keys); err != nil {
			return fail(err)
		}
		r.LoadSeconds = ptr(round1(time.Since(t).Seconds()))
		progress("%s: loaded %d keys in %.1fs", name, keys, *r.LoadSeconds)
	}
	l, err := startLoad(ctx, cl)
	if err != nil {
		return fail(err)
	}
	if _, err := cl.p.RegisterImage(ctx, "B", local.ImageOptions{}); err != nil {
		l.stop(&r)
		return fail(err)
	}
	body, _ := payload.NewRequestPayload("B")
	sleep(ctx, warmUp)
	b.observe(name + " start")
	start := time.Now()
	if _, _, err := cl.c.Event().Fire(&api.UserEvent{Name: config.DefaultRollEventName, Payload: body}, nil); err != nil {
		l.stop(&r)
		return fail(fmt.Errorf("fire: %w", err))
	}
	progress("%s: registered image B and fired the event; the watches roll it", name)
	rec, seen, err := cl.waitRolled(ctx, "B", time.Duration(servers)*rollBoundPerServer)
	r.RollSeconds = round1(time.Since(start).Seconds())
	b.observe(name + " end")
	r.Completed = err == nil
	// The retired servers' processes finish exiting meanwhile; timed alongside.
	gone := make(chan *float64, 1)
	go func() {
		if err == nil && cl.waitOldGone(ctx, "B", time.Minute) {
			gone <- ptr(round1(time.Since(start).Seconds()))
		}
		close(gone)
	}()
	firstHealthy, firstVoter := l.stop(&r)
	r.OldGoneSeconds = <-gone
	for _, in := range sortedByLaunch(seen) {
		r.NewServers = append(r.NewServers, newServer(in, firstHealthy, firstVoter))
	}
	if rec != nil {
		for _, h := range rec.History {
			r.History = append(r.History, Step{AtSeconds: round1(h.Time.Sub(start).Seconds()), Step: h.Step, Instance: h.Instance, Detail: h.Detail})
		}
	}
	r.summarize()
	progress("%s: %s", name, r.oneLine())
	if err != nil {
		return fail(err)
	}
	if after != nil {
		if err := after(ctx, cl); err != nil {
			return fail(err)
		}
	}
	return r
}

// naiveRoll replaces every server of a fresh cluster without watches the way an ASG
// instance refresh with MinHealthyPercentage=100 does: for each old server in launch
// order, terminate it without a leave, launch a replacement on B, and wait only until
// the replacement's process answers HTTP. Quorum may be lost: the workload's failures
// are data, and every wait is bounded.
func (b *bench) naiveRoll(ctx context.Context, servers int) (r Roll) {
	name := fmt.Sprintf("naive-%d", servers)
	r = Roll{Kind: "naive", Servers: servers}
	fail := func(err error) Roll {
		r.Error = err.Error()
		return r
	}
	cl, err := b.newCluster(ctx, name, servers, false)
	if err != nil {
		return fail(err)
	}
	defer cl.down(b.logs)
	olds, err := cl.p.Instances(ctx)
	if err != nil {
		return fail(err)
	}
	l, err := startLoad(ctx, cl)
	if err != nil {
		return fail(err)
	}
	if _, err := cl.p.RegisterImage(ctx, "B", local.ImageOptions{}); err != nil {
		l.stop(&r)
		return fail(err)
	}
	sleep(ctx, warmUp)
	b.observe(name + " start")
	start := time.Now()
	var news []cloud.Instance
	answered := map[string]float64{}
	var stepErr error
	for i, old := range olds {
		progress("%s: killing %s, launching its replacement on B", name, old.ID)
		if stepErr = replace(ctx, cl.p, old.ID); stepErr != nil {
			break
		}
		// Launch is timed from the call, as an ASG times an instance from its launch.
		t := time.Now()
		in, err := cl.p.Launch(ctx, "B", fmt.Sprintf("naive/%d", i), nil)
		if err != nil {
			stepErr = err
			break
		}
		news = append(news, in)
		if err := waitAnswer(ctx, in.Address, answerBound); err != nil {
			stepErr = fmt.Errorf("replacement %s: %w", in.ID, err)
			break
		}
		answered[in.ID] = time.Since(t).Seconds()
	}
	r.RollSeconds = round1(time.Since(start).Seconds())
	r.Completed = stepErr == nil
	if stepErr == nil {
		ids := map[string]bool{}
		for _, in := range news {
			ids[in.ID] = true
		}
		progress("%s: every replacement answers; waiting up to %s for a healthy cluster of %d voters", name, settleBound, servers)
		if took, ok := waitRecovered(ctx, cl.c, ids, settleBound); ok {
			r.RecoveredAfterSeconds = ptr(round1(took.Seconds()))
		}
		r.Recovered = ptr(r.RecoveredAfterSeconds != nil)
	}
	b.observe(name + " end")
	firstHealthy, firstVoter := l.stop(&r)
	for _, in := range news {
		ns := newServer(in, firstHealthy, firstVoter)
		if s, ok := answered[in.ID]; ok {
			ns.LaunchToAnswerSeconds = ptr(round2(s))
		}
		r.NewServers = append(r.NewServers, ns)
	}
	r.summarize()
	progress("%s: %s", name, r.oneLine())
	if stepErr != nil {
		return fail(stepErr)
	}
	return r
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// replace ends an old server as a crash would: SIGKILL, then Terminate, which skips
// the leave of a dead process and marks the instance terminated.
func replace(ctx context.Context, p *local.Provider, id string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := p.Kill(ctx, id); err != nil {
		return err
	}
	return p.Terminate(ctx, id, "")
}

// waitAnswer polls GET /v1/agent/self on the agent at ip every 100ms until it answers
// 200, bounded.
func waitAnswer(ctx context.Context, ip string, bound time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, bound)
	defer cancel()
	hc := &http.Client{Timeout: time.Second}
	u := "http://" + net.JoinHostPort(ip, "8500") + "/v1/agent/self"
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		if resp, err := hc.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("no HTTP answer from %s within %s", ip, bound)
		case <-time.After(100 * time.Millisecond):
		}
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
	const batch, workers = 64, 4
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	value := bytes.Repeat([]byte("0123456789abcdef"), 64) // 1 KiB
	starts := make(chan int)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for s := range starts {
				var ops api.TxnOps
				for k := s; k < min(s+batch, keys); k++ {
					ops = append(ops, &api.TxnOp{KV: &api.KVTxnOp{Verb: api.KVSet, Key: fmt.Sprintf("bench/data/%06d", k), Value: value}})
				}
				ok, resp, _, err := c.Txn().Txn(ops, (&api.QueryOptions{}).WithContext(ctx))
				if err == nil && !ok {
					err = fmt.Errorf("transaction rolled back: %v", resp.Errors)
				}
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = fmt.Errorf("load keys %d..: %w", s, err)
						cancel()
					}
					mu.Unlock()
				}
			}
		}()
	}
feed:
	for s := 0; s < keys; s += batch {
		select {
		case starts <- s:
		case <-ctx.Done():
			break feed
		}
	}
	close(starts)
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("load keys: %w", err)
	}
	got, _, err := c.KV().Keys("bench/data/", "", (&api.QueryOptions{RequireConsistent: true}).WithContext(ctx))
	if err != nil {
		return fmt.Errorf("count loaded keys: %w", err)
	}
	if len(got) != keys {
		return fmt.Errorf("loaded %d keys, %d are there", keys, len(got))
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
