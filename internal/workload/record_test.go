package workload

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/consul-rehydrate/consul-rehydrate/internal/linear"
	"github.com/consul-rehydrate/consul-rehydrate/test/testcluster"
)

// TestRecorder_RealClusterHistoryIsLinearizableAndAStaleReadInItIsNot runs the
// writer, the reader and two check-and-set workers (through different servers, on
// the same hot keys) against a real 3-server cluster, through one recorder, and kills
// the leader midway so that some attempts end in errors and timeouts. The history
// must check linearizable; the same history with one read turned stale must not.
func TestRecorder_RealClusterHistoryIsLinearizableAndAStaleReadInItIsNot(t *testing.T) {
	c := testcluster.Start(t, testcluster.Options{Servers: 3})
	leader := c.Leader(t)
	var followers []*api.Client
	for _, s := range c.Servers {
		if s != leader {
			followers = append(followers, s.Client())
		}
	}
	require.Len(t, followers, 2)
	_, err := followers[0].KV().Put(&api.KVPair{Key: "rec/read", Value: []byte("fixed")}, nil)
	require.NoError(t, err)

	rec := NewRecorder()
	hot := []string{"rec/hot/0", "rec/hot/1"}
	writer := StartWriterRecorded(followers[0], "rec/writes/", 20, 3, 2*time.Second, rec)
	reader := StartReaderRecorded(followers[1], "rec/read", []byte("fixed"), 10, 3, 2*time.Second, rec)
	cas1 := StartCAS(followers[0], hot, 10, 3, 2*time.Second, rec)
	cas2 := StartCAS(followers[1], hot, 10, 3, 2*time.Second, rec)
	time.Sleep(2 * time.Second)
	leader.Kill(t)
	c.WaitForLeader(t, 30*time.Second)
	time.Sleep(2 * time.Second)

	r1, r2 := cas1.Stop(), cas2.Stop()
	reads := reader.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	writes, err := writer.Stop(ctx)
	require.NoError(t, err)
	t.Logf("writes %+v; reads ok %d failed %d; cas %+v and %+v", writes, reads.OK, reads.Failed, r1, r2)
	require.Positive(t, writes.OK)
	require.Positive(t, reads.OK)
	require.Positive(t, r1.OK+r2.OK)

	start := time.Now()
	lin := rec.Check(time.Minute)
	t.Logf("checked %d attempts (%d unknown) in %v: %+v", lin.Ops, lin.Unknown, time.Since(start), lin)
	assert.True(t, lin.Linearizable, lin.Detail)
	assert.False(t, lin.TimedOut)
	assert.Positive(t, lin.Ops)
	assert.Empty(t, lin.Detail)

	// Every logical operation is a sample, in order of start.
	samples := rec.Samples()
	kinds := map[string]int{}
	for i, s := range samples {
		kinds[s.Kind]++
		if i > 0 {
			require.False(t, s.Start.Before(samples[i-1].Start), "sorted by start")
		}
	}
	assert.Equal(t, writes.OK+writes.Failed, kinds["write"])
	assert.Equal(t, reads.OK+reads.Failed, kinds["read"])
	assert.Equal(t, r1.OK+r1.Conflicts+r1.Failed+r2.OK+r2.Conflicts+r2.Failed, kinds["cas"])

	// The control: one read of a hot key made to return a value that a completed
	// check-and-set had replaced before the read began.
	stale := injectStaleRead(t, rec, hot)
	lin = rec.Check(time.Minute)
	assert.False(t, lin.Linearizable)
	assert.False(t, lin.TimedOut)
	assert.Contains(t, lin.Detail, fmt.Sprintf("key %q", stale))
	t.Logf("with a stale read: %s", lin.Detail)
}

// injectStaleRead alters one recorded read of a hot key to return a value written by
// a successful check-and-set w1 that another successful one, w2, replaced (w2
// expected w1's value) before the read was called. It returns the read's key.
func injectStaleRead(t *testing.T, rec *Recorder, hot []string) string {
	t.Helper()
	rec.mu.Lock()
	defer rec.mu.Unlock()
	swapped := func(op linear.Op) bool { return op.Kind == linear.CAS && !op.Unknown && op.OK }
	for i, r := range rec.ops {
		if r.Kind != linear.Get || r.Unknown || (r.Key != hot[0] && r.Key != hot[1]) {
			continue
		}
		for _, w2 := range rec.ops {
			if w2.Key != r.Key || !swapped(w2) || w2.ExpectAbsent || w2.Return >= r.Call || w2.Expect == r.Out {
				continue
			}
			rec.ops[i].Present, rec.ops[i].Out = true, w2.Expect
			return r.Key
		}
	}
	t.Fatal("no read of a hot key after two successful check-and-sets")
	return ""
}
