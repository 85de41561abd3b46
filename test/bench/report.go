package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/consul-rehydrate/consul-rehydrate/internal/workload"
)

// Report is everything a run measured; benchmarks.json is its JSON, BENCHMARKS.md
// its rendering. Field names are stable.
type Report struct {
	Command       string       `json:"command"`
	Commit        string       `json:"commit"` // git describe of the tree measured
	Date          string       `json:"date"`
	TotalSeconds  float64      `json:"total_seconds"`
	Machine       Machine      `json:"machine"`
	ConsulVersion string       `json:"consul_version"`
	Rolls         []Roll       `json:"rolls"`
	Invocations   []Invocation `json:"invocations"`
	// StartupBaselines, for scale: an empty Go program, and `spindown -h`.
	StartupBaselines []Invocation `json:"startup_baselines"`
	Planner          *Planner     `json:"planner"`
	Targets          []Target     `json:"targets"`
	// Conditions: the machine's load when each case started and ended.
	Conditions []Condition `json:"conditions"`
	Errors     []string    `json:"errors,omitempty"`
}

// Machine is the machine the run was on.
type Machine struct {
	CPU       string  `json:"cpu"`
	Cores     int     `json:"cores"`
	RAMGiB    float64 `json:"ram_gib"`
	Kernel    string  `json:"kernel"`
	GoVersion string  `json:"go_version"`
}

// Roll is one roll: ours (through the watches) or naive (kill, launch, wait for HTTP).
type Roll struct {
	Kind        string   `json:"kind"` // "ours" or "naive"
	Servers     int      `json:"servers"`
	Keys        int      `json:"keys"` // ~1 KB keys loaded before the roll
	LoadSeconds *float64 `json:"load_seconds,omitempty"`
	// Completed: ours, the roll record says done and every server runs B; naive, every
	// replacement answered HTTP.
	Completed   bool    `json:"completed"`
	RollSeconds float64 `json:"roll_seconds"`
	// OldGoneSeconds (ours only): when the last retired server's process had exited
	// too (the roll is done once it has left raft; it then drains for a few seconds).
	OldGoneSeconds *float64 `json:"old_gone_seconds,omitempty"`
	// Recovered (naive only): a healthy cluster of N voters, all on B, within 30 s of
	// the last replacement answering.
	Recovered             *bool       `json:"recovered,omitempty"`
	RecoveredAfterSeconds *float64    `json:"recovered_after_seconds,omitempty"`
	Writes                *Writes     `json:"writes"`
	Reads                 *Reads      `json:"reads"`
	LeaderChanges         int         `json:"leader_changes"`
	NoLeaderSeconds       float64     `json:"no_leader_seconds"`
	NewServers            []NewServer `json:"new_servers"`
	// CaughtUp counts the new servers ever seen healthy voters; the catch-up figures
	// are over those.
	CaughtUp             int      `json:"caught_up"`
	CatchUpMedianSeconds *float64 `json:"catch_up_median_seconds"`
	CatchUpMaxSeconds    *float64 `json:"catch_up_max_seconds"`
	// LaunchMedianSeconds (naive only): median launch-to-HTTP-answer of the replacements.
	LaunchMedianSeconds *float64 `json:"launch_median_seconds,omitempty"`
	History             []Step   `json:"history,omitempty"` // ours: the roll record's steps
	Error               string   `json:"error,omitempty"`
}

// Writes is what the writer saw. Latency is over acknowledged writes; Spent over
// every write, a failed one counting the time spent on all its attempts.
type Writes struct {
	OK          int     `json:"ok"`
	Failed      int     `json:"failed"`
	Lost        *int    `json:"lost"` // null when the read-back failed (no leader)
	LostUnknown string  `json:"lost_unknown,omitempty"`
	LatencyMS   Latency `json:"latency_ms"`
	SpentMS     Latency `json:"spent_ms"`
}

// Reads is what the consistent reader saw.
type Reads struct {
	OK        int     `json:"ok"`
	Failed    int     `json:"failed"`
	LatencyMS Latency `json:"latency_ms"`
	SpentMS   Latency `json:"spent_ms"`
}

// Latency in milliseconds.
type Latency struct {
	P50 float64 `json:"p50"`
	P99 float64 `json:"p99"`
	Max float64 `json:"max"`
}

// NewServer is one server launched on B; times are from its launch.
type NewServer struct {
	Instance              string   `json:"instance"`
	LaunchToAnswerSeconds *float64 `json:"launch_to_answer_seconds,omitempty"` // naive only
	HealthySeconds        *float64 `json:"healthy_seconds"`                    // first seen healthy
	CatchUpSeconds        *float64 `json:"catch_up_seconds"`                   // first seen healthy and a voter
}

// Step is one entry of the roll record, at seconds after the event was fired.
type Step struct {
	AtSeconds float64 `json:"at_seconds"`
	Step      string  `json:"step"`
	Instance  string  `json:"instance,omitempty"`
	Detail    string  `json:"detail"`
}

// Invocation summarizes the runs of one handler with nothing to do.
type Invocation struct {
	Handler   string `json:"handler"`
	Runs      int    `json:"runs"`
	WallMS    Spread `json:"wall_ms"`
	MaxRSSKiB Spread `json:"max_rss_kib"`
	Requests  Spread `json:"requests"`
}

// Spread is a distribution over runs.
type Spread struct {
	P50 float64 `json:"p50"`
	P95 float64 `json:"p95"`
	Max float64 `json:"max"`
}

// Planner is BenchmarkNext, the median of its runs.
type Planner struct {
	Runs        int     `json:"runs"`
	NsPerOp     float64 `json:"ns_per_op"`
	BytesPerOp  float64 `json:"bytes_per_op"`
	AllocsPerOp float64 `json:"allocs_per_op"`
}

// Condition is the machine's load at one point of the run.
type Condition struct {
	Point             string  `json:"point"`
	LoadAvg1m         float64 `json:"load_avg_1m"`
	OtherConsulAgents int     `json:"other_consul_agents"`
}

// Target is one target checked against the figures: Measured compared with Limit
// as Target says (null when there is no figure).
type Target struct {
	Name     string   `json:"name"`
	Target   string   `json:"target"`
	Value    string   `json:"value"`
	Measured *float64 `json:"measured"`
	Limit    *float64 `json:"limit"`
	Met      bool     `json:"met"`
}

func (r Roll) err() error {
	if r.Error == "" {
		return nil
	}
	return errors.New(r.Error)
}

// summarize fills the catch-up and launch figures from NewServers.
func (r *Roll) summarize() {
	var catchUp, launch []float64
	for _, s := range r.NewServers {
		if s.CatchUpSeconds != nil {
			catchUp = append(catchUp, *s.CatchUpSeconds)
		}
		if s.LaunchToAnswerSeconds != nil {
			launch = append(launch, *s.LaunchToAnswerSeconds)
		}
	}
	r.CaughtUp = len(catchUp)
	if len(catchUp) > 0 {
		r.CatchUpMedianSeconds, r.CatchUpMaxSeconds = ptr(round1(median(catchUp))), ptr(pct(catchUp, 100))
	}
	if len(launch) > 0 {
		r.LaunchMedianSeconds = ptr(round2(median(launch)))
	}
}

func (r Roll) oneLine() string {
	s := fmt.Sprintf("roll %.1fs (completed %v)", r.RollSeconds, r.Completed)
	if w := r.Writes; w != nil {
		s += fmt.Sprintf(", writes ok %d failed %d lost %s, max %.0fms (spent max %.0fms)", w.OK, w.Failed, lost(w), w.LatencyMS.Max, w.SpentMS.Max)
	}
	if rd := r.Reads; rd != nil {
		s += fmt.Sprintf(", reads ok %d failed %d", rd.OK, rd.Failed)
	}
	return s + fmt.Sprintf(", %d leader change(s), %.1fs without a leader, %d/%d new servers healthy voters",
		r.LeaderChanges, r.NoLeaderSeconds, r.CaughtUp, len(r.NewServers))
}

func lost(w *Writes) string {
	if w.Lost == nil {
		return "unknown"
	}
	return fmt.Sprint(*w.Lost)
}

func (rep *Report) roll(kind string, servers, keys int) *Roll {
	for i := range rep.Rolls {
		if r := &rep.Rolls[i]; r.Kind == kind && r.Servers == servers && r.Keys == keys {
			return r
		}
	}
	return nil
}

// Targets: the bound on our roll time is N × (launch + stabilization + 5 s).
const stabilization = 10 * time.Second

// targets checks the figures against the project's targets.
func targets(rep *Report) []Target {
	var out []Target
	for _, r := range rep.Rolls {
		if r.Kind != "ours" {
			continue
		}
		t := Target{Name: fmt.Sprintf("%s: no failed or lost write", rollName(r)), Target: "writes_failed + writes_lost = 0", Limit: ptr(0.0)}
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
	for _, n := range []int{3, 5} {
		ours, naive := rep.roll("ours", n, 0), rep.roll("naive", n, 0)
		if ours == nil || naive == nil || ours.Writes == nil || naive.Writes == nil {
			continue
		}
		o, nv := ours.Writes.SpentMS.Max, naive.Writes.SpentMS.Max
		t := Target{Name: fmt.Sprintf("%d servers: max write latency at most 1/5 of the naive roll's", n), Target: "naive max / ours max ≥ 5", Limit: ptr(5.0)}
		t.Value = fmt.Sprintf("ours %.0f ms, naive %.0f ms: ×%s", o, nv, fmtRatio(ratio(nv, o)))
		if naive.Writes.Failed > 0 {
			t.Value += fmt.Sprintf(" (the naive roll failed %d writes rather than slowing them; a failed write counts as the time spent on all its attempts)", naive.Writes.Failed)
		}
		if o > 0 {
			t.Measured = ptr(round1(nv / o))
		}
		t.Met = o > 0 && nv/o >= 5
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
	for _, r := range rep.Rolls {
		if r.Kind != "ours" {
			continue
		}
		t := Target{Name: fmt.Sprintf("%s: roll time", rollName(r)), Target: "≤ N × (launch + stabilization + 5 s)"}
		naive := rep.roll("naive", r.Servers, 0)
		if naive == nil || naive.LaunchMedianSeconds == nil {
			t.Value = "no naive launch time to compare with"
			out = append(out, t)
			continue
		}
		bound := float64(r.Servers) * (*naive.LaunchMedianSeconds + stabilization.Seconds() + 5)
		t.Value = fmt.Sprintf("%.1f s vs %d × (%.2f + %.0f + 5) = %.1f s: ×%.2f", r.RollSeconds, r.Servers, *naive.LaunchMedianSeconds, stabilization.Seconds(), bound, r.RollSeconds/bound)
		t.Measured, t.Limit = ptr(r.RollSeconds), ptr(round1(bound))
		t.Met = r.Completed && r.RollSeconds <= bound
		out = append(out, t)
	}
	return out
}

func rollName(r Roll) string {
	s := fmt.Sprintf("%s roll of %d", r.Kind, r.Servers)
	if r.Keys > 0 {
		s += fmt.Sprintf(", %d keys", r.Keys)
	}
	return s
}

// write writes both reports.
func (rep *Report) write(mdPath, jsonPath string) error {
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
	p("These machines are noisy (shared, 2 cores for up to 6 Consul agents, the handlers and the load): compare the ratios within one run, not absolute figures across runs.")
	others, peak := 0, 0.0
	for _, c := range rep.Conditions {
		others, peak = max(others, c.OtherConsulAgents), max(peak, c.LoadAvg1m)
	}
	p(" Highest 1-minute load average seen at the start or end of a case: %.1f.", peak)
	if others > 0 {
		p(" **Up to %d Consul agents of something else (tests?) were running during this run; its figures are noisier than they should be.**", others)
	}
	p("\n\n")

	type col struct{ ours, naive *Roll }
	var cols []col
	for _, n := range []int{3, 5} {
		if o, nv := rep.roll("ours", n, 0), rep.roll("naive", n, 0); o != nil || nv != nil {
			cols = append(cols, col{o, nv})
		}
	}
	if len(cols) > 0 {
		p("## 1–2. A roll under load: ours and the naive roll\n\n")
		p("Each roll starts from a fresh cluster on image A and ends with every server on image B. Load, through the client agent, from %s before the roll to its end: %d writes/s of new keys and %d consistent reads/s of a key written before the roll, each with %d attempts of at most %s, 100 ms apart. ", warmUp, rate, rate, attempts, opTimeout)
		p("**Ours**: the real handlers, run by the agents' watches (roll.stabilization 10s). ")
		p("**Naive** (an ASG instance refresh with MinHealthyPercentage=100), on an identical cluster without watches: for each old server in launch order, SIGKILL it (no leave), launch a replacement, and wait only until it answers `GET /v1/agent/self`; its roll ends when the last replacement answers, and its cluster then gets %s to be a healthy cluster of N voters again while the load goes on. ", settleBound)
		p("Catch-up: from a new server's launch to the first %s sample in which autopilot lists it healthy and a voter. \"spent\" counts every operation, a failed one with the time spent on all its attempts.\n\n", sampleEvery)
		p("|")
		for _, c := range cols {
			n := c.ours
			if n == nil {
				n = c.naive
			}
			p(" | ours, %d servers | naive, %d servers | naive / ours", n.Servers, n.Servers)
		}
		p(" |\n|---|")
		for range cols {
			p("---|---|---|")
		}
		p("\n")
		row := func(label string, f func(*Roll) string, ratioOf func(*Roll) float64) {
			p("| %s", label)
			for _, c := range cols {
				p(" | %s | %s | ", cell(c.ours, f), cell(c.naive, f))
				if ratioOf != nil && c.ours != nil && c.naive != nil {
					if o, nv := ratioOf(c.ours), ratioOf(c.naive); o > 0 && nv > 0 {
						p("×%s", fmtRatio(nv/o))
					} else {
						p("—")
					}
				} else {
					p("—")
				}
			}
			p(" |\n")
		}
		row("roll completed", func(r *Roll) string { return yesNo(r.Completed) }, nil)
		row("roll time (s)", func(r *Roll) string { return fmt.Sprintf("%.1f", r.RollSeconds) }, func(r *Roll) float64 { return r.RollSeconds })
		row("retired servers' processes all exited (s)", func(r *Roll) string {
			if r.OldGoneSeconds == nil {
				return "—"
			}
			return fmt.Sprintf("%.1f", *r.OldGoneSeconds)
		}, nil)
		row("healthy cluster of N voters again after it", func(r *Roll) string {
			switch {
			case r.Kind == "ours":
				return yesNo(r.Completed) + " (when done)"
			case r.Recovered == nil:
				return "—"
			case *r.Recovered:
				return fmt.Sprintf("yes, after %.1f s", *r.RecoveredAfterSeconds)
			default:
				return fmt.Sprintf("**no**, not within %s", settleBound)
			}
		}, nil)
		row("writes ok / failed / lost", func(r *Roll) string {
			if r.Writes == nil {
				return "—"
			}
			return fmt.Sprintf("%d / %d / %s", r.Writes.OK, r.Writes.Failed, lost(r.Writes))
		}, func(r *Roll) float64 { return float64(writeField(r, func(w *Writes) int { return w.Failed })) })
		// No ratio: the naive roll's acknowledged writes are mostly those before it.
		row("acknowledged write latency p50 / p99 / max (ms)", func(r *Roll) string { return lat(r.Writes, func(w *Writes) Latency { return w.LatencyMS }) }, nil)
		row("time spent per write p50 / p99 / max (ms)", func(r *Roll) string { return lat(r.Writes, func(w *Writes) Latency { return w.SpentMS }) },
			func(r *Roll) float64 { return latMax(r.Writes, func(w *Writes) Latency { return w.SpentMS }) })
		row("consistent reads ok / failed", func(r *Roll) string {
			if r.Reads == nil {
				return "—"
			}
			return fmt.Sprintf("%d / %d", r.Reads.OK, r.Reads.Failed)
		}, func(r *Roll) float64 {
			if r.Reads == nil {
				return 0
			}
			return float64(r.Reads.Failed)
		})
		row("time spent per read p50 / p99 / max (ms)", func(r *Roll) string {
			if r.Reads == nil {
				return "—"
			}
			return fmtLat(r.Reads.SpentMS)
		}, func(r *Roll) float64 {
			if r.Reads == nil {
				return 0
			}
			return r.Reads.SpentMS.Max
		})
		row("leader changes", func(r *Roll) string { return fmt.Sprint(r.LeaderChanges) }, func(r *Roll) float64 { return float64(r.LeaderChanges) })
		row("time without a leader (s)", func(r *Roll) string { return fmt.Sprintf("%.1f", r.NoLeaderSeconds) }, func(r *Roll) float64 { return r.NoLeaderSeconds })
		row("new servers that became healthy voters", func(r *Roll) string { return fmt.Sprintf("%d of %d", r.CaughtUp, len(r.NewServers)) }, nil)
		row("catch-up median / max (s)", catchUp, func(r *Roll) float64 { return deref(r.CatchUpMedianSeconds) })
		row("launch to HTTP answer, median (s)", func(r *Roll) string {
			if r.LaunchMedianSeconds == nil {
				return "—"
			}
			return fmt.Sprintf("%.2f", *r.LaunchMedianSeconds)
		}, nil)
		p("\n")

	}
	if slices.ContainsFunc(rep.Rolls, func(r Roll) bool { return len(r.History) > 0 }) {
		p("Where our rolls' time goes (the roll record's steps, seconds after the event was fired):\n\n")
		for _, r := range rep.Rolls {
			if r.Kind != "ours" || len(r.History) == 0 {
				continue
			}
			var steps []string
			for _, h := range r.History {
				steps = append(steps, fmt.Sprintf("%s %s +%.1f", h.Step, h.Instance, h.AtSeconds))
			}
			p("- %s: %s\n", rollName(r), strings.Join(steps, " · "))
		}
		p("\n")

	}
	base := rep.roll("ours", 3, 0)
	if slices.ContainsFunc(rep.Rolls, func(r Roll) bool { return r.Kind == "ours" && r.Servers == 3 }) {
		p("## 3. Our roll as the data grows (3 servers)\n\n")
		p("Keys of ~1 KB loaded before the roll (KV transactions of 64 operations, 4 at a time; setup, not part of the roll). Same load as above during the roll. The 0-key row is the 3-server roll above.\n\n")
		p("| keys | load (s) | roll time (s) | vs 0 keys | catch-up median / max (s) | first healthy, median (s) | writes failed / lost |\n|---|---|---|---|---|---|---|\n")
		for _, keys := range []int{0, 10_000, 100_000} {
			r := rep.roll("ours", 3, keys)
			if r == nil {
				continue
			}
			vs := "—"
			if base != nil && keys > 0 && base.RollSeconds > 0 {
				vs = fmt.Sprintf("×%.2f", r.RollSeconds/base.RollSeconds)
			}
			var healthy []float64
			for _, s := range r.NewServers {
				if s.HealthySeconds != nil {
					healthy = append(healthy, *s.HealthySeconds)
				}
			}
			h := "—"
			if len(healthy) > 0 {
				h = fmt.Sprintf("%.1f", median(healthy))
			}
			wf := "—"
			if r.Writes != nil {
				wf = fmt.Sprintf("%d / %s", r.Writes.Failed, lost(r.Writes))
			}
			load := "—"
			if r.LoadSeconds != nil {
				load = fmt.Sprintf("%.1f", *r.LoadSeconds)
			}
			p("| %d | %s | %.1f%s | %s | %s | %s | %s |\n", keys, load, r.RollSeconds, map[bool]string{true: "", false: " (not completed)"}[r.Completed], vs, catchUp(r), h, wf)
		}
		p("\n")

	}
	if len(rep.Invocations) > 0 {
		p("## 4. One handler invocation with nothing to do\n\n")
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
	}
	if pl := rep.Planner; pl != nil {
		p("Planner, `go test -run '^$' -bench BenchmarkNext -benchmem -count %d ./internal/plan` (median of %d): %.0f ns/op, %.0f B/op, %.0f allocs/op.\n\n", pl.Runs, pl.Runs, pl.NsPerOp, pl.BytesPerOp, pl.AllocsPerOp)
	}

	p("## Targets\n\n| target | bound | figures | |\n|---|---|---|---|\n")
	for _, t := range rep.Targets {
		p("| %s | %s | %s | %s |\n", t.Name, t.Target, t.Value, map[bool]string{true: "met", false: "**missed**"}[t.Met])
	}
	if len(rep.Errors) > 0 {
		p("\n## Errors\n\n")
		for _, e := range rep.Errors {
			p("- %s\n", strings.ReplaceAll(e, "\n", " "))
		}
	}
	return b.String()
}

func cell(r *Roll, f func(*Roll) string) string {
	if r == nil {
		return "—"
	}
	return f(r)
}

func yesNo(b bool) string { return map[bool]string{true: "yes", false: "**no**"}[b] }

func writeField(r *Roll, f func(*Writes) int) int {
	if r.Writes == nil {
		return 0
	}
	return f(r.Writes)
}

func lat(w *Writes, f func(*Writes) Latency) string {
	if w == nil {
		return "—"
	}
	return fmtLat(f(w))
}

func latMax(w *Writes, f func(*Writes) Latency) float64 {
	if w == nil {
		return 0
	}
	return f(w).Max
}

func fmtLat(l Latency) string { return fmt.Sprintf("%.0f / %.0f / %.0f", l.P50, l.P99, l.Max) }

func catchUp(r *Roll) string {
	if r.CatchUpMedianSeconds == nil {
		return "—"
	}
	return fmt.Sprintf("%.1f / %.1f", *r.CatchUpMedianSeconds, *r.CatchUpMaxSeconds)
}

func deref(f *float64) float64 {
	if f == nil {
		return 0
	}
	return *f
}

// fmtRatio prints a ratio with two significant digits or so.
func fmtRatio(r float64) string {
	switch {
	case r >= 10:
		return fmt.Sprintf("%.0f", r)
	case r >= 1:
		return fmt.Sprintf("%.1f", r)
	default:
		return fmt.Sprintf("%.2f", r)
	}
}

func ratio(a, b float64) float64 {
	if b == 0 {
		return math.Inf(1)
	}
	return a / b
}

func ms(p workload.Percentiles) Latency {
	return Latency{P50: msOf(p.P50), P99: msOf(p.P99), Max: msOf(p.Max)}
}

func msOf(d time.Duration) float64 { return round1(float64(d.Microseconds()) / 1000) }

func round1(f float64) float64 { return math.Round(f*10) / 10 }
func round2(f float64) float64 { return math.Round(f*100) / 100 }

func ptr[T any](v T) *T { return &v }

// pct returns the q-th percentile (nearest rank, rounded down; 100 is the max) of v,
// 0 for none.
func pct(v []float64, q int) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	return s[min(len(s)*q/100, len(s)-1)]
}

// median is the middle value, or the mean of the two middle ones.
func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}
