package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/consul-rehydrate/consul-rehydrate/internal/cloud/local"
)

const (
	// scaleValue is the size of each value of the scale case: half of Consul's
	// default kv_max_value_size (512 KiB), so that few requests carry the data.
	scaleValue = 256 << 10
	// scaleWorkers writes that many values at a time.
	scaleWorkers = 8
	// scaleLoadBound bounds loading the scale case's data.
	scaleLoadBound = 6 * time.Minute
)

// loadBytes writes total bytes of KV under bench/big/ as values of scaleValue bytes,
// scaleWorkers at a time, and checks they are all there. It returns how many keys.
func loadBytes(ctx context.Context, c *api.Client, total int64) (int, error) {
	keys := int((total + scaleValue - 1) / scaleValue)
	ctx, cancel := context.WithTimeout(ctx, scaleLoadBound)
	defer cancel()
	// Incompressible would not matter (Consul does not compress its snapshots'
	// values); distinct per key, so no layer can share them.
	base := bytes.Repeat([]byte("0123456789abcdef"), scaleValue/16)
	err := parallel(ctx, keys, scaleWorkers, func(ctx context.Context, k int) error {
		v := slices.Clone(base)
		copy(v, fmt.Sprintf("%08d", k))
		if _, err := c.KV().Put(&api.KVPair{Key: fmt.Sprintf("bench/big/%06d", k), Value: v}, (&api.WriteOptions{}).WithContext(ctx)); err != nil {
			return fmt.Errorf("load bench/big/%06d: %w", k, err)
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	return keys, countKeys(ctx, c, "bench/big/", keys)
}

// rssWatch samples every server's peak resident memory (VmHWM, which the kernel
// keeps per process) while it runs, and remembers the last value seen for each.
type rssWatch struct {
	mu    sync.Mutex
	peak  map[string]int64 // instance ID -> KiB
	image map[string]string
	order []string // instance IDs, in the order first seen
	stop  context.CancelFunc
	done  chan struct{}
}

func watchRSS(p *local.Provider, every time.Duration) *rssWatch {
	ctx, cancel := context.WithCancel(context.Background())
	w := &rssWatch{peak: map[string]int64{}, image: map[string]string{}, stop: cancel, done: make(chan struct{})}
	sample := func() {
		insts, err := p.Instances(ctx)
		if err != nil {
			return
		}
		for _, in := range insts {
			pid, err := p.PID(in.ID)
			if err != nil || pid == 0 {
				continue
			}
			kib, ok := vmHWM(pid)
			if !ok {
				continue
			}
			w.mu.Lock()
			if _, seen := w.peak[in.ID]; !seen {
				w.order = append(w.order, in.ID)
			}
			w.peak[in.ID] = max(w.peak[in.ID], kib)
			w.image[in.ID] = in.ImageID
			w.mu.Unlock()
		}
	}
	go func() {
		defer close(w.done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			sample()
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	return w
}

// Stop stops sampling and returns each server's peak, in the order first seen.
func (w *rssWatch) Stop() []ServerRSS {
	w.stop()
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []ServerRSS
	for _, id := range w.order {
		out = append(out, ServerRSS{Instance: id, Image: w.image[id], PeakMB: round1(float64(w.peak[id]) * 1024 / 1e6)})
	}
	return out
}

// vmHWM reads a process's peak resident set size in KiB.
func vmHWM(pid int) (int64, bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, false
	}
	for _, l := range strings.Split(string(b), "\n") {
		var kib int64
		if _, err := fmt.Sscanf(l, "VmHWM: %d kB", &kib); err == nil {
			return kib, true
		}
	}
	return 0, false
}
