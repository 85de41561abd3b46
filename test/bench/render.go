package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/consul-rehydrate/consul-rehydrate/internal/workload"
)

// Case names.
const (
	caseOurs3     = "ours-3"
	caseOurs3Keys = "ours-3-100000keys"
	caseOurs5     = "ours-5"
	caseScale5    = "scale-5"
	caseUpgrade3  = "upgrade-3"
	caseUpgrade5  = "upgrade-5"
	caseRefW10    = "refresh-3-w10"
	caseRefW0     = "refresh-3-w0"
	caseRefW10K   = "refresh-3-w10-100000keys"
	caseRefW0K    = "refresh-3-w0-100000keys"
	keysCase      = 100_000
)

// pictures are the latency-over-time plots, beside BENCHMARKS.md: which roll, which
// file.
var pictures = []struct{ roll, file, title string }{
	{caseOurs3, "ours-3.svg", "Our roll, 3 servers"},
	{caseRefW10, "refresh-3-w10.svg", "Instance refresh (warmup 10 s, graceful leave), 3 servers"},
	{worstRefresh, "refresh-3-worst.svg", "Instance refresh with the most failed writes"},
}

// worstRefresh stands for the instance refresh that failed the most writes (the
// slowest write breaks a tie): where the leader falls decides which, from run to run.
const worstRefresh = "worst-refresh"

// pictured returns the roll a picture shows, and its title.
func (rep *Report) pictured(roll, title string) (*Roll, string) {
	if roll != worstRefresh {
		return rep.rollCase(roll), title
	}
	var worst *Roll
	for _, name := range []string{caseRefW10, caseRefW0, caseRefW10K, caseRefW0K} {
		r := rep.rollCase(name)
		if r == nil || r.Writes == nil {
			continue
		}
		if worst == nil || r.Writes.Failed > worst.Writes.Failed ||
			(r.Writes.Failed == worst.Writes.Failed && r.MaxWriteMS > worst.MaxWriteMS) {
			worst = r
		}
	}
	if worst == nil {
		return nil, title
	}
	return worst, fmt.Sprintf("Instance refresh (warmup %.0f s, graceful leave), 3 servers, %d keys: the refresh with the most failed writes", *worst.WarmupSeconds, worst.Keys)
}

func (rep *Report) rollCase(name string) *Roll {
	for i := range rep.Rolls {
		if r := &rep.Rolls[i]; r.Case == name {
			return r
		}
	}
	return nil
}

// Targets.
const (
	// stabilization: the bound on our roll time is N × (launch + stabilization + 5 s).
	stabilization = 10 * time.Second
	// steadyFactor: our roll's p99 at most this many times the steady state's.
	steadyFactor = 2.0
	// maxLatencyMS: no operation of our roll slower than this.
	maxLatencyMS = 500.0
)

// targets checks the figures against the project's targets.
func targets(rep *Report) []Target {
	var out []Target
	for _, r := range rep.Rolls {
		if r.Kind != "ours" {
			continue
		}
		t := Target{Name: fmt.Sprintf("%s: no failed or lost write", r.Case), Target: "writes_failed + writes_lost = 0", Limit: ptr(0.0)}
		if w := r.Writes; w != nil {
			t.Value = fmt.Sprintf("failed %d, lost %s of %d", w.Failed, lost(w), w.OK+w.Failed)
			t.Met = r.Completed && w.Failed == 0 && w.Lost != nil && *w.Lost == 0
			if w.Lost != nil {
				t.Measured = ptr(float64(w.Failed + *w.Lost))
			}
		} else {
			t.Value = "no figures: " + r.Error
		}
		out = append(out, t)
	}
	for _, name := range []string{caseOurs3, caseOurs5} {
		r := rep.rollCase(name)
		if r == nil || r.Writes == nil || r.Reads == nil {
			continue
		}
		if s := r.Steady; s != nil && s.Writes != nil && s.Reads != nil {
			for _, x := range []struct {
				what        string
				roll, ratio float64
				steady      float64
			}{
				{"write", r.Writes.SpentMS.P99, s.WriteP99Ratio, s.Writes.SpentMS.P99},
				{"consistent-read", r.Reads.SpentMS.P99, s.ReadP99Ratio, s.Reads.SpentMS.P99},
			} {
				t := Target{Name: fmt.Sprintf("%s: p99 %s latency near the steady state's", name, x.what), Target: fmt.Sprintf("roll p99 ≤ %.0f × steady p99", steadyFactor),
					Value:    fmt.Sprintf("roll %.0f ms, steady %.0f ms: ×%.2f", x.roll, x.steady, x.ratio),
					Measured: ptr(x.ratio), Limit: ptr(steadyFactor), Met: r.Completed && x.ratio <= steadyFactor}
				if !t.Met && x.roll-steadyFactor*x.steady < 20 {
					t.Value += fmt.Sprintf(" (over by %.0f ms: at this scale one scheduling hiccup of the 2 shared cores is the difference)", x.roll-steadyFactor*x.steady)
				}
				out = append(out, t)
			}
		}
		for _, x := range []struct {
			what string
			max  float64
		}{{"write", r.Writes.SpentMS.Max}, {"consistent read", r.Reads.SpentMS.Max}} {
			out = append(out, Target{Name: fmt.Sprintf("%s: slowest %s", name, x.what), Target: fmt.Sprintf("max ≤ %.0f ms", maxLatencyMS),
				Value: fmt.Sprintf("%.0f ms", x.max), Measured: ptr(x.max), Limit: ptr(maxLatencyMS), Met: r.Completed && x.max <= maxLatencyMS})
		}
	}
	for _, r := range rep.Rolls {
		if r.Kind != "ours" || r.Exposure == nil || r.Exposure.Samples == 0 {
			continue
		}
		// The surge is added before a server is retired, and retired only once it
		// is a stable voter: the cluster never has fewer than N healthy voters.
		e := r.Exposure
		out = append(out, Target{Name: fmt.Sprintf("%s: never fewer than N healthy voters", r.Case), Target: fmt.Sprintf("≥ %d healthy voters in every 200 ms autopilot sample", r.Servers),
			Value:    fmt.Sprintf("fewest %d (failure tolerance ≥ %d), %.1f s below N in %d samples", e.MinHealthyVoters, e.MinFailureTolerance, e.SecondsBelowN, e.Samples),
			Measured: ptr(float64(e.MinHealthyVoters)), Limit: ptr(float64(r.Servers)), Met: e.MinHealthyVoters >= r.Servers})
	}
	for _, r := range rep.Rolls {
		t := Target{Name: fmt.Sprintf("%s: linearizable history", r.Case), Target: "0 violations (porcupine, KV model)"}
		if l := r.Linearizability; l != nil {
			t.Value = fmt.Sprintf("%d operations, %d of unknown outcome", l.Ops, l.Unknown)
			switch {
			case l.TimedOut:
				t.Value += fmt.Sprintf("; the check timed out after %s", checkBound)
			case !l.Linearizable:
				t.Value += "; violation: " + l.Detail
			}
			t.Met = l.Linearizable
		} else {
			t.Value = "not checked: " + r.Error
		}
		out = append(out, t)
	}
	for _, inv := range rep.Invocations {
		out = append(out,
			Target{Name: inv.Handler + " with nothing to do: wall time", Target: "median < 20 ms",
				Value:    fmt.Sprintf("median %.1f ms (p95 %.1f ms)", inv.WallMS.P50, inv.WallMS.P95),
				Measured: ptr(inv.WallMS.P50), Limit: ptr(20.0), Met: inv.WallMS.P50 < 20},
			Target{Name: inv.Handler + " with nothing to do: peak RSS", Target: "< 30 MB (10^6 bytes) in every run",
				Value:    fmt.Sprintf("max %.1f MB (median %.1f MB)", inv.MaxRSSKiB.Max*1024/1e6, inv.MaxRSSKiB.P50*1024/1e6),
				Measured: ptr(round1(inv.MaxRSSKiB.Max * 1024 / 1e6)), Limit: ptr(30.0), Met: inv.MaxRSSKiB.Max*1024 < 30e6},
			Target{Name: inv.Handler + " with nothing to do: requests to Consul", Target: "≤ 4 in every run",
				Value:    fmt.Sprintf("max %.0f (median %.0f)", inv.Requests.Max, inv.Requests.P50),
				Measured: ptr(inv.Requests.Max), Limit: ptr(4.0), Met: inv.Requests.Max <= 4},
		)
	}
	ref := rep.rollCase(caseRefW10)
	for _, name := range []string{caseOurs3, caseOurs5} {
		r := rep.rollCase(name)
		if r == nil {
			continue
		}
		t := Target{Name: fmt.Sprintf("%s: roll time", name), Target: "≤ N × (launch + stabilization + 5 s)"}
		if ref == nil || ref.LaunchMedianSeconds == nil {
			t.Value = "no launch time (the instance refresh's launch to InService) to compare with"
			out = append(out, t)
			continue
		}
		bound := float64(r.Servers) * (*ref.LaunchMedianSeconds + stabilization.Seconds() + 5)
		t.Value = fmt.Sprintf("%.1f s vs %d × (%.2f + %.0f + 5) = %.1f s: ×%.2f", r.RollSeconds, r.Servers, *ref.LaunchMedianSeconds, stabilization.Seconds(), bound, r.RollSeconds/bound)
		t.Measured, t.Limit = ptr(r.RollSeconds), ptr(round1(bound))
		t.Met = r.Completed && r.RollSeconds <= bound
		out = append(out, t)
	}
	return out
}

// write writes both reports and the pictures beside the markdown.
func (rep *Report) write(mdPath, jsonPath string) error {
	dir := filepath.Dir(mdPath)
	var drawn []string
	for _, pic := range pictures {
		r, title := rep.pictured(pic.roll, pic.title)
		if r == nil || len(r.samples) == 0 {
			continue
		}
		if err := plotRoll(r, title, filepath.Join(dir, pic.file)); err != nil {
			return fmt.Errorf("picture of %s: %w", pic.roll, err)
		}
		drawn = append(drawn, r.Case)
	}
	rep.Pictures = drawn
	js, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(jsonPath, append(js, '\n'), 0o644); err != nil {
		return err
	}
	return os.WriteFile(mdPath, []byte(rep.markdown()), 0o644)
}

func (rep *Report) markdown() string {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	p("# Benchmarks\n\n")
	p("Generated by `%s` (`go run ./test/bench`, see its doc comment for what each case does) at commit %s on %s; the run took %.1f min.\n\n", rep.Command, rep.Commit, rep.Date, rep.TotalSeconds/60)
	p("| machine | |\n|---|---|\n")
	p("| CPU | %s |\n| cores | %d |\n| RAM | %.1f GiB |\n| kernel | %s |\n| Go | %s |\n| Consul | %s |\n\n",
		rep.Machine.CPU, rep.Machine.Cores, rep.Machine.RAMGiB, rep.Machine.Kernel, rep.Machine.GoVersion, rep.ConsulVersion)
	p("These machines are noisy (shared, 2 cores for up to 7 Consul agents, the handlers and the load): compare the ratios within one run, not absolute figures across runs.")
	others, peak := 0, 0.0
	for _, c := range rep.Conditions {
		others, peak = max(others, c.OtherConsulAgents), max(peak, c.LoadAvg1m)
	}
	p(" Highest 1-minute load average seen at the start or end of a case: %.1f.", peak)
	if others > 0 {
		p(" **Up to %d Consul agents of something else (tests?) were running during this run; its figures are noisier than they should be.**", others)
	}
	p("\n\n")
	p("Every cluster here, ours and the instance refresh's alike, runs secured as the shipped image is (the local provider always does): gossip encryption verified both ways, TLS on RPC and HTTPS (verify_incoming, verify_outgoing, verify_server_hostname; no plain HTTP) and default-deny ACLs; the load and the handlers hold ACL tokens. So every figure below is with TLS paid for.\n\n")
	p("The load, in every roll and steady state, through the client agent: %d writes/s of new keys, %d consistent reads/s of a key written before, and %d check-and-set read-modify-writes/s (a consistent read, then a CAS on its ModifyIndex) cycling over %d hot keys; each operation gets %d attempts of at most %s, 100 ms apart, and starts %s before the roll. \"Spent\" is the time an operation took, all its attempts included, a failed one too. Catch-up: from a new server's launch to the first %s sample in which autopilot lists it healthy and a voter.\n\n",
		rate, rate, casRate, len(casKeys), attempts, opTimeout, warmUp, sampleEvery)

	rep.mdBaseline(p)
	rep.mdSteady(p)
	rep.mdLinearizability(p)
	rep.mdUpgrade(p)
	rep.mdScale(p)
	rep.mdPictures(p)
	rep.mdHistory(p)
	rep.mdInvocations(p)
	if pl := rep.Planner; pl != nil {
		p("Planner, `go test -run '^$' -bench BenchmarkNext -benchmem -count %d ./internal/plan` (median of %d): %.0f ns/op, %.0f B/op, %.0f allocs/op.\n\n", pl.Runs, pl.Runs, pl.NsPerOp, pl.BytesPerOp, pl.AllocsPerOp)
	}

	p("## Targets\n\n| target | bound | figures | |\n|---|---|---|---|\n")
	for _, t := range rep.Targets {
		p("| %s | %s | %s | %s |\n", t.Name, t.Target, mdCell(t.Value), map[bool]string{true: "met", false: "**missed**"}[t.Met])
	}
	if len(rep.Errors) > 0 {
		p("\n## Errors\n\n")
		for _, e := range rep.Errors {
			p("- %s\n", strings.ReplaceAll(e, "\n", " "))
		}
	}
	return b.String()
}

type printer func(format string, args ...any)

// table prints one column per roll (nil rolls left out) and one line per row.
func table(p printer, rolls []*Roll, head func(*Roll) string, rows []row) {
	rolls = slices.DeleteFunc(slices.Clone(rolls), func(r *Roll) bool { return r == nil })
	if len(rolls) == 0 {
		return
	}
	p("|")
	for _, r := range rolls {
		p(" | %s", head(r))
	}
	p(" |\n|---|%s\n", strings.Repeat("---|", len(rolls)))
	for _, rw := range rows {
		p("| %s", rw.label)
		for _, r := range rolls {
			p(" | %s", mdCell(rw.f(r)))
		}
		p(" |\n")
	}
	p("\n")
}

type row struct {
	label string
	f     func(*Roll) string
}

func mdCell(s string) string { return strings.ReplaceAll(strings.ReplaceAll(s, "|", "\\|"), "\n", " ") }

func rollHead(r *Roll) string {
	var s string
	if r.Kind == "refresh" {
		s = fmt.Sprintf("instance refresh, W = %.0f s", deref(r.WarmupSeconds))
	} else {
		s = "ours"
	}
	if r.Keys > 0 {
		s += fmt.Sprintf(", %d keys", r.Keys)
	}
	return s
}

// rollRows are the rows every roll table shares.
var rollRows = []row{
	{"roll completed", func(r *Roll) string {
		if r.Error != "" && !r.Completed {
			return "**no**: " + r.Error
		}
		return yesNo(r.Completed)
	}},
	{"roll time (s)", func(r *Roll) string { return fmt.Sprintf("%.1f", r.RollSeconds) }},
	{"healthy cluster of N voters at the end", func(r *Roll) string {
		switch {
		case r.Kind == "ours":
			s := yesNo(r.Completed) + " (when done)"
			if r.OldGoneSeconds != nil {
				s += fmt.Sprintf("; old processes all exited at %.1f s", *r.OldGoneSeconds)
			}
			return s
		case r.Recovered == nil:
			return "—"
		case *r.Recovered:
			return fmt.Sprintf("yes, %.1f s after the last termination", *r.RecoveredAfterSeconds)
		default:
			return fmt.Sprintf("**no**, not within %s of the last termination", settleBound)
		}
	}},
	{"writes ok / failed / lost", func(r *Roll) string {
		if r.Writes == nil {
			return "—"
		}
		return fmt.Sprintf("%d / %d / %s", r.Writes.OK, r.Writes.Failed, lost(r.Writes))
	}},
	{"time spent per write p50 / p99 / max (ms)", func(r *Roll) string { return lat(r.Writes, func(w *Writes) Latency { return w.SpentMS }) }},
	{"consistent reads ok / failed", func(r *Roll) string {
		if r.Reads == nil {
			return "—"
		}
		return fmt.Sprintf("%d / %d", r.Reads.OK, r.Reads.Failed)
	}},
	{"time spent per consistent read p50 / p99 / max (ms)", func(r *Roll) string {
		if r.Reads == nil {
			return "—"
		}
		return fmtLat(r.Reads.SpentMS)
	}},
	{"check-and-sets ok / conflicts / failed", func(r *Roll) string {
		if r.CAS == nil {
			return "—"
		}
		return fmt.Sprintf("%d / %d / %d", r.CAS.OK, r.CAS.Conflicts, r.CAS.Failed)
	}},
	{"linearizable", func(r *Roll) string { return verdict(r.Linearizability) }},
	{"leader changes", func(r *Roll) string { return fmt.Sprint(r.LeaderChanges) }},
	{"time without a leader (s)", func(r *Roll) string { return fmt.Sprintf("%.1f", r.NoLeaderSeconds) }},
	{"fewest healthy voters / lowest failure tolerance", func(r *Roll) string {
		if r.Exposure == nil || r.Exposure.Samples == 0 {
			return "—"
		}
		return fmt.Sprintf("%d / %d", r.Exposure.MinHealthyVoters, r.Exposure.MinFailureTolerance)
	}},
	{"time with fewer than N healthy voters (s)", func(r *Roll) string {
		if r.Exposure == nil || r.Exposure.Samples == 0 {
			return "—"
		}
		return fmt.Sprintf("%.1f", r.Exposure.SecondsBelowN)
	}},
	{"new servers that became healthy voters", func(r *Roll) string { return fmt.Sprintf("%d of %d", r.CaughtUp, len(r.NewServers)) }},
	{"catch-up median / max (s)", catchUp},
}

func (rep *Report) mdBaseline(p printer) {
	rolls := []*Roll{rep.rollCase(caseOurs3), rep.rollCase(caseRefW10), rep.rollCase(caseRefW0),
		rep.rollCase(caseOurs3Keys), rep.rollCase(caseRefW10K), rep.rollCase(caseRefW0K)}
	if !slices.ContainsFunc(rolls, func(r *Roll) bool { return r != nil }) {
		return
	}
	p("## 1. Our roll against an instance refresh (3 servers)\n\n")
	p("Each roll starts from a cluster of 3 healthy voters and ends with every server replaced. ")
	p("**Ours**: the real handlers, run by the agents' watches (roll.stabilization 10s); a fresh cluster for 0 keys, and the same cluster, up to date, for the 100 000-key roll (~1 KB each, loaded before it). ")
	p("**Instance refresh**: what an Auto Scaling group does with MinHealthyPercentage=100, MaxHealthyPercentage=200 (launch before terminate), an instance warmup W, and servers with `leave_on_terminate` (server.hcl), on an identical cluster without watches. For each old server in launch order, the leader wherever it falls: launch a replacement; once it is InService, wait W; then terminate the old one and wait until it is gone. ")
	p("InService is taken as the replacement's agent process running: with EC2 health checks an instance is healthy once it runs, and an instance refresh \"waits before moving on to replacing the next instance after a new instance enters the InService state\" for the warmup ([RefreshPreferences.InstanceWarmup](https://docs.aws.amazon.com/autoscaling/ec2/APIReference/API_RefreshPreferences.html); [how an instance refresh works](https://docs.aws.amazon.com/autoscaling/ec2/userguide/instance-refresh-overview.html)); nothing in it looks at Raft, so it moves on caught up or not. ")
	p("Terminating is the instance's shutdown: SIGTERM to the agent, which leave_on_terminate turns into a graceful leave, the leader's included (no hand-off first), SIGKILL after %s (systemd's default TimeoutStopSec). ", stopBound)
	p("MaxHealthyPercentage=200 lets AWS replace up to all N at once; this is the kindest batch, one at a time. ")
	p("The refresh with W = 0 runs on the cluster the W = 10 s one ended with when that one recovered (else on a fresh one). After its last step the cluster gets %s to be a healthy cluster of N voters, all new, while the load goes on.\n\n", settleBound)
	table(p, rolls, rollHead, append(slices.Clone(rollRows),
		row{"launch to InService, median (s)", func(r *Roll) string {
			if r.LaunchMedianSeconds == nil {
				return "—"
			}
			return fmt.Sprintf("%.2f", *r.LaunchMedianSeconds)
		}}))
}

func (rep *Report) mdSteady(p printer) {
	var rolls []*Roll
	for _, name := range []string{caseOurs3, caseOurs5} {
		if r := rep.rollCase(name); r != nil && r.Steady != nil {
			rolls = append(rolls, r)
		}
	}
	if len(rolls) == 0 {
		return
	}
	p("## 2. Our roll against the steady state\n\n")
	p("Right after each of our rolls, once the cluster is up to date and the retired servers' processes have exited, the same load on the same cluster, with no roll, for as long as the roll took. Time spent per operation, p50 / p99 / max (ms); the ratio is roll p99 / steady p99. Targets: ratio ≤ %.0f, max ≤ %.0f ms.\n\n", steadyFactor, maxLatencyMS)
	p("| | servers | for (s) | writes, steady | writes, roll | write p99 ratio | consistent reads, steady | consistent reads, roll | read p99 ratio | check-and-sets (steady; roll) |\n|---|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range rolls {
		s := r.Steady
		p("| %s | %d | %.1f | %s | %s | ×%.2f | %s | %s | ×%.2f | %s; %s |\n", r.Case, r.Servers, s.Seconds,
			lat(s.Writes, func(w *Writes) Latency { return w.SpentMS }), lat(r.Writes, func(w *Writes) Latency { return w.SpentMS }), s.WriteP99Ratio,
			readLat(s.Reads), readLat(r.Reads), s.ReadP99Ratio, casLat(s.CAS), casLat(r.CAS))
	}
	p("\n")
	p("At 20 writes/s over a roll of under a minute, a p99 is decided by the slowest ten or so operations, so a few moments decide it. Where they fall, against the roll's steps (seconds after the roll started):\n\n")
	for _, r := range rolls {
		var slow, steps []string
		for _, o := range r.Slowest {
			slow = append(slow, fmt.Sprintf("%.0f ms %s +%.1f", o.MS, o.Kind, o.AtSeconds))
		}
		for _, h := range r.History {
			steps = append(steps, fmt.Sprintf("%s +%.1f", h.Step, h.AtSeconds))
		}
		p("- %s: slowest %s; steps %s\n", r.Case, strings.Join(slow, ", "), strings.Join(steps, ", "))
	}
	p("\n")
}

func readLat(r *Reads) string {
	if r == nil {
		return "—"
	}
	return fmtLat(r.SpentMS)
}

func casLat(c *CAS) string {
	if c == nil {
		return "—"
	}
	return fmtLat(c.LatencyMS)
}

// verdict is the linearizability check's answer for a table cell.
func verdict(l *workload.Linearizability) string {
	switch {
	case l == nil:
		return "—"
	case l.TimedOut:
		return fmt.Sprintf("**unknown**: the check timed out (%s)", checkBound)
	case l.Linearizable:
		return "yes"
	default:
		return "**no**: " + l.Detail
	}
}

func (rep *Report) mdLinearizability(p printer) {
	if !slices.ContainsFunc(rep.Rolls, func(r Roll) bool { return r.Linearizability != nil }) {
		return
	}
	p("## 3. Linearizability\n\n")
	p("Every attempt of every operation above (writes, consistent reads, both halves of each check-and-set, and the writer's final consistent read-back of every key it wrote, acknowledged or not) is recorded with its invoke and return times and checked with [porcupine](https://github.com/anishathalye/porcupine) against a KV model, key by key (internal/linear). An attempt that errored or timed out has an unknown outcome: it may or may not have taken effect, and the check allows both. A lost write is a violation (the read-back misses a write acknowledged before it), and so is a stale read. Each check is bounded by %s.\n\n", checkBound)
	p("| roll | operations checked | of unknown outcome | checked in (s) | linearizable | steady state after it |\n|---|---|---|---|---|---|\n")
	for _, r := range rep.Rolls {
		if r.Linearizability == nil {
			continue
		}
		l := r.Linearizability
		steady := "—"
		if s := r.Steady; s != nil && s.Linearizability != nil {
			steady = fmt.Sprintf("%s (%d operations)", verdict(s.Linearizability), s.Linearizability.Ops)
		}
		p("| %s | %d | %d | %.1f | %s | %s |\n", r.Case, l.Ops, l.Unknown, r.CheckSeconds, mdCell(verdict(l)), steady)
	}
	p("\n")
}

func (rep *Report) mdUpgrade(p printer) {
	rolls := []*Roll{rep.rollCase(caseUpgrade3), rep.rollCase(caseUpgrade5)}
	if !slices.ContainsFunc(rolls, func(r *Roll) bool { return r != nil }) {
		return
	}
	p("## 4. Upgrading Consul\n\n")
	p("Our roll of a fresh cluster whose image A runs an older Consul (`$REHYDRATE_CONSUL_OLD`, which `make bench` builds) to image B, the pinned Consul, under the same load: the servers run mixed versions while it runs. The versions are what each server answers on `GET /v1/agent/self` (Config.Version) before and after; \"mixed\" is whether autopilot listed two versions at once in one of its 200 ms samples (the same samples as the exposure figures) during the roll. ")
	p("The older Consul is v1.22.0 (`make consul-old`), the oldest release that builds from the Go module proxy here: v1.21.5's own `consul/envoyextensions` v0.8.4 is refused, and with `envoyextensions` v0.9.2 and `troubleshoot` v0.8.3 required instead, both pull `consul/sdk` v0.17.1, whose `iptables.Setup` takes an argument no v1.21.x passes (`scripts/tools/consul-old/go.mod`).\n\n")
	table(p, rolls, func(r *Roll) string { return fmt.Sprintf("%d servers", r.Servers) }, append([]row{
		{"from version", func(r *Roll) string { return orDash(r.FromVersion) }},
		{"to version", func(r *Roll) string { return orDash(r.ToVersion) }},
		{"versions seen mixed during the roll", func(r *Roll) string {
			if r.MixedVersions == nil {
				return "—"
			}
			return yesNo(*r.MixedVersions)
		}},
	}, rollRows...))
}

func (rep *Report) mdScale(p printer) {
	r := rep.rollCase(caseScale5)
	if r == nil {
		return
	}
	base := rep.rollCase(caseOurs5)
	p("## 5. Scale: 5 servers with a large KV\n\n")
	p("On the cluster of the 5-server roll above, after its steady state: values of %d KiB written %d at a time under bench/big/ (setup, not timed in the roll), then our roll to a new image under the same load. Peak RSS is each server's VmHWM (/proc/<pid>/status), sampled every second from before the load to the end of the roll.\n\n", scaleValue>>10, scaleWorkers)
	p("| | 0 keys (%s) | %s |\n|---|---|---|\n", caseOurs5, caseScale5)
	cellOf := func(x *Roll, f func(*Roll) string) string {
		if x == nil {
			return "—"
		}
		return mdCell(f(x))
	}
	for _, rw := range []row{
		{"KV data (MB)", func(x *Roll) string {
			if x.DataMB == nil {
				return "0"
			}
			return fmt.Sprintf("%.0f (%d keys)", *x.DataMB, x.Keys)
		}},
		{"load time (s)", func(x *Roll) string {
			if x.LoadSeconds == nil {
				return "—"
			}
			return fmt.Sprintf("%.1f", *x.LoadSeconds)
		}},
		{"roll completed", rollRows[0].f},
		{"roll time (s)", func(x *Roll) string {
			s := fmt.Sprintf("%.1f", x.RollSeconds)
			if x != base && base != nil && base.RollSeconds > 0 {
				s += fmt.Sprintf(" (×%.2f)", x.RollSeconds/base.RollSeconds)
			}
			return s
		}},
		{"catch-up per new server (s)", func(x *Roll) string {
			var v []string
			for _, s := range x.NewServers {
				if s.CatchUpSeconds == nil {
					v = append(v, "never")
				} else {
					v = append(v, fmt.Sprintf("%.1f", *s.CatchUpSeconds))
				}
			}
			return orDash(strings.Join(v, ", "))
		}},
		{"writes ok / failed / lost", rollRows[3].f},
		{"time spent per write p50 / p99 / max (ms)", rollRows[4].f},
		{"time spent per consistent read p50 / p99 / max (ms)", rollRows[6].f},
		{"linearizable", rollRows[8].f},
		{"peak RSS per server, old then new (MB)", func(x *Roll) string {
			var v []string
			for _, s := range x.PeakRSS {
				v = append(v, fmt.Sprintf("%.0f", s.PeakMB))
			}
			return orDash(strings.Join(v, ", "))
		}},
	} {
		p("| %s | %s | %s |\n", rw.label, cellOf(base, rw.f), cellOf(r, rw.f))
	}
	p("\n")
	if base != nil && r.DataMB != nil && base.CatchUpMedianSeconds != nil && r.CatchUpMedianSeconds != nil && *r.DataMB > 0 {
		c0, c1, mb := *base.CatchUpMedianSeconds, *r.CatchUpMedianSeconds, *r.DataMB
		slope := (c1 - c0) / mb
		p("Catch-up grows with the data a new server must receive (a snapshot of the KV, then the log since): measured %.1f s at 0 MB and %.1f s at %.0f MB (medians), %.2f s per 100 MB. ", c0, c1, mb, slope*100)
		if mb < 990 {
			p("Linear from those two points, 1 GB would take about %.0f s per new server, and the roll about %.0f s more than at 0 keys (5 catch-ups). ", c0+slope*1000, 5*slope*1000)
		}
		var peakMB float64
		for _, s := range r.PeakRSS {
			peakMB = max(peakMB, s.PeakMB)
		}
		if peakMB > 0 && mb < 990 {
			need := peakMB * 1000 / mb
			p("Peak RSS grows with the data too: %.0f MB per server at %.0f MB, so about %.1f GB per server at 1 GB, %.0f GB for the %d servers a roll runs at once, against %.1f GiB of RAM here",
				peakMB, mb, need/1000, need*float64(r.Servers+1)/1000, r.Servers+1, rep.Machine.RAMGiB)
			if need*float64(r.Servers+1) > rep.Machine.RAMGiB*(1<<30)/1e6 {
				p(": this machine cannot hold 1 GB on 5 servers, which is why the case loads %.0f MB. ", mb)
			} else {
				p("; it loads %.0f MB to fit the run's time budget. ", mb)
			}
		}
		p("Our roll waits for each catch-up (it retires an old server only after its replacement has been a healthy voter for roll.stabilization), so its time grows by N × the catch-up's growth; an instance refresh does not wait, so with W shorter than the catch-up it removes voters before their replacements can vote.\n\n")
	}
}

func (rep *Report) mdPictures(p printer) {
	if len(rep.Pictures) == 0 {
		return
	}
	p("## 6. Latency over time\n\n")
	p("Every operation of the load (writes, consistent reads, check-and-sets) as a dot: its start, in seconds since the roll started, against the time it took, all its attempts included (log scale, the same on every picture). Failed operations are red crosses. The vertical lines are the roll's steps.\n\n")
	for _, pic := range pictures {
		if r, title := rep.pictured(pic.roll, pic.title); r != nil && slices.Contains(rep.Pictures, r.Case) {
			p("![%s: latency of every operation over time](%s)\n\n", title, pic.file)
		}
	}
}

func (rep *Report) mdHistory(p printer) {
	if !slices.ContainsFunc(rep.Rolls, func(r Roll) bool { return len(r.History) > 0 }) {
		return
	}
	p("Where the rolls' time goes (their steps, seconds after the roll started):\n\n")
	for _, r := range rep.Rolls {
		if len(r.History) == 0 {
			continue
		}
		var steps []string
		for _, h := range r.History {
			s := fmt.Sprintf("%s %s +%.1f", h.Step, h.Instance, h.AtSeconds)
			if r.Kind == "refresh" && h.Detail != "" {
				s += " (" + h.Detail + ")"
			}
			steps = append(steps, s)
		}
		p("- %s: %s\n", r.Case, strings.Join(steps, " · "))
	}
	p("\n")
}

func (rep *Report) mdInvocations(p printer) {
	if len(rep.Invocations) == 0 {
		return
	}
	p("## 7. One handler invocation with nothing to do\n\n")
	p("The cluster of the 3-server roll above, after it (up to date, no roll in progress). Each handler run %d times in a row through the real binary, `-http-addr` pointing at a proxy in front of the client agent that counts requests: spindown with the service watch's payload (`/v1/health/service/consul`), spinup with an event watch payload of one `consul-rehydrate` event without payload (a fresh ID each run; each was checked to be recorded as \"nothing: up to date\"). Each run is forked from a 2 MB launcher that times it (process start included) and reads its `ru_maxrss`: forked from the benchmark itself, Linux would report the benchmark's own 17 MB as the child's peak. The empty Go program shows how low that measurement goes.\n\n", invocations)
	all := append(slices.Clone(rep.Invocations), rep.StartupBaselines...)
	p("| |")
	for _, inv := range rep.Invocations {
		p(" %s |", inv.Handler)
	}
	for _, inv := range rep.StartupBaselines {
		p(" %s (for scale) |", inv.Handler)
	}
	p("\n|---|%s\n", strings.Repeat("---|", len(all)))
	invRow := func(label string, f func(Invocation) string) {
		p("| %s |", label)
		for _, inv := range all {
			p(" %s |", f(inv))
		}
		p("\n")
	}
	invRow("runs", func(i Invocation) string { return fmt.Sprint(i.Runs) })
	invRow("wall time p50 / p95 / max (ms)", func(i Invocation) string {
		return fmt.Sprintf("%.1f / %.1f / %.1f", i.WallMS.P50, i.WallMS.P95, i.WallMS.Max)
	})
	invRow("peak RSS p50 / max (MB)", func(i Invocation) string {
		return fmt.Sprintf("%.1f / %.1f", i.MaxRSSKiB.P50*1024/1e6, i.MaxRSSKiB.Max*1024/1e6)
	})
	invRow("requests to Consul p50 / max", func(i Invocation) string { return fmt.Sprintf("%.0f / %.0f", i.Requests.P50, i.Requests.Max) })
	p("\n")
	if len(rep.StartupBaselines) > 0 {
		p("For scale: an empty Go program, and `spindown -h` (process start, every package's init, flag parsing; exits before reading its configuration or talking to Consul), run the same way.\n\n")
	}
	p("Where the time goes (a profile taken while this benchmark was developed: `perf record` of `spindown -h` and `spinup -h`, `GODEBUG=inittrace=1`, and the proxy's timestamps of each request; the figures are from a loaded machine, so read them as shares):\n\n")
	p("- **Start-up.** Both handlers compiled a dozen regular expressions in package init (a bounded repetition such as `{0,62}` compiles one copy of its class per repeat): 5 859 allocations in spindown's init and 18 875 in spinup's. They now compile none a run with nothing to do uses (config's name checks are hand-written grammars, the renderer's and deploy's compile on first use): 875 and 6 324 (`GODEBUG=inittrace=1` of `spindown -h` and `spinup -h`, summed, before and after). The handlers are built static (`CGO_ENABLED=0`), which spares each run the dynamic loader (11%% of `spindown -h`'s samples).\n")
	p("- **spindown** then costs an empty Go program's start, the init of the ~100 packages it needs (the HCL parser, hclog, x509, HTTP/2), reading and checking its configuration (~1 ms), decoding the service watch's payload (~1–2 ms), and one KV read (~1.5 ms).\n")
	p("- **spinup** is a 20 MB binary that links the AWS SDK for the aws provider (whose package inits, endpoint tables included, are some 9%% of its start-up samples; Go runs every linked package's init), and it makes 4 requests: a read transaction (roll record, event, bad images, ~2 ms), autopilot's health (~1.5 ms), a consistent catalog read (~2 ms), and the transaction that records the event as handled (~7 ms: a raft commit, fsynced on every server). That record is what keeps a replayed event, which a watch's restart delivers again, from starting a roll later; it cannot go. Together its requests take 8–14 ms, so spinup stays above 20 ms unless the AWS provider moves out of the binary.\n\n")
}

func orDash(s string) string {
	if s == "" {
		return "—"
	}
	return s
}
