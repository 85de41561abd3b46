// Package roll is the level-triggered reconciler: lock → observe → plan → act →
// record → unlock. Every invocation re-derives the state from Consul and the cloud
// and takes at most one step, so duplicated, replayed, reordered or lost invocations
// are harmless.
package roll

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/consul-rehydrate/consul-rehydrate/config"
	"github.com/consul-rehydrate/consul-rehydrate/internal/cloud"
	"github.com/consul-rehydrate/consul-rehydrate/internal/cluster"
	"github.com/consul-rehydrate/consul-rehydrate/internal/coord"
	"github.com/consul-rehydrate/consul-rehydrate/internal/fault"
	"github.com/consul-rehydrate/consul-rehydrate/internal/payload"
	"github.com/consul-rehydrate/consul-rehydrate/internal/plan"
	"github.com/consul-rehydrate/consul-rehydrate/internal/poll"
)

// Provider is the cloud the roll launches and terminates servers in.
type Provider interface {
	// Images returns the images the filter allows.
	Images(ctx context.Context) ([]cloud.Image, error)
	// Instances returns the group's instances that are not terminated.
	Instances(ctx context.Context) ([]cloud.Instance, error)
	// Launch starts one server on the image; idempotent on actionID. g is the
	// roll's record of the group (nil for a provider without one).
	Launch(ctx context.Context, imageID, actionID string, g *cloud.GroupState) (cloud.Instance, error)
	// Terminate makes the instance's server leave and ends the instance, shrinking
	// the group; idempotent.
	Terminate(ctx context.Context, instanceID, actionID string) error
	// Survey reports what the planner must weigh about the group: why it is not fit
	// for a roll taking about rollFor, its failed launches since since (none asked
	// for when since is zero), and its zones.
	Survey(ctx context.Context, since time.Time, rollFor time.Duration) (cloud.Survey, error)
	// Prepare reads, changing nothing, what a roll starting now would change on
	// the group and must restore; nil for a provider without a group to manage.
	Prepare(ctx context.Context) (*cloud.GroupState, error)
	// Begin makes the changes g records (suspends processes, protects the servers
	// from scale-in); idempotent, so a roll repeats it before every launch.
	Begin(ctx context.Context, g *cloud.GroupState) error
	// End undoes them: resumes the processes, restores MaxSize, and, for a failed
	// roll, the group's template version and desired capacity; idempotent.
	End(ctx context.Context, g *cloud.GroupState, failed bool) error
}

// Errors a caller maps to exit codes.
var (
	ErrConsul  = errors.New("consul")
	ErrCloud   = errors.New("cloud")
	ErrRefused = errors.New("request refused")
	// ErrLockLost means the lock was lost under the step: the handler stopped
	// before its next call it could not take back.
	ErrLockLost = coord.ErrLockLost
	// ErrTimedOut means the handler ran out of time (its context's deadline passed);
	// the lock was not lost, and the next trigger resumes the roll. An error that
	// wraps it also wraps context.DeadlineExceeded.
	ErrTimedOut = coord.ErrTimedOut
)

// Trigger says what invoked the handler.
type Trigger struct {
	// EventID is the ID of the user event being handled, "" for a service watch.
	// It must be a UUID, as Consul makes them (payload.CheckEventID): it becomes a
	// KV key segment.
	EventID string
	// Image is the image the event asked for, "" for the newest allowed.
	Image string
	// Continue marks a continuation, an event that requests nothing but the next
	// step of the roll in progress (payload.Request.Continue); Image is "" then.
	Continue bool
}

// Roller runs roll steps for one cluster.
type Roller struct {
	Config   *config.Config
	Consul   *api.Client
	Store    *coord.Store
	Cloud    Provider
	Log      hclog.Logger
	Now      func() time.Time
	Holder   string // names this handler in the lock, e.g. "spindown@node-1 pid 123"
	testHook func(point string)
}

// New returns a Roller with the store for cfg.Cluster.
func New(cfg *config.Config, c *api.Client, p Provider, log hclog.Logger) *Roller {
	host, _ := os.Hostname()
	return &Roller{
		Config: cfg, Consul: c, Store: coord.New(c, cfg.Cluster), Cloud: p, Log: log, Now: time.Now,
		Holder: fmt.Sprintf("%s pid %d", host, os.Getpid()),
	}
}

// Run handles one invocation. A lost lock stops it with ErrLockLost, a deadline
// with ErrTimedOut, each with its own log line.
func (r *Roller) Run(ctx context.Context, trig Trigger) error {
	err := r.run(ctx, trig)
	switch {
	case errors.Is(err, ErrLockLost):
		r.Log.Error("lock lost; stopping without another step: the next trigger plans afresh", "error", err)
	case errors.Is(err, ErrTimedOut):
		r.Log.Error("ran out of time; stopping: the next trigger resumes the roll", "error", err)
	}
	return err
}

func (r *Roller) run(ctx context.Context, trig Trigger) error {
	if trig.EventID == "" {
		// Cheap when idle: a service watch with no roll in progress reads one key.
		rec, err := r.Store.Roll(ctx)
		if err != nil {
			return r.consulErr(ctx, err)
		}
		if rec.Unreleased() {
			return r.release(ctx)
		}
		if !rec.InProgress() {
			r.Log.Debug("no roll in progress")
			return nil
		}
	} else {
		// Refused before anything reads or writes a key named after it; a bad
		// payload (it wraps payload.ErrBadPayload), so nothing is recorded.
		if err := payload.CheckEventID(trig.EventID); err != nil {
			return fmt.Errorf("refusing event: %w", err)
		}
		rec, handled, bad, err := r.Store.Peek(ctx, trig.EventID)
		if err != nil {
			return r.consulErr(ctx, err)
		}
		if handled {
			r.Log.Debug("event already handled", "event_id", trig.EventID)
			return nil
		}
		if rec.Unreleased() {
			// A roll ended without undoing its changes to the group (the handler
			// stopped between the two): undo them before anything else.
			if err := r.release(ctx); err != nil {
				return err
			}
			if rec, err = r.Store.Roll(ctx); err != nil {
				return r.consulErr(ctx, err)
			}
		}
		// Decide without the lock whether the event asks for a step at all. Refusing
		// a request (an image outside the filter, bad, or older) and finding nothing
		// to do take no step: they cost no lock, and a forged event leaves nothing
		// behind but the record that it was seen.
		in, err := r.observe(ctx, rec, bad, trig.Image, cluster.Observe)
		if err != nil {
			return err
		}
		in.Continue = trig.Continue
		switch st := plan.Next(in); st.Kind {
		case plan.Refuse:
			r.Log.Info("plan", "step", st.Kind, "image_id", st.Image, "reason", st.Reason)
			if err := r.markHandled(ctx, trig, "refused: "+st.Reason); err != nil {
				return err
			}
			return fmt.Errorf("%w: %s", ErrRefused, st.Reason)
		case plan.Nothing:
			r.Log.Info("plan", "step", st.Kind, "image_id", st.Image, "reason", st.Reason)
			return r.markHandled(ctx, trig, "nothing: "+st.Reason)
		}
	}

	return r.locked(ctx, trig.EventID, func(held *coord.Held) error {
		r.hook("locked")
		return r.step(held, trig)
	})
}

// locked runs f under the roll's lock. If another handler holds it, that handler
// takes the step and locked returns nil without running f, saying which event
// (eventID, "" for none) it leaves to the roll in progress: such an event is not
// recorded as handled.
func (r *Roller) locked(ctx context.Context, eventID string, f func(*coord.Held) error) error {
	held, err := r.Store.Lock(ctx, coord.LockOptions{
		TTL: r.Config.Lock.SessionTTL, Delay: r.Config.Lock.LockDelay, Wait: r.Config.Lock.Wait, Holder: r.Holder,
	})
	if errors.Is(err, coord.ErrLockHeld) {
		r.Log.Info("another handler holds the lock and takes the step", "event_id", eventID)
		return nil
	}
	if err != nil {
		return r.consulErr(ctx, err)
	}
	defer func() {
		if err := held.Release(); err != nil {
			r.Log.Warn("release lock", "error", err)
		}
	}()
	return f(held)
}

// release takes the lock and undoes a finished roll's changes to the group, if
// they are still not undone.
func (r *Roller) release(ctx context.Context) error {
	return r.locked(ctx, "", func(held *coord.Held) error {
		lctx := held.Context()
		rec, err := r.Store.Roll(lctx)
		if err != nil {
			return r.consulErr(lctx, err)
		}
		if !rec.Unreleased() {
			return nil
		}
		return r.endGroup(lctx, rec, rec.Phase == coord.PhaseFailed)
	})
}

// endGroup undoes the roll's changes to the group and records that it did.
func (r *Roller) endGroup(ctx context.Context, rec *coord.Roll, failed bool) error {
	if rec.Group == nil || rec.Group.Released {
		return nil
	}
	if err := r.Cloud.End(ctx, rec.Group, failed); err != nil {
		return r.cloudErr(ctx, fmt.Errorf("restore the group after the roll: %w", err))
	}
	rec.Group.Released = true
	if err := r.Store.PutRoll(ctx, rec); err != nil {
		return r.consulErr(ctx, err)
	}
	r.Log.Info("restored the group after the roll", "resumed", rec.Group.Suspended, "max_size", rec.Group.MaxSize)
	return nil
}

// next says what the step loop does after a step method: plan again, or stop.
type next bool

const (
	again next = true
	stop  next = false
)

// turn is one invocation's state under the lock, shared by the step methods.
type turn struct {
	*Roller
	held     *coord.Held
	ctx      context.Context // the lock's: it ends when the lock is lost or time runs out
	trig     Trigger
	self     string    // the instance this handler runs on
	deadline time.Time // bounds Hold and Wait
}

// step runs under the lock: it observes, plans, logs and hands the planned step to
// its method, until a method says stop. Only Hold and Wait (bounded by
// launch_timeout, polling) and Transfer (half of retiring the leader) plan again.
func (r *Roller) step(held *coord.Held, trig Trigger) error {
	ctx := held.Context()
	if trig.EventID != "" {
		// Another handler may have taken this event while we waited for the lock.
		if done, err := r.Store.Handled(ctx, trig.EventID); err != nil {
			return r.consulErr(ctx, err)
		} else if done {
			return nil
		}
	}
	self, err := r.selfInstance(ctx)
	if err != nil {
		return r.consulErr(ctx, err)
	}
	t := &turn{Roller: r, held: held, ctx: ctx, trig: trig, self: self, deadline: r.Now().Add(r.Config.Roll.LaunchTimeout)}
	logged := ""
	for {
		rec, err := r.Store.Roll(ctx)
		if err != nil {
			return r.consulErr(ctx, err)
		}
		in, err := r.Observe(ctx, rec, t.trig.Image)
		if err != nil {
			return err
		}
		in.Continue = t.trig.Continue
		st := plan.Next(in)
		if st.String() != logged {
			r.Log.Info("plan", "step", st.Kind, "image_id", st.Image, "instance_id", st.Instance, "reason", st.Reason)
			logged = st.String()
		}
		var then next
		switch st.Kind {
		case plan.Refuse:
			then, err = t.refuse(st)
		case plan.Nothing:
			then, err = t.nothing(st)
		case plan.Hold:
			then, err = t.hold(rec, in, st)
		case plan.Wait:
			then, err = t.wait(st)
		case plan.Done:
			then, err = t.done(rec, in, st)
		case plan.Launch:
			then, err = t.launch(rec, in, st)
		case plan.Transfer:
			then, err = t.transfer(rec, st)
		case plan.Retire, plan.Fail:
			then, err = t.retire(rec, in, st)
		default:
			return fmt.Errorf("plan: unknown step %q", st.Kind)
		}
		if err != nil || then == stop {
			return err
		}
	}
}

// refuse records the request as refused: an image outside the filter, bad, or
// older than the cluster's.
func (t *turn) refuse(st plan.Step) (next, error) {
	if err := t.markHandled(t.ctx, t.trig, "refused: "+st.Reason); err != nil {
		return stop, err
	}
	return stop, fmt.Errorf("%w: %s", ErrRefused, st.Reason)
}

// nothing records that the request needs no step.
func (t *turn) nothing(st plan.Step) (next, error) {
	return stop, t.markHandled(t.ctx, t.trig, "nothing: "+st.Reason)
}

// hold records the roll as held (the cluster is not healthy enough for a step), so
// that it is resumed once the cluster recovers instead of the request being lost,
// and keeps watching until launch_timeout.
func (t *turn) hold(rec *coord.Roll, in plan.Input, st plan.Step) (next, error) {
	if !rec.InProgress() {
		rec = rec.Next(st.Image, created(in, st.Image), t.Now())
	}
	if rec.Add(t.entry(st, st.Reason)) {
		if err := t.Store.PutRoll(t.ctx, rec); err != nil {
			return stop, t.consulErr(t.ctx, err)
		}
	}
	if err := t.markHandled(t.ctx, t.trig, "hold: "+st.Reason); err != nil {
		return stop, err
	}
	t.trig.EventID = "" // handled: not again
	// Keep watching, bounded: a recovering server is back in the catalog (the
	// service watch's trigger) seconds before autopilot calls it healthy, and
	// nothing a watch sees changes then. Past the bound, the next membership or
	// health change resumes the roll.
	if t.Now().After(t.deadline) {
		t.Log.Info("still holding; the next change in the servers' membership or health resumes the roll")
		return stop, nil
	}
	return t.pause()
}

// wait polls until the step in progress settles; past launch_timeout it fires the
// event again, so that a fresh handler (and plan) takes over.
func (t *turn) wait(st plan.Step) (next, error) {
	if t.Now().After(t.deadline) {
		return stop, t.handOff("gave up waiting: " + st.Reason)
	}
	return t.pause()
}

// handOff fires a continuation for another handler to take the roll's next step,
// then records the event as handled (why): it was taken under the lock, and the
// continuation carries the roll on, so a handler that sees it later must not take
// it again. Recorded only once the continuation is out: if the fire fails, the
// event stays unrecorded for another handler to take.
func (t *turn) handOff(why string) error {
	if err := t.fire(t.ctx, why, payload.NewContinuePayload()); err != nil {
		return err
	}
	return t.markHandled(t.ctx, t.trig, why)
}

// pause sleeps one poll interval before the loop plans again.
func (t *turn) pause() (next, error) {
	if err := poll.Sleep(t.ctx, t.Config.Roll.PollInterval); err != nil {
		return stop, t.consulErr(t.ctx, err)
	}
	return again, nil
}

// done records the roll as done, its target now the last completed one, and, if a
// newer image appeared meanwhile, fires a request to roll to it.
func (t *turn) done(rec *coord.Roll, in plan.Input, st plan.Step) (next, error) {
	if rec.TargetCreated.IsZero() { // a record from before it was kept
		rec.TargetCreated = created(in, rec.Target)
	}
	rec.Complete(t.Now())
	rec.Add(t.entry(st, st.Reason))
	if err := t.Store.PutRoll(t.ctx, rec); err != nil {
		return stop, t.consulErr(t.ctx, err)
	}
	if err := t.endGroup(t.ctx, rec, false); err != nil {
		return stop, err
	}
	t.Log.Info("roll done", "image_id", st.Image, "took", t.Now().Sub(rec.Started).Round(time.Second))
	if err := t.markHandled(t.ctx, t.trig, "done"); err != nil {
		return stop, err
	}
	after := withoutRoll(in)
	after.Completed = cloud.Image{ID: rec.Target, Created: rec.TargetCreated}
	if newer := plan.Next(after); newer.Kind == plan.Launch {
		// A plain request, not a continuation: no roll is in progress to continue.
		return stop, t.fire(t.ctx, "a newer image than "+st.Image+" is allowed", nil)
	}
	return stop, nil
}

// launch surges one server on the target image, recording the roll first.
func (t *turn) launch(rec *coord.Roll, in plan.Input, st plan.Step) (next, error) {
	// The roll is recorded before the launch: the new server's join fires the
	// service watch, and that handler must find the roll in progress (it may join
	// before the launch call returns).
	if !rec.InProgress() {
		rec = rec.Next(st.Image, created(in, st.Image), t.Now())
		if err := t.Store.PutRoll(t.ctx, rec); err != nil {
			return stop, t.consulErr(t.ctx, err)
		}
	}
	// What the roll changes on the group is recorded before it is changed, so that
	// a handler stopped in between leaves a record to restore from.
	if rec.Group == nil {
		g, err := t.Cloud.Prepare(t.ctx)
		if err != nil {
			return stop, t.cloudErr(t.ctx, fmt.Errorf("read the group before the roll: %w", err))
		}
		if g != nil {
			rec.Group = g
			if err := t.Store.PutRoll(t.ctx, rec); err != nil {
				return stop, t.consulErr(t.ctx, err)
			}
		}
	}
	if rec.Group != nil {
		if err := t.verify(t.held, st); err != nil {
			return stop, err
		}
		if err := t.Cloud.Begin(t.ctx, rec.Group); err != nil {
			return stop, t.cloudErr(t.ctx, fmt.Errorf("prepare the group for the roll: %w", err))
		}
	}
	asked := t.Now() // the entry is dated when the surge was asked for (see surgedAt)
	inst, err := t.act(t.held, st, func(ctx context.Context) (string, error) {
		inst, err := t.Cloud.Launch(ctx, st.Image, st.ActionID, rec.Group)
		return inst.ID, err
	})
	if err != nil {
		return stop, err
	}
	what := "to replace " + st.Instance
	if st.Instance == "" {
		what = "to rebalance the zones"
	}
	e := t.entry(st, fmt.Sprintf("launched %s on %s %s", inst, st.Image, what))
	e.Time = asked
	rec.Add(e)
	if err := t.Store.PutRoll(t.ctx, rec); err != nil {
		return stop, t.consulErr(t.ctx, err)
	}
	if err := t.markHandled(t.ctx, t.trig, "launched "+inst); err != nil {
		return stop, err
	}
	// Promotion to voter changes nothing a watch sees; make sure some handler comes
	// back to wait for it.
	return stop, t.fire(t.ctx, "launched "+inst+"; wait for it to settle", payload.NewContinuePayload())
}

// transfer moves leadership off the server to retire, and waits until the raft
// configuration shows it moved. It is half of retiring the leader: the loop plans
// again at once and retires it.
func (t *turn) transfer(rec *coord.Roll, st plan.Step) (next, error) {
	if _, err := t.act(t.held, st, func(ctx context.Context) (string, error) {
		_, err := t.Consul.Operator().RaftLeaderTransfer(st.TransferTo, (&api.QueryOptions{}).WithContext(ctx))
		return st.TransferTo, err
	}); err != nil {
		return stop, err
	}
	if err := t.waitLeader(t.ctx, st.TransferTo); err != nil {
		return stop, err
	}
	rec.Add(t.entry(st, "leadership moved to "+st.TransferTo))
	if err := t.Store.PutRoll(t.ctx, rec); err != nil {
		return stop, t.consulErr(t.ctx, err)
	}
	return again, nil
}

// retire terminates an outdated server (Retire) or a new one that failed (Fail,
// which also marks its image bad and the roll failed), waits until it is out of
// the raft configuration, and for a retire fires the event again to continue.
func (t *turn) retire(rec *coord.Roll, in plan.Input, st plan.Step) (next, error) {
	if st.Instance == t.self {
		// This handler runs on the server to go: terminating it would cut the handler
		// off mid-step. Hand the step to another server.
		return stop, t.handOff("handing off: this server is the one to " + string(st.Kind))
	}
	// A failed launch has no instance: the group never started one.
	if st.Instance != "" {
		if _, err := t.act(t.held, st, func(ctx context.Context) (string, error) {
			return st.Instance, t.Cloud.Terminate(ctx, st.Instance, st.ActionID)
		}); err != nil {
			return stop, err
		}
		if err := t.waitGone(t.ctx, instanceOf(in, st.Instance)); err != nil {
			return stop, err
		}
	}
	detail := fmt.Sprintf("%s %s", map[plan.Kind]string{plan.Retire: "retired", plan.Fail: "terminated failed"}[st.Kind], st.Instance)
	if st.Kind == plan.Fail {
		if err := t.Store.MarkBad(t.ctx, st.Image, st.Reason); err != nil {
			return stop, t.consulErr(t.ctx, err)
		}
		rec.Phase, rec.Failure = coord.PhaseFailed, st.Reason
		if st.Instance == "" {
			detail = "failed: " + st.Reason
		}
	}
	rec.Add(t.entry(st, detail))
	if err := t.Store.PutRoll(t.ctx, rec); err != nil {
		return stop, t.consulErr(t.ctx, err)
	}
	if st.Kind == plan.Fail {
		// The surge is undone (desired back to N), and the group goes back to the
		// template version it had, so that no replacement launches the bad image.
		if err := t.endGroup(t.ctx, rec, true); err != nil {
			return stop, err
		}
	}
	if err := t.markHandled(t.ctx, t.trig, string(st.Kind)+" "+st.Instance); err != nil {
		return stop, err
	}
	if st.Kind == plan.Retire {
		return stop, t.fire(t.ctx, "retired "+st.Instance+"; continue the roll", payload.NewContinuePayload())
	}
	return stop, nil
}

// act records the intent, makes the call and records the result. Right before the
// call it verifies, with a consistent read, that the lock is still held: a handler
// that lost its lock never starts a call it cannot take back.
func (r *Roller) act(held *coord.Held, st plan.Step, call func(context.Context) (string, error)) (string, error) {
	ctx := held.Context()
	if err := coord.Stopped(ctx, nil); err != nil { // an end already known: not even the receipt
		return "", fmt.Errorf("before %s: %w", st.Kind, err)
	}
	rcpt := &coord.Receipt{Intent: st.String(), Started: r.Now()}
	if err := r.Store.PutReceipt(ctx, st.ActionID, rcpt); err != nil {
		return "", r.consulErr(ctx, err)
	}
	r.hook("intent:" + string(st.Kind))
	if err := r.verify(held, st); err != nil {
		return "", err
	}
	out, err := call(ctx)
	if err != nil {
		// The step did not happen (or only its idempotent first part did): drop the
		// intent, so no receipt claims it; the next trigger takes the step afresh.
		if derr := r.Store.DeleteReceipt(ctx, st.ActionID); derr != nil {
			r.Log.Warn("drop receipt of failed action", "action_id", st.ActionID, "error", derr)
		}
		if st.Kind == plan.Transfer {
			return "", r.consulErr(ctx, fmt.Errorf("transfer leadership to %s: %w", st.TransferTo, err))
		}
		return "", r.cloudErr(ctx, fmt.Errorf("%s: %w", st.Kind, err))
	}
	r.hook("acted:" + string(st.Kind))
	rcpt.Result, rcpt.Finished = "ok: "+out, r.Now()
	if err := r.Store.PutReceipt(ctx, st.ActionID, rcpt); err != nil {
		return "", r.consulErr(ctx, err)
	}
	r.Log.Info("step taken", "step", st.Kind, "action_id", st.ActionID, "result", out)
	return out, nil
}

// verify confirms the lock right before the step's call. A lost lock (or a
// deadline) is classed by the lock context's cause, and logged by Run.
func (r *Roller) verify(held *coord.Held, st plan.Step) error {
	if err := held.Verify(); err != nil {
		return r.consulErr(held.Context(), fmt.Errorf("before %s: %w", st.Kind, err))
	}
	return nil
}

// waitGone waits (bounded by leave_timeout) until the instance's server is out of the
// raft configuration; past the bound it leaves the server to autopilot.
func (r *Roller) waitGone(ctx context.Context, inst cloud.Instance) error {
	err := poll.Until(ctx, r.Config.Roll.PollInterval, r.Config.Roll.LeaveTimeout, func(ctx context.Context) (bool, error) {
		obs, err := cluster.ObserveRaft(ctx, r.Consul)
		if err != nil {
			return false, err
		}
		// Matched as the planner matches: a crashed server has lost its node meta.
		return (plan.Input{Cluster: obs}).Server(inst) == nil, nil
	})
	switch {
	case err == nil:
		return nil
	case errors.Is(err, poll.ErrTimeout):
		r.Log.Warn("server still in the raft configuration after leave_timeout; autopilot will clean it up", "instance_id", inst.ID)
		return nil
	}
	return r.consulErr(ctx, err)
}

// waitLeader waits (bounded by leave_timeout) until the raft configuration names the
// server with raft ID id as leader, so the next plan sees the transfer.
func (r *Roller) waitLeader(ctx context.Context, id string) error {
	err := poll.Until(ctx, r.Config.Roll.PollInterval, r.Config.Roll.LeaveTimeout, func(ctx context.Context) (bool, error) {
		obs, err := cluster.ObserveRaft(ctx, r.Consul)
		if err != nil {
			return false, err
		}
		l := obs.Leader()
		return l != nil && l.ID == id, nil
	})
	switch {
	case err == nil:
		return nil
	case errors.Is(err, poll.ErrTimeout):
		return fmt.Errorf("%w: leadership did not move to %s within %s", ErrConsul, id, r.Config.Roll.LeaveTimeout)
	}
	return r.consulErr(ctx, err)
}

// Observe gathers everything the planner needs, the raft configuration included.
func (r *Roller) Observe(ctx context.Context, rec *coord.Roll, requested string) (plan.Input, error) {
	bad, err := r.Store.BadImages(ctx)
	if err != nil {
		return plan.Input{}, r.consulErr(ctx, err)
	}
	return r.observe(ctx, rec, bad, requested, cluster.ObserveRaft)
}

// observe is Observe with the bad images already read and the cluster observed by
// look: cluster.Observe to decide whether there is a step at all, cluster.ObserveRaft
// to take one (a step must not act on autopilot's view of a moment ago).
func (r *Roller) observe(ctx context.Context, rec *coord.Roll, bad map[string]string, requested string,
	look func(context.Context, *api.Client) (*cluster.Observation, error)) (plan.Input, error) {
	obs, err := look(ctx, r.Consul)
	if err != nil {
		return plan.Input{}, r.consulErr(ctx, err)
	}
	insts, err := r.Cloud.Instances(ctx)
	if err != nil {
		return plan.Input{}, r.cloudErr(ctx, fmt.Errorf("list instances: %w", err))
	}
	imgs, err := r.Cloud.Images(ctx)
	if err != nil {
		return plan.Input{}, r.cloudErr(ctx, fmt.Errorf("list images: %w", err))
	}
	surged := surgedAt(rec)
	sv, err := r.Cloud.Survey(ctx, surged, time.Duration(r.Config.Servers)*(r.Config.Roll.LaunchTimeout+r.Config.Roll.LeaveTimeout))
	if err != nil {
		return plan.Input{}, r.cloudErr(ctx, fmt.Errorf("survey the group: %w", err))
	}
	in := plan.Input{
		Now: r.Now(), Desired: r.Config.Servers,
		Stabilization: r.Config.Roll.Stabilization, LaunchTimeout: r.Config.Roll.LaunchTimeout,
		MaxTrailingLogs: uint64(r.Config.Roll.MaxTrailingLogs), AllowDowngrade: r.Config.Roll.AllowDowngrade,
		Cluster: obs, Instances: insts, Images: imgs, BadImages: map[string]bool{}, Requested: requested,
		Problems: sv.Problems, Surged: surged, LaunchFailures: sv.LaunchFailures, Zones: sv.Zones,
	}
	for id := range bad {
		in.BadImages[id] = true
	}
	if rec.InProgress() {
		in.RollTarget = rec.Target
	}
	if c := rec.LastCompleted(); c != nil {
		in.Completed = cloud.Image{ID: c.Image, Created: c.Created}
	}
	return in, nil
}

// surgedAt returns when the roll in progress first asked for the surge it is still
// waiting for: the earliest of the launch entries since the last retire (a surge
// that has not appeared is asked for again, idempotently, and must not restart the
// clock); zero if none.
func surgedAt(rec *coord.Roll) time.Time {
	var at time.Time
	if !rec.InProgress() {
		return at
	}
	for i := len(rec.History) - 1; i >= 0; i-- {
		switch plan.Kind(rec.History[i].Step) {
		case plan.Launch:
			at = rec.History[i].Time
		case plan.Retire, plan.Fail:
			return at
		}
	}
	return at
}

// created returns the creation time of the image with id as the provider listed
// it, zero if it did not.
func created(in plan.Input, id string) time.Time {
	for _, img := range in.Images {
		if img.ID == id {
			return img.Created
		}
	}
	return time.Time{}
}

// instanceOf returns the observed instance with id (its ID alone if it was not seen).
func instanceOf(in plan.Input, id string) cloud.Instance {
	for _, i := range in.Instances {
		if i.ID == id {
			return i
		}
	}
	return cloud.Instance{ID: id}
}

func withoutRoll(in plan.Input) plan.Input {
	in.RollTarget, in.Requested, in.Continue = "", "", false
	return in
}

// selfInstance returns the instance ID in the node meta of the agent we talk to.
func (r *Roller) selfInstance(ctx context.Context) (string, error) {
	self, err := r.Consul.Agent().Self()
	if err != nil {
		return "", fmt.Errorf("read agent self: %w", err)
	}
	id, _ := self["Meta"][cluster.MetaInstanceID].(string)
	return id, nil
}

func (r *Roller) markHandled(ctx context.Context, trig Trigger, result string) error {
	if trig.EventID == "" {
		return nil
	}
	if err := r.Store.MarkHandled(ctx, trig.EventID, result); err != nil {
		return r.consulErr(ctx, err)
	}
	return nil
}

// fire sends the event again so that some handler takes the next step: with a
// continuation's payload (payload.NewContinuePayload) while a roll is in progress,
// so that it never outweighs a request fired meanwhile; with none (a request for
// the newest allowed image) to start a new roll.
func (r *Roller) fire(ctx context.Context, why string, body []byte) error {
	_, _, err := r.Consul.Event().Fire(&api.UserEvent{Name: r.Config.Roll.EventName, Payload: body}, (&api.WriteOptions{}).WithContext(ctx))
	if err != nil {
		return r.consulErr(ctx, fmt.Errorf("fire %s: %w", r.Config.Roll.EventName, err))
	}
	r.Log.Info("fired the event again", "why", why)
	return nil
}

func (r *Roller) entry(st plan.Step, detail string) coord.Entry {
	return coord.Entry{Time: r.Now(), Step: string(st.Kind), Instance: st.Instance, Detail: detail}
}

// consulErr classes an error met talking to Consul: once ctx has ended, by why it
// ended (ErrLockLost for a lost lock, ErrTimedOut for a deadline; see
// coord.Stopped), and as Consul's otherwise.
func (r *Roller) consulErr(ctx context.Context, err error) error {
	if s := coord.Stopped(ctx, err); s != nil {
		return s
	}
	return fmt.Errorf("%w: %w", ErrConsul, err)
}

// cloudErr is consulErr for an error met talking to the cloud.
func (r *Roller) cloudErr(ctx context.Context, err error) error {
	if s := coord.Stopped(ctx, err); s != nil {
		return s
	}
	return fmt.Errorf("%w: %w", ErrCloud, err)
}

// hook marks a step boundary: in-process tests observe it through testHook, the
// crash tests kill the process there through the environment (see package fault).
func (r *Roller) hook(point string) {
	if r.testHook != nil {
		r.testHook(point)
	}
	fault.Point(point)
}
