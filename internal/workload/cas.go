package workload

import (
	"context"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/consul-rehydrate/consul-rehydrate/internal/linear"
)

// CASer runs read-modify-writes on a few hot keys at a fixed rate until stopped:
// the contended, ordered writes a lock or a counter makes, and the ones a stale read
// or a lost write shows up in.
type CASer struct {
	c        *api.Client
	keys     []string
	attempts int
	rec      *Recorder
	// tag makes every value written unique across CASers and runs, so that value
	// equality is ModifyIndex equality (see StartCAS).
	tag string

	mu        sync.Mutex
	ok        int
	conflicts int
	failed    int
	lat       []time.Duration // operations that got an answer (ok or conflict)
	stop      context.CancelFunc
	done      chan struct{}
}

// CASResult is what a CASer saw. A conflict (the key changed between the read and
// the check-and-set) is an answer, not a failure; an operation fails when every
// attempt errored.
type CASResult struct {
	OK, Conflicts, Failed int
	Latency               Percentiles // operations that got an answer
}

// StartCAS starts rate read-modify-writes per second, cycling over keys (at least
// one). Each is a consistent GET (recorded as a read) then a check-and-set on the
// ModifyIndex read, writing a value unique to this attempt (recorded as a cas whose
// expected value is the value read: values are unique, so value equality is index
// equality; index 0, an absent key, is create-if-absent). An error in either is
// retried, from the read, up to `attempts` tries (at least 1), 100ms apart, each
// call bounded by timeout.
func StartCAS(c *api.Client, keys []string, rate, attempts int, timeout time.Duration, rec *Recorder) *CASer {
	ctx, cancel := context.WithCancel(context.Background())
	w := &CASer{c: c, keys: keys, attempts: max(attempts, 1), rec: rec, tag: strconv.FormatInt(time.Now().UnixNano(), 36),
		stop: cancel, done: make(chan struct{})}
	go func() {
		defer close(w.done)
		pace(ctx, rate, func(n int) { w.cas(n, timeout) })
	}()
	return w
}

func (w *CASer) cas(n int, timeout time.Duration) {
	start := time.Now()
	key := w.keys[n%len(w.keys)]
	answered, swapped := false, false
	for try := 0; try < w.attempts && !answered; try++ {
		if try > 0 {
			time.Sleep(100 * time.Millisecond)
		}
		answered, swapped = w.attempt(key, w.tag+"-"+strconv.Itoa(n)+"-"+strconv.Itoa(try), timeout)
	}
	took := time.Since(start)
	w.rec.sample("cas", start, !answered)
	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case !answered:
		w.failed++
		return
	case swapped:
		w.ok++
	default:
		w.conflicts++
	}
	w.lat = append(w.lat, took)
}

// attempt reads key and check-and-sets it to value; answered is false on an error.
func (w *CASer) attempt(key, value string, timeout time.Duration) (answered, swapped bool) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	a := w.rec.begin()
	kv, _, err := w.c.KV().Get(key, (&api.QueryOptions{RequireConsistent: true}).WithContext(ctx))
	cancel()
	a.end(readOp(key, kv), err)
	if err != nil {
		return false, false
	}
	op := linear.Op{Key: key, Kind: linear.CAS, Value: value, ExpectAbsent: kv == nil}
	next := &api.KVPair{Key: key, Value: []byte(value)}
	if kv != nil {
		op.Expect, next.ModifyIndex = string(kv.Value), kv.ModifyIndex
	}
	ctx, cancel = context.WithTimeout(context.Background(), timeout)
	a = w.rec.begin()
	swapped, _, err = w.c.KV().CAS(next, (&api.WriteOptions{}).WithContext(ctx))
	cancel()
	op.OK = swapped
	a.end(op, err)
	return err == nil, swapped
}

// Stop stops the read-modify-writes and waits for those in flight.
func (w *CASer) Stop() CASResult {
	w.stop()
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	return CASResult{OK: w.ok, Conflicts: w.conflicts, Failed: w.failed, Latency: Summarize(w.lat)}
}
