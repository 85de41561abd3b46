package rollcheck

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/consul-rehydrate/consul-rehydrate/internal/cloud"
	"github.com/consul-rehydrate/consul-rehydrate/internal/coord"
)

var (
	t0 = time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	th = Thresholds{Warning: 5 * time.Minute, Critical: 10 * time.Minute}
)

// at is t0 plus d.
func at(d time.Duration) time.Time { return t0.Add(d) }

func rolling(history ...coord.Entry) *coord.Roll {
	r := &coord.Roll{Target: "ami-new", Phase: coord.PhaseRolling, Started: t0}
	for _, e := range history {
		r.Add(e)
	}
	return r
}

func hold(d time.Duration, why string) coord.Entry {
	return coord.Entry{Time: at(d), Step: "hold", Detail: why}
}

func step(d time.Duration, kind, inst, detail string) coord.Entry {
	return coord.Entry{Time: at(d), Step: kind, Instance: inst, Detail: detail}
}

func TestJudge(t *testing.T) {
	launch := step(time.Minute, "launch", "i-4", "launched i-4 on ami-new to replace i-1")
	done := rolling(launch, step(3*time.Minute, "retire", "i-1", "retired i-1"), step(3*time.Minute, "done", "", "all 3 servers run ami-new"))
	done.Complete(at(3 * time.Minute))
	unreleased := rolling(launch)
	unreleased.Complete(at(3 * time.Minute))
	unreleased.Add(step(3*time.Minute, "done", "", "all 3 servers run ami-new"))
	unreleased.Group = &cloud.GroupState{}
	released := *unreleased
	released.Group = &cloud.GroupState{Released: true}
	failed := rolling(launch, step(11*time.Minute, "fail", "i-4", "terminated failed i-4"))
	failed.Phase, failed.Failure = coord.PhaseFailed, "i-4 on ami-new is not a stable healthy voter 10m1s after launch"
	unknown := rolling()
	unknown.Phase = "paused"

	// A full history of holds: the last step was before the oldest kept entry.
	var holds []coord.Entry
	for i := range coord.MaxHistory + 20 {
		holds = append(holds, hold(time.Duration(i)*time.Second, fmt.Sprintf("reason %d", i)))
	}
	fullOfHolds := rolling(append([]coord.Entry{launch}, holds...)...)

	tests := []struct {
		name string
		rec  *coord.Roll
		now  time.Time
		want Status
		says []string
	}{
		{name: "no roll ever", rec: nil, now: t0, want: Passing, says: []string{"no roll has run on this cluster"}},
		{name: "done", rec: done, now: at(time.Hour), want: Passing,
			says: []string{"no roll in progress: the last one rolled the servers to ami-new, done at 2025-06-01T12:03:00Z (57m0s ago)"}},
		{name: "done, the group released", rec: &released, now: at(time.Hour), want: Passing},
		{name: "done, the group not released yet: not at once", rec: unreleased, now: at(4 * time.Minute), want: Passing},
		{name: "done, the group still not released after stuck_warning", rec: unreleased, now: at(9 * time.Minute), want: Warning,
			says: []string{"the roll to ami-new ended at 2025-06-01T12:03:00Z (6m0s ago), but its changes to the group", "still not undone"}},
		{name: "failed: critical, with the failure", rec: failed, now: at(12 * time.Minute), want: Critical,
			says: []string{"the roll to ami-new failed at 2025-06-01T12:11:00Z (1m0s ago): i-4 on ami-new is not a stable healthy voter", "rehydrate fire --image"}},
		{name: "failed long ago: still critical", rec: failed, now: at(30 * 24 * time.Hour), want: Critical},
		{name: "unknown phase", rec: unknown, now: t0, want: Critical, says: []string{`unknown phase "paused"`}},

		{name: "just started", rec: rolling(), now: at(time.Second), want: Passing,
			says: []string{"the roll to ami-new is progressing: last progress at 2025-06-01T12:00:00Z (1s ago); no step taken yet"}},
		{name: "a step recently", rec: rolling(launch), now: at(4 * time.Minute), want: Passing,
			says: []string{"last progress at 2025-06-01T12:01:00Z (3m0s ago); last step: launch i-4 (launched i-4 on ami-new to replace i-1)"}},
		{name: "exactly stuck_warning: still passing", rec: rolling(launch), now: at(6 * time.Minute), want: Passing},
		{name: "waited past stuck_warning for the next step", rec: rolling(launch), now: at(6*time.Minute + time.Second), want: Warning,
			says: []string{"the roll to ami-new has made no progress for 5m1s, since 2025-06-01T12:01:00Z (warning after roll.stuck_warning 5m0s, critical after roll.launch_timeout 10m0s): last step: launch i-4"}},
		{name: "exactly launch_timeout: warning", rec: rolling(launch), now: at(11 * time.Minute), want: Warning},
		{name: "past launch_timeout: critical", rec: rolling(launch), now: at(11*time.Minute + time.Second), want: Critical,
			says: []string{"has made no progress for 10m1s, since 2025-06-01T12:01:00Z (critical after roll.launch_timeout 10m0s): last step: launch i-4"}},

		// A hold is waiting, not progress: its entries do not restart the clock, even
		// when its reason changes.
		{name: "held from the start, briefly", rec: rolling(hold(0, "cluster not healthy")), now: at(time.Minute), want: Passing,
			says: []string{"no step taken yet since it started; holding: cluster not healthy"}},
		{name: "held from the start past stuck_warning", rec: rolling(hold(0, "a"), hold(4*time.Minute, "cluster not healthy, will not launch: i-2 not healthy")),
			now: at(6 * time.Minute), want: Warning,
			says: []string{"no progress for 6m0s, since 2025-06-01T12:00:00Z", "holding: cluster not healthy, will not launch: i-2 not healthy"}},
		{name: "held from the start past launch_timeout", rec: rolling(hold(0, "a"), hold(9*time.Minute, "b")), now: at(11 * time.Minute), want: Critical,
			says: []string{"no progress for 11m0s", "no step taken yet since it started; holding: b"}},
		{name: "held after a step: from the step", rec: rolling(launch, step(2*time.Minute, "retire", "i-1", "retired i-1"), hold(3*time.Minute, "only 2 of 3 servers")),
			now: at(12*time.Minute + time.Second), want: Critical,
			says: []string{"since 2025-06-01T12:02:00Z", "last step: retire i-1 (retired i-1); holding: only 2 of 3 servers"}},
		{name: "a step after a hold: progress again", rec: rolling(hold(0, "a"), step(20*time.Minute, "launch", "i-4", "launched")), now: at(21 * time.Minute), want: Passing},
		{name: "a history full of holds: the oldest kept one bounds the last step", rec: fullOfHolds, now: at(20*time.Second + 10*time.Minute + time.Second),
			want: Critical, says: []string{"since 2025-06-01T12:00:20Z", "no step taken yet since it started; holding: reason 119"}},
		{name: "a history full of holds: within stuck_warning of the oldest kept", rec: fullOfHolds, now: at(5 * time.Minute), want: Passing},

		{name: "a record from the near future (clock skew): progressing", rec: rolling(launch), now: at(30 * time.Second), want: Passing,
			says: []string{"(0s ago)"}},
		{name: "a record from the far future: distrusted", rec: rolling(step(time.Hour, "launch", "i-4", "x")), now: t0, want: Warning,
			says: []string{"records its last progress at 2025-06-01T13:00:00Z, 1h0m0s in the future of this server's clock"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := Judge(tt.rec, tt.now, th)
			assert.Equal(t, tt.want, v.Status, v.Reason)
			for _, s := range tt.says {
				assert.Contains(t, v.Reason, s)
			}
			assert.NotContains(t, v.Reason, "\n")
		})
	}
}

// The record is written by whoever may write the cluster's KV prefix: what the
// reason quotes from it is escaped (no forged output line, no terminal control) and
// cut short, so that the output's last line, the `rehydrate status` command, stays
// within the 4 KB Consul keeps.
func TestJudge_QuotesTheRecordEscapedAndShort(t *testing.T) {
	long := strings.Repeat("x", 10000)
	forged := "ok\nforged line\x1b[2J"
	for _, rec := range []*coord.Roll{
		{Target: forged + long, Phase: coord.PhaseFailed, Failure: forged + long, Started: t0, Updated: t0},
		rolling(step(0, "launch"+forged, "i-4"+forged+long, forged+long), hold(time.Second, forged+long)),
		{Target: forged, Phase: forged + long, Started: t0},
	} {
		for _, now := range []time.Time{at(time.Second), at(7 * time.Minute), at(time.Hour)} {
			v := Judge(rec, now, th)
			assert.NotContains(t, v.Reason, "\n")
			assert.NotContains(t, v.Reason, "\x1b")
			assert.Contains(t, v.Reason, `ok\nforged line\x1b[2J`)
			assert.Less(t, len(v.Reason), 2000, v.Reason)
			assert.Contains(t, v.Reason, "... (10018 bytes)")
		}
	}
}

func TestStatus_ExitCodeIsConsulsScriptCheckConvention(t *testing.T) {
	assert.Equal(t, 0, Passing.ExitCode())
	assert.Equal(t, 1, Warning.ExitCode())
	assert.Equal(t, 2, Critical.ExitCode())
	assert.Equal(t, 2, Status("bogus").ExitCode(), "anything else is critical")
}

func TestProgress(t *testing.T) {
	launch := step(time.Minute, "launch", "i-4", "x")
	tests := []struct {
		name       string
		rec        *coord.Roll
		at         time.Time
		last, held string
	}{
		{name: "nothing yet: the start", rec: rolling(), at: t0},
		{name: "a step", rec: rolling(launch), at: at(time.Minute), last: "launch"},
		{name: "holds only: the start", rec: rolling(hold(time.Minute, "a"), hold(2*time.Minute, "b")), at: t0, held: "b"},
		{name: "a step, then a hold", rec: rolling(launch, hold(2*time.Minute, "b")), at: at(time.Minute), last: "launch", held: "b"},
		{name: "a hold, then a step", rec: rolling(hold(0, "a"), launch), at: at(time.Minute), last: "launch"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, last, held := Progress(tt.rec)
			assert.Equal(t, tt.at, got)
			if tt.last == "" {
				assert.Nil(t, last)
			} else if assert.NotNil(t, last) {
				assert.Equal(t, tt.last, last.Step)
			}
			if tt.held == "" {
				assert.Nil(t, held)
			} else if assert.NotNil(t, held) {
				assert.Equal(t, tt.held, held.Detail)
			}
		})
	}
}
