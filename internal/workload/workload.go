// Package workload puts a cluster under a steady KV write load during a roll and
// measures what the roll cost it: failed and lost writes, write latency, leader
// changes. The demo, the end-to-end tests and the benchmarks share it.
package workload

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
)

// Writer writes Prefix/<n> at a fixed rate until stopped.
type Writer struct {
	c      *api.Client
	prefix string

	mu       sync.Mutex
	acked    []int
	failed   int
	lat      []time.Duration
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
}

// StartWriter starts writing at rate writes per second. Each write gets `attempts`
// tries (at least 1), 100ms apart, each bounded by timeout: a client that retries
// briefly, as applications do, and no more.
func StartWriter(c *api.Client, prefix string, rate, attempts int, timeout time.Duration) *Writer {
	ctx, cancel := context.WithCancel(context.Background())
	w := &Writer{c: c, prefix: prefix, stop: cancel, done: make(chan struct{}), attempts: max(attempts, 1)}
	go w.run(ctx, rate, timeout)
	return w
}

func (w *Writer) run(ctx context.Context, rate int, timeout time.Duration) {
	defer close(w.done)
	tick := time.NewTicker(time.Second / time.Duration(rate))
	defer tick.Stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	for n := 0; ; n++ {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		// Writes do not wait for each other: a slow write must not slow the rate.
		wg.Add(1)
		go func(n int) {
			defer wg.Done()
			w.write(n, timeout)
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
		_, err := w.c.KV().Put(kv, (&api.WriteOptions{}).WithContext(ctx))
		cancel()
		if err == nil {
			w.mu.Lock()
			w.acked = append(w.acked, n)
			w.lat = append(w.lat, time.Since(start))
			w.mu.Unlock()
			return
		}
	}
	w.mu.Lock()
	w.failed++
	w.mu.Unlock()
}

// Stop stops writing, waits for writes in flight, then reads every acknowledged key
// back with a consistent read to count lost writes.
func (w *Writer) Stop(ctx context.Context) (Result, error) {
	w.stop()
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	r := Result{OK: len(w.acked), Failed: w.failed}
	sort.Slice(w.lat, func(i, j int) bool { return w.lat[i] < w.lat[j] })
	if len(w.lat) > 0 {
		r.Max = w.lat[len(w.lat)-1]
		r.P50 = w.lat[len(w.lat)/2]
		r.P99 = w.lat[len(w.lat)*99/100]
	}
	pairs, _, err := w.c.KV().List(w.prefix, (&api.QueryOptions{RequireConsistent: true}).WithContext(ctx))
	if err != nil {
		return r, fmt.Errorf("read back %s: %w", w.prefix, err)
	}
	have := make(map[string]bool, len(pairs))
	for _, p := range pairs {
		have[p.Key] = true
	}
	for _, n := range w.acked {
		if !have[w.prefix+strconv.Itoa(n)] {
			r.Lost++
		}
	}
	return r, nil
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
