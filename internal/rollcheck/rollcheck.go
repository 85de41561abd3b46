// Package rollcheck judges the roll record as a Consul script check: is a roll
// stuck? It is pure: given the record, the time and the thresholds, it returns a
// status and a one-line reason. `rehydrate check` (internal/command) reads the
// record and prints what Judge says; every server runs it as a local script check
// (consul.d/check-roll.hcl), so the Consul UI, `consul watch -type=checks` and any
// monitor that follows Consul's health checks see a stuck or failed roll.
//
// Progress. A roll records a history entry for every step it takes (launch,
// transfer, retire, done, fail) and one for a hold whenever the hold's reason
// changes (internal/roll, turn.hold). A hold is the roll waiting, not moving, so
// progress is the newest entry that is not a hold, or the roll's start when it has
// taken no step yet. The waits between steps (a new server settling, a leave) are
// not recorded at all: they are bounded by launch_timeout and leave_timeout, and
// end in a recorded step.
//
// The verdicts:
//   - passing: no roll record; the last roll is done; or a roll is in progress and
//     its last progress is at most roll.stuck_warning old;
//   - warning: the last progress of the roll in progress is older than
//     roll.stuck_warning; a done roll whose changes to the group are still not undone
//     after it; or the record's last progress lies in the future of this server's
//     clock by more than MaxSkew;
//   - critical: the last roll failed (until a new roll starts: a fixed image
//     published, or `rehydrate fire --image`), the last progress of the roll in
//     progress is older than roll.launch_timeout, or the record's phase is unknown.
//
// A roll never waits that long for a step of its own: a new server that is not a
// stable healthy voter by launch_timeout fails the roll. A roll that makes no
// progress for longer is held (an unhealthy cluster, a group below size) or has
// lost its trigger, and needs someone to look.
package rollcheck

import (
	"fmt"
	"time"

	"github.com/consul-rehydrate/consul-rehydrate/internal/coord"
	"github.com/consul-rehydrate/consul-rehydrate/internal/plan"
	"github.com/consul-rehydrate/consul-rehydrate/internal/printable"
)

// Status is a Consul check status.
type Status string

// The statuses, as Consul names them (api.HealthPassing, ...).
const (
	Passing  Status = "passing"
	Warning  Status = "warning"
	Critical Status = "critical"
)

// Exit codes of a Consul script check: "Exit code 0 - Check is passing; Exit code 1
// - Check is warning; Any other code - Check is failing" (Consul docs, "Define
// health checks", https://developer.hashicorp.com/consul/docs/discovery/checks;
// Consul 1.22 agent/checks/check.go CheckMonitor.check maps exit status 0 to
// passing, 1 to warning and any other to critical). The command exits with
// its own distinct codes (internal/app, all above 1) when it cannot judge at all:
// those are critical too.
const (
	ExitPassing  = 0
	ExitWarning  = 1
	ExitCritical = 2
)

// ExitCode is the script check exit code of s; anything unknown is critical.
func (s Status) ExitCode() int {
	switch s {
	case Passing:
		return ExitPassing
	case Warning:
		return ExitWarning
	}
	return ExitCritical
}

// MaxSkew is how far in the future of this server's clock the record's last
// progress may be before the check distrusts it. The handlers that write the
// record run on every server; their clocks differ by far less on any server kept
// in time, while a time in the future would otherwise hide a stuck roll for as
// long as it lies ahead.
const MaxSkew = time.Minute

// maxField bounds each string the reason quotes from the record. The record is
// written by whoever may write the cluster's KV prefix, and Consul keeps only the
// last 4 KB of a check's output (check_output_max_size): a long failure must not
// push the `rehydrate status` line, which ends the output, out of it.
const maxField = 300

// Thresholds are the times a roll may go without progress.
type Thresholds struct {
	// Warning is roll.stuck_warning.
	Warning time.Duration
	// Critical is roll.launch_timeout.
	Critical time.Duration
}

// Verdict is a check's status and its reason, one line of printable text.
type Verdict struct {
	Status Status
	Reason string
}

// Judge says, at now, whether the roll rec records (nil: none ever ran) is stuck.
func Judge(rec *coord.Roll, now time.Time, th Thresholds) Verdict {
	if rec == nil {
		return Verdict{Passing, "no roll has run on this cluster"}
	}
	target := field(rec.Target)
	switch rec.Phase {
	case coord.PhaseDone:
		v := Verdict{Passing, fmt.Sprintf("no roll in progress: the last one rolled the servers to %s, done %s", target, ago(now, rec.Updated))}
		if rec.Unreleased() && now.Sub(rec.Updated) > th.Warning {
			v = Verdict{Warning, fmt.Sprintf("the roll to %s ended %s, but its changes to the group (suspended processes, raised MaxSize) are still not undone; "+
				"the next spinup or spindown run undoes them", target, ago(now, rec.Updated))}
		}
		return v
	case coord.PhaseFailed:
		return Verdict{Critical, fmt.Sprintf("the roll to %s failed %s: %s; the image is marked bad and the servers stay on their image; "+
			"critical until a new roll starts (publish a fixed image, or rehydrate fire --image)", target, ago(now, rec.Updated), field(rec.Failure))}
	case coord.PhaseRolling:
	default:
		return Verdict{Critical, fmt.Sprintf("the roll record has an unknown phase \"%s\" (target %s): it was not written by these handlers", field(rec.Phase), target)}
	}

	at, last, holding := Progress(rec)
	since := now.Sub(at)
	if -since > MaxSkew {
		return Verdict{Warning, fmt.Sprintf("the roll to %s records its last progress at %s, %s in the future of this server's clock: "+
			"a clock is off, or the record was not written by the handlers", target, stamp(at), (-since).Round(time.Second))}
	}
	since = max(since, 0)
	why := "no step taken yet since it started"
	if last != nil {
		why = "last step: " + entry(*last)
	}
	if holding != nil {
		why += "; holding: " + field(holding.Detail)
	}
	switch {
	case since > th.Critical:
		return Verdict{Critical, fmt.Sprintf("the roll to %s has made no progress for %s, since %s (critical after roll.launch_timeout %s): %s",
			target, since.Round(time.Second), stamp(at), th.Critical, why)}
	case since > th.Warning:
		return Verdict{Warning, fmt.Sprintf("the roll to %s has made no progress for %s, since %s (warning after roll.stuck_warning %s, critical after roll.launch_timeout %s): %s",
			target, since.Round(time.Second), stamp(at), th.Warning, th.Critical, why)}
	}
	return Verdict{Passing, fmt.Sprintf("the roll to %s is progressing: last progress %s; %s", target, ago(now, at), why)}
}

// Progress returns when the roll rec last made progress: the time of its newest
// entry that is not a hold (also returned), or its start if it has none. The
// history keeps only the newest coord.MaxHistory entries: when all of those are
// holds, the last step was before the oldest of them, whose time is returned (the
// roll has made no progress since at least then). holding is the newest entry if
// it is a hold after that progress: the roll is held now, and it says why.
func Progress(rec *coord.Roll) (at time.Time, last, holding *coord.Entry) {
	at = rec.Started
	h := rec.History
	for i := len(h) - 1; i >= 0; i-- {
		if plan.Kind(h[i].Step) != plan.Hold {
			last = &h[i]
			at = later(at, h[i].Time)
			break
		}
	}
	if last == nil && len(h) >= coord.MaxHistory {
		at = later(at, h[0].Time)
	}
	if n := len(h); n > 0 && plan.Kind(h[n-1].Step) == plan.Hold {
		holding = &h[n-1]
	}
	return at, last, holding
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// entry names a step: its kind, instance and detail.
func entry(e coord.Entry) string {
	s := field(e.Step)
	if e.Instance != "" {
		s += " " + field(e.Instance)
	}
	if e.Detail != "" {
		s += " (" + field(e.Detail) + ")"
	}
	return s
}

// field makes a string from the record safe and short: escaped when it holds a
// control character (a line break would forge an output line), cut at maxField.
func field(s string) string {
	if len(s) > maxField {
		return printable.String(s[:maxField]) + fmt.Sprintf("... (%d bytes)", len(s))
	}
	return printable.String(s)
}

func stamp(t time.Time) string { return t.UTC().Format(time.RFC3339) }

// ago says when t was, relative to now: "at <time> (3m0s ago)".
func ago(now, t time.Time) string {
	return fmt.Sprintf("at %s (%s ago)", stamp(t), max(now.Sub(t), 0).Round(time.Second))
}
