package workload

import (
	"sort"
	"sync"
	"time"

	"github.com/consul-rehydrate/consul-rehydrate/internal/linear"
)

// Recorder records every attempt of every operation (for the linearizability check)
// and every logical operation, retries included (for latency over time). It is safe
// for concurrent use; a nil *Recorder records nothing.
//
// Memory: about 100 bytes per attempt and 50 per logical operation, so a 10-minute
// run at 60 operations a second holds a few MB.
type Recorder struct {
	origin time.Time // the monotonic clock's zero for the history

	mu      sync.Mutex
	ops     []linear.Op
	samples []Sample
}

// NewRecorder returns an empty recorder whose clock starts now.
func NewRecorder() *Recorder { return &Recorder{origin: time.Now()} }

// Sample is one logical operation: all its attempts.
type Sample struct {
	Kind   string        // "write", "read", "cas"
	Start  time.Time     // when the logical operation began
	Took   time.Duration // until its last attempt returned
	Failed bool          // every attempt failed (or a read returned a wrong value)
}

// Linearizability is the verdict on the recorded history.
type Linearizability struct {
	Linearizable bool   `json:"linearizable"`
	Ops          int    `json:"ops"`              // attempts checked
	Unknown      int    `json:"unknown"`          // attempts with unknown outcome (errors/timeouts)
	TimedOut     bool   `json:"timed_out"`        // checker ran out of time: Linearizable is false then
	Detail       string `json:"detail,omitempty"` // on a violation: the key and the operations around it
}

// now is a time on the recorder's clock (monotonic nanoseconds since NewRecorder).
func (r *Recorder) now() int64 { return int64(time.Since(r.origin)) }

// op records one attempt.
func (r *Recorder) op(op linear.Op) {
	if r == nil {
		return
	}
	r.mu.Lock()
	r.ops = append(r.ops, op)
	r.mu.Unlock()
}

// sample records one logical operation.
func (r *Recorder) sample(kind string, start time.Time, failed bool) {
	if r == nil {
		return
	}
	s := Sample{Kind: kind, Start: start, Took: time.Since(start), Failed: failed}
	r.mu.Lock()
	r.samples = append(r.samples, s)
	r.mu.Unlock()
}

// attempt is an operation in flight: call it done with the outcome.
type attempt struct {
	r    *Recorder
	call int64
}

func (r *Recorder) begin() attempt {
	if r == nil {
		return attempt{}
	}
	return attempt{r: r, call: r.now()}
}

// end records op, called at a.call, returning now; err != nil makes its outcome
// unknown.
func (a attempt) end(op linear.Op, err error) {
	if a.r == nil {
		return
	}
	op.Call, op.Return, op.Unknown = a.call, a.r.now(), err != nil
	a.r.op(op)
}

// Samples returns the logical operations recorded so far, sorted by Start.
func (r *Recorder) Samples() []Sample {
	r.mu.Lock()
	out := append([]Sample(nil), r.samples...)
	r.mu.Unlock()
	sort.SliceStable(out, func(i, j int) bool { return out[i].Start.Before(out[j].Start) })
	return out
}

// Check checks that the attempts recorded so far are linearizable, spending at most
// about timeout. Stop the workers first (a writer's Stop also records its read-back
// of every key it wrote, which is what makes a lost write a violation).
func (r *Recorder) Check(timeout time.Duration) Linearizability {
	r.mu.Lock()
	ops := append([]linear.Op(nil), r.ops...)
	r.mu.Unlock()
	res := linear.Check(ops, timeout)
	return Linearizability{Linearizable: res.Linearizable, Ops: res.Ops, Unknown: res.Unknown, TimedOut: res.TimedOut, Detail: res.Detail}
}
