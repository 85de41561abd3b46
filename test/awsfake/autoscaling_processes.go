package awsfake

import (
	"cmp"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"time"
)

// emptyResult is the Result element of an action whose output has no members.
type emptyResult struct{}

// processesParam reads a ScalingProcessQuery: the group and its
// ScalingProcesses, all of them when none is named ("If you omit this property,
// all processes are specified"; ScalingProcessQuery$ScalingProcesses,
// docs-2.json). An unknown process is a ValidationError and changes nothing.
func (s *Server) processesParam(p url.Values) (*group, []string, error) {
	g, err := s.findGroup(p)
	if err != nil {
		return nil, nil, err
	}
	names := list(p, "ScalingProcesses.member")
	for _, n := range names {
		if !slices.Contains(processNames, n) {
			// invented: the wording; the code is what Auto Scaling answers bad input with.
			return nil, nil, validationError("Process type %s is not a valid process type. Valid process types are: %v.", n, processNames)
		}
	}
	if len(names) == 0 {
		names = processNames
	}
	return g, names, nil
}

// suspendProcesses is SuspendProcesses. What a suspended process stops is
// modelled where the process runs (reconcile, startRebalance, Alarm,
// RunScheduledAction, SetInstanceHealth).
func (s *Server) suspendProcesses(p url.Values) (any, error) {
	g, names, err := s.processesParam(p)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	for _, n := range names {
		if _, ok := g.suspended[n]; !ok {
			g.suspended[n] = now
		}
	}
	return nil, nil
}

// resumeProcesses is ResumeProcesses; what the processes held back runs at once
// (e.g. "When Terminate resumes, the ReplaceUnhealthy process immediately starts
// running"; user guide, "How suspended processes affect other processes").
func (s *Server) resumeProcesses(p url.Values) (any, error) {
	g, names, err := s.processesParam(p)
	if err != nil {
		return nil, err
	}
	for _, n := range names {
		delete(g.suspended, n)
	}
	if g.rebalance != nil && g.rebalance.launch.Status == "Successful" {
		s.finishRebalance(g)
	}
	s.reconcile(g)
	return nil, nil
}

// setInstanceProtection is SetInstanceProtection: "If you exceed your maximum
// limit of instance IDs, which is 50 per Auto Scaling group, the call fails"
// (docs-2.json). Every instance must be in the group; otherwise nothing changes.
func (s *Server) setInstanceProtection(p url.Values) (any, error) {
	g, err := s.findGroup(p)
	if err != nil {
		return nil, err
	}
	ids := list(p, "InstanceIds.member")
	if len(ids) == 0 {
		return nil, required("instanceIds")
	}
	if len(ids) > 50 {
		return nil, apiErr(http.StatusBadRequest, "LimitExceeded", "The number of instance IDs, %d, exceeds the limit of 50.", len(ids))
	}
	protect, ok, err := boolParam(p, "ProtectedFromScaleIn")
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, required("protectedFromScaleIn")
	}
	var insts []*instance
	for _, id := range ids {
		inst := s.instances[id]
		if inst == nil || inst.group != g.name || inst.lifecycle == "" {
			return nil, validationError("The instance %s is not part of Auto Scaling group %s.", id, g.name)
		}
		insts = append(insts, inst)
	}
	for _, inst := range insts {
		inst.protected = protect
	}
	s.reconcile(g) // a scale-in that protection held back may now proceed
	return &emptyResult{}, nil
}

// setInstanceHealth is the manual SetInstanceHealth: it "respects the grace
// period" unless ShouldRespectGracePeriod is false (SetInstanceHealthQuery,
// docs-2.json); a call inside the grace period is accepted and ignored
// (invented: AWS documents the respect, not the answer). An Unhealthy instance
// is replaced as reconcile describes.
func (s *Server) setInstanceHealth(p url.Values) (any, error) {
	id, status := p.Get("InstanceId"), p.Get("HealthStatus")
	if id == "" {
		return nil, required("instanceId")
	}
	if status != "Healthy" && status != "Unhealthy" {
		return nil, validationError("Valid values for HealthStatus are Healthy and Unhealthy, not '%s'.", status)
	}
	respect, ok, err := boolParam(p, "ShouldRespectGracePeriod")
	if err != nil {
		return nil, err
	}
	if !ok {
		respect = true
	}
	inst := s.instances[id]
	if inst == nil || inst.lifecycle == "" || s.groups[inst.group] == nil {
		return nil, validationError("Instance Id not found - No managed instance found for instance ID: %s", id)
	}
	g := s.groups[inst.group]
	if respect && inGrace(g, inst) {
		return nil, nil
	}
	inst.health = status
	s.reconcile(g)
	return nil, nil
}

// putLifecycleHook is PutLifecycleHook: "Creates or updates a lifecycle hook"
// (docs-2.json); HeartbeatTimeout "The range is from 30 to 7200 seconds. The
// default value is 3600 seconds"; DefaultResult "CONTINUE | ABANDON … The
// default value is ABANDON".
func (s *Server) putLifecycleHook(p url.Values) (any, error) {
	g, err := s.findGroup(p)
	if err != nil {
		return nil, err
	}
	name := p.Get("LifecycleHookName")
	if name == "" {
		return nil, required("lifecycleHookName")
	}
	h := &hook{name: name}
	for _, old := range g.hooks {
		if old.name == name {
			*h = *old
		}
	}
	if p.Has("LifecycleTransition") {
		h.transition = p.Get("LifecycleTransition")
	}
	if h.transition != transitionLaunching && h.transition != transitionTerminating {
		return nil, validationError("Invalid Lifecycle Transition: '%s'. Valid values are %s and %s.", h.transition, transitionLaunching, transitionTerminating)
	}
	secs, ok, err := intParam(p, "HeartbeatTimeout")
	if err != nil {
		return nil, err
	}
	if ok {
		if secs < 30 || secs > 7200 {
			return nil, validationError("Heartbeat timeout must be between 30 and 7200 seconds, not %d.", secs)
		}
		h.heartbeat = time.Duration(secs) * time.Second
	}
	if p.Has("DefaultResult") {
		h.defaultResult = p.Get("DefaultResult")
		if h.defaultResult != "CONTINUE" && h.defaultResult != "ABANDON" {
			return nil, validationError("Valid values for DefaultResult are CONTINUE and ABANDON, not '%s'.", h.defaultResult)
		}
	}
	g.putHook(h)
	return &emptyResult{}, nil
}

type xmlHook struct {
	LifecycleHookName    string
	AutoScalingGroupName string
	LifecycleTransition  string
	HeartbeatTimeout     int
	GlobalTimeout        int
	DefaultResult        string
}

type describeLifecycleHooksResult struct {
	LifecycleHooks members[xmlHook]
}

func (s *Server) describeLifecycleHooks(p url.Values) (any, error) {
	g, err := s.findGroup(p)
	if err != nil {
		return nil, err
	}
	names := list(p, "LifecycleHookNames.member")
	out := &describeLifecycleHooksResult{}
	for _, h := range g.hooks {
		if len(names) > 0 && !slices.Contains(names, h.name) {
			continue
		}
		out.LifecycleHooks.Members = append(out.LifecycleHooks.Members, xmlHook{
			LifecycleHookName: h.name, AutoScalingGroupName: g.name, LifecycleTransition: h.transition,
			HeartbeatTimeout: int(h.heartbeat / time.Second),
			GlobalTimeout:    int(globalTimeout(h.heartbeat) / time.Second),
			DefaultResult:    h.defaultResult,
		})
	}
	return out, nil
}

// findAction finds the lifecycle action a CompleteLifecycleAction or
// RecordLifecycleActionHeartbeat names: by hook, and by LifecycleActionToken
// or InstanceId ("Completes the lifecycle action for the specified token or
// instance"; docs-2.json).
func (s *Server) findAction(p url.Values) (*group, *instance, *action, error) {
	g, err := s.findGroup(p)
	if err != nil {
		return nil, nil, nil, err
	}
	name := p.Get("LifecycleHookName")
	if name == "" {
		return nil, nil, nil, required("lifecycleHookName")
	}
	token, id := p.Get("LifecycleActionToken"), p.Get("InstanceId")
	if token == "" && id == "" {
		return nil, nil, nil, validationError("Either the LifecycleActionToken or the InstanceId must be specified.")
	}
	for _, inst := range g.members {
		if id != "" && inst.id != id {
			continue
		}
		for _, a := range inst.actions {
			if a.hook.name == name && (token == "" || a.token == token) {
				return g, inst, a, nil
			}
		}
	}
	if token != "" {
		return nil, nil, nil, validationError("No active Lifecycle Action found with token %s", token)
	}
	return nil, nil, nil, validationError("No active Lifecycle Action found with instance ID %s", id)
}

func (s *Server) completeLifecycleAction(p url.Values) (any, error) {
	result := p.Get("LifecycleActionResult")
	if result != "CONTINUE" && result != "ABANDON" {
		if result == "" {
			return nil, required("lifecycleActionResult")
		}
		return nil, validationError("Valid values for LifecycleActionResult are CONTINUE and ABANDON, not '%s'.", result)
	}
	g, inst, a, err := s.findAction(p)
	if err != nil {
		return nil, err
	}
	s.completeAction(g, inst, a, result)
	return &emptyResult{}, nil
}

// recordLifecycleActionHeartbeat "extends the timeout by the length of time
// defined using the PutLifecycleHook API call" (docs-2.json): the action's
// deadline restarts, but never past its global timeout.
func (s *Server) recordLifecycleActionHeartbeat(p url.Values) (any, error) {
	_, _, a, err := s.findAction(p)
	if err != nil {
		return nil, err
	}
	a.deadline = time.Now().Add(a.hook.heartbeat)
	if a.deadline.After(a.global) {
		a.deadline = a.global
	}
	return &emptyResult{}, nil
}

type describeScalingActivitiesResult struct {
	Activities members[xmlActivity]
	NextToken  string `xml:",omitempty"`
}

// describeScalingActivities is DescribeScalingActivities: "Activities are
// sorted by start time. Activities still in progress are described first"
// (ActivitiesType$Activities, docs-2.json) — newest first, as AWS answers.
// MaxRecords: "The default value is 100 and the maximum value is 100".
func (s *Server) describeScalingActivities(p url.Values) (any, error) {
	name := p.Get("AutoScalingGroupName")
	ids := list(p, "ActivityIds.member")
	type entry struct {
		g *group
		a *activity
	}
	var all []entry
	for _, g := range s.groups {
		if name != "" && g.name != name {
			continue // invented: an unknown group has no activities, not an error
		}
		for _, a := range g.activities {
			if len(ids) == 0 || slices.Contains(ids, a.ID) {
				all = append(all, entry{g, a})
			}
		}
	}
	done := func(a *activity) bool {
		return slices.Contains([]string{"Successful", "Failed", "Cancelled"}, a.Status)
	}
	slices.SortStableFunc(all, func(x, y entry) int {
		if dx, dy := done(x.a), done(y.a); dx != dy {
			if dx {
				return 1
			}
			return -1
		}
		return cmp.Or(y.a.Start.Compare(x.a.Start), cmp.Compare(y.a.ID, x.a.ID))
	})
	page, next, err := paginate(all, p, 100)
	if err != nil {
		return nil, err
	}
	out := &describeScalingActivitiesResult{NextToken: next}
	for _, e := range page {
		out.Activities.Members = append(out.Activities.Members, xmlActivityOf(e.g, e.a))
	}
	return out, nil
}

// paginate applies MaxRecords (1 to limit, default limit) and NextToken (an
// offset the fake made) to items.
func paginate[T any](items []T, p url.Values, limit int) ([]T, string, error) {
	n, ok, err := intParam(p, "MaxRecords")
	if err != nil {
		return nil, "", err
	}
	if !ok {
		n = limit
	}
	if n < 1 || n > limit {
		return nil, "", validationError("MaxRecords must be between 1 and %d, not %d.", limit, n)
	}
	from := 0
	if t := p.Get("NextToken"); t != "" {
		from, err = strconv.Atoi(t)
		if err != nil || from < 0 || from > len(items) {
			return nil, "", apiErr(http.StatusBadRequest, "InvalidNextToken", "The token '%s' is invalid.", t)
		}
	}
	to := min(from+n, len(items))
	next := ""
	if to < len(items) {
		next = strconv.Itoa(to)
	}
	return items[from:to], next, nil
}

type instanceRefreshIDResult struct {
	InstanceRefreshID string `xml:"InstanceRefreshId"`
}

// startInstanceRefresh records a refresh; the fake does not carry it out (see
// AddInstanceRefresh). One already active is InstanceRefreshInProgress ("an
// active instance refresh already exists"; InstanceRefreshInProgressFault,
// docs-2.json).
func (s *Server) startInstanceRefresh(p url.Values) (any, error) {
	g, err := s.findGroup(p)
	if err != nil {
		return nil, err
	}
	for _, r := range g.refreshes {
		if r.active() {
			return nil, apiErr(http.StatusBadRequest, "InstanceRefreshInProgress",
				"An Instance Refresh is already in progress and blocks the execution of this Instance Refresh.")
		}
	}
	r := &refresh{id: requestID(), status: "Pending", start: time.Now()}
	g.refreshes = append(g.refreshes, r)
	return &instanceRefreshIDResult{r.id}, nil
}

// cancelInstanceRefresh: "If an instance refresh or rollback is not in progress,
// an ActiveInstanceRefreshNotFound error occurs" (docs-2.json). The refresh is
// Cancelling, then Cancelled.
func (s *Server) cancelInstanceRefresh(p url.Values) (any, error) {
	g, err := s.findGroup(p)
	if err != nil {
		return nil, err
	}
	for _, r := range g.refreshes {
		if r.status == "Pending" || r.status == "InProgress" {
			r.status = "Cancelling"
			return &instanceRefreshIDResult{r.id}, nil
		}
	}
	return nil, apiErr(http.StatusBadRequest, "ActiveInstanceRefreshNotFound",
		"No in progress or pending Instance Refresh found for Auto Scaling group %s", g.name)
}

type xmlRefresh struct {
	InstanceRefreshID    string `xml:"InstanceRefreshId"`
	AutoScalingGroupName string
	Status               string
	StatusReason         string `xml:",omitempty"`
	StartTime            string
	EndTime              string `xml:",omitempty"`
	PercentageComplete   int
	InstancesToUpdate    int
}

type describeInstanceRefreshesResult struct {
	InstanceRefreshes members[xmlRefresh]
	NextToken         string `xml:",omitempty"`
}

// describeInstanceRefreshes lists the group's refreshes, newest first (invented:
// the order; docs-2.json states none). MaxRecords: "The default value is 50
// and the maximum value is 100".
func (s *Server) describeInstanceRefreshes(p url.Values) (any, error) {
	g, err := s.findGroup(p)
	if err != nil {
		return nil, err
	}
	ids := list(p, "InstanceRefreshIds.member")
	var rs []*refresh
	for i := len(g.refreshes) - 1; i >= 0; i-- {
		if r := g.refreshes[i]; len(ids) == 0 || slices.Contains(ids, r.id) {
			rs = append(rs, r)
		}
	}
	if !p.Has("MaxRecords") {
		p = cloneValues(p)
		p.Set("MaxRecords", "50")
	}
	page, next, err := paginate(rs, p, 100)
	if err != nil {
		return nil, err
	}
	out := &describeInstanceRefreshesResult{NextToken: next}
	for _, r := range page {
		x := xmlRefresh{
			InstanceRefreshID: r.id, AutoScalingGroupName: g.name, Status: r.status, StatusReason: r.reason,
			StartTime: isoTime(r.start), InstancesToUpdate: g.liveCount(),
		}
		if !r.end.IsZero() {
			x.EndTime = isoTime(r.end)
		}
		if r.status == "Successful" {
			x.PercentageComplete, x.InstancesToUpdate = 100, 0
		}
		out.InstanceRefreshes.Members = append(out.InstanceRefreshes.Members, x)
	}
	return out, nil
}

type describeWarmPoolResult struct {
	WarmPoolConfiguration *xmlWarmPool
	Instances             members[xmlGroupInstance]
}

// describeWarmPool shows the group's warm pool configuration (empty when it has
// none); the fake's warm pools hold no instances.
func (s *Server) describeWarmPool(p url.Values) (any, error) {
	g, err := s.findGroup(p)
	if err != nil {
		return nil, err
	}
	out := &describeWarmPoolResult{}
	if g.warmPool {
		out.WarmPoolConfiguration = &xmlWarmPool{PoolState: "Stopped"}
	}
	return out, nil
}
