// Package poll is the one bounded wait loop: every wait for a condition in this
// project goes through Until, so each is bounded in time, stops with its context,
// and says why it stopped.
package poll

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// ErrTimeout is returned (wrapped, with the bound) when the bound passed before the
// condition held.
var ErrTimeout = errors.New("timed out")

// Until calls cond at once, then every interval, until cond returns true or an
// error, ctx ends, or limit has passed. It returns nil when cond held, cond's error,
// context.Cause(ctx) when ctx ended (so a lost lock and a deadline stay apart), or
// ErrTimeout. cond is called a last time at the bound, so a condition that holds
// just in time is seen. A limit <= 0 is a programming error: no wait is unbounded.
func Until(ctx context.Context, interval, limit time.Duration, cond func(context.Context) (bool, error)) error {
	if limit <= 0 {
		return fmt.Errorf("poll: limit must be positive, got %s", limit)
	}
	deadline := time.Now().Add(limit)
	for {
		if err := context.Cause(ctx); err != nil {
			return err
		}
		done, err := cond(ctx)
		if err != nil || done {
			return err
		}
		left := time.Until(deadline)
		if left <= 0 {
			return fmt.Errorf("%w after %s", ErrTimeout, limit)
		}
		if err := Sleep(ctx, min(interval, left)); err != nil {
			return err
		}
	}
}

// Sleep waits for d, or until ctx ends, when it returns context.Cause(ctx).
func Sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-t.C:
		return nil
	}
}

// Retry calls op until it succeeds, again says its error is final, ctx ends, or the
// next try would start after limit has passed; it returns op's last error. The
// delay between tries starts at first and doubles up to most. Consul answers 500
// while its servers elect or hand over a leader, which takes seconds: a reader that
// rides that out does not halt a roll or fail an operator's command.
func Retry(ctx context.Context, limit, first, most time.Duration, again func(error) bool, op func() error) error {
	delay, deadline := first, time.Now().Add(limit)
	for {
		err := op()
		if err == nil || !again(err) || ctx.Err() != nil || time.Now().Add(delay).After(deadline) {
			return err
		}
		if Sleep(ctx, delay) != nil {
			return err
		}
		delay = min(2*delay, most)
	}
}
