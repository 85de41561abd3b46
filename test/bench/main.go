// Command bench measures what a roll costs, on real local clusters, and writes
// BENCHMARKS.md, benchmarks.json and three latency-over-time pictures (SVG) beside
// them. `make bench` runs it.
//
// Every case runs in the same run on the same machine, one after another, on the
// local provider (real `consul agent -server` processes on loopback addresses),
// under one load through the client agent: 20 writes/s of new keys, 20 consistent
// reads/s, and 10 check-and-set read-modify-writes/s on 3 hot keys, every attempt
// recorded and the history checked for linearizability (porcupine, KV model).
//
//  1. Our roll of 3 servers, driven by the real handler binaries run by the agents'
//     watches; then, on the same cluster, its steady state (the same load, no roll,
//     as long as the roll took), one handler invocation with nothing to do (50 runs
//     each of spindown and spinup through the real binaries, with an empty Go
//     program and `spindown -h` for scale, and the HTTP requests each run makes),
//     and our roll again with 100 000 keys of ~1 KB loaded.
//  2. The realistic baseline: an Auto Scaling instance refresh (launch before
//     terminate, instance warmup W, servers with leave_on_terminate) of 3 servers,
//     W = 10 s then W = 0 s, with 0 keys and with 100 000 keys. See refreshRoll.
//  3. Our roll upgrading Consul: image A runs an older Consul ($REHYDRATE_CONSUL_OLD),
//     image B the pinned one; 3 and 5 servers.
//  4. Our roll of 5 servers and its steady state; then, on the same cluster, 1 GB of
//     KV (-scale-mb) and our roll again: roll time, catch-up, peak RSS per server.
//  5. The planner's Go benchmark.
//
// Each roll reports failed and lost writes, latency, failed reads, leader changes,
// time without a leader, each new server's catch-up (launch to the first 200ms
// sample in which autopilot lists it healthy and a voter) and whether the history
// is linearizable.
//
// Why: the roll promises that clients cannot see it (no failed or lost write, a
// latency near the steady state's, a linearizable history) and to stay close to the
// time the cloud itself needs; the handlers run on every server at every change in
// the servers' health, so idle invocations must be cheap. The figures, and the
// targets they are checked against, say whether that holds and by how much.
//
// Run it from the repository root (`make bench` does), with the pinned consul first
// on PATH. Clusters get /24 blocks in 127.0.200.0–127.0.250.255 (tests use
// 127.0.100–199) and are always torn down, on error and on SIGINT too. Every wait is
// bounded, and the whole run by 19 minutes.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"
)

// budget bounds the whole run; `make bench` must finish within 20 minutes.
const budget = 19 * time.Minute

var started = time.Now()

// progress prints a progress line to stderr.
func progress(format string, args ...any) {
	el := time.Since(started).Round(time.Second)
	fmt.Fprintf(os.Stderr, "bench [%02d:%02d] %s\n", int(el.Minutes()), int(el.Seconds())%60, fmt.Sprintf(format, args...))
}

func main() { os.Exit(run()) }

func run() int {
	mdPath := flag.String("out", "test/bench/BENCHMARKS.md", "markdown report to write")
	jsonPath := flag.String("json", "test/bench/benchmarks.json", "JSON report to write")
	logs := flag.String("logs", "", "if set, copy each cluster's handler and agent logs into this directory before tearing it down")
	only := flag.String("cases", "all", "comma-separated subset of planner,ours-3,keys-100000,refresh-3,refresh-3-100000keys,upgrade-3,upgrade-5,ours-5,scale-5 (invocations and the steady state run with ours-3; keys-100000 rolls ours-3's cluster again, scale-5 ours-5's)")
	scaleMB := flag.Int("scale-mb", scaleDefaultMB, "MB (10^6 bytes) of KV the scale case loads")
	flag.Parse()
	want := func(c string) bool {
		return *only == "all" || slices.Contains(strings.Split(*only, ","), c)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, budget)
	defer cancel()

	b := &bench{logs: *logs}
	rep := &Report{Command: "make bench", Date: started.UTC().Format(time.RFC3339), Machine: machine()}
	rep.ConsulVersion = consulVersion()
	rep.Commit = commit()
	progress("%s, %d cores; %s", rep.Machine.CPU, rep.Machine.Cores, rep.ConsulVersion)

	binDir, err := os.MkdirTemp("", "rehydrate-bench-bin-")
	if err != nil {
		progress("error: %v", err)
		return 1
	}
	defer os.RemoveAll(binDir)
	progress("building the handlers into %s", binDir)
	// As `make build` builds what the image ships: static (CGO_ENABLED=0), which
	// spares every run the dynamic loader.
	build := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", binDir+"/", "./handlers/...")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		progress("error: build handlers: %v\n%s", err, out)
		return 1
	}
	b.binDir = binDir
	if err := b.buildHelpers(ctx); err != nil {
		progress("error: %v", err)
		return 1
	}

	var failed []string
	note := func(what string, err error) {
		if err != nil {
			progress("%s: %v", what, err)
			failed = append(failed, fmt.Sprintf("%s: %v", what, err))
		}
	}

	if want("planner") {
		progress("planner: go test -bench BenchmarkNext -count 5 ./internal/plan")
		rep.Planner, err = plannerBench(ctx)
		note("planner benchmark", err)
	}
	add := func(r Roll) {
		note(r.Case, r.err())
		rep.Rolls = append(rep.Rolls, r)
	}
	if ctx.Err() == nil && (want(caseOurs3) || want("keys-100000")) {
		b.ours3(ctx, rep, want(caseOurs3), want("keys-100000"), add, note)
	}
	if ctx.Err() == nil && want("refresh-3") {
		b.refreshPair(ctx, 0, add)
	}
	if ctx.Err() == nil && want("refresh-3-100000keys") {
		b.refreshPair(ctx, keysCase, add)
	}
	for _, n := range []int{3, 5} {
		if ctx.Err() == nil && want(fmt.Sprintf("upgrade-%d", n)) {
			add(b.upgradeRoll(ctx, n))
		}
	}
	if ctx.Err() == nil && (want(caseOurs5) || want(caseScale5)) {
		b.ours5(ctx, want(caseOurs5), want(caseScale5), int64(*scaleMB)*1e6, add, note)
	}

	if ctx.Err() != nil {
		// Interrupted or out of time: the clusters are down (deferred), but a partial
		// run must not replace the last full report.
		progress("stopped: %v; reports not written", context.Cause(ctx))
		return 1
	}
	rep.TotalSeconds = round1(time.Since(started).Seconds())
	rep.Conditions = b.conditions
	rep.Targets = targets(rep)
	rep.Errors = failed
	if err := rep.write(*mdPath, *jsonPath); err != nil {
		progress("error: %v", err)
		return 1
	}
	progress("wrote %s and %s in %s", *mdPath, *jsonPath, time.Since(started).Round(time.Second))
	for _, t := range rep.Targets {
		progress("target %-60s %s (%s)", t.Name, map[bool]string{true: "met", false: "MISSED"}[t.Met], t.Value)
	}
	if len(failed) > 0 {
		progress("%d case(s) had errors:\n  %s", len(failed), strings.Join(failed, "\n  "))
		return 1
	}
	return 0
}

// bench holds what every case shares.
type bench struct {
	binDir     string
	logs       string
	conditions []Condition
}

// observe records the machine's load at a point of a case: the 1-minute load average
// and how many Consul agents not ours are running (other benchmarks, tests).
func (b *bench) observe(point string) {
	c := Condition{Point: point, OtherConsulAgents: otherAgents()}
	if data, err := os.ReadFile("/proc/loadavg"); err == nil {
		fmt.Sscanf(string(data), "%f", &c.LoadAvg1m)
	}
	b.conditions = append(b.conditions, c)
	if c.OtherConsulAgents > 0 {
		progress("%s: %d other Consul agents are running on this machine; the figures will be noisier", point, c.OtherConsulAgents)
	}
}

// otherAgents counts `consul agent` processes whose command line does not name one
// of our clusters' directories.
func otherAgents() int {
	n := 0
	paths, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		args := strings.Split(string(b), "\x00")
		if len(args) > 1 && filepath.Base(args[0]) == "consul" && args[1] == "agent" && !strings.Contains(string(b), "rehydrate-bench-") {
			n++
		}
	}
	return n
}

// machine describes the machine the run is on.
func machine() Machine {
	m := Machine{Cores: runtime.NumCPU(), GoVersion: goVersion()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kib int64
		for _, l := range strings.Split(string(b), "\n") {
			if _, err := fmt.Sscanf(l, "MemTotal: %d kB", &kib); err == nil {
				m.RAMGiB = round1(float64(kib) / (1 << 20))
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	return m
}

func goVersion() string {
	out, err := exec.Command("go", "env", "GOVERSION").Output()
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(out))
}

// commit names the tree measured: its commit, "-dirty" if it has uncommitted changes.
func commit() string {
	out, err := exec.Command("git", "describe", "--always", "--dirty").Output()
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(out))
}

func consulVersion() string {
	out, err := exec.Command("consul", "version").Output()
	if err != nil {
		return "unknown (" + err.Error() + ")"
	}
	first, _, _ := strings.Cut(string(out), "\n")
	return strings.TrimSpace(first)
}

// copyLogs copies the cluster's handlers.log and every agent.log into dir/name.
func copyLogs(stateDir, dir, name string) error {
	dst := filepath.Join(dir, name)
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return err
	}
	paths, _ := filepath.Glob(filepath.Join(stateDir, "instances", "*", "agent.log"))
	paths = append(paths, filepath.Join(stateDir, "handlers.log"), filepath.Join(stateDir, "client", "agent.log"))
	var errs []error
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		rel, _ := filepath.Rel(stateDir, p)
		errs = append(errs, os.WriteFile(filepath.Join(dst, strings.ReplaceAll(rel, string(filepath.Separator), "_")), b, 0o644))
	}
	return errors.Join(errs...)
}
