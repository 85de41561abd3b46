// Package reconfigure keeps a file rendered from a service's healthy instances, and
// judges, for a Consul check, whether the service is where it should be: the
// reconfigure watch handler and its check.
//
// The handler runs at every change of the service (a service watch) and records what
// it saw in a state file: which instances are healthy and since when, since when
// none is, and which new instances left again within their probation. Judging needs
// the clock as well as the changes (a deadline passes without any change), so the
// check, which the agent runs at an interval, judges the recorded state against the
// time: Observe and Judge are pure functions.
package reconfigure

import (
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"time"
)

// State is what the handler saw of the service, kept in the state file.
type State struct {
	Service string `json:"service"`
	// Healthy maps each healthy instance (node/service-id) to when it became healthy.
	Healthy map[string]time.Time `json:"healthy"`
	// GoneSince is when the last healthy instance went; nil while one is healthy.
	GoneSince *time.Time `json:"gone_since,omitempty"`
	// Flaps are instances that left within their probation, newest last, kept for a
	// probation after they left.
	Flaps []Flap `json:"flaps,omitempty"`
	// Seen is when the handler last ran.
	Seen time.Time `json:"seen"`
	// Refused are the healthy instances the last run left out of the file (see
	// Screen), in instance order.
	Refused []Refusal `json:"refused,omitempty"`
	// Failure is why the last run could not bring the file up to date; nil when it
	// did.
	Failure *Failure `json:"failure,omitempty"`
}

// Steps of a run that can fail, leaving the file as the last good run wrote it.
const (
	StepRender = "render"
	StepWrite  = "write"
	StepReload = "reload"
)

// Failure is a run that could not bring the file up to date.
type Failure struct {
	// Step is what failed: StepRender, StepWrite or StepReload.
	Step string `json:"step"`
	// Error is why, printable (see printable).
	Error string `json:"error"`
	// Since is when the first of the runs failing in a row ran.
	Since time.Time `json:"since"`
}

// Flap is an instance that became healthy and left again within its probation.
type Flap struct {
	Instance string    `json:"instance"`
	Appeared time.Time `json:"appeared"`
	Left     time.Time `json:"left"`
}

// Observe returns the state after the handler saw healthy (instance keys) at now.
func Observe(prev State, service string, healthy []string, now time.Time, probation time.Duration) State {
	next := State{Service: service, Healthy: map[string]time.Time{}, Seen: now}
	for _, inst := range healthy {
		since, ok := prev.Healthy[inst]
		if !ok || prev.Service != service {
			since = now
		}
		next.Healthy[inst] = since
	}
	if prev.Service == service {
		for _, f := range prev.Flaps {
			if now.Sub(f.Left) < probation {
				next.Flaps = append(next.Flaps, f)
			}
		}
		for _, inst := range slices.Sorted(maps.Keys(prev.Healthy)) {
			appeared := prev.Healthy[inst]
			if _, still := next.Healthy[inst]; !still && now.Sub(appeared) < probation {
				next.Flaps = append(next.Flaps, Flap{Instance: inst, Appeared: appeared, Left: now})
			}
		}
	}
	if len(next.Healthy) == 0 {
		gone := now
		if prev.Service == service && prev.GoneSince != nil {
			gone = *prev.GoneSince
		}
		next.GoneSince = &gone
	}
	return next
}

// Check statuses, and the exit codes of a Consul script check that reports them.
const (
	Passing  = "passing"
	Warning  = "warning"
	Critical = "critical"
)

// ExitCode is the script check exit code of a status.
func ExitCode(status string) int {
	switch status {
	case Passing:
		return 0
	case Warning:
		return 1
	}
	return 2
}

// Verdict is a check's status and its note.
type Verdict struct {
	Status string
	Note   string
}

// maxListed bounds the refused instances a note names, so that a flood of bad
// registrations cannot fill the check's output (4 KiB by default, the agent's
// check_output_max_size) and hide the rest of the note.
const maxListed = 5

// Judge says, at now, how the service stands: critical when the last run could not
// bring the file up to date (its render, write or reload failed), or when no healthy
// instance has come within expect after the last went; warning while one is
// expected, while an instance flapped within the last probation, or while an
// instance is refused (left out of the file); passing otherwise.
func Judge(s State, now time.Time, expect, probation time.Duration) Verdict {
	if s.Seen.IsZero() {
		return Verdict{Passing, "no change of the service seen yet"}
	}
	v := judgeInstances(s, now, expect, probation)
	if n := len(s.Refused); n > 0 {
		if v.Status == Passing {
			v.Status = Warning
		}
		listed := make([]string, 0, min(n, maxListed))
		for _, r := range s.Refused[:min(n, maxListed)] {
			listed = append(listed, r.String())
		}
		if n > maxListed {
			listed = append(listed, fmt.Sprintf("and %d more", n-maxListed))
		}
		v.Note += fmt.Sprintf("; %d healthy instance(s) refused, left out of the file: %s", n, strings.Join(listed, ", "))
	}
	if f := s.Failure; f != nil {
		v = Verdict{Critical, fmt.Sprintf("the file is not up to date: the %s has failed since %s: %s; %s",
			f.Step, f.Since.UTC().Format(time.RFC3339), f.Error, v.Note)}
	}
	return v
}

// judgeInstances judges the healthy instances: what Judge says when every run
// succeeded and none was refused.
func judgeInstances(s State, now time.Time, expect, probation time.Duration) Verdict {
	ts := func(t time.Time) string { return t.UTC().Format(time.RFC3339) }
	if s.GoneSince != nil {
		deadline := s.GoneSince.Add(expect)
		if !now.Before(deadline) {
			return Verdict{Critical, fmt.Sprintf("no healthy instance of %s since %s: a replacement was expected by %s (expect_replacement %s) and none came",
				s.Service, ts(*s.GoneSince), ts(deadline), expect)}
		}
		return Verdict{Warning, fmt.Sprintf("no healthy instance of %s since %s: a replacement is expected by %s", s.Service, ts(*s.GoneSince), ts(deadline))}
	}
	var flapped []string
	for _, f := range s.Flaps {
		if now.Sub(f.Left) < probation {
			flapped = append(flapped, fmt.Sprintf("%s left %s after it appeared, at %s", f.Instance, f.Left.Sub(f.Appeared).Round(time.Second), ts(f.Left)))
		}
	}
	insts := slices.Sorted(maps.Keys(s.Healthy))
	if len(flapped) > 0 {
		last := s.Flaps[len(s.Flaps)-1].Left.Add(probation)
		return Verdict{Warning, fmt.Sprintf("%s flapped during probation (%s); warning until %s if nothing else flaps",
			s.Service, strings.Join(flapped, "; "), ts(last))}
	}
	var probing []string
	for _, inst := range insts {
		if until := s.Healthy[inst].Add(probation); now.Before(until) {
			probing = append(probing, fmt.Sprintf("%s until %s", inst, ts(until)))
		}
	}
	note := fmt.Sprintf("%d healthy instance(s) of %s: %s", len(insts), s.Service, strings.Join(insts, ", "))
	if len(probing) > 0 {
		sort.Strings(probing)
		note += "; in probation: " + strings.Join(probing, ", ")
	}
	return Verdict{Passing, note}
}
