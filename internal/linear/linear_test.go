package linear

import (
	"fmt"
	"math/rand"
	"sort"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Times below are in milliseconds for readability.
const ms = int64(time.Millisecond)

func put(key, v string, call, ret int64) Op {
	return Op{Key: key, Kind: Put, Value: v, Call: call * ms, Return: ret * ms}
}

func get(key, v string, call, ret int64) Op {
	return Op{Key: key, Kind: Get, Present: true, Out: v, Call: call * ms, Return: ret * ms}
}

func getAbsent(key string, call, ret int64) Op {
	return Op{Key: key, Kind: Get, Call: call * ms, Return: ret * ms}
}

func cas(key, expect, v string, ok bool, call, ret int64) Op {
	return Op{Key: key, Kind: CAS, Expect: expect, ExpectAbsent: expect == "", Value: v, OK: ok, Call: call * ms, Return: ret * ms}
}

func unknown(op Op) Op {
	op.Unknown, op.Return = true, 0
	return op
}

func TestCheck_ConcurrentCorrectHistoryIsLinearizable(t *testing.T) {
	h := []Op{
		// Key a: a put overlapping two reads, one seeing the old value and one the
		// new (either order is possible while they overlap), then a CAS race.
		put("a", "1", 0, 10),
		put("a", "2", 20, 40),
		get("a", "2", 25, 30),
		get("a", "1", 22, 45),
		cas("a", "2", "3", true, 50, 60),
		cas("a", "2", "4", false, 55, 65), // lost the race: a conflict
		get("a", "3", 70, 80),
		// Key b: created if absent, by one of two concurrent creators.
		getAbsent("b", 0, 5),
		cas("b", "", "x", false, 10, 30),
		cas("b", "", "y", true, 12, 20),
		get("b", "y", 40, 50),
		// Key c: its value before recording began is unknown: the first read pins it.
		get("c", "old", 0, 5),
		get("c", "old", 10, 15),
		cas("c", "old", "new", true, 20, 25),
	}
	r := Check(h, 10*time.Second)
	assert.True(t, r.Linearizable, r.Detail)
	assert.Equal(t, len(h), r.Ops)
	assert.Zero(t, r.Unknown)
	assert.False(t, r.TimedOut)
	assert.Empty(t, r.Detail)
}

// The control: the checker can fail. One read returns a value overwritten before it
// began; the verdict must name its key.
func TestCheck_InjectedStaleReadIsAViolation(t *testing.T) {
	h := []Op{
		put("other", "1", 0, 10),
		get("other", "1", 20, 30),
		put("hot", "1", 0, 10),
		cas("hot", "1", "2", true, 20, 30),
		get("hot", "2", 40, 50),
		get("hot", "1", 60, 70), // stale: "2" replaced "1" at 30ms at the latest
	}
	r := Check(h, 10*time.Second)
	assert.False(t, r.Linearizable)
	assert.False(t, r.TimedOut)
	assert.Contains(t, r.Detail, `key "hot"`)
	assert.Contains(t, r.Detail, `get -> "1" [60.0ms, 70.0ms]`)
	assert.NotContains(t, r.Detail, `"other"`)
	t.Log(r.Detail)
}

func TestCheck_LostAcknowledgedWriteSeenByALaterReadIsAViolation(t *testing.T) {
	h := []Op{
		put("w/1", "1", 0, 10),
		getAbsent("w/1", 20, 30),
	}
	r := Check(h, 10*time.Second)
	assert.False(t, r.Linearizable)
	assert.Contains(t, r.Detail, `key "w/1"`)

	// The same read overlapping the write may see it or not.
	assert.True(t, Check([]Op{put("w/1", "1", 0, 10), getAbsent("w/1", 5, 30)}, 10*time.Second).Linearizable)
}

// An attempt that errored may or may not have taken effect, at any time after its
// call: a later read may see it or not, and may even see it after not seeing it.
func TestCheck_UnknownOutcomeWriteMayOrMayNotBeSeen(t *testing.T) {
	for name, h := range map[string][]Op{
		"seen":                  {getAbsent("k", 0, 5), unknown(put("k", "1", 10, 0)), get("k", "1", 20, 30)},
		"not seen":              {getAbsent("k", 0, 5), unknown(put("k", "1", 10, 0)), getAbsent("k", 20, 30)},
		"seen late":             {getAbsent("k", 0, 5), unknown(put("k", "1", 10, 0)), getAbsent("k", 20, 30), get("k", "1", 40, 50)},
		"cas seen":              {get("k", "a", 0, 5), unknown(cas("k", "a", "b", false, 10, 0)), get("k", "b", 20, 30)},
		"cas not seen":          {get("k", "a", 0, 5), unknown(cas("k", "a", "b", false, 10, 0)), get("k", "a", 20, 30)},
		"retry after unknown":   {unknown(put("k", "1", 0, 0)), put("k", "1", 10, 20), get("k", "1", 30, 40)},
		"cas on unknown create": {unknown(cas("k", "", "a", false, 0, 0)), cas("k", "a", "b", true, 10, 20), get("k", "b", 30, 40)},
	} {
		t.Run(name, func(t *testing.T) {
			r := Check(h, 10*time.Second)
			assert.True(t, r.Linearizable, r.Detail)
			assert.Positive(t, r.Unknown)
		})
	}

	// A read that failed changes nothing and says nothing: it is left out.
	r := Check([]Op{put("k", "1", 0, 10), unknown(getAbsent("k", 20, 0)), get("k", "1", 30, 40)}, 10*time.Second)
	assert.True(t, r.Linearizable, r.Detail)
	assert.Equal(t, 2, r.Ops)
	assert.Zero(t, r.Unknown)

	// But an unknown write cannot take effect before its call.
	r = Check([]Op{getAbsent("k", 0, 5), get("k", "1", 10, 20), unknown(put("k", "1", 30, 0))}, 10*time.Second)
	assert.False(t, r.Linearizable)
	// Nor can an unknown check-and-set whose check fails.
	r = Check([]Op{get("k", "a", 0, 5), put("k", "z", 10, 15), unknown(cas("k", "a", "b", false, 20, 0)), get("k", "b", 30, 40)}, 10*time.Second)
	assert.False(t, r.Linearizable)
}

func TestCheck_CASMustMatchTheModel(t *testing.T) {
	for name, h := range map[string][]Op{
		"succeeded on another value":         {put("k", "a", 0, 5), cas("k", "z", "b", true, 10, 20)},
		"conflicted although it held it":     {put("k", "a", 0, 5), cas("k", "a", "b", false, 10, 20)},
		"created although present":           {put("k", "a", 0, 5), cas("k", "", "b", true, 10, 20)},
		"two creates both succeeded":         {cas("k", "", "a", true, 0, 10), cas("k", "", "b", true, 5, 15)},
		"read the value a cas replaced":      {cas("k", "", "a", true, 0, 10), cas("k", "a", "b", true, 20, 30), get("k", "a", 40, 50)},
		"read a value before it was written": {get("k", "a", 0, 5), getAbsent("k", 10, 15), put("k", "a", 20, 30)},
	} {
		t.Run(name, func(t *testing.T) {
			r := Check(h, 10*time.Second)
			assert.False(t, r.Linearizable)
			assert.Contains(t, r.Detail, `key "k"`)
		})
	}
}

// simulate runs n random operations from clients on keys against a sequential store,
// each taking effect at a random instant inside its [call, return]: by construction
// a linearizable history. Some writes are reported unknown, as a timeout would.
func simulate(rng *rand.Rand, n, clients int, keys []string) []Op {
	type pending struct {
		op    Op
		point int64
	}
	var ops []pending
	next := make([]int64, clients) // each client's next free time
	for i := 0; i < n; i++ {
		c := rng.Intn(clients)
		call := next[c] + rng.Int63n(5*ms)
		ret := call + 1 + rng.Int63n(20*ms)
		next[c] = ret + 1
		op := Op{Key: keys[rng.Intn(len(keys))], Call: call, Return: ret}
		switch rng.Intn(3) {
		case 0:
			op.Kind = Get
		case 1:
			op.Kind, op.Value = Put, fmt.Sprintf("p%d", i)
		default:
			op.Kind, op.Value = CAS, fmt.Sprintf("c%d", i)
		}
		ops = append(ops, pending{op, call + rng.Int63n(ret-call+1)})
	}
	sort.Slice(ops, func(i, j int) bool { return ops[i].point < ops[j].point })
	store := map[string]string{}
	last := map[string]string{} // the value each key held before its latest write
	out := make([]Op, 0, n)
	for _, p := range ops {
		op := p.op
		v, present := store[op.Key]
		switch op.Kind {
		case Get:
			op.Present, op.Out = present, v
		case Put:
			last[op.Key] = v
			store[op.Key] = op.Value
		case CAS:
			// Expect what the key holds half the time, else a stale value: a conflict.
			op.Expect, op.ExpectAbsent = v, !present
			if rng.Intn(2) == 0 {
				op.Expect, op.ExpectAbsent = last[op.Key]+"stale", false
			}
			op.OK = op.ExpectAbsent == !present && (!present || op.Expect == v)
			if op.OK {
				last[op.Key] = v
				store[op.Key] = op.Value
			}
		}
		if op.Kind != Get && rng.Intn(20) == 0 {
			op.Unknown = true
		}
		out = append(out, op)
	}
	return out
}

func TestCheck_SimulatedLinearizableHistoriesPassAndAStaleReadInThemFails(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	for run := 0; run < 20; run++ {
		h := simulate(rng, 400, 6, []string{"a", "b", "c"})
		r := Check(h, 30*time.Second)
		require.True(t, r.Linearizable, "run %d: %s", run, r.Detail)
		require.Equal(t, len(h), r.Ops)

		// Make one read return a value overwritten before it began: one written by
		// a put that finished before another write of the key, which finished
		// before the read. Values are unique, so that value is gone for good.
		written := func(w Op) bool { return !w.Unknown && (w.Kind == Put || w.Kind == CAS && w.OK) }
		stale := -1
	search:
		for i, r := range h {
			if r.Kind != Get {
				continue
			}
			for _, w2 := range h {
				if w2.Key != r.Key || !written(w2) || w2.Return >= r.Call {
					continue
				}
				for _, w1 := range h {
					if w1.Key == r.Key && w1.Kind == Put && !w1.Unknown && w1.Return < w2.Call {
						stale = i
						h[i].Present, h[i].Out = true, w1.Value
						break search
					}
				}
			}
		}
		require.GreaterOrEqual(t, stale, 0)
		r = Check(h, 30*time.Second)
		require.False(t, r.Linearizable, "run %d", run)
		require.False(t, r.TimedOut)
		require.Contains(t, r.Detail, fmt.Sprintf("key %q", h[stale].Key))
	}
}
