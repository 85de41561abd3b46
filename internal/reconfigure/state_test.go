package reconfigure

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var t0 = time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)

const (
	probation = 5 * time.Minute
	expect    = 10 * time.Minute
)

func at(d time.Duration) time.Time { return t0.Add(d) }

func ptr(t time.Time) *time.Time { return &t }

// The instance keys of the tests: node/service-id.
const (
	a = "n1/web-1"
	b = "n2/web-2"
	c = "n3/web-3"
)

func TestObserve(t *testing.T) {
	tests := []struct {
		name    string
		prev    State
		service string
		healthy []string
		now     time.Time
		want    State
	}{
		{
			name:    "first observation: every healthy instance starts its probation now",
			service: "web", healthy: []string{a, b}, now: t0,
			want: State{Service: "web", Healthy: map[string]time.Time{a: t0, b: t0}, Seen: t0},
		},
		{
			name:    "first observation of none: gone since now",
			service: "web", healthy: nil, now: t0,
			want: State{Service: "web", Healthy: map[string]time.Time{}, GoneSince: ptr(t0), Seen: t0},
		},
		{
			name:    "an instance that stays keeps its since; a new one starts now",
			prev:    State{Service: "web", Healthy: map[string]time.Time{a: at(-time.Hour)}, Seen: at(-time.Hour)},
			service: "web", healthy: []string{a, b}, now: t0,
			want: State{Service: "web", Healthy: map[string]time.Time{a: at(-time.Hour), b: t0}, Seen: t0},
		},
		{
			name:    "an instance that leaves within its probation is a flap",
			prev:    State{Service: "web", Healthy: map[string]time.Time{a: at(-time.Hour), b: at(-2 * time.Minute)}, Seen: at(-2 * time.Minute)},
			service: "web", healthy: []string{a}, now: t0,
			want: State{Service: "web", Healthy: map[string]time.Time{a: at(-time.Hour)}, Seen: t0,
				Flaps: []Flap{{Instance: b, Appeared: at(-2 * time.Minute), Left: t0}}},
		},
		{
			name: "instances that leave together flap in key order, after the older flaps",
			prev: State{Service: "web", Healthy: map[string]time.Time{c: at(-time.Minute), b: at(-time.Minute), a: at(-time.Hour)}, Seen: at(-time.Minute),
				Flaps: []Flap{{Instance: "n9/web-9", Appeared: at(-4 * time.Minute), Left: at(-3 * time.Minute)}}},
			service: "web", healthy: []string{a}, now: t0,
			want: State{Service: "web", Healthy: map[string]time.Time{a: at(-time.Hour)}, Seen: t0,
				Flaps: []Flap{
					{Instance: "n9/web-9", Appeared: at(-4 * time.Minute), Left: at(-3 * time.Minute)},
					{Instance: b, Appeared: at(-time.Minute), Left: t0},
					{Instance: c, Appeared: at(-time.Minute), Left: t0},
				}},
		},
		{
			name:    "an instance that leaves just at the end of its probation is no flap",
			prev:    State{Service: "web", Healthy: map[string]time.Time{a: at(-time.Hour), b: at(-probation)}, Seen: at(-probation)},
			service: "web", healthy: []string{a}, now: t0,
			want: State{Service: "web", Healthy: map[string]time.Time{a: at(-time.Hour)}, Seen: t0},
		},
		{
			name: "a flap is kept for a probation after it left, then dropped",
			prev: State{Service: "web", Healthy: map[string]time.Time{a: at(-time.Hour)}, Seen: at(-time.Minute), Flaps: []Flap{
				{Instance: b, Appeared: at(-10 * time.Minute), Left: at(-probation)},
				{Instance: c, Appeared: at(-5 * time.Minute), Left: at(-probation + time.Second)},
			}},
			service: "web", healthy: []string{a}, now: t0,
			want: State{Service: "web", Healthy: map[string]time.Time{a: at(-time.Hour)}, Seen: t0, Flaps: []Flap{
				{Instance: c, Appeared: at(-5 * time.Minute), Left: at(-probation + time.Second)},
			}},
		},
		{
			name:    "the last healthy instance goes: gone since now",
			prev:    State{Service: "web", Healthy: map[string]time.Time{a: at(-time.Hour)}, Seen: at(-time.Hour)},
			service: "web", healthy: []string{}, now: t0,
			want: State{Service: "web", Healthy: map[string]time.Time{}, GoneSince: ptr(t0), Seen: t0},
		},
		{
			name:    "the last healthy instance goes within its probation: gone and flapped",
			prev:    State{Service: "web", Healthy: map[string]time.Time{a: at(-time.Minute)}, Seen: at(-time.Minute)},
			service: "web", healthy: nil, now: t0,
			want: State{Service: "web", Healthy: map[string]time.Time{}, GoneSince: ptr(t0), Seen: t0,
				Flaps: []Flap{{Instance: a, Appeared: at(-time.Minute), Left: t0}}},
		},
		{
			name:    "a later empty observation keeps the gone since",
			prev:    State{Service: "web", Healthy: map[string]time.Time{}, GoneSince: ptr(t0), Seen: t0},
			service: "web", healthy: nil, now: at(20 * time.Minute),
			want: State{Service: "web", Healthy: map[string]time.Time{}, GoneSince: ptr(t0), Seen: at(20 * time.Minute)},
		},
		{
			name:    "a new healthy instance clears the gone since",
			prev:    State{Service: "web", Healthy: map[string]time.Time{}, GoneSince: ptr(t0), Seen: t0},
			service: "web", healthy: []string{b}, now: at(20 * time.Minute),
			want: State{Service: "web", Healthy: map[string]time.Time{b: at(20 * time.Minute)}, Seen: at(20 * time.Minute)},
		},
		{
			name:    "a state of another service starts over: since now, no flaps",
			prev:    State{Service: "api", Healthy: map[string]time.Time{a: at(-time.Hour), b: at(-time.Minute)}, Seen: at(-time.Minute)},
			service: "web", healthy: []string{a}, now: t0,
			want: State{Service: "web", Healthy: map[string]time.Time{a: t0}, Seen: t0},
		},
		{
			name:    "a state of another service starts over: its gone since is not kept",
			prev:    State{Service: "api", Healthy: map[string]time.Time{}, GoneSince: ptr(at(-time.Hour)), Seen: at(-time.Hour)},
			service: "web", healthy: nil, now: t0,
			want: State{Service: "web", Healthy: map[string]time.Time{}, GoneSince: ptr(t0), Seen: t0},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := Observe(tc.prev, tc.service, tc.healthy, tc.now, probation)
			assert.Equal(t, tc.want, got)
		})
	}
}

// A state recorded for another service (the block's service was changed) starts
// over: the other service's flaps are not this service's, as its instances and its
// gone since are not.
func TestObserve_AnotherServicesFlapsAreNotKept(t *testing.T) {
	prev := State{Service: "api", Healthy: map[string]time.Time{}, Seen: at(-time.Minute),
		Flaps: []Flap{{Instance: "n9/api-9", Appeared: at(-2 * time.Minute), Left: at(-time.Minute)}}}
	got := Observe(prev, "web", []string{a}, t0, probation)
	assert.Empty(t, got.Flaps, "the flaps of a state recorded for %q are not %q's: %q",
		prev.Service, "web", Judge(got, t0, expect, probation).Note)
}

func TestJudge(t *testing.T) {
	settled := State{Service: "web", Healthy: map[string]time.Time{a: at(-time.Hour), b: at(-time.Hour)}, Seen: at(-time.Hour)}
	probing := State{Service: "web", Healthy: map[string]time.Time{b: t0, a: at(-time.Hour)}, Seen: t0}
	flapped := State{Service: "web", Healthy: map[string]time.Time{a: at(-time.Hour)}, Seen: t0,
		Flaps: []Flap{{Instance: b, Appeared: at(-2 * time.Minute), Left: t0}}}
	gone := State{Service: "web", Healthy: map[string]time.Time{}, GoneSince: ptr(t0), Seen: t0}
	goneAndFlapped := gone
	goneAndFlapped.Flaps = []Flap{{Instance: a, Appeared: at(-time.Minute), Left: t0}}

	const goneWarning = "no healthy instance of web since 2026-11-23T10:00:00Z: a replacement is expected by 2026-11-23T10:10:00Z"
	const goneCritical = "no healthy instance of web since 2026-11-23T10:00:00Z: a replacement was expected by 2026-11-23T10:10:00Z (expect_replacement 10m0s) and none came"
	const flapWarning = "web flapped during probation (n2/web-2 left 2m0s after it appeared, at 2026-11-23T10:00:00Z); warning until 2026-11-23T10:05:00Z if nothing else flaps"
	tests := []struct {
		name   string
		s      State
		now    time.Time
		status string
		note   string
	}{
		{"zero state", State{}, t0, Passing, "no change of the service seen yet"},
		{"zero state, much later", State{}, at(24 * time.Hour), Passing, "no change of the service seen yet"},
		{"settled instances", settled, t0, Passing, "2 healthy instance(s) of web: n1/web-1, n2/web-2"},
		{"an instance in probation", probing, t0, Passing,
			"2 healthy instance(s) of web: n1/web-1, n2/web-2; in probation: n2/web-2 until 2026-11-23T10:05:00Z"},
		{"just before the end of the probation", probing, at(probation - time.Nanosecond), Passing,
			"2 healthy instance(s) of web: n1/web-1, n2/web-2; in probation: n2/web-2 until 2026-11-23T10:05:00Z"},
		{"at the end of the probation: settled", probing, at(probation), Passing, "2 healthy instance(s) of web: n1/web-1, n2/web-2"},
		{"a flap", flapped, t0, Warning, flapWarning},
		{"a flap, just before a probation after it left", flapped, at(probation - time.Nanosecond), Warning, flapWarning},
		{"a flap, a probation after it left", flapped, at(probation), Passing, "1 healthy instance(s) of web: n1/web-1"},
		{"gone", gone, t0, Warning, goneWarning},
		{"gone, just before the deadline", gone, at(expect - time.Nanosecond), Warning, goneWarning},
		{"gone, at the deadline", gone, at(expect), Critical, goneCritical},
		{"gone, long after the deadline", gone, at(24 * time.Hour), Critical, goneCritical},
		{"gone within the probation: the deadline first", goneAndFlapped, at(time.Minute), Warning, goneWarning},
		{"gone within the probation, at the deadline", goneAndFlapped, at(expect), Critical, goneCritical},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v := Judge(tc.s, tc.now, expect, probation)
			assert.Equal(t, Verdict{tc.status, tc.note}, v)
		})
	}
}

// A refused instance warns, naming it and the field, whatever else stands; a failed
// run is critical, naming the step and the error, whatever else stands, and says
// how the service stands as well.
func TestJudge_RefusedInstancesWarnAndAFailureIsCritical(t *testing.T) {
	settled := State{Service: "web", Healthy: map[string]time.Time{a: at(-time.Hour)}, Seen: at(-time.Hour)}
	refused := settled
	refused.Refused = []Refusal{{Instance: b, Field: "Tags[0]", Problem: `"x\ny" holds the control character U+000A at byte 1`}}
	many := settled
	for i := range maxListed + 2 {
		many.Refused = append(many.Refused, Refusal{Instance: fmt.Sprintf("n%d/web", i), Field: "Address", Problem: "bad"})
	}
	failed := refused
	failed.Failure = &Failure{Step: StepRender, Error: "render template: boom", Since: at(-2 * time.Hour)}
	goneFailed := State{Service: "web", Healthy: map[string]time.Time{}, GoneSince: ptr(at(-time.Minute)), Seen: at(-time.Minute),
		Failure: &Failure{Step: StepReload, Error: "reload command /bin/true: exit status 1", Since: at(-time.Minute)}}

	tests := []struct {
		name   string
		s      State
		status string
		note   string
	}{
		{"one refused", refused, Warning, `1 healthy instance(s) of web: n1/web-1; 1 healthy instance(s) refused, left out of the file: ` +
			`n2/web-2 (Tags[0] "x\ny" holds the control character U+000A at byte 1)`},
		{"many refused: the first few named", many, Warning, "1 healthy instance(s) of web: n1/web-1; 7 healthy instance(s) refused, left out of the file: " +
			"n0/web (Address bad), n1/web (Address bad), n2/web (Address bad), n3/web (Address bad), n4/web (Address bad), and 2 more"},
		{"a failed render", failed, Critical, "the file is not up to date: the render has failed since 2026-11-23T08:00:00Z: render template: boom; " +
			`1 healthy instance(s) of web: n1/web-1; 1 healthy instance(s) refused, left out of the file: ` +
			`n2/web-2 (Tags[0] "x\ny" holds the control character U+000A at byte 1)`},
		{"a failed reload while a replacement is expected", goneFailed, Critical, "the file is not up to date: the reload has failed since 2026-11-23T09:59:00Z: " +
			"reload command /bin/true: exit status 1; no healthy instance of web since 2026-11-23T09:59:00Z: a replacement is expected by 2026-11-23T10:09:00Z"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, Verdict{tc.status, tc.note}, Judge(tc.s, t0, expect, probation))
		})
	}
}

// The handler observes at each change and the check judges at its interval: a day
// in the life of a service, with the verdict at each point.
func TestObserveThenJudge_OverTime(t *testing.T) {
	type step struct {
		at      time.Duration
		observe []string // nil: the check only judges
		empty   bool     // observe that no instance is healthy
		status  string
		note    []string // substrings of the note
		notNote []string
	}
	steps := []step{
		{at: 0, observe: []string{a, b}, status: Passing, note: []string{"2 healthy instance(s) of web: n1/web-1, n2/web-2", "in probation",
			"n1/web-1 until 2026-11-23T10:05:00Z", "n2/web-2 until 2026-11-23T10:05:00Z"}},
		{at: time.Minute, observe: []string{a, b}, status: Passing, note: []string{"in probation", "until 2026-11-23T10:05:00Z"}},
		{at: probation, status: Passing, note: []string{"2 healthy instance(s) of web"}, notNote: []string{"in probation"}},
		// c comes and goes within its probation.
		{at: 6 * time.Minute, observe: []string{a, b, c}, status: Passing, note: []string{"in probation: n3/web-3 until 2026-11-23T10:11:00Z"}},
		{at: 7 * time.Minute, observe: []string{a, b}, status: Warning, note: []string{"web flapped during probation", "n3/web-3 left 1m0s after it appeared",
			"warning until 2026-11-23T10:12:00Z"}},
		{at: 12*time.Minute - time.Second, status: Warning, note: []string{"n3/web-3"}},
		{at: 12 * time.Minute, status: Passing, note: []string{"2 healthy instance(s) of web"}, notNote: []string{"n3", "flapped"}},
		// b leaves long after its probation: no flap.
		{at: 20 * time.Minute, observe: []string{a}, status: Passing, note: []string{"1 healthy instance(s) of web: n1/web-1"}, notNote: []string{"flapped"}},
		// The last goes.
		{at: 30 * time.Minute, empty: true, status: Warning, note: []string{"no healthy instance of web since 2026-11-23T10:30:00Z",
			"a replacement is expected by 2026-11-23T10:40:00Z"}},
		{at: 35 * time.Minute, empty: true, status: Warning, note: []string{"since 2026-11-23T10:30:00Z", "expected by 2026-11-23T10:40:00Z"}},
		{at: 40 * time.Minute, status: Critical, note: []string{"no healthy instance of web since 2026-11-23T10:30:00Z", "none came"}},
		{at: 45 * time.Minute, empty: true, status: Critical, note: []string{"since 2026-11-23T10:30:00Z", "none came"}},
		// A replacement comes.
		{at: 50 * time.Minute, observe: []string{c}, status: Passing, note: []string{"1 healthy instance(s) of web: n3/web-3", "in probation"}},
		{at: 55 * time.Minute, status: Passing, note: []string{"1 healthy instance(s) of web: n3/web-3"}, notNote: []string{"probation"}},
	}
	var s State
	for _, st := range steps {
		now := at(st.at)
		if st.observe != nil || st.empty {
			s = Observe(s, "web", st.observe, now, probation)
			if st.empty {
				require.NotNil(t, s.GoneSince, "at +%s", st.at)
			} else {
				require.Nil(t, s.GoneSince, "at +%s", st.at)
			}
		}
		v := Judge(s, now, expect, probation)
		assert.Equal(t, st.status, v.Status, "at +%s: %s", st.at, v.Note)
		for _, n := range st.note {
			assert.Contains(t, v.Note, n, "at +%s", st.at)
		}
		for _, n := range st.notNote {
			assert.NotContains(t, v.Note, n, "at +%s", st.at)
		}
	}
	require.NotNil(t, s.Healthy)
	assert.Equal(t, at(50*time.Minute), s.Healthy[c], "c's probation started when it came back")
}

func TestExitCode(t *testing.T) {
	assert.Equal(t, 0, ExitCode(Passing))
	assert.Equal(t, 1, ExitCode(Warning))
	assert.Equal(t, 2, ExitCode(Critical))
	assert.Equal(t, 2, ExitCode("unknown"), "anything else is critical")
}
