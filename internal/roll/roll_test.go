package roll

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/consul-rehydrate/consul-rehydrate/config"
	"github.com/consul-rehydrate/consul-rehydrate/internal/cloud"
	"github.com/consul-rehydrate/consul-rehydrate/internal/cloud/local"
	"github.com/consul-rehydrate/consul-rehydrate/internal/coord"
	"github.com/consul-rehydrate/consul-rehydrate/internal/payload"
	"github.com/consul-rehydrate/consul-rehydrate/internal/plan"
	"github.com/consul-rehydrate/consul-rehydrate/internal/poll"
	"github.com/consul-rehydrate/consul-rehydrate/test/testcluster"
)

// newLocalRoller starts a 3-server local cluster on image A, registers B, and returns
// a Roller for it (no watches: the test alone invokes it).
func newLocalRoller(t *testing.T) (*Roller, *local.Provider, *api.Client) {
	t.Helper()
	bin, err := testcluster.ConsulBinary()
	require.NoError(t, err)
	p, err := local.New(local.Config{
		StateDir: filepath.Join(t.TempDir(), "state"), ConsulBinary: bin, Addresses: testcluster.AllocateBlock(t).Prefix(),
	})
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, p.Down(context.Background())) })
	ctx := t.Context()
	_, err = p.RegisterImage(ctx, "A", local.ImageOptions{})
	require.NoError(t, err)
	_, err = p.Up(ctx, 3, "A")
	require.NoError(t, err)
	_, err = p.RegisterImage(ctx, "B", local.ImageOptions{})
	require.NoError(t, err)

	// The cluster runs with TLS and ACLs: the client agent over HTTPS, with the
	// operator's (management) token.
	ac, err := p.APIConfig()
	require.NoError(t, err)
	c, err := api.NewClient(ac)
	require.NoError(t, err)

	cfg := config.Default()
	cfg.Cluster, cfg.Servers = "t", 3
	cfg.Lock.SessionTTL, cfg.Lock.LockDelay, cfg.Lock.Wait = 10*time.Second, 0, 25*time.Second
	cfg.Roll.PollInterval = 200 * time.Millisecond
	log := hclog.New(&hclog.LoggerOptions{Name: t.Name(), Output: testWriter{t}})
	return New(cfg, c, p, log), p, c
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) { w.t.Log(string(b)); return len(b), nil }

// TestRun_LostLockStopsBeforeTheNextCallItCannotTakeBack destroys the handler's
// session right after it recorded its intent to launch, before the launch: the
// handler must notice (by reading the lock key, not by luck of timing), stop with
// ErrLockLost, and launch nothing.
func TestRun_LostLockStopsBeforeTheNextCallItCannotTakeBack(t *testing.T) {
	r, p, c := newLocalRoller(t)
	ctx := t.Context()
	destroyed := ""
	r.testHook = func(point string) {
		if point != "intent:launch" {
			return
		}
		kv, _, err := c.KV().Get(r.Store.Key("lock"), &api.QueryOptions{RequireConsistent: true})
		require.NoError(t, err)
		require.NotNil(t, kv)
		require.NotEmpty(t, kv.Session)
		_, err = c.Session().Destroy(kv.Session, nil)
		require.NoError(t, err)
		destroyed = kv.Session
	}

	err := r.Run(ctx, Trigger{EventID: "00000000-0000-0000-0000-0000000000aa", Image: "B"})
	require.ErrorIs(t, err, ErrLockLost)
	require.NotEmpty(t, destroyed, "the hook ran: the handler got as far as the launch")
	insts, err := p.Instances(ctx)
	require.NoError(t, err)
	assert.Len(t, insts, 3, "nothing launched")
	for _, i := range insts {
		assert.Equal(t, "A", i.ImageID)
	}
	handled, err := r.Store.Handled(ctx, "00000000-0000-0000-0000-0000000000aa")
	require.NoError(t, err)
	assert.False(t, handled, "the event is not marked handled, so a redelivery may take it")

	// The next trigger takes the step: the roll resumes.
	r.testHook = nil
	require.NoError(t, r.Run(ctx, Trigger{EventID: "00000000-0000-0000-0000-0000000000ab"}))
	insts, err = p.Instances(ctx)
	require.NoError(t, err)
	assert.Len(t, insts, 4, "the next trigger launched the surge")
}

// TestRun_LockLostUnderADeadlineIsErrLockLostNotErrTimedOut destroys the handler's
// session as soon as it holds the lock, under a context whose deadline is far off:
// the handler must stop with ErrLockLost, never taken for running out of time, and
// launch nothing.
func TestRun_LockLostUnderADeadlineIsErrLockLostNotErrTimedOut(t *testing.T) {
	r, p, c := newLocalRoller(t)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	destroyed := false
	r.testHook = func(point string) {
		if point != "locked" {
			return
		}
		kv, _, err := c.KV().Get(r.Store.Key("lock"), &api.QueryOptions{RequireConsistent: true})
		require.NoError(t, err)
		require.NotNil(t, kv)
		_, err = c.Session().Destroy(kv.Session, nil)
		require.NoError(t, err)
		// The session's end deletes the key; the lock's watch sees that.
		require.NoError(t, poll.Until(ctx, 10*time.Millisecond, 20*time.Second, func(context.Context) (bool, error) {
			kv, _, err := c.KV().Get(r.Store.Key("lock"), &api.QueryOptions{RequireConsistent: true})
			return kv == nil, err
		}))
		destroyed = true
	}

	err := r.Run(ctx, Trigger{EventID: "00000000-0000-0000-0000-0000000000ba", Image: "B"})
	require.True(t, destroyed, "the hook ran: the handler took the lock")
	require.ErrorIs(t, err, ErrLockLost)
	require.NotErrorIs(t, err, ErrTimedOut)
	require.NotErrorIs(t, err, context.DeadlineExceeded)
	require.NoError(t, ctx.Err(), "the deadline had not passed")
	insts, err := p.Instances(t.Context())
	require.NoError(t, err)
	assert.Len(t, insts, 3, "nothing launched")
}

// TestRun_DeadlineUnderTheLockIsErrTimedOutNotErrLockLost lets the handler's
// deadline pass while it holds the lock: it must stop with ErrTimedOut (and
// context.DeadlineExceeded), not ErrLockLost or ErrConsul, launch nothing, leave
// the event for the next trigger and give the lock up.
func TestRun_DeadlineUnderTheLockIsErrTimedOutNotErrLockLost(t *testing.T) {
	r, p, _ := newLocalRoller(t)
	// Long enough to reach the lock on a loaded machine (it takes milliseconds).
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	locked := false
	r.testHook = func(point string) {
		if point == "locked" {
			locked = true
			<-ctx.Done() // the handler is slow under the lock until its time is up
		}
	}

	err := r.Run(ctx, Trigger{EventID: "00000000-0000-0000-0000-0000000000bb", Image: "B"})
	require.True(t, locked, "the handler reached the lock before its deadline")
	require.ErrorIs(t, err, ErrTimedOut)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.NotErrorIs(t, err, ErrLockLost, "running out of time is not losing the lock")
	require.NotErrorIs(t, err, ErrConsul)

	bg := t.Context()
	insts, err := p.Instances(bg)
	require.NoError(t, err)
	assert.Len(t, insts, 3, "nothing launched")
	handled, err := r.Store.Handled(bg, "00000000-0000-0000-0000-0000000000bb")
	require.NoError(t, err)
	assert.False(t, handled, "the event is left for a redelivery")
	holder, err := r.Store.Holder(bg)
	require.NoError(t, err)
	assert.Empty(t, holder, "the lock was released, not lost")
}

// TestRun_RefusesAnEventIDThatIsNotAUUIDBeforeTalkingToConsul: an event's ID
// becomes a KV key segment, so a forged one is refused as a bad payload before
// any key is read or written (the client here points where nothing listens: any
// call would fail as a Consul error instead).
func TestRun_RefusesAnEventIDThatIsNotAUUIDBeforeTalkingToConsul(t *testing.T) {
	ac := api.DefaultNonPooledConfig()
	ac.Address, ac.Token = "127.0.0.1:1", ""
	c, err := api.NewClient(ac)
	require.NoError(t, err)
	cfg := config.Default()
	cfg.Cluster, cfg.Servers = "t", 3
	r := New(cfg, c, nil, hclog.NewNullLogger())
	for _, id := range []string{"e1", "../roll", "00000000-0000-0000-0000-00000000000/", "00000000-0000-0000-0000-0000000000AA"} {
		err := r.Run(t.Context(), Trigger{EventID: id})
		require.ErrorIs(t, err, payload.ErrBadPayload, id)
		assert.NotErrorIs(t, err, ErrConsul, id)
		assert.Contains(t, err.Error(), "is not a UUID", id)
	}
}

// TestRun_HandlersReFireContinuationsAndKeepTheTargetsAge: with no roll in
// progress a continuation does nothing; a launch records the roll with its
// target's creation time (so its completion is known even if the image leaves
// the filter) and re-fires a continuation, which requests nothing and so never
// outweighs an operator's request in a watch's batch (payload.Pick).
func TestRun_HandlersReFireContinuationsAndKeepTheTargetsAge(t *testing.T) {
	r, p, c := newLocalRoller(t)
	ctx := t.Context()
	const idle, req = "00000000-0000-0000-0000-0000000000c0", "00000000-0000-0000-0000-0000000000c1"

	require.NoError(t, r.Run(ctx, Trigger{EventID: idle, Continue: true}))
	kv, _, err := c.KV().Get(r.Store.Key("events/"+idle), nil)
	require.NoError(t, err)
	require.NotNil(t, kv)
	assert.Equal(t, "nothing: a continuation, and no roll is in progress to continue", string(kv.Value))
	rec, err := r.Store.Roll(ctx)
	require.NoError(t, err)
	assert.Nil(t, rec, "no roll started")

	require.NoError(t, r.Run(ctx, Trigger{EventID: req, Image: "B"}))
	rec, err = r.Store.Roll(ctx)
	require.NoError(t, err)
	require.True(t, rec.InProgress())
	imgs, err := p.Images(ctx)
	require.NoError(t, err)
	for _, img := range imgs {
		if img.ID == "B" {
			assert.True(t, img.Created.Equal(rec.TargetCreated), "the record keeps B's creation time")
		}
	}
	assert.False(t, rec.TargetCreated.IsZero())
	assert.Nil(t, rec.Completed, "nothing completed yet")

	var fired *api.UserEvent
	require.NoError(t, poll.Until(ctx, 100*time.Millisecond, 20*time.Second, func(context.Context) (bool, error) {
		events, _, err := c.Event().List(r.Config.Roll.EventName, nil)
		if err != nil {
			return false, err
		}
		for _, ev := range events {
			fired = ev
		}
		return fired != nil, nil
	}), "the handler re-fired the event after the launch")
	got, err := payload.ParseRequest(fired, r.Config.Roll.EventName)
	require.NoError(t, err)
	assert.Equal(t, payload.Request{Continue: true}, got, "a continuation")
}

// TestSurgedAt_IsWhenTheSurgeStillAwaitedWasFirstAskedFor: a surge that has not
// appeared is asked for again (idempotently); the clock for its failed launches
// must not restart each time, or a launch failing for ever never fails the roll.
func TestSurgedAt_IsWhenTheSurgeStillAwaitedWasFirstAskedFor(t *testing.T) {
	t0 := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	at := func(m int, step plan.Kind) coord.Entry {
		return coord.Entry{Time: t0.Add(time.Duration(m) * time.Minute), Step: string(step)}
	}
	for _, tc := range []struct {
		name    string
		phase   string
		history []coord.Entry
		want    time.Time
	}{
		{"no launch yet", coord.PhaseRolling, []coord.Entry{at(0, plan.Hold)}, time.Time{}},
		{"asked once", coord.PhaseRolling, []coord.Entry{at(1, plan.Launch), at(2, plan.Wait)}, t0.Add(time.Minute)},
		{"asked again and again", coord.PhaseRolling, []coord.Entry{at(1, plan.Launch), at(2, plan.Launch), at(3, plan.Launch)}, t0.Add(time.Minute)},
		{"a retire answered the earlier ones", coord.PhaseRolling, []coord.Entry{at(1, plan.Launch), at(2, plan.Transfer), at(3, plan.Retire), at(4, plan.Launch), at(5, plan.Launch)}, t0.Add(4 * time.Minute)},
		{"answered, none asked since", coord.PhaseRolling, []coord.Entry{at(1, plan.Launch), at(3, plan.Retire)}, time.Time{}},
		{"not rolling", coord.PhaseDone, []coord.Entry{at(1, plan.Launch)}, time.Time{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, surgedAt(&coord.Roll{Phase: tc.phase, History: tc.history}))
		})
	}
}

// groupSpy is the local provider with a group to restore: it counts End calls.
type groupSpy struct {
	*local.Provider
	ends []bool
}

func (g *groupSpy) End(_ context.Context, _ *cloud.GroupState, failed bool) error {
	g.ends = append(g.ends, failed)
	return nil
}

// TestRun_AHandlerRestoresTheGroupOfARollThatEndedUnrestored: a roll that ended
// (done, or failed) with its changes to the group not undone (its handler stopped
// in between) is restored by the next handler, even a service watch's with no
// roll in progress, and only once.
func TestRun_AHandlerRestoresTheGroupOfARollThatEndedUnrestored(t *testing.T) {
	t.Parallel()
	r, p, _ := newLocalRoller(t)
	spy := &groupSpy{Provider: p}
	r.Cloud = spy
	ctx := t.Context()
	for _, phase := range []string{coord.PhaseDone, coord.PhaseFailed} {
		spy.ends = nil
		rec := &coord.Roll{Target: "B", Phase: phase, Started: time.Now(), Group: &cloud.GroupState{Suspended: []string{"AZRebalance"}, MaxSize: 3, TemplateVersion: "4"}}
		require.NoError(t, r.Store.PutRoll(ctx, rec))
		require.NoError(t, r.Run(ctx, Trigger{}))
		assert.Equal(t, []bool{phase == coord.PhaseFailed}, spy.ends, phase)
		got, err := r.Store.Roll(ctx)
		require.NoError(t, err)
		require.NotNil(t, got.Group)
		assert.True(t, got.Group.Released, phase)
		require.NoError(t, r.Run(ctx, Trigger{}))
		assert.Len(t, spy.ends, 1, "%s: restored once", phase)
	}
}

// TestRun_AHandlerOnTheServerToRetireHandsOffAndRecordsItsEvent: a handler that runs
// on the server the roll retires next cannot terminate it (it would cut itself off
// mid-step). It fires a continuation for another server's handler, and records its
// event as handled: the event was taken under the lock, so a handler that sees it
// later must not take it again, and an operator can tell what became of it. Nothing
// is terminated.
func TestRun_AHandlerOnTheServerToRetireHandsOffAndRecordsItsEvent(t *testing.T) {
	t.Parallel()
	r, p, c := newLocalRoller(t)
	ctx := t.Context()
	const req, dup = "00000000-0000-0000-0000-0000000000d0", "00000000-0000-0000-0000-0000000000d1"
	require.NoError(t, r.Run(ctx, Trigger{EventID: req, Image: "B"}), "launches the surge")

	// Once the surge is a stable voter, the roll retires (or first moves
	// leadership off) an outdated server: the handler to test runs on that one.
	var st plan.Step
	require.NoError(t, poll.Until(ctx, 200*time.Millisecond, time.Minute, func(ctx context.Context) (bool, error) {
		rec, err := r.Store.Roll(ctx)
		if err != nil {
			return false, err
		}
		in, err := r.Observe(ctx, rec, "B")
		if err != nil {
			return false, err
		}
		st = plan.Next(in)
		return st.Kind == plan.Retire || st.Kind == plan.Transfer, nil
	}), "the surge settles")
	before, err := p.Instances(ctx)
	require.NoError(t, err)
	addr := ""
	for _, in := range before {
		if in.ID == st.Instance {
			addr = in.Address
		}
	}
	require.NotEmpty(t, addr, "%s is an instance", st.Instance)
	ac, err := p.APIConfig()
	require.NoError(t, err)
	ac.Address = addr + ":8501"
	ac.TLSConfig.Address = "server." + local.DefaultDatacenter + ".consul"
	sc, err := api.NewClient(ac)
	require.NoError(t, err)
	on := New(r.Config, sc, p, r.Log)
	events, _, err := c.Event().List(r.Config.Roll.EventName, nil)
	require.NoError(t, err)

	require.NoError(t, on.Run(ctx, Trigger{EventID: dup, Image: "B"}))
	kv, _, err := c.KV().Get(r.Store.Key("events/"+dup), &api.QueryOptions{RequireConsistent: true})
	require.NoError(t, err)
	require.NotNil(t, kv, "the event is recorded")
	assert.Equal(t, "handing off: this server is the one to retire", string(kv.Value))
	after, err := p.Instances(ctx)
	require.NoError(t, err)
	assert.Len(t, after, len(before), "nothing terminated")
	var more []*api.UserEvent
	require.NoError(t, poll.Until(ctx, 100*time.Millisecond, 20*time.Second, func(context.Context) (bool, error) {
		more, _, err = c.Event().List(r.Config.Roll.EventName, nil)
		return len(more) > len(events), err
	}), "an event reaches the client agent")
	require.Len(t, more, len(events)+1, "one event fired")
	got, err := payload.ParseRequest(more[len(more)-1], r.Config.Roll.EventName)
	require.NoError(t, err)
	assert.Equal(t, payload.Request{Continue: true}, got, "a continuation")
}
