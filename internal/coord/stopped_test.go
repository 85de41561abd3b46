package coord

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
)

// TestStopped_ClassesAnErrorByWhyTheContextEnded is the table of stopped: a lost
// lock and a deadline are never taken for each other, and the error met keeps
// both its own chain and the cause's.
func TestStopped_ClassesAnErrorByWhyTheContextEnded(t *testing.T) {
	lost := fmt.Errorf("%w: rehydrate/t/lock: its session s1 was invalidated", ErrLockLost)
	readFailed := errors.New("read rehydrate/t/roll: connection reset")
	for _, tc := range []struct {
		name       string
		cause, err error
		is         []error // the result wraps each
		isNot      []error // and none of these
		msg        string  // "" for no result
	}{
		{name: "ContextGoesOn", cause: nil, err: readFailed, msg: ""},
		{name: "LostLockAlone", cause: lost, is: []error{ErrLockLost},
			isNot: []error{ErrTimedOut, context.DeadlineExceeded},
			msg:   "lock lost: rehydrate/t/lock: its session s1 was invalidated"},
		{name: "LostLockWithTheErrorItCaused", cause: lost, err: readFailed, is: []error{ErrLockLost, readFailed},
			isNot: []error{ErrTimedOut, context.DeadlineExceeded},
			msg:   "lock lost: rehydrate/t/lock: its session s1 was invalidated: read rehydrate/t/roll: connection reset"},
		{name: "LostLockErrorAlreadyCarryingTheCause", cause: lost, err: fmt.Errorf("verify lock: %w", lost),
			is: []error{ErrLockLost}, isNot: []error{ErrTimedOut},
			msg: "verify lock: lock lost: rehydrate/t/lock: its session s1 was invalidated"},
		{name: "DeadlineAlone", cause: context.DeadlineExceeded, is: []error{ErrTimedOut, context.DeadlineExceeded},
			isNot: []error{ErrLockLost}, msg: "ran out of time: context deadline exceeded"},
		{name: "DeadlineWithAnErrorThatWrapsIt", cause: context.DeadlineExceeded,
			err: fmt.Errorf("read x: %w", context.DeadlineExceeded), is: []error{ErrTimedOut, context.DeadlineExceeded},
			isNot: []error{ErrLockLost}, msg: "ran out of time: read x: context deadline exceeded"},
		{name: "DeadlineWithAnErrorThatLostTheChain", cause: context.DeadlineExceeded,
			err: errors.New("failed to read lock: context deadline exceeded"), is: []error{ErrTimedOut, context.DeadlineExceeded},
			isNot: []error{ErrLockLost},
			msg:   "ran out of time: context deadline exceeded: failed to read lock: context deadline exceeded"},
		{name: "Released", cause: ErrReleased, err: readFailed, is: []error{ErrReleased, readFailed},
			isNot: []error{ErrLockLost, ErrTimedOut}, msg: "lock released: read rehydrate/t/roll: connection reset"},
		{name: "Interrupted", cause: context.Canceled, is: []error{context.Canceled},
			isNot: []error{ErrLockLost, ErrTimedOut, context.DeadlineExceeded}, msg: "context canceled"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := stopped(tc.cause, tc.err)
			if tc.msg == "" {
				assert.NoError(t, got)
				return
			}
			for _, e := range tc.is {
				assert.ErrorIs(t, got, e)
			}
			for _, e := range tc.isNot {
				assert.NotErrorIs(t, got, e)
			}
			assert.EqualError(t, got, tc.msg)
		})
	}
}

func TestStopped_ReadsTheContextsCause(t *testing.T) {
	assert.NoError(t, Stopped(context.Background(), errors.New("x")))
	ctx, cancel := context.WithCancelCause(context.Background())
	cancel(fmt.Errorf("%w: gone", ErrLockLost))
	assert.ErrorIs(t, Stopped(ctx, nil), ErrLockLost)
	assert.NotErrorIs(t, Stopped(ctx, nil), ErrTimedOut)
}
