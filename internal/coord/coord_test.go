package coord_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/consul-rehydrate/consul-rehydrate/internal/coord"
	"github.com/consul-rehydrate/consul-rehydrate/internal/payload"
	"github.com/consul-rehydrate/consul-rehydrate/internal/poll"
	"github.com/consul-rehydrate/consul-rehydrate/test/testcluster"
)

func TestCoord(t *testing.T) {
	// The subtests share one cluster; each uses its own cluster name, hence KV prefix.
	c := testcluster.Start(t, testcluster.Options{Servers: 3})
	cl := c.Client(t)
	opts := coord.LockOptions{TTL: 10 * time.Second, Delay: 0, Wait: 500 * time.Millisecond, Holder: "test"}

	t.Run("LockIsExclusiveUntilReleased", func(t *testing.T) {
		s := coord.New(cl, "excl")
		ctx := context.Background()
		h1, err := s.Lock(ctx, opts)
		require.NoError(t, err)
		holder, err := s.Holder(ctx)
		require.NoError(t, err)
		assert.Equal(t, "test", holder)

		start := time.Now()
		_, err = coord.New(cl, "excl").Lock(ctx, opts)
		require.ErrorIs(t, err, coord.ErrLockHeld)
		assert.Less(t, time.Since(start), 5*time.Second, "the wait is bounded")

		require.NoError(t, h1.Release())
		h2, err := s.Lock(ctx, opts)
		require.NoError(t, err, "released lock can be taken")
		require.NoError(t, h2.Release())
	})

	t.Run("LosingTheSessionCancelsTheHeldContext", func(t *testing.T) {
		s := coord.New(cl, "lost")
		h, err := s.Lock(context.Background(), opts)
		require.NoError(t, err)
		kv, _, err := cl.KV().Get(s.Key("lock"), nil)
		require.NoError(t, err)
		require.NotEmpty(t, kv.Session)
		require.NoError(t, h.Verify(), "held right after taking it")
		_, err = cl.Session().Destroy(kv.Session, nil)
		require.NoError(t, err)
		// Verify reads the key itself: it knows at once, before the watch does.
		require.ErrorIs(t, h.Verify(), coord.ErrLockLost)
		require.NoError(t, poll.Until(context.Background(), 10*time.Millisecond, 20*time.Second, ended(h)),
			"lock loss not noticed within 20s")
		require.ErrorIs(t, context.Cause(h.Context()), coord.ErrLockLost)
		require.NoError(t, h.Release())
	})

	t.Run("LostLockUnderADeadlineEndsTheContextAsLostNotTimedOut", func(t *testing.T) {
		s := coord.New(cl, "lost-deadline")
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		h, err := s.Lock(ctx, opts)
		require.NoError(t, err)
		defer func() { assert.NoError(t, h.Release()) }()
		kv, _, err := cl.KV().Get(s.Key("lock"), nil)
		require.NoError(t, err)
		require.NotNil(t, kv)
		_, err = cl.Session().Destroy(kv.Session, nil)
		require.NoError(t, err)
		// No Verify: the watch alone must end the context, with the loss as its cause.
		require.NoError(t, poll.Until(context.Background(), 10*time.Millisecond, 20*time.Second, ended(h)),
			"lock loss not noticed by the watch within 20s")
		err = coord.Stopped(h.Context(), nil)
		require.ErrorIs(t, err, coord.ErrLockLost)
		require.NotErrorIs(t, err, coord.ErrTimedOut)
		require.NotErrorIs(t, err, context.DeadlineExceeded)
		require.NoError(t, ctx.Err(), "the deadline has not passed")
		err = h.Verify()
		require.ErrorIs(t, err, coord.ErrLockLost)
		require.NotErrorIs(t, err, context.DeadlineExceeded)
	})

	t.Run("DeadlineEndsTheContextAsTimedOutNotLost", func(t *testing.T) {
		s := coord.New(cl, "deadline")
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		h, err := s.Lock(ctx, opts)
		require.NoError(t, err)
		require.NoError(t, poll.Until(context.Background(), 10*time.Millisecond, 20*time.Second, ended(h)),
			"the deadline did not end the held context")
		err = coord.Stopped(h.Context(), nil)
		require.ErrorIs(t, err, coord.ErrTimedOut)
		require.ErrorIs(t, err, context.DeadlineExceeded)
		require.NotErrorIs(t, err, coord.ErrLockLost)
		err = h.Verify()
		require.ErrorIs(t, err, context.DeadlineExceeded)
		require.NotErrorIs(t, err, coord.ErrLockLost, "running out of time is not losing the lock")
		holder, err := s.Holder(context.Background())
		require.NoError(t, err)
		assert.Equal(t, "test", holder, "the lock is still held: only time ran out")
		require.NoError(t, h.Release())
		holder, err = s.Holder(context.Background())
		require.NoError(t, err)
		assert.Empty(t, holder)
	})

	t.Run("ReleaseEndsTheContextAsReleasedNotLost", func(t *testing.T) {
		s := coord.New(cl, "released")
		h, err := s.Lock(context.Background(), opts)
		require.NoError(t, err)
		require.NoError(t, h.Release())
		cause := context.Cause(h.Context())
		require.ErrorIs(t, cause, coord.ErrReleased)
		require.NotErrorIs(t, cause, coord.ErrLockLost)
		require.NotErrorIs(t, cause, coord.ErrTimedOut)
	})

	t.Run("RollRecordRoundTripsAndKeepsBoundedHistory", func(t *testing.T) {
		s := coord.New(cl, "roll")
		ctx := context.Background()
		r, err := s.Roll(ctx)
		require.NoError(t, err)
		assert.Nil(t, r)
		assert.False(t, r.InProgress())

		r = &coord.Roll{Target: "B", Phase: coord.PhaseRolling, Started: time.Now().UTC()}
		for i := 0; i < coord.MaxHistory+5; i++ {
			r.Add(coord.Entry{Time: time.Now().UTC(), Step: "wait", Detail: fmt.Sprint(i)})
		}
		require.NoError(t, s.PutRoll(ctx, r))
		got, err := s.Roll(ctx)
		require.NoError(t, err)
		assert.True(t, got.InProgress())
		assert.Len(t, got.History, coord.MaxHistory)
		assert.Equal(t, "5", got.History[0].Detail, "the oldest entries go first")
	})

	t.Run("HandledEventsArePrunedOldestFirst", func(t *testing.T) {
		s := coord.New(cl, "events")
		ctx := context.Background()
		for i := 0; i < coord.MaxEvents+3; i++ {
			require.NoError(t, s.MarkHandled(ctx, eventID(i), "ok"))
		}
		keys, _, err := cl.KV().Keys(s.Key("events/"), "", nil)
		require.NoError(t, err)
		assert.Len(t, keys, coord.MaxEvents)
		old, err := s.Handled(ctx, eventID(0))
		require.NoError(t, err)
		assert.False(t, old)
		recent, err := s.Handled(ctx, eventID(coord.MaxEvents+2))
		require.NoError(t, err)
		assert.True(t, recent)
	})

	t.Run("ReceiptsAndBadImages", func(t *testing.T) {
		s := coord.New(cl, "receipts")
		ctx := context.Background()
		r, err := s.Receipt(ctx, "launch/B/i-1")
		require.NoError(t, err)
		assert.Nil(t, r)
		require.NoError(t, s.PutReceipt(ctx, "launch/B/i-1", &coord.Receipt{Intent: "launch", Started: time.Now()}))
		r, err = s.Receipt(ctx, "launch/B/i-1")
		require.NoError(t, err)
		assert.Equal(t, "launch", r.Intent)
		assert.Empty(t, r.Result)

		require.NoError(t, s.DeleteReceipt(ctx, "launch/B/i-1"))
		r, err = s.Receipt(ctx, "launch/B/i-1")
		require.NoError(t, err)
		assert.Nil(t, r)

		require.NoError(t, s.MarkBad(ctx, "B", "never became a voter"))
		bad, err := s.BadImages(ctx)
		require.NoError(t, err)
		assert.Equal(t, map[string]string{"B": "never became a voter"}, bad)
	})

	t.Run("PeekReadsRollHandledAndBadImagesAtOnce", func(t *testing.T) {
		s := coord.New(cl, "peek")
		ctx := context.Background()
		r, handled, bad, err := s.Peek(ctx, eventID(1))
		require.NoError(t, err)
		assert.Nil(t, r, "no roll yet")
		assert.False(t, handled)
		assert.Empty(t, bad)

		require.NoError(t, s.PutRoll(ctx, &coord.Roll{Target: "B", Phase: coord.PhaseRolling}))
		require.NoError(t, s.MarkHandled(ctx, eventID(1), "nothing"))
		require.NoError(t, s.MarkBad(ctx, "C", "never joined"))
		require.NoError(t, s.MarkBad(ctx, "D", "never a voter"))
		r, handled, bad, err = s.Peek(ctx, eventID(1))
		require.NoError(t, err)
		require.NotNil(t, r)
		assert.Equal(t, "B", r.Target)
		assert.True(t, r.InProgress())
		assert.True(t, handled)
		assert.Equal(t, map[string]string{"C": "never joined", "D": "never a voter"}, bad)
		_, handled, _, err = s.Peek(ctx, eventID(2))
		require.NoError(t, err)
		assert.False(t, handled)
	})

	t.Run("ForgedEventIDsAndKeyPathsAreRefusedAndChangeNothing", func(t *testing.T) {
		s := coord.New(cl, "forged")
		ctx := context.Background()
		require.NoError(t, s.PutRoll(ctx, &coord.Roll{Target: "B", Phase: coord.PhaseDone}))
		before, _, err := cl.KV().List(s.Key(""), nil)
		require.NoError(t, err)
		// "../roll" would be events/../roll, which Consul's HTTP server cleans to the
		// roll record's key.
		for _, id := range []string{"../roll", "", "e1", "2ac2ac71-4be1-989d-1ac5-3c5dd0e61b6/", strings.ToUpper("2ac2ac71-4be1-989d-1ac5-3c5dd0e61b63")} {
			_, err := s.Handled(ctx, id)
			assert.ErrorIs(t, err, payload.ErrBadPayload, "Handled(%q)", id)
			assert.ErrorIs(t, s.MarkHandled(ctx, id, "forged"), payload.ErrBadPayload, "MarkHandled(%q)", id)
			_, _, _, err = s.Peek(ctx, id)
			assert.ErrorIs(t, err, payload.ErrBadPayload, "Peek(%q)", id)
			require.Error(t, err)
			assert.Contains(t, err.Error(), "is not a UUID")
		}
		for _, name := range []string{"launch/../../roll", "../lock", "retire//i-1", "retire/", ".", "", "x\ny", "\xff"} {
			err := s.PutReceipt(ctx, name, &coord.Receipt{Intent: "forged"})
			assert.ErrorIs(t, err, coord.ErrBadKey, "PutReceipt(%q)", name)
			_, err = s.Receipt(ctx, name)
			assert.ErrorIs(t, err, coord.ErrBadKey, "Receipt(%q)", name)
			assert.ErrorIs(t, s.DeleteReceipt(ctx, name), coord.ErrBadKey, "DeleteReceipt(%q)", name)
			assert.ErrorIs(t, s.MarkBad(ctx, name, "forged"), coord.ErrBadKey, "MarkBad(%q)", name)
		}
		after, _, err := cl.KV().List(s.Key(""), nil)
		require.NoError(t, err)
		assert.Equal(t, before, after, "nothing under the prefix changed")
		// A local image's name may hold a "/".
		require.NoError(t, coord.CheckKeyPath("consul-1.21.4+ent/2"))
	})

	t.Run("UnreachableConsulIsAnError", func(t *testing.T) {
		cfg := api.DefaultConfig()
		cfg.Address = "127.0.0.1:1" // nothing listens there
		dead, err := api.NewClient(cfg)
		require.NoError(t, err)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err = coord.New(dead, "x").Roll(ctx)
		require.Error(t, err)
		assert.False(t, errors.Is(err, coord.ErrLockHeld))
	})
}

// eventID returns the n-th of a series of well-formed event IDs.
func eventID(n int) string { return fmt.Sprintf("00000000-0000-0000-0000-%012x", n) }

// TestRoll_CompletedTargetIsCarriedOverUntilAnotherCompletes: the last completed
// target survives a new roll's record and a failed roll, and moves only when a
// roll completes.
func TestRoll_CompletedTargetIsCarriedOverUntilAnotherCompletes(t *testing.T) {
	t0 := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	var none *coord.Roll
	assert.Nil(t, none.LastCompleted(), "no record: nothing completed")

	a := none.Next("A", t0.Add(-72*time.Hour), t0)
	assert.True(t, a.InProgress())
	assert.Nil(t, a.LastCompleted(), "a roll in progress has not completed")
	a.Complete(t0.Add(time.Hour))
	assert.Equal(t, &coord.Completed{Image: "A", Created: t0.Add(-72 * time.Hour), Done: t0.Add(time.Hour)}, a.LastCompleted())

	b := a.Next("B", t0.Add(-time.Hour), t0.Add(2*time.Hour))
	assert.Equal(t, "A", b.LastCompleted().Image, "a new roll carries the last completed target over")
	b.Phase, b.Failure = coord.PhaseFailed, "never became a voter"
	assert.Equal(t, "A", b.LastCompleted().Image, "a failed roll completes nothing")

	c := b.Next("C", t0, t0.Add(3*time.Hour))
	c.Complete(t0.Add(4 * time.Hour))
	assert.Equal(t, "C", c.LastCompleted().Image)

	// A done record written before Completed was kept: its target is the last
	// completed one, of unknown age unless the record knew it.
	old := &coord.Roll{Target: "B", Phase: coord.PhaseDone, Updated: t0}
	assert.Equal(t, &coord.Completed{Image: "B", Done: t0}, old.LastCompleted())
	assert.Equal(t, "B", old.Next("C", t0, t0).LastCompleted().Image)
}

// ended is a poll condition: the held lock's context has ended.
func ended(h *coord.Held) func(context.Context) (bool, error) {
	return func(context.Context) (bool, error) { return h.Context().Err() != nil, nil }
}

// A step taken again idempotently (a surge asked for again before it appears) is
// not a new entry: it would crowd out the history and count as another launch.
func TestRoll_AddSkipsARepeatOfTheNewestEntry(t *testing.T) {
	t0 := time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
	launch := coord.Entry{Time: t0, Step: "launch", Instance: "i-1", Detail: "launched i-9 on B to replace i-1"}
	r := &coord.Roll{Target: "B", Phase: coord.PhaseRolling, Started: t0}
	assert.True(t, r.Add(launch))
	again := launch
	again.Time = t0.Add(time.Second)
	assert.False(t, r.Add(again), "the same launch, asked for again")
	assert.Equal(t, []coord.Entry{launch}, r.History, "the first keeps its time")
	assert.Equal(t, t0, r.Updated)

	retire := coord.Entry{Time: t0.Add(time.Minute), Step: "retire", Instance: "i-1", Detail: "retired i-1"}
	assert.True(t, r.Add(retire))
	later := launch
	later.Time = t0.Add(2 * time.Minute)
	assert.True(t, r.Add(later), "a repeat of an older entry, not the newest, is added")
	other := later
	other.Detail = "launched i-8 on B to replace i-1"
	assert.True(t, r.Add(other), "another detail is another entry")
	assert.Len(t, r.History, 4)
}
