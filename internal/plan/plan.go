// Package plan decides the single next step of a roll. It is a pure function of what
// was observed: no I/O, no clock, no randomness, so every rule is a table test.
package plan

import (
	"fmt"
	"net"
	"sort"
	"strings"
	"time"

	"github.com/consul-rehydrate/consul-rehydrate/internal/cloud"
	"github.com/consul-rehydrate/consul-rehydrate/internal/cluster"
)

// Kind is what the next step does.
type Kind string

// The kinds of step.
const (
	// Nothing: no step is due (up to date, or not safe now); Reason says why.
	Nothing Kind = "nothing"
	// Refuse: the request itself is not acceptable (image outside the filter, bad,
	// or a downgrade). Nothing changes.
	Refuse Kind = "refuse"
	// Hold: a roll is due but not safe now (cluster unhealthy or below size). The
	// roll is recorded so that the next trigger, e.g. the recovery itself, resumes it.
	Hold Kind = "hold"
	// Wait: a step is in progress (a server stabilizing, raft shrinking); look again.
	Wait Kind = "wait"
	// Launch one server on Image (surge to N+1).
	Launch Kind = "launch"
	// Transfer leadership from the outdated leader to TransferTo.
	Transfer Kind = "transfer"
	// Retire Instance: graceful leave, then terminate with a decrement.
	Retire Kind = "retire"
	// Fail: Instance on Image never became a healthy voter; terminate it and mark the
	// image bad.
	Fail Kind = "fail"
	// Done: the roll in progress has every server on its target.
	Done Kind = "done"
)

// Input is everything the decision depends on.
type Input struct {
	Now     time.Time
	Desired int // N, the desired number of servers

	Stabilization   time.Duration
	LaunchTimeout   time.Duration
	MaxTrailingLogs uint64
	AllowDowngrade  bool

	Cluster   *cluster.Observation
	Instances []cloud.Instance // the group's instances, any state
	Images    []cloud.Image    // images the filter allows, any order
	BadImages map[string]bool

	// RollTarget is the target of the roll in progress, "" if none.
	RollTarget string
	// Completed is the target of the last roll that completed (ID "" if none): no
	// request may roll the cluster back to an older image unless AllowDowngrade,
	// whatever Images lists now. Created is zero if the record never knew it; the
	// image's age is then taken from Images, if it is there.
	Completed cloud.Image
	// Requested is the image an event asked for, "" for the newest allowed.
	Requested string
	// Continue marks a continuation: an event that requests nothing but the next
	// step of the roll in progress (see payload.Request). With no roll in progress
	// there is nothing to do for it. Requested takes precedence.
	Continue bool

	// Problems say why the provider's group is not fit for a roll (cloud.Survey):
	// a new roll is refused, a roll in progress holds before its next launch,
	// transfer or retire.
	Problems []string
	// Surged is when the roll asked the group for the surge it is waiting for (zero
	// if it is not waiting for one), and LaunchFailures are the group's failed
	// launches since then.
	Surged         time.Time
	LaunchFailures []cloud.LaunchFailure
	// Zones are the availability zones the group spans (cloud.Survey), none where
	// the provider has no zones.
	Zones []string
}

// Step is the decision.
type Step struct {
	Kind   Kind
	Reason string
	// Image is the roll's target image.
	Image string
	// Instance is the instance the step acts on: the outdated instance a launch
	// replaces, the instance to retire, the failed instance to terminate.
	Instance string
	// TransferTo is the raft ID of the server to hand leadership to.
	TransferTo string
	// ActionID names the action deterministically, so that a repeated or recovered
	// invocation acts once.
	ActionID string
}

func (s Step) String() string {
	var b strings.Builder
	b.WriteString(string(s.Kind))
	for _, kv := range [][2]string{{"image", s.Image}, {"instance", s.Instance}, {"transfer_to", s.TransferTo}} {
		if kv[1] != "" {
			fmt.Fprintf(&b, " %s=%s", kv[0], kv[1])
		}
	}
	if s.Reason != "" {
		b.WriteString(": " + s.Reason)
	}
	return b.String()
}

// Server returns the server running on inst: by the instance_id in its node meta, or,
// when the catalog has lost the meta, by address. (Consul re-registers a failed node
// without its meta, so a crashed server is known only by its address.)
func (in Input) Server(inst cloud.Instance) *cluster.Server {
	if s := in.Cluster.ByInstance(inst.ID); s != nil {
		return s
	}
	if inst.Address == "" {
		return nil
	}
	for i, s := range in.Cluster.Servers {
		if s.InstanceID == "" && hostOf(s.Address) == inst.Address {
			return &in.Cluster.Servers[i]
		}
	}
	return nil
}

func hostOf(addr string) string {
	if h, _, err := net.SplitHostPort(addr); err == nil {
		return h
	}
	return addr
}

// Next returns the one next step.
func Next(in Input) Step {
	target, note, refusal := chooseTarget(in)
	if refusal != nil {
		return *refusal
	}
	st := next(in, target)
	if len(in.Problems) > 0 {
		why := "the group is not fit for a roll: " + strings.Join(in.Problems, "; ")
		switch {
		case in.RollTarget == "" && (st.Kind == Launch || st.Kind == Hold):
			return Step{Kind: Refuse, Image: target, Reason: why}
		case st.Kind == Launch || st.Kind == Transfer || st.Kind == Retire:
			return Step{Kind: Hold, Image: target, Reason: why}
		}
	}
	if note != "" {
		st.Reason += "; " + note
	}
	return st
}

// next returns the step towards target.
func next(in Input, target string) Step {
	st := classify(in, target)

	if len(st.leaving) > 0 {
		return Step{Kind: Wait, Image: target, Reason: "waiting for " + strings.Join(st.leaving, ", ") + " to leave"}
	}
	if len(st.unknown) > 0 {
		// The group names an instance EC2 does not describe yet (eventual
		// consistency): its image is unknown, so it can be counted neither as on the
		// target nor as outdated, and must never be taken for an outdated server.
		return Step{Kind: Wait, Image: target, Reason: "waiting for the cloud to describe " + strings.Join(st.unknown, ", ")}
	}
	if extra := len(in.Cluster.Servers) - len(st.live); extra > 0 && len(st.live) >= in.Desired && in.RollTarget != "" {
		return Step{Kind: Wait, Image: target, Reason: fmt.Sprintf(
			"raft configuration has %d servers for %d instances; waiting for departed servers to leave", len(in.Cluster.Servers), len(st.live))}
	}

	switch {
	case len(st.outdated) == 0 && len(st.live) <= in.Desired:
		if in.RollTarget != "" && len(st.live) < in.Desired {
			// Not done until the group is back to size: "all 0 servers run B" is no roll.
			return Step{Kind: Hold, Image: target, Reason: fmt.Sprintf(
				"only %d of %d servers, all on %s; waiting for the group to be back to size", len(st.live), in.Desired, target)}
		}
		if in.RollTarget != "" {
			if spread, ok := unbalanced(in, st.live); ok {
				if why := unhealthy(in, st); why != "" {
					return Step{Kind: Hold, Image: target, Reason: "cluster not healthy, will not launch: " + why}
				}
				return Step{Kind: Launch, Image: target, ActionID: fmt.Sprintf("launch/%s/rebalance", target), Reason: fmt.Sprintf(
					"all %d servers run %s, but they are spread %s; surge one (the group launches into its emptiest zone), then retire one from the most crowded",
					len(st.live), target, spread)}
			}
			return Step{Kind: Done, Image: target, Reason: fmt.Sprintf("all %d servers run %s", len(st.live), target)}
		}
		return Step{Kind: Nothing, Image: target, Reason: fmt.Sprintf("up to date: all %d servers run %s", len(st.live), target)}

	case len(st.live) < in.Desired:
		return Step{Kind: Hold, Image: target, Reason: fmt.Sprintf(
			"only %d of %d servers; waiting for the cluster to recover before rolling", len(st.live), in.Desired)}

	case len(st.live) == in.Desired:
		if why := unhealthy(in, st); why != "" {
			return Step{Kind: Hold, Image: target, Reason: "cluster not healthy, will not launch: " + why}
		}
		if step, failing := launchFailing(in, target); failing {
			return step
		}
		// The ID counts the outdated servers left: it is the same for every invocation
		// that sees this state, and new once a retire has made progress, whichever
		// outdated server that retire took.
		replaced := retireOrder(in, st.outdated)[0]
		return Step{Kind: Launch, Image: target, Instance: replaced.ID, ActionID: fmt.Sprintf("launch/%s/%d-outdated", target, len(st.outdated)),
			Reason: fmt.Sprintf("%d of %d servers run an outdated image; surge one on %s to replace %s", len(st.outdated), in.Desired, target, replaced.ID)}

	case len(st.live) == in.Desired+1:
		// The surge is the newest instance. If it never settled, the roll fails; a
		// server that settled and fell ill later is the cluster's trouble, not the image's.
		if surge := st.live[len(st.live)-1]; surge.ImageID == target && !st.settled[surge.ID] && in.Now.Sub(surge.Launched) > in.LaunchTimeout {
			return Step{Kind: Fail, Image: target, Instance: surge.ID, ActionID: "fail/" + surge.ID,
				Reason: fmt.Sprintf("%s on %s is not a stable healthy voter %s after launch (launch_timeout %s): %s",
					surge.ID, target, in.Now.Sub(surge.Launched).Round(time.Second), in.LaunchTimeout, st.why[surge.ID])}
		}
		for _, inst := range st.onTarget {
			if !st.settled[inst.ID] {
				return Step{Kind: Wait, Image: target, Instance: inst.ID, Reason: fmt.Sprintf("waiting for %s to become a stable healthy voter: %s", inst.ID, st.why[inst.ID])}
			}
		}
		if len(st.outdated) == 0 {
			if in.RollTarget == "" {
				return Step{Kind: Nothing, Image: target, Reason: fmt.Sprintf("%d servers, all on %s: one more than desired; leaving it to the operator", len(st.live), target)}
			}
			// The roll's last surge landed where no outdated server was left to pair
			// it with (see retireOrder): retire the surplus from the most crowded zone.
			return retire(in, st, target, st.onTarget)
		}
		return retire(in, st, target, st.outdated)

	default:
		return Step{Kind: Nothing, Image: target, Reason: fmt.Sprintf(
			"%d servers, more than %d+1; refusing to act until the group is back to size", len(st.live), in.Desired)}
	}
}

// launchFailing decides, while the roll waits for a surge that has not appeared,
// whether the group's failed launches fail the roll: at once when a failure is the
// image's (retrying cannot help), else once launch_timeout has passed since the
// surge was asked for. Until then it waits. The group itself retries failed
// launches for ever (../shared/AWS.md, "Failed launches"), so without this a roll
// would ask again and again.
func launchFailing(in Input, target string) (Step, bool) {
	if in.RollTarget == "" || in.Surged.IsZero() || len(in.LaunchFailures) == 0 {
		return Step{}, false
	}
	last := in.LaunchFailures[len(in.LaunchFailures)-1]
	fail := Step{Kind: Fail, Image: target, ActionID: "fail/launch/" + target}
	for _, f := range in.LaunchFailures {
		if f.Image {
			fail.Reason = fmt.Sprintf("the group cannot launch %s: %s", target, f.Message)
			return fail, true
		}
	}
	waited := in.Now.Sub(in.Surged)
	if waited > in.LaunchTimeout {
		fail.Reason = fmt.Sprintf("the group has failed to launch a server on %s for %s (launch_timeout %s), %d failed launches, the last: %s",
			target, waited.Round(time.Second), in.LaunchTimeout, len(in.LaunchFailures), last.Message)
		return fail, true
	}
	return Step{Kind: Wait, Image: target, Reason: fmt.Sprintf(
		"the group's launches on %s fail (%d so far, the last: %s); it retries until launch_timeout", target, len(in.LaunchFailures), last.Message)}, true
}

// unbalanced reports whether the live servers are spread over the group's zones
// less evenly than they can be (two zones differ by more than one server), and
// describes the spread ("a=2 b=1 c=0").
func unbalanced(in Input, live []cloud.Instance) (string, bool) {
	if len(in.Zones) < 2 {
		return "", false
	}
	per := map[string]int{}
	for _, inst := range live {
		per[inst.AZ]++
	}
	most, least := per[in.Zones[0]], per[in.Zones[0]]
	parts := make([]string, 0, len(in.Zones))
	for _, z := range in.Zones {
		most, least = max(most, per[z]), min(least, per[z])
		parts = append(parts, fmt.Sprintf("%s=%d", z, per[z]))
	}
	return strings.Join(parts, " "), most-least > 1
}

// retireOrder sorts servers in the order they are retired: those in the most
// crowded availability zone first (after a surge, the surge's zone, so that the
// pair of steps leaves the servers spread as before: the group launched the surge
// into its emptiest zone), then unhealthy ones (retiring them costs no healthy
// voter), then followers, the leader last, oldest first within each group.
// Launches name the server they replace by the same order, so the history reads
// true.
//
// AWS does not document how the group breaks a tie between equally empty zones, so
// a surge can land in a zone that holds no outdated server (3 servers in 3 zones,
// second surge, beside the first one's). No retire then keeps every zone: the
// roll retires an outdated server elsewhere, the group places the next surge in the
// zone so emptied (the only emptiest one), and once every server is on the target
// the surplus goes from the most crowded zone, so the roll ends spread as it began.
func retireOrder(in Input, outdated []cloud.Instance) []cloud.Instance {
	cands := append([]cloud.Instance(nil), outdated...)
	perAZ := map[string]int{}
	most := 0
	var newest cloud.Instance
	for _, inst := range in.Instances {
		if inst.Live() {
			perAZ[inst.AZ]++
			most = max(most, perAZ[inst.AZ])
			if !inst.Launched.Before(newest.Launched) {
				newest = inst
			}
		}
	}
	// 0: the surge's zone, when it is among the most crowded (it is, when the group
	// placed the surge by its balancing rule): retiring there restores the spread
	// exactly; 1: another of the most crowded zones; 2: the rest.
	crowded := func(inst cloud.Instance) int {
		switch {
		case perAZ[inst.AZ] < most:
			return 2
		case inst.AZ != newest.AZ:
			return 1
		}
		return 0
	}
	rank := func(inst cloud.Instance) int {
		srv := in.Server(inst)
		switch {
		case srv == nil || !srv.Healthy:
			return 0
		case !srv.Leader:
			return 1
		default:
			return 2
		}
	}
	sort.SliceStable(cands, func(i, j int) bool {
		if ci, cj := crowded(cands[i]), crowded(cands[j]); ci != cj {
			return ci < cj
		}
		return rank(cands[i]) < rank(cands[j])
	})
	return cands
}

// retire retires the first of cands (the outdated servers, or the surplus once
// none is left) in retireOrder, moving leadership away from it first if it leads.
func retire(in Input, st state, target string, cands []cloud.Instance) Step {
	leader := in.Cluster.Leader()
	cands = retireOrder(in, cands)
	victim := cands[0]
	srv := in.Server(victim)

	healthyAfter := 0
	for i, s := range in.Cluster.Servers {
		if s.Voter && s.Healthy && &in.Cluster.Servers[i] != srv {
			healthyAfter++
		}
	}
	if healthyAfter < in.Desired {
		return Step{Kind: Hold, Image: target, Reason: fmt.Sprintf(
			"retiring %s would leave %d healthy voters, fewer than %d", victim.ID, healthyAfter, in.Desired)}
	}
	if srv != nil && leader != nil && srv.ID == leader.ID {
		to := bestSuccessor(in, st, victim.ID)
		if to == nil {
			return Step{Kind: Wait, Image: target, Reason: "leader " + srv.Name + " is the outdated server to retire next but no server on the target is ready to lead"}
		}
		return Step{Kind: Transfer, Image: target, Instance: victim.ID, TransferTo: to.ID, ActionID: "transfer/" + victim.ID,
			Reason: fmt.Sprintf("leader %s is the outdated server to retire next; move leadership to %s first", srv.Name, to.Name)}
	}
	if victim.ImageID == target {
		return Step{Kind: Retire, Image: target, Instance: victim.ID, ActionID: "retire/" + victim.ID,
			Reason: fmt.Sprintf("all %d servers run %s, one more than desired; retire %s from the most crowded zone", len(st.live), target, victim.ID)}
	}
	return Step{Kind: Retire, Image: target, Instance: victim.ID, ActionID: "retire/" + victim.ID,
		Reason: fmt.Sprintf("%s is settled on %s; retire outdated %s (%d outdated left)", settledNames(in, st), target, victim.ID, len(st.outdated))}
}

func bestSuccessor(in Input, st state, except string) *cluster.Server {
	var best *cluster.Server
	for _, inst := range st.onTarget {
		s := in.Server(inst)
		if s != nil && inst.ID != except && st.settled[inst.ID] && (best == nil || s.LastIndex > best.LastIndex) {
			best = s
		}
	}
	return best
}

func settledNames(in Input, st state) string {
	var names []string
	for _, inst := range st.onTarget {
		names = append(names, inst.ID)
	}
	return strings.Join(names, ", ")
}

type state struct {
	live     []cloud.Instance // pending or running, oldest first
	outdated []cloud.Instance // live and not on target, oldest first
	onTarget []cloud.Instance // live and on target
	leaving  []string         // shutting down but still in the raft configuration
	unknown  []string         // pending, image not known yet
	settled  map[string]bool  // instance ID -> healthy stable voter within trailing logs
	why      map[string]string
}

func classify(in Input, target string) state {
	insts := append([]cloud.Instance(nil), in.Instances...)
	sort.SliceStable(insts, func(i, j int) bool { return insts[i].Launched.Before(insts[j].Launched) })
	st := state{settled: map[string]bool{}, why: map[string]string{}}
	for _, inst := range insts {
		if !inst.Live() {
			if inst.State == cloud.StateShuttingDown && in.Server(inst) != nil {
				st.leaving = append(st.leaving, inst.ID)
			}
			continue
		}
		if inst.ImageID == "" {
			st.unknown = append(st.unknown, inst.ID)
			continue
		}
		st.live = append(st.live, inst)
		if inst.ImageID == target {
			st.onTarget = append(st.onTarget, inst)
		} else {
			st.outdated = append(st.outdated, inst)
		}
		st.settled[inst.ID], st.why[inst.ID] = settled(in, inst)
	}
	return st
}

// settled reports whether the instance's server is a healthy voter, stable for the
// stabilization time, and close enough to the leader's log.
func settled(in Input, inst cloud.Instance) (bool, string) {
	s := in.Server(inst)
	switch {
	case s == nil:
		return false, "not in the raft configuration yet"
	case !s.Healthy:
		return false, "not healthy"
	case !s.Voter:
		return false, "not a voter yet"
	case s.StableSince.IsZero() || in.Now.Sub(s.StableSince) < in.Stabilization:
		return false, fmt.Sprintf("stable for %s of %s", in.Now.Sub(s.StableSince).Round(time.Second), in.Stabilization)
	case in.Cluster.Trailing(s) > in.MaxTrailingLogs:
		return false, fmt.Sprintf("trails the leader by %d logs (max %d)", in.Cluster.Trailing(s), in.MaxTrailingLogs)
	}
	return true, ""
}

// unhealthy says why the cluster may not take a launch now, or "".
func unhealthy(in Input, st state) string {
	if !in.Cluster.Healthy {
		return "autopilot reports unhealthy"
	}
	if in.Cluster.Leader() == nil {
		return "no leader"
	}
	voters := 0
	for _, s := range in.Cluster.Servers {
		if s.Voter && s.Healthy {
			voters++
		}
	}
	if voters < in.Desired {
		return fmt.Sprintf("%d healthy voters, want %d", voters, in.Desired)
	}
	for _, inst := range st.live {
		if in.Server(inst) == nil {
			return inst.ID + " is not in the raft configuration"
		}
	}
	return ""
}

// chooseTarget returns the roll's target image, or a refusal of the request. A
// request for another image than the roll in progress's is checked like any
// request; if acceptable it waits for that roll to be done (note says so), and the
// event is a trigger like any other: the roll in progress takes its next step, so
// that a request arriving with (or instead of) a continuation never stalls it.
func chooseTarget(in Input) (target, note string, refusal *Step) {
	byID := map[string]cloud.Image{}
	var newest *cloud.Image
	for i, img := range in.Images {
		byID[img.ID] = img
		if !in.BadImages[img.ID] && (newest == nil || img.Created.After(newest.Created)) {
			newest = &in.Images[i]
		}
	}
	if in.RollTarget != "" {
		if in.Requested == "" || in.Requested == in.RollTarget {
			return in.RollTarget, "", nil
		}
		if refusal := checkRequested(in, byID); refusal != nil {
			return "", "", refusal
		}
		return in.RollTarget, fmt.Sprintf("a roll to %s is in progress; %s can follow when it is done", in.RollTarget, in.Requested), nil
	}
	if in.Requested != "" {
		if refusal := checkRequested(in, byID); refusal != nil {
			return "", "", refusal
		}
		return in.Requested, "", nil
	}
	if in.Continue {
		return "", "", &Step{Kind: Nothing, Reason: "a continuation, and no roll is in progress to continue"}
	}
	if newest == nil {
		return "", "", &Step{Kind: Nothing, Reason: "no image matches the filter (or every match is marked bad)"}
	}
	if refusal := downgrade(in, *newest, byID, "the newest allowed image"); refusal != nil {
		return "", "", refusal
	}
	return newest.ID, "", nil
}

// checkRequested refuses the requested image if the filter does not allow it, it
// is marked bad, or it is a downgrade.
func checkRequested(in Input, byID map[string]cloud.Image) *Step {
	img, ok := byID[in.Requested]
	switch {
	case !ok:
		return &Step{Kind: Refuse, Image: in.Requested, Reason: fmt.Sprintf("image %s is not allowed by the image filter or does not exist", in.Requested)}
	case in.BadImages[img.ID]:
		return &Step{Kind: Refuse, Image: img.ID, Reason: fmt.Sprintf("image %s is marked bad: an earlier roll to it failed", img.ID)}
	}
	return downgrade(in, img, byID, "image")
}

// downgrade refuses img, named what in the reason, if it is older than the target
// of the last completed roll, or than an image a live server runs, unless
// downgrades are allowed.
//
// The last completed target is compared by the creation time the roll record
// kept, so it counts even when it has left the filter: deprecating or untagging
// the running image, the usual way to pull a bad one, must not let any event roll
// the cluster back. A running image is compared only if the filter still lists it
// (an image it no longer lists, and no record names, has no known age). Images
// exactly as old as the floor are not older.
func downgrade(in Input, img cloud.Image, byID map[string]cloud.Image, what string) *Step {
	if in.AllowDowngrade {
		return nil
	}
	if c := in.Completed; c.ID != "" && c.ID != img.ID {
		created := c.Created
		if created.IsZero() {
			created = byID[c.ID].Created
		}
		if !created.IsZero() && img.Created.Before(created) {
			return &Step{Kind: Refuse, Image: img.ID, Reason: fmt.Sprintf(
				"%s %s (created %s) is older than %s (created %s), the target of the last completed roll, whether or not the image filter still lists it; set roll.allow_downgrade = true to roll back",
				what, img.ID, stamp(img.Created), c.ID, stamp(created))}
		}
	}
	for _, inst := range in.Instances {
		cur, known := byID[inst.ImageID]
		if inst.Live() && known && cur.Created.After(img.Created) {
			return &Step{Kind: Refuse, Image: img.ID, Reason: fmt.Sprintf(
				"%s %s is older than %s, which %s runs; set roll.allow_downgrade = true to roll back", what, img.ID, inst.ImageID, inst.ID)}
		}
	}
	return nil
}

// stamp formats an image's creation time for a reason.
func stamp(t time.Time) string { return t.UTC().Format(time.RFC3339) }
