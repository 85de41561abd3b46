package awsfake

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"time"
)

// tickEvery is how often the fake's own clock looks at every group: lifecycle
// hook timeouts, launch retries, AZRebalance (every Options.RebalanceInterval)
// and instance refreshes. invented: the granularity of the fake's timers; real
// Auto Scaling documents none, and 20ms keeps tests fast without busy-looping.
const tickEvery = 20 * time.Millisecond

// run is the fake's reconcile loop; it returns when the server is closed.
func (s *Server) run() {
	defer s.wg.Done()
	t := time.NewTicker(tickEvery)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		}
		s.mu.Lock()
		if !s.closed {
			now := time.Now()
			for _, g := range s.groups {
				s.tick(g, now)
			}
		}
		s.mu.Unlock()
	}
}

// tick advances one group's clock-driven behaviour. Called with s.mu held.
func (s *Server) tick(g *group, now time.Time) {
	for _, inst := range slices.Clone(g.members) {
		for _, a := range slices.Clone(inst.actions) {
			if !now.Before(a.deadline) || !now.Before(a.global) {
				// "If the lifecycle hook times out, Amazon EC2 Auto Scaling
				// performs the action that you specified in the DefaultResult
				// property" (LifecycleHook$HeartbeatTimeout, docs-2.json).
				s.completeAction(g, inst, a, a.hook.defaultResult)
			}
		}
	}
	for _, r := range g.refreshes {
		// invented: a refresh starts, or finishes cancelling, one tick after it
		// was asked to; the fake does not replace instances for it.
		switch r.status {
		case "Pending":
			r.status = "InProgress"
		case "Cancelling":
			r.status, r.end = "Cancelled", now
		}
	}
	if g.rebalance != nil && g.rebalance.launch.Status == "Successful" {
		s.finishRebalance(g) // Terminate was suspended when the launch entered service
	}
	if now.Sub(g.rebalanced) >= s.opts.RebalanceInterval {
		g.rebalanced = now
		s.startRebalance(g)
	}
	s.reconcile(g) // launch retries whose backoff has run out
}

// startRebalance is AZRebalance: when the group's live instances are not
// balanced across its AZs it launches in the AZ with the fewest and, once that
// instance is in service, terminates one in the AZ with the most.
//
// Sources: "AZRebalance – Balances the number of EC2 instances in the group
// evenly across all of the specified Availability Zones when the group becomes
// unbalanced" (user guide, "Suspend and resume processes"); "Amazon EC2 Auto
// Scaling maintains an equal number of instances across enabled Availability
// Zones" (user guide, "Auto Scaling group Availability Zone distribution") —
// the fake reads "balanced" as: no AZ has two or more instances more than
// another, the closest to equal a count not divisible by the AZs allows.
// "TerminateInstanceInAutoScalingGroup … If you decrement the desired capacity,
// your Auto Scaling group can become unbalanced between Availability Zones.
// Amazon EC2 Auto Scaling tries to rebalance the group, and rebalancing might
// terminate instances in other zones" (docs-2.json). "Auto Scaling always
// launches new instances before attempting to terminate old ones … the system
// can temporarily exceed the specified maximum capacity of a group by a 10%
// margin during a rebalancing activity" (Developer Guide, "Auto Scaling
// behavior"; the current user guide, "Rebalancing activities", says 10 percent
// or one instance, whichever is greater). It does not wait for anything to
// stabilize: it terminates as soon as its launch is InService. "If you suspend
// Launch … AZRebalance stops rebalancing the group"; "If you suspend Terminate
// … AZRebalance is still active but … can launch new instances without
// terminating the old ones … Your Auto Scaling group could remain above its
// maximum size until you resume the Terminate process" (user guide, "How
// suspended processes affect other processes").
//
// The termination uses the default termination policy (user guide, "Control
// which Auto Scaling instances terminate during scale in": termination policies
// apply to "Availability Zone rebalancing"), whose first step looks for "at
// least one instance that is not protected from scale in"; the user guide's
// list of what scale-in protection does not protect from (manual termination,
// health check replacement, Spot interruptions) does not name rebalancing. So by
// default a protected instance is never chosen and AZRebalance does not start
// when the long AZ holds only protected instances; Options.RebalanceIgnoresProtection
// models the pessimistic reading.
//
// invented: one rebalancing launch at a time, and only while the group is at
// its desired capacity (below or above it, the ordinary launch or scale-in
// already goes to the short or long AZ).
func (s *Server) startRebalance(g *group) {
	if len(g.azs) < 2 || g.rebalance != nil || g.isSuspended("AZRebalance") || g.isSuspended("Launch") {
		return
	}
	live := g.liveCount()
	if live != g.desired {
		return
	}
	counts := g.azCounts()
	lo, hi := counts[g.azs[0]], counts[g.azs[0]]
	for _, az := range g.azs {
		lo, hi = min(lo, counts[az]), max(hi, counts[az])
	}
	if hi-lo <= 1 {
		return
	}
	if s.pickVictim(g, s.opts.RebalanceIgnoresProtection, true, false) == nil {
		return
	}
	// invented: the rounding — 10% of MaxSize rounded down, at least one
	// instance ("whichever is greater").
	if live+1 > g.max+max(1, g.max/10) {
		return
	}
	g.rebalance = &rebalancing{launch: s.launch(g, "AZRebalance", fmt.Sprintf(
		"At %s an instance was launched to rebalance instances across Availability Zones %v, which are unbalanced.",
		isoTime(time.Now()), g.azs))}
}

// finishRebalance terminates the instance an AZRebalance launched for, unless
// Terminate is suspended (then the group stays above its desired capacity until
// Terminate resumes). Called with s.mu held.
func (s *Server) finishRebalance(g *group) {
	if g.isSuspended("Terminate") {
		return
	}
	g.rebalance = nil
	victim := s.pickVictim(g, s.opts.RebalanceIgnoresProtection, true, false)
	if victim == nil {
		return
	}
	now := isoTime(time.Now())
	s.terminate(g, victim, "AZRebalance", fmt.Sprintf(
		"At %s an instance was taken out of service in response to Availability Zone rebalancing: the group had more instances in %s than in other zones. At %s instance %s was selected for termination.",
		now, victim.az, now, victim.id))
}

// newActions starts a lifecycle action per hook. "The default value is 3600
// seconds (1 hour)" (PutLifecycleHookType$HeartbeatTimeout, docs-2.json);
// "GlobalTimeout — The maximum time, in seconds, that an instance can remain in
// a wait state. The maximum is 172800 seconds (48 hours) or 100 times
// HeartbeatTimeout, whichever is smaller" (API reference, LifecycleHook).
func newActions(hs []*hook) []*action {
	now := time.Now()
	var out []*action
	for _, h := range hs {
		out = append(out, &action{
			hook: h, token: requestID(), deadline: now.Add(h.heartbeat),
			global: now.Add(globalTimeout(h.heartbeat)),
		})
	}
	return out
}

// globalTimeout is min(48 h, 100 × heartbeat), without overflowing.
func globalTimeout(heartbeat time.Duration) time.Duration {
	if heartbeat > 48*time.Hour/100 {
		return 48 * time.Hour
	}
	return 100 * heartbeat
}

// completeAction ends one lifecycle action with result. "If the instance is
// terminating, both ABANDON and CONTINUE allow the instance to terminate.
// However, ABANDON stops any remaining actions, such as other lifecycle hooks,
// and CONTINUE allows any other lifecycle hooks to complete"; for a launching
// instance "CONTINUE indicates that your actions were successful, and that the
// instance can be put into service. Otherwise, ABANDON indicates that your
// custom actions were unsuccessful, and that Amazon EC2 Auto Scaling can
// terminate the instance" (user guide, "Complete a lifecycle action"). Called
// with s.mu held.
func (s *Server) completeAction(g *group, inst *instance, a *action, result string) {
	inst.actions = slices.DeleteFunc(inst.actions, func(x *action) bool { return x == a })
	switch inst.lifecycle {
	case "Terminating:Wait":
		if result == "ABANDON" || len(inst.actions) == 0 {
			inst.lifecycle = "Terminating:Proceed"
			s.shutdown(g, inst)
		}
	case "Pending:Wait":
		switch {
		case result == "ABANDON":
			act := inst.launchAct
			inst.launchAct = nil
			inst.lifecycle = "Terminating"
			s.shutdown(g, inst)
			s.launchFailed(g, act, fmt.Errorf(
				"Instance failed to complete user's Lifecycle Action: Lifecycle Action with token %s was abandoned: Lifecycle Action Completed with ABANDON Result", a.token))
		case len(inst.actions) == 0:
			inst.lifecycle = "Pending:Proceed"
			s.inService(g, inst)
		}
	}
}

// addActivity records a scaling activity. Called with s.mu held.
func (g *group) addActivity(kind, origin, description, cause, az string) *activity {
	a := &activity{Activity: Activity{
		ID: requestID(), Description: description, Cause: cause, Status: "InProgress",
		Kind: kind, Origin: origin, Start: time.Now(),
	}, az: az}
	g.activities = append(g.activities, a)
	return a
}

func (a *activity) details() string {
	b, _ := json.Marshal(map[string]string{"Availability Zone": a.az})
	return string(b)
}

// AddLifecycleHook seeds a lifecycle hook on the group, as PutLifecycleHook
// would; it applies to instances that launch or terminate from then on. It
// panics on an unknown group, an empty name, or a bad transition or default
// result.
func (s *Server) AddLifecycleHook(groupName string, h LifecycleHook) {
	s.mu.Lock()
	defer s.mu.Unlock()
	g := s.groups[groupName]
	if g == nil || h.Name == "" || h.Transition != transitionLaunching && h.Transition != transitionTerminating ||
		h.DefaultResult != "" && h.DefaultResult != "CONTINUE" && h.DefaultResult != "ABANDON" || h.HeartbeatTimeout < 0 {
		panic(fmt.Sprintf("awsfake: AddLifecycleHook(%q, %+v): unknown group or bad hook", groupName, h))
	}
	g.putHook(&hook{name: h.Name, transition: h.Transition, heartbeat: h.HeartbeatTimeout, defaultResult: h.DefaultResult})
}

// putHook creates or replaces a hook, defaulting its timeout and result.
func (g *group) putHook(h *hook) {
	if h.heartbeat == 0 {
		h.heartbeat = time.Hour
	}
	if h.defaultResult == "" {
		h.defaultResult = "ABANDON" // "The default value is ABANDON" (PutLifecycleHookType$DefaultResult)
	}
	for i, old := range g.hooks {
		if old.name == h.name {
			g.hooks[i] = h
			return
		}
	}
	g.hooks = append(g.hooks, h)
}

// WaitingForHook returns the IDs of the group's instances in Terminating:Wait,
// oldest first.
func (s *Server) WaitingForHook(groupName string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	if g := s.groups[groupName]; g != nil {
		for _, i := range g.members {
			if i.lifecycle == "Terminating:Wait" {
				out = append(out, i.id)
			}
		}
	}
	return out
}

// Activities returns the group's scaling activities, oldest first (the API
// answers newest first).
func (s *Server) Activities(groupName string) []Activity {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Activity
	if g := s.groups[groupName]; g != nil {
		for _, a := range g.activities {
			out = append(out, a.Activity)
		}
	}
	return out
}

// FailLaunches makes the group's next times launches (0: every launch until
// ResumeLaunches or Clear) fail with message, as a launch EC2 has no capacity
// for does; an empty message is EC2's InsufficientInstanceCapacity text. Each
// failure is a Failed launch activity and the group retries with backoff. It
// panics on an unknown group.
func (s *Server) FailLaunches(groupName, message string, times int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	g := s.groups[groupName]
	if g == nil {
		panic(fmt.Sprintf("awsfake: FailLaunches: unknown group %q", groupName))
	}
	if message == "" {
		// The capacity error's text (user guide, "Troubleshoot Amazon EC2 Auto
		// Scaling: EC2 instance launch failures", "We currently do not have
		// sufficient <instance type> capacity in the Availability Zone you
		// requested").
		message = "We currently do not have sufficient t3.micro capacity in the Availability Zone you requested. " +
			"Our system will be working on provisioning additional capacity. Launching EC2 instance failed."
	}
	left := times
	if left <= 0 {
		left = -1
	}
	g.failRules = append(g.failRules, &failRule{message: message, left: left})
}

// ResumeLaunches removes the group's FailLaunches rules; the group's next retry
// can succeed.
func (s *Server) ResumeLaunches(groupName string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if g := s.groups[groupName]; g != nil {
		g.failRules = nil
	}
}

// SetInstanceHealth is the group's health check (EC2 status checks, or ELB for
// an ELB group) reporting status ("Healthy" or "Unhealthy") for the instance.
// Like the real check it is ignored while HealthCheck is suspended or the
// instance is within the group's HealthCheckGracePeriod (counted from when it
// entered service; user guide, "Set the health check grace period"), and then
// it returns false. An Unhealthy instance is terminated and replaced unless
// ReplaceUnhealthy (or Terminate) is suspended, protected or not. The API's
// SetInstanceHealth is a manual call, not gated by HealthCheck. It panics on an
// unknown instance or status.
func (s *Server) SetInstanceHealth(id, status string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	inst := s.instances[id]
	if inst == nil || inst.lifecycle == "" || status != "Healthy" && status != "Unhealthy" {
		panic(fmt.Sprintf("awsfake: SetInstanceHealth(%q, %q): unknown instance or status", id, status))
	}
	g := s.groups[inst.group]
	if g.isSuspended("HealthCheck") || inGrace(g, inst) {
		return false
	}
	inst.health = status
	s.reconcile(g)
	return true
}

// inGrace reports whether the instance is within its group's health check grace
// period: "the amount of time … that Amazon EC2 Auto Scaling waits before
// checking the health status of an EC2 instance that has come into service"
// (UpdateAutoScalingGroupType$HealthCheckGracePeriod, docs-2.json).
func inGrace(g *group, inst *instance) bool {
	if inst.lifecycle != "InService" {
		return g.grace > 0
	}
	return inst.inService.Add(g.grace).After(time.Now())
}

// AddScalingPolicy seeds a simple scaling policy of type ChangeInCapacity with
// this adjustment on the group (as PutScalingPolicy would); Alarm executes it.
// It panics on an unknown group.
func (s *Server) AddScalingPolicy(groupName, name string, adjustment int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	g := s.groups[groupName]
	if g == nil || name == "" {
		panic(fmt.Sprintf("awsfake: AddScalingPolicy(%q, %q): unknown group or empty name", groupName, name))
	}
	g.policies[name] = adjustment
}

// Alarm is a CloudWatch alarm notification executing the named policy. It does
// nothing and returns false while AlarmNotification is suspended ("Suspending
// AlarmNotification allows you to temporarily stop the group's target tracking,
// step, and simple scaling policies"; user guide, "Considerations"); otherwise
// the desired capacity changes by the policy's adjustment, kept within [Min,
// Max] (a scaling policy never takes the group beyond them; user guide, "Step
// and simple scaling policies"), and a scale-in follows the default termination
// policy, protection honoured. A suspended Launch or Terminate still stops the
// launches or terminations ("AlarmNotification is still active, but your Auto
// Scaling group can't initiate scale-out activities"; "How suspended processes
// affect other processes"). It panics on an unknown group or policy.
func (s *Server) Alarm(groupName, policy string) (executed bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	g := s.groups[groupName]
	adj, ok := 0, false
	if g != nil {
		adj, ok = g.policies[policy]
	}
	if !ok {
		panic(fmt.Sprintf("awsfake: Alarm(%q, %q): unknown group or policy", groupName, policy))
	}
	if g.isSuspended("AlarmNotification") {
		return false
	}
	want := min(max(g.desired+adj, g.min), g.max)
	g.setDesired(want, "AlarmNotification", fmt.Sprintf(
		"At %s a monitor alarm %s-alarm in state ALARM triggered policy %s changing the desired capacity from %d to %d. ",
		isoTime(time.Now()), policy, policy, g.desired, want))
	s.reconcile(g)
	return true
}

// RunScheduledAction is a scheduled action setting the group's desired capacity.
// It does nothing and returns false while ScheduledActions is suspended;
// otherwise like Alarm. It panics on an unknown group or a desired capacity
// outside [Min, Max] (AWS validates a scheduled action when it is put).
func (s *Server) RunScheduledAction(groupName string, desired int) (executed bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	g := s.groups[groupName]
	if g == nil || desired < g.min || desired > g.max {
		panic(fmt.Sprintf("awsfake: RunScheduledAction(%q, %d): unknown group or capacity out of bounds", groupName, desired))
	}
	if g.isSuspended("ScheduledActions") {
		return false
	}
	g.setDesired(desired, "ScheduledActions", fmt.Sprintf(
		"At %s a scheduled action update of AutoScalingGroup constraints to min: %d, max: %d, desired: %d changing the desired capacity from %d to %d. ",
		isoTime(time.Now()), g.min, g.max, desired, g.desired, desired))
	s.reconcile(g)
	return true
}

type refresh struct {
	id, status, reason string
	start, end         time.Time
}

// AddInstanceRefresh seeds an instance refresh on the group with this status
// (Pending, InProgress, Successful, Failed, Cancelling, Cancelled, …) and returns
// its ID. The fake does not replace instances for a refresh: a Pending one turns
// InProgress and stays so until cancelled. It panics on an unknown group or
// status.
func (s *Server) AddInstanceRefresh(groupName, status string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	g := s.groups[groupName]
	if g == nil || !slices.Contains([]string{"Pending", "InProgress", "Successful", "Failed", "Cancelling", "Cancelled",
		"RollbackInProgress", "RollbackFailed", "RollbackSuccessful"}, status) {
		panic(fmt.Sprintf("awsfake: AddInstanceRefresh(%q, %q): unknown group or status", groupName, status))
	}
	r := &refresh{id: requestID(), status: status, start: time.Now()}
	if !r.active() {
		r.end = r.start
	}
	g.refreshes = append(g.refreshes, r)
	return r.id
}

func (r *refresh) active() bool {
	return slices.Contains([]string{"Pending", "InProgress", "Cancelling", "RollbackInProgress"}, r.status)
}

// scalingActivityInProgress is the ScalingActivityInProgress fault: "The
// operation can't be performed because there are scaling activities in
// progress." (ScalingActivityInProgressFault, docs-2.json; code
// ScalingActivityInProgress, HTTP 400, api-2.json). The SDK's standard retryer
// does not retry it.
var scalingActivityInProgress = Fault{
	Code: "ScalingActivityInProgress", Status: http.StatusBadRequest,
	Message: "The operation can't be performed because there are scaling activities in progress.",
}

// ActivityInProgress makes the next times requests of action (0: all) fail with
// ScalingActivityInProgress (HTTP 400). No source says when Auto Scaling
// answers it (SetDesiredCapacity, UpdateAutoScalingGroup,
// TerminateInstanceInAutoScalingGroup and ExecutePolicy list it, api-2.json), so
// the fake never does on its own.
func (s *Server) ActivityInProgress(action string, times int) {
	f := scalingActivityInProgress
	f.Times = times
	s.Inject(action, f)
}
