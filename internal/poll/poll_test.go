package poll

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestUntil_ReturnsWhenTheConditionHolds(t *testing.T) {
	calls := 0
	err := Until(context.Background(), time.Millisecond, time.Minute, func(context.Context) (bool, error) {
		calls++
		return calls == 3, nil
	})
	require.NoError(t, err)
	require.Equal(t, 3, calls)
}

func TestUntil_ReturnsTheConditionsError(t *testing.T) {
	boom := errors.New("boom")
	err := Until(context.Background(), time.Millisecond, time.Minute, func(context.Context) (bool, error) { return false, boom })
	require.ErrorIs(t, err, boom)
}

func TestUntil_TimesOutAfterTheBoundHavingLookedAtTheBound(t *testing.T) {
	start := time.Now()
	var last time.Time
	err := Until(context.Background(), time.Hour, 50*time.Millisecond, func(context.Context) (bool, error) {
		last = time.Now()
		return false, nil
	})
	require.ErrorIs(t, err, ErrTimeout)
	require.Contains(t, err.Error(), "50ms")
	// The interval is an hour, yet the condition was asked again at the bound.
	require.GreaterOrEqual(t, last.Sub(start), 50*time.Millisecond)
	require.Less(t, time.Since(start), 10*time.Second)
}

func TestUntil_StopsWithTheContextsCause(t *testing.T) {
	lost := errors.New("lock lost")
	ctx, cancel := context.WithCancelCause(context.Background())
	calls := 0
	err := Until(ctx, time.Millisecond, time.Minute, func(context.Context) (bool, error) {
		calls++
		if calls == 2 {
			cancel(lost)
		}
		return false, nil
	})
	require.ErrorIs(t, err, lost)
	require.Equal(t, 2, calls)

	dctx, dcancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer dcancel()
	err = Until(dctx, time.Millisecond, time.Minute, func(context.Context) (bool, error) { return false, nil })
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.NotErrorIs(t, err, ErrTimeout)
}

func TestUntil_RefusesAnUnboundedWait(t *testing.T) {
	err := Until(context.Background(), time.Millisecond, 0, func(context.Context) (bool, error) { return true, nil })
	require.ErrorContains(t, err, "limit must be positive")
}

func TestSleep_EndsWithTheContext(t *testing.T) {
	lost := errors.New("lost")
	ctx, cancel := context.WithCancelCause(context.Background())
	cancel(lost)
	require.ErrorIs(t, Sleep(ctx, time.Hour), lost)
	require.NoError(t, Sleep(context.Background(), time.Millisecond))
}
