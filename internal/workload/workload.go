// Package workload puts a cluster under a steady KV load during a roll and measures
// what the roll cost it: failed and lost writes, write latency, failed consistent
// reads, leader changes, time without a leader; and, through a Recorder, whether the
// history of every operation is linearizable (see internal/linear). The demo, the
// end-to-end tests and the benchmarks (test/bench) share it.
package workload

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/consul-rehydrate/consul-rehydrate/internal/linear"
)

// Writer writes Prefix/<n> at a fixed rate until stopped.
type Writer struct {
	c      *api.Client
	prefix string

	rec *Recorder

	mu       sync.Mutex
	acked    []int
	failed   int
	failedN  []int           // the failed writes' numbers, kept only when recording
	lat      []time.Duration // acknowledged writes
	spent    []time.Duration // every write, acknowledged or failed
	stop     context.CancelFunc
	done     chan struct{}
	attempts int
}

// Result is what a writer saw.
type Result struct {
	OK     int           `json:"writes_ok"`
	Failed int           `json:"writes_failed"`
	Lost   int           `json:"writes_lost"`
	Max    time.Duration `json:"-"`
	P50    time.Duration `json:"-"`
	P99    time.Duration `json:"-"`
	// Spent is the time the writer spent on each write, failed ones included (all
	// their attempts): what a roll that fails writes rather than slows them cost.
	Spent Percentiles `json:"-"`
}

// Percentiles summarizes a set of durations.
type Percentiles struct {
	N   int
	P50 time.Duration
	P95 time.Duration
	P99 time.Duration
	Max time.Duration
}

// Summarize returns the percentiles of d (nearest rank, rounded down, as the writer
// always has); it sorts d in place. The zero Percentiles for no durations.
func Summarize(d []time.Duration) Percentiles {
	if len(d) == 0 {
		return Percentiles{}
	}
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	at := func(q int) time.Duration { return d[len(d)*q/100] }
	return Percentiles{N: len(d), P50: at(50), P95: at(95), P99: at(99), Max: d[len(d)-1]}
}

// StartWriter starts writing at rate writes per second. Each write gets `attempts`
// tries (at least 1), 100ms apart, each bounded by timeout: a client that retries
// briefly, as applications do, and no more.
func StartWriter(c *api.Client, prefix string, rate, attempts int, timeout time.Duration) *Writer {
	return StartWriterRecorded(c, prefix, rate, attempts, timeout, nil)
}

// StartWriterRecorded is StartWriter recording every attempt and every write in rec
// (nil: none), and, at Stop, the read-back of every key written.
func StartWriterRecorded(c *api.Client, prefix string, rate, attempts int, timeout time.Duration, rec *Recorder) *Writer {
	ctx, cancel := context.WithCancel(context.Background())
	w := &Writer{c: c, prefix: prefix, rec: rec, stop: cancel, done: make(chan struct{}), attempts: max(attempts, 1)}
	go w.run(ctx, rate, timeout)
	return w
}

func (w *Writer) run(ctx context.Context, rate int, timeout time.Duration) {
	defer close(w.done)
	pace(ctx, rate, func(n int) { w.write(n, timeout) })
}

// pace calls fn(0), fn(1), ... rate times a second, each in its own goroutine, until
// ctx ends; then it waits for the calls in flight.
func pace(ctx context.Context, rate int, fn func(n int)) {
	tick := time.NewTicker(time.Second / time.Duration(max(rate, 1)))
	defer tick.Stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	for n := 0; ; n++ {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		// Calls do not wait for each other: a slow one must not slow the rate.
		wg.Add(1)
		go func(n int) {
			defer wg.Done()
			fn(n)
		}(n)
	}
}

func (w *Writer) write(n int, timeout time.Duration) {
	start := time.Now()
	kv := &api.KVPair{Key: w.prefix + strconv.Itoa(n), Value: []byte(strconv.Itoa(n))}
	for try := 0; try < w.attempts; try++ {
		if try > 0 {
			time.Sleep(100 * time.Millisecond)
		}
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		a := w.rec.begin()
		_, err := w.c.KV().Put(kv, (&api.WriteOptions{}).WithContext(ctx))
		cancel()
		a.end(linear.Op{Key: kv.Key, Kind: linear.Put, Value: string(kv.Value)}, err)
		if err == nil {
			took := time.Since(start)
			w.mu.Lock()
			w.acked = append(w.acked, n)
			w.lat = append(w.lat, took)
			w.spent = append(w.spent, took)
			w.mu.Unlock()
			w.rec.sample("write", start, false)
			return
		}
	}
	took := time.Since(start)
	w.mu.Lock()
	w.failed++
	if w.rec != nil {
		w.failedN = append(w.failedN, n)
	}
	w.spent = append(w.spent, took)
	w.mu.Unlock()
	w.rec.sample("write", start, true)
}

// Stop stops writing, waits for writes in flight, then reads every acknowledged key
// back with a consistent read to count lost writes.
func (w *Writer) Stop(ctx context.Context) (Result, error) {
	w.stop()
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	r := Result{OK: len(w.acked), Failed: w.failed, Spent: Summarize(w.spent)}
	lat := Summarize(w.lat)
	r.Max, r.P50, r.P99 = lat.Max, lat.P50, lat.P99
	a := w.rec.begin()
	pairs, _, err := w.c.KV().List(w.prefix, (&api.QueryOptions{RequireConsistent: true}).WithContext(ctx))
	if err != nil {
		return r, fmt.Errorf("read back %s: %w", w.prefix, err)
	}
	have := make(map[string]string, len(pairs))
	for _, p := range pairs {
		have[p.Key] = string(p.Value)
	}
	// The read-back is one consistent read of every key written, acknowledged or
	// not: recorded as a read of each, it makes a lost write a violation.
	for _, ns := range [][]int{w.acked, w.failedN} {
		for _, n := range ns {
			k := w.prefix + strconv.Itoa(n)
			v, ok := have[k]
			a.end(linear.Op{Key: k, Kind: linear.Get, Present: ok, Out: v}, nil)
		}
	}
	for _, n := range w.acked {
		if _, ok := have[w.prefix+strconv.Itoa(n)]; !ok {
			r.Lost++
		}
	}
	return r, nil
}

// Reader reads one key with consistent reads at a fixed rate until stopped: a read
// that must reach the leader, so it fails or stalls whenever there is none.
type Reader struct {
	c        *api.Client
	key      string
	want     []byte
	attempts int
	rec      *Recorder

	mu     sync.Mutex
	failed int
	lat    []time.Duration // successful reads
	spent  []time.Duration // every read, failed ones included
	stop   context.CancelFunc
	done   chan struct{}
}

// ReadResult is what a reader saw. A read fails on an error in every attempt, or on
// a missing key or a value other than the one written before.
type ReadResult struct {
	OK      int
	Failed  int
	Latency Percentiles // successful reads
	Spent   Percentiles // every read, failed ones included
}

// StartReader starts reading key, which must hold want, at rate reads per second
// with RequireConsistent. Each read gets `attempts` tries (at least 1), 100ms apart,
// each bounded by timeout, as a writer's writes do.
func StartReader(c *api.Client, key string, want []byte, rate, attempts int, timeout time.Duration) *Reader {
	return StartReaderRecorded(c, key, want, rate, attempts, timeout, nil)
}

// StartReaderRecorded is StartReader recording every attempt and every read in rec
// (nil: none). The history starts with whatever key held: the reads are checked
// against each other and against any other recorded operation on key.
func StartReaderRecorded(c *api.Client, key string, want []byte, rate, attempts int, timeout time.Duration, rec *Recorder) *Reader {
	ctx, cancel := context.WithCancel(context.Background())
	r := &Reader{c: c, key: key, want: want, attempts: max(attempts, 1), rec: rec, stop: cancel, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		pace(ctx, rate, func(int) { r.read(timeout) })
	}()
	return r
}

func (r *Reader) read(timeout time.Duration) {
	start := time.Now()
	ok := false
	for try := 0; try < r.attempts; try++ {
		if try > 0 {
			time.Sleep(100 * time.Millisecond)
		}
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		a := r.rec.begin()
		kv, _, err := r.c.KV().Get(r.key, (&api.QueryOptions{RequireConsistent: true}).WithContext(ctx))
		cancel()
		a.end(readOp(r.key, kv), err)
		// A wrong answer is not retried: it is a wrong answer.
		if err == nil {
			ok = kv != nil && string(kv.Value) == string(r.want)
			break
		}
	}
	took := time.Since(start)
	r.rec.sample("read", start, !ok)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.spent = append(r.spent, took)
	if ok {
		r.lat = append(r.lat, took)
	} else {
		r.failed++
	}
}

// readOp is a consistent read of key that returned kv (nil: absent).
func readOp(key string, kv *api.KVPair) linear.Op {
	op := linear.Op{Key: key, Kind: linear.Get}
	if kv != nil {
		op.Present, op.Out = true, string(kv.Value)
	}
	return op
}

// Stop stops reading and waits for the reads in flight.
func (r *Reader) Stop() ReadResult {
	r.stop()
	<-r.done
	r.mu.Lock()
	defer r.mu.Unlock()
	return ReadResult{OK: len(r.lat), Failed: r.failed, Latency: Summarize(r.lat), Spent: Summarize(r.spent)}
}

// LeaderWatch counts leader changes and the time without a leader, polling every
// interval.
type LeaderWatch struct {
	mu       sync.Mutex
	changes  int
	noLeader time.Duration
	last     string
	stop     context.CancelFunc
	done     chan struct{}
}

// WatchLeader starts polling c's view of the leader.
func WatchLeader(c *api.Client, interval time.Duration) *LeaderWatch {
	ctx, cancel := context.WithCancel(context.Background())
	lw := &LeaderWatch{stop: cancel, done: make(chan struct{})}
	go func() {
		defer close(lw.done)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			l, err := c.Status().LeaderWithQueryOptions((&api.QueryOptions{}).WithContext(ctx))
			if err != nil && ctx.Err() == nil {
				// A failed request is not an answer "no leader": the agent may have
				// asked a server that is leaving. Ask again at once; only a second
				// failure counts as time without a leader.
				l, err = c.Status().LeaderWithQueryOptions((&api.QueryOptions{}).WithContext(ctx))
			}
			lw.mu.Lock()
			if err != nil || l == "" {
				lw.noLeader += interval
			} else {
				if lw.last != "" && l != lw.last {
					lw.changes++
				}
				lw.last = l
			}
			lw.mu.Unlock()
		}
	}()
	return lw
}

// Stop stops polling and returns the leader changes and the time seen without one.
func (lw *LeaderWatch) Stop() (changes int, noLeader time.Duration) {
	lw.stop()
	<-lw.done
	lw.mu.Lock()
	defer lw.mu.Unlock()
	return lw.changes, lw.noLeader
}
