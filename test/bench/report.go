package main

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"slices"
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
	// Pictures: the rolls whose latency-over-time SVG was drawn beside BENCHMARKS.md.
	Pictures []string `json:"pictures"`
	Targets  []Target `json:"targets"`
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

// Roll is one roll: ours (through the watches) or refresh (an Auto Scaling instance
// refresh: launch, InService, warmup, graceful terminate, per old server).
type Roll struct {
	// Case names it: ours-3, ours-3-100000keys, refresh-3-w10, upgrade-5, scale-5...
	Case        string   `json:"case"`
	Kind        string   `json:"kind"` // "ours" or "refresh"
	Servers     int      `json:"servers"`
	Target      string   `json:"target_image"`
	Keys        int      `json:"keys"`              // keys loaded before the roll
	DataMB      *float64 `json:"data_mb,omitempty"` // scale: KV bytes loaded, 10^6
	LoadSeconds *float64 `json:"load_seconds,omitempty"`
	// WarmupSeconds (refresh only): the instance warmup.
	WarmupSeconds *float64 `json:"warmup_seconds,omitempty"`
	// Completed: ours, the roll record says done and every server runs the target;
	// refresh, every old server was replaced and terminated.
	Completed   bool    `json:"completed"`
	RollSeconds float64 `json:"roll_seconds"`
	// OldGoneSeconds (ours only): when the last retired server's process had exited
	// too (the roll is done once it has left raft; it then drains for a few seconds).
	OldGoneSeconds *float64 `json:"old_gone_seconds,omitempty"`
	// Recovered (refresh only): a healthy cluster of N voters, all new, within 30 s of
	// the last old server's termination.
	Recovered             *bool    `json:"recovered,omitempty"`
	RecoveredAfterSeconds *float64 `json:"recovered_after_seconds,omitempty"`
	Writes                *Writes  `json:"writes"`
	Reads                 *Reads   `json:"reads"`
	CAS                   *CAS     `json:"cas"`
	// MaxWriteMS is the longest write, a failed one counting the time spent on all
	// its attempts.
	MaxWriteMS float64 `json:"max_write_ms"`
	// Linearizable: every attempt of every operation, checked against a KV model
	// (porcupine); null when not checked.
	Linearizable    *bool                     `json:"linearizable"`
	Linearizability *workload.Linearizability `json:"linearizability"`
	CheckSeconds    float64                   `json:"check_seconds"`
	LeaderChanges   int                       `json:"leader_changes"`
	NoLeaderSeconds float64                   `json:"no_leader_seconds"`
	// Exposure: the fewest healthy voters and lowest failure tolerance autopilot
	// reported during the roll, and how long it had fewer than N healthy voters.
	Exposure   *Exposure   `json:"exposure,omitempty"`
	NewServers []NewServer `json:"new_servers"`
	// CaughtUp counts the new servers ever seen healthy voters; the catch-up figures
	// are over those.
	CaughtUp             int      `json:"caught_up"`
	CatchUpMedianSeconds *float64 `json:"catch_up_median_seconds"`
	CatchUpMaxSeconds    *float64 `json:"catch_up_max_seconds"`
	// LaunchMedianSeconds (refresh only): median launch-to-InService.
	LaunchMedianSeconds *float64 `json:"launch_median_seconds,omitempty"`
	History             []Step   `json:"history,omitempty"` // the roll's steps
	// Steady (our 3- and 5-server rolls): the same load on the same cluster, no roll,
	// as long as the roll took; P99RatioToSteady is the larger of roll p99 / steady
	// p99 for writes and for consistent reads.
	Steady           *Steady  `json:"steady,omitempty"`
	P99RatioToSteady *float64 `json:"p99_ratio_to_steady,omitempty"`
	// FromVersion and ToVersion (upgrade rolls): what every server reported before
	// and after (GET /v1/agent/self, Config.Version); MixedVersions, whether autopilot
	// listed more than one version at once during the roll.
	FromVersion   string `json:"from_version,omitempty"`
	ToVersion     string `json:"to_version,omitempty"`
	MixedVersions *bool  `json:"mixed_versions,omitempty"`
	// PeakRSS (scale): each server's peak resident memory (VmHWM) while the data was
	// loaded and rolled.
	PeakRSS []ServerRSS `json:"peak_rss,omitempty"`
	// Slowest: the 12 slowest operations of the roll, to tell a p99 made by the
	// roll's steps (clustered at them) from one made by the machine (spread out).
	Slowest []SlowOp `json:"slowest,omitempty"`
	Error   string   `json:"error,omitempty"`

	// For the latency-over-time picture: every operation, and when the roll started.
	samples []workload.Sample
	start   time.Time
	// versionsAtOnce: the most Consul versions autopilot listed in one sample.
	versionsAtOnce int
}

// Steady is the same load with no roll.
type Steady struct {
	Seconds         float64                   `json:"seconds"`
	Writes          *Writes                   `json:"writes"`
	Reads           *Reads                    `json:"reads"`
	CAS             *CAS                      `json:"cas"`
	Linearizable    *bool                     `json:"linearizable"`
	Linearizability *workload.Linearizability `json:"linearizability"`
	LeaderChanges   int                       `json:"leader_changes"`
	// The roll's p99 over the steady state's, for writes and consistent reads (time
	// spent per operation, failed ones included).
	WriteP99Ratio float64 `json:"write_p99_ratio"`
	ReadP99Ratio  float64 `json:"read_p99_ratio"`
}

// CAS is what the check-and-set load saw: a conflict is an answer (another
// read-modify-write got in first), a failure is every attempt erroring.
type CAS struct {
	OK        int     `json:"ok"`
	Conflicts int     `json:"conflicts"`
	Failed    int     `json:"failed"`
	LatencyMS Latency `json:"latency_ms"`
}

// ServerRSS is one server's peak resident memory.
type ServerRSS struct {
	Instance string  `json:"instance"`
	Image    string  `json:"image"`
	PeakMB   float64 `json:"peak_mb"`
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
	Instance                 string   `json:"instance"`
	LaunchToInServiceSeconds *float64 `json:"launch_to_in_service_seconds,omitempty"` // refresh only
	HealthySeconds           *float64 `json:"healthy_seconds"`                        // first seen healthy
	CatchUpSeconds           *float64 `json:"catch_up_seconds"`                       // first seen healthy and a voter
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
// SlowOp is one operation of the load: its start, in seconds after the roll
// started, and the time it took, all its attempts included.
type SlowOp struct {
	AtSeconds float64 `json:"at_seconds"`
	Kind      string  `json:"kind"`
	MS        float64 `json:"ms"`
	Failed    bool    `json:"failed,omitempty"`
}

// slowest returns the n slowest of samples, timed from start.
func slowest(samples []workload.Sample, start time.Time, n int) []SlowOp {
	s := slices.Clone(samples)
	slices.SortFunc(s, func(a, b workload.Sample) int { return cmp.Compare(b.Took, a.Took) })
	var out []SlowOp
	for _, x := range s[:min(n, len(s))] {
		out = append(out, SlowOp{AtSeconds: round1(x.Start.Sub(start).Seconds()), Kind: x.Kind, MS: round1(float64(x.Took) / 1e6), Failed: x.Failed})
	}
	return out
}

func (r *Roll) summarize() {
	if !r.start.IsZero() && len(r.samples) > 0 {
		r.Slowest = slowest(r.samples, r.start, 12)
	}
	var catchUp, launch []float64
	for _, s := range r.NewServers {
		if s.CatchUpSeconds != nil {
			catchUp = append(catchUp, *s.CatchUpSeconds)
		}
		if s.LaunchToInServiceSeconds != nil {
			launch = append(launch, *s.LaunchToInServiceSeconds)
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
		s += fmt.Sprintf(", reads ok %d failed %d, p99 %.0fms max %.0fms", rd.OK, rd.Failed, rd.SpentMS.P99, rd.SpentMS.Max)
	}
	if c := r.CAS; c != nil {
		s += fmt.Sprintf(", cas ok %d conflicts %d failed %d", c.OK, c.Conflicts, c.Failed)
	}
	if l := r.Linearizability; l != nil {
		s += fmt.Sprintf(", linearizable %v (%d ops, %d unknown, checked in %.1fs)", l.Linearizable, l.Ops, l.Unknown, r.CheckSeconds)
	}
	s += fmt.Sprintf(", %d leader change(s), %.1fs without a leader, %d/%d new servers healthy voters",
		r.LeaderChanges, r.NoLeaderSeconds, r.CaughtUp, len(r.NewServers))
	if r.Recovered != nil {
		s += fmt.Sprintf(", recovered %v", *r.Recovered)
	}
	return s
}

func lost(w *Writes) string {
	if w.Lost == nil {
		return "unknown"
	}
	return fmt.Sprint(*w.Lost)
}

func yesNo(b bool) string { return map[bool]string{true: "yes", false: "**no**"}[b] }

func lat(w *Writes, f func(*Writes) Latency) string {
	if w == nil {
		return "—"
	}
	return fmtLat(f(w))
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
