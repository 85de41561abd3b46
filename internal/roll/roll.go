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
	"github.com/consul-rehydrate/consul-rehydrate/internal/plan"
)

// Provider is the cloud the roll launches and terminates servers in.
type Provider interface {
	// Images returns the images the filter allows.
	Images(ctx context.Context) ([]cloud.Image, error)
	// Instances returns the group's instances that are not terminated.
	Instances(ctx context.Context) ([]cloud.Instance, error)
	// Launch starts one server on the image; idempotent on actionID.
	Launch(ctx context.Context, imageID, actionID string) (cloud.Instance, error)
	// Terminate makes the instance's server leave and ends the instance, shrinking
	// the group; idempotent.
	Terminate(ctx context.Context, instanceID, actionID string) error
}

// Errors a caller maps to exit codes.
var (
	ErrConsul   = errors.New("consul")
	ErrCloud    = errors.New("cloud")
	ErrLockLost = coord.ErrLockLost
	ErrRefused  = errors.New("request refused")
)

// Trigger says what invoked the handler.
type Trigger struct {
	// EventID is the ID of the user event being handled, "" for a service watch.
	EventID string
	// Image is the image the event asked for, "" for the newest allowed.
	Image string
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

// Run handles one invocation.
func (r *Roller) Run(ctx context.Context, trig Trigger) error {
	if trig.EventID == "" {
		// Cheap when idle: a service watch with no roll in progress reads one key.
		rec, err := r.Store.Roll(ctx)
		if err != nil {
			return fmt.Errorf("%w: %w", ErrConsul, err)
		}
		if !rec.InProgress() {
			r.Log.Debug("no roll in progress")
			return nil
		}
	} else {
		rec, handled, bad, err := r.Store.Peek(ctx, trig.EventID)
		if err != nil {
			return fmt.Errorf("%w: %w", ErrConsul, err)
		}
		if handled {
			r.Log.Debug("event already handled", "event_id", trig.EventID)
			return nil
		}
		// Decide without the lock whether the event asks for a step at all. Refusing
		// a request (an image outside the filter, bad, or older) and finding nothing
		// to do take no step: they cost no lock, and a forged event leaves nothing
		// behind but the record that it was seen.
		in, err := r.observe(ctx, rec, bad, trig.Image, cluster.Observe)
		if err != nil {
			return err
		}
		switch st := plan.Next(in); st.Kind {
		case plan.Refuse:
			r.Log.Info("plan", "step", st.Kind, "image", st.Image, "reason", st.Reason)
			if err := r.markHandled(ctx, trig, "refused: "+st.Reason); err != nil {
				return err
			}
			return fmt.Errorf("%w: %s", ErrRefused, st.Reason)
		case plan.Nothing:
			r.Log.Info("plan", "step", st.Kind, "image", st.Image, "reason", st.Reason)
			return r.markHandled(ctx, trig, "nothing: "+st.Reason)
		}
	}

	held, err := r.Store.Lock(ctx, coord.LockOptions{
		TTL: r.Config.Lock.SessionTTL, Delay: r.Config.Lock.LockDelay, Wait: r.Config.Lock.Wait, Holder: r.Holder,
	})
	if errors.Is(err, coord.ErrLockHeld) {
		r.Log.Info("another handler holds the lock and takes the step")
		return nil
	}
	if err != nil {
		return fmt.Errorf("%w: %w", ErrConsul, err)
	}
	defer func() {
		if err := held.Release(); err != nil {
			r.Log.Warn("release lock", "error", err)
		}
	}()
	r.hook("locked")
	return r.step(held, trig)
}

// step runs under the lock: it plans, waits while a step is in progress (bounded),
// and takes at most one action.
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
	deadline := r.Now().Add(r.Config.Roll.LaunchTimeout)
	logged := ""
	for {
		rec, err := r.Store.Roll(ctx)
		if err != nil {
			return r.consulErr(ctx, err)
		}
		in, err := r.Observe(ctx, rec, trig.Image)
		if err != nil {
			return err
		}
		st := plan.Next(in)
		if st.String() != logged {
			r.Log.Info("plan", "step", st.Kind, "image", st.Image, "instance", st.Instance, "reason", st.Reason)
			logged = st.String()
		}
		switch st.Kind {
		case plan.Refuse:
			if err := r.markHandled(ctx, trig, "refused: "+st.Reason); err != nil {
				return err
			}
			return fmt.Errorf("%w: %s", ErrRefused, st.Reason)

		case plan.Nothing:
			return r.markHandled(ctx, trig, "nothing: "+st.Reason)

		case plan.Hold:
			// Record the roll, so that it is resumed once the cluster recovers instead of
			// the request being lost.
			if !rec.InProgress() {
				rec = &coord.Roll{Target: st.Image, Phase: coord.PhaseRolling, Started: r.Now()}
			}
			if n := len(rec.History); n == 0 || rec.History[n-1].Detail != st.Reason {
				rec.Add(r.entry(st, st.Reason))
				if err := r.Store.PutRoll(ctx, rec); err != nil {
					return r.consulErr(ctx, err)
				}
			}
			if err := r.markHandled(ctx, trig, "hold: "+st.Reason); err != nil {
				return err
			}
			trig.EventID = "" // handled: not again
			// Keep watching, bounded: a recovering server is back in the catalog (the
			// service watch's trigger) seconds before autopilot calls it healthy, and
			// nothing a watch sees changes then. Past the bound, the next membership
			// or health change resumes the roll.
			if r.Now().After(deadline) {
				r.Log.Info("still holding; the next change in the servers' membership or health resumes the roll")
				return nil
			}
			select {
			case <-ctx.Done():
				return r.consulErr(ctx, ctx.Err())
			case <-time.After(r.Config.Roll.PollInterval):
			}

		case plan.Done:
			rec.Phase = coord.PhaseDone
			rec.Add(r.entry(st, st.Reason))
			if err := r.Store.PutRoll(ctx, rec); err != nil {
				return r.consulErr(ctx, err)
			}
			r.Log.Info("roll done", "image", st.Image, "took", r.Now().Sub(rec.Started).Round(time.Second))
			if err := r.markHandled(ctx, trig, "done"); err != nil {
				return err
			}
			// A newer image may have appeared during the roll: look again.
			if next := plan.Next(withoutRoll(in)); next.Kind == plan.Launch {
				return r.fire(ctx, "a newer image than "+st.Image+" is allowed")
			}
			return nil

		case plan.Wait:
			if r.Now().After(deadline) {
				return r.fire(ctx, "gave up waiting: "+st.Reason)
			}
			select {
			case <-ctx.Done():
				return r.consulErr(ctx, ctx.Err())
			case <-time.After(r.Config.Roll.PollInterval):
			}

		case plan.Launch:
			// The roll is recorded before the launch: the new server's join fires the
			// service watch, and that handler must find the roll in progress (it may
			// join before the launch call returns).
			if !rec.InProgress() {
				rec = &coord.Roll{Target: st.Image, Phase: coord.PhaseRolling, Started: r.Now()}
				if err := r.Store.PutRoll(ctx, rec); err != nil {
					return r.consulErr(ctx, err)
				}
			}
			inst, err := r.act(held, st, func(ctx context.Context) (string, error) {
				inst, err := r.Cloud.Launch(ctx, st.Image, st.ActionID)
				return inst.ID, err
			})
			if err != nil {
				return err
			}
			rec.Add(r.entry(st, fmt.Sprintf("launched %s on %s to replace %s", inst, st.Image, st.Instance)))
			if err := r.Store.PutRoll(ctx, rec); err != nil {
				return r.consulErr(ctx, err)
			}
			if err := r.markHandled(ctx, trig, "launched "+inst); err != nil {
				return err
			}
			// Promotion to voter changes nothing a watch sees; make sure some handler
			// comes back to wait for it.
			return r.fire(ctx, "launched "+inst+"; wait for it to settle")

		case plan.Transfer:
			if _, err := r.act(held, st, func(ctx context.Context) (string, error) {
				_, err := r.Consul.Operator().RaftLeaderTransfer(st.TransferTo, (&api.QueryOptions{}).WithContext(ctx))
				return st.TransferTo, err
			}); err != nil {
				return err
			}
			if err := r.waitLeader(ctx, st.TransferTo); err != nil {
				return err
			}
			rec.Add(r.entry(st, "leadership moved to "+st.TransferTo))
			if err := r.Store.PutRoll(ctx, rec); err != nil {
				return r.consulErr(ctx, err)
			}
			// The transfer is half of retiring the leader: plan again and retire it.

		case plan.Retire, plan.Fail:
			if st.Instance == self {
				// This handler runs on the server to go: terminating it would cut the
				// handler off mid-step. Hand the step to another server.
				return r.fire(ctx, "handing off: this server is the one to "+string(st.Kind))
			}
			if _, err := r.act(held, st, func(ctx context.Context) (string, error) {
				return st.Instance, r.Cloud.Terminate(ctx, st.Instance, st.ActionID)
			}); err != nil {
				return err
			}
			if err := r.waitGone(ctx, instanceOf(in, st.Instance)); err != nil {
				return err
			}
			if st.Kind == plan.Fail {
				if err := r.Store.MarkBad(ctx, st.Image, st.Reason); err != nil {
					return r.consulErr(ctx, err)
				}
				rec.Phase, rec.Failure = coord.PhaseFailed, st.Reason
			}
			rec.Add(r.entry(st, fmt.Sprintf("%s %s", map[plan.Kind]string{plan.Retire: "retired", plan.Fail: "terminated failed"}[st.Kind], st.Instance)))
			if err := r.Store.PutRoll(ctx, rec); err != nil {
				return r.consulErr(ctx, err)
			}
			if err := r.markHandled(ctx, trig, string(st.Kind)+" "+st.Instance); err != nil {
				return err
			}
			if st.Kind == plan.Retire {
				return r.fire(ctx, "retired "+st.Instance+"; continue the roll")
			}
			return nil
		}
	}
}

// act records the intent, makes the call and records the result. Right before the
// call it verifies, with a consistent read, that the lock is still held: a handler
// that lost its lock never starts a call it cannot take back.
func (r *Roller) act(held *coord.Held, st plan.Step, call func(context.Context) (string, error)) (string, error) {
	ctx := held.Context()
	if ctx.Err() != nil { // a loss already known: not even the receipt
		return "", fmt.Errorf("before %s: %w", st.Kind, ErrLockLost)
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
		return "", fmt.Errorf("%w: %s: %w", ErrCloud, st.Kind, err)
	}
	r.hook("acted:" + string(st.Kind))
	rcpt.Result, rcpt.Finished = "ok: "+out, r.Now()
	if err := r.Store.PutReceipt(ctx, st.ActionID, rcpt); err != nil {
		return "", r.consulErr(ctx, err)
	}
	r.Log.Info("step taken", "step", st.Kind, "action_id", st.ActionID, "result", out)
	return out, nil
}

func (r *Roller) verify(held *coord.Held, st plan.Step) error {
	err := held.Verify()
	switch {
	case err == nil:
		return nil
	case errors.Is(err, coord.ErrLockLost):
		r.Log.Error("lock lost; stopping before the step", "step", st.Kind, "action_id", st.ActionID)
		return fmt.Errorf("before %s: %w", st.Kind, err)
	default:
		return fmt.Errorf("%w: before %s: %w", ErrConsul, st.Kind, err)
	}
}

// waitGone waits (bounded by leave_timeout) until the instance's server is out of the
// raft configuration.
func (r *Roller) waitGone(ctx context.Context, inst cloud.Instance) error {
	deadline := r.Now().Add(r.Config.Roll.LeaveTimeout)
	for {
		obs, err := cluster.ObserveRaft(ctx, r.Consul)
		if err != nil {
			return r.consulErr(ctx, err)
		}
		// Matched as the planner matches: a crashed server has lost its node meta.
		if (plan.Input{Cluster: obs}).Server(inst) == nil {
			return nil
		}
		if r.Now().After(deadline) {
			r.Log.Warn("server still in the raft configuration after leave_timeout; autopilot will clean it up", "instance", inst.ID)
			return nil
		}
		select {
		case <-ctx.Done():
			return r.consulErr(ctx, ctx.Err())
		case <-time.After(r.Config.Roll.PollInterval):
		}
	}
}

// waitLeader waits (bounded by leave_timeout) until the raft configuration names the
// server with raft ID id as leader, so the next plan sees the transfer.
func (r *Roller) waitLeader(ctx context.Context, id string) error {
	deadline := r.Now().Add(r.Config.Roll.LeaveTimeout)
	for {
		obs, err := cluster.ObserveRaft(ctx, r.Consul)
		if err != nil {
			return r.consulErr(ctx, err)
		}
		if l := obs.Leader(); l != nil && l.ID == id {
			return nil
		}
		if r.Now().After(deadline) {
			return fmt.Errorf("%w: leadership did not move to %s within %s", ErrConsul, id, r.Config.Roll.LeaveTimeout)
		}
		select {
		case <-ctx.Done():
			return r.consulErr(ctx, ctx.Err())
		case <-time.After(r.Config.Roll.PollInterval):
		}
	}
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
		return plan.Input{}, fmt.Errorf("%w: list instances: %w", ErrCloud, err)
	}
	imgs, err := r.Cloud.Images(ctx)
	if err != nil {
		return plan.Input{}, fmt.Errorf("%w: list images: %w", ErrCloud, err)
	}
	in := plan.Input{
		Now: r.Now(), Desired: r.Config.Servers,
		Stabilization: r.Config.Roll.Stabilization, LaunchTimeout: r.Config.Roll.LaunchTimeout,
		MaxTrailingLogs: uint64(r.Config.Roll.MaxTrailingLogs), AllowDowngrade: r.Config.Roll.AllowDowngrade,
		Cluster: obs, Instances: insts, Images: imgs, BadImages: map[string]bool{}, Requested: requested,
	}
	for id := range bad {
		in.BadImages[id] = true
	}
	if rec.InProgress() {
		in.RollTarget = rec.Target
	}
	return in, nil
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
	in.RollTarget, in.Requested = "", ""
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

// fire sends the event again so that some handler takes the next step.
func (r *Roller) fire(ctx context.Context, why string) error {
	_, _, err := r.Consul.Event().Fire(&api.UserEvent{Name: r.Config.Roll.EventName}, (&api.WriteOptions{}).WithContext(ctx))
	if err != nil {
		return r.consulErr(ctx, fmt.Errorf("fire %s: %w", r.Config.Roll.EventName, err))
	}
	r.Log.Info("fired the event again", "why", why)
	return nil
}

func (r *Roller) entry(st plan.Step, detail string) coord.Entry {
	return coord.Entry{Time: r.Now(), Step: string(st.Kind), Instance: st.Instance, Detail: detail}
}

// consulErr classifies an error met under the lock: a cancelled lock context means the
// lock was lost, anything else is Consul's.
func (r *Roller) consulErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%w: %w", ErrLockLost, err)
	}
	return fmt.Errorf("%w: %w", ErrConsul, err)
}

// hook marks a step boundary: in-process tests observe it through testHook, the
// crash tests kill the process there through the environment (see package fault).
func (r *Roller) hook(point string) {
	if r.testHook != nil {
		r.testHook(point)
	}
	fault.Point(point)
}
