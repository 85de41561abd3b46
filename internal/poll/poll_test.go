package poll

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
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

func TestRetry_RidesOutTransientErrorsAndStopsAtAFinalOne(t *testing.T) {
	transient, final := errors.New("transient"), errors.New("final")
	calls := 0
	err := Retry(context.Background(), time.Second, time.Millisecond, 2*time.Millisecond,
		func(err error) bool { return err == transient },
		func() error {
			calls++
			if calls < 3 {
				return transient
			}
			return nil
		})
	require.NoError(t, err)
	assert.Equal(t, 3, calls)

	calls = 0
	err = Retry(context.Background(), time.Second, time.Millisecond, time.Millisecond,
		func(err error) bool { return err == transient },
		func() error { calls++; return final })
	assert.ErrorIs(t, err, final)
	assert.Equal(t, 1, calls, "a final error is not retried")
}

func TestRetry_GivesUpAtTheBound(t *testing.T) {
	transient := errors.New("transient")
	start, calls := time.Now(), 0
	err := Retry(context.Background(), 50*time.Millisecond, 10*time.Millisecond, 10*time.Millisecond,
		func(error) bool { return true }, func() error { calls++; return transient })
	assert.ErrorIs(t, err, transient)
	assert.Less(t, time.Since(start), time.Second)
	assert.GreaterOrEqual(t, calls, 2)
	assert.LessOrEqual(t, calls, 6)
}
