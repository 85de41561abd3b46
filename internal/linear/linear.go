// Package linear checks that a recorded history of KV operations is linearizable:
// that some order of them, each taking effect at one instant between its call and its
// return, explains every answer a client got. "No failed and no lost writes" says
// nothing about stale reads; this does. The checker is porcupine
// (github.com/anishathalye/porcupine), given a model of Consul's KV store per key.
//
// An operation whose outcome the client never learned (an error or a timeout) may
// have taken effect at any time after its call, or never: it is given a return
// "after everything" and any output, porcupine's usual encoding, so both are allowed.
// Only writes (puts and check-and-sets) need that: a read that failed changes
// nothing and constrains nothing, so it is left out of the history.
package linear

import (
	"fmt"
	"hash/fnv"
	"sort"
	"strings"
	"time"

	"github.com/anishathalye/porcupine"
)

// Kind is what an operation does.
type Kind uint8

// The operations of the model.
const (
	// Get reads a key: its value, or absent.
	Get Kind = iota
	// Put writes a key unconditionally.
	Put
	// CAS writes a key only if it holds Expect (or is absent, with ExpectAbsent):
	// Consul's check-and-set on the ModifyIndex a read returned, which is the same
	// check when every write of the key writes a value of its own.
	CAS
)

func (k Kind) String() string {
	switch k {
	case Get:
		return "get"
	case Put:
		return "put"
	case CAS:
		return "cas"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Op is one attempt of one operation as a client saw it. Times are nanoseconds on
// one monotonic clock (any origin).
type Op struct {
	Key  string
	Kind Kind
	// Value is what a Put or a CAS writes.
	Value string
	// Expect is the value a CAS requires; ExpectAbsent requires the key to be absent.
	Expect       string
	ExpectAbsent bool

	// Unknown: the call failed or timed out, so it may or may not have taken
	// effect. Output fields and Return are then ignored.
	Unknown bool
	// Present and Out are what a Get returned.
	Present bool
	Out     string
	// OK is whether a CAS succeeded (false: the key held something else).
	OK bool

	Call, Return int64
}

// Result is the verdict on a history.
type Result struct {
	// Linearizable: the check completed and found an order explaining every answer.
	Linearizable bool
	// Ops counts the operations checked, Unknown those with an unknown outcome.
	Ops, Unknown int
	// TimedOut: the check ran out of time (Linearizable is then false).
	TimedOut bool
	// Detail names, on a violation, the key and the operations around it.
	Detail string
}

// state is one key's value. known is false until an operation pins it down: the
// history starts with whatever the key held before recording began.
type state struct {
	known, present bool
	value          string
}

// input and output are what porcupine carries; small comparable values.
type input struct {
	kind         Kind
	value        string
	expect       string
	expectAbsent bool
}

type output struct {
	unknown bool
	present bool
	out     string
	ok      bool
}

func (s state) holds(in input) bool {
	if in.expectAbsent {
		return !s.present
	}
	return s.present && s.value == in.expect
}

// step is the sequential specification of one key.
func step(st, in, out interface{}) (bool, interface{}) {
	s, i, o := st.(state), in.(input), out.(output)
	switch i.kind {
	case Get:
		if o.unknown {
			return true, s
		}
		got := state{known: true, present: o.present, value: o.out}
		if !o.present {
			got.value = ""
		}
		return !s.known || s == got, got
	case Put:
		// Unknown or not, a put that takes effect sets the value; one that never
		// did is linearized after everything, where it changes nothing observed.
		return true, state{known: true, present: true, value: i.value}
	case CAS:
		wrote := state{known: true, present: true, value: i.value}
		switch {
		case o.unknown && !s.known:
			// Either way the key may hold anything still: stay unknown.
			return true, s
		case o.unknown:
			if s.holds(i) {
				return true, wrote
			}
			return true, s
		case o.ok:
			// Succeeding proves the key held the expected value.
			return !s.known || s.holds(i), wrote
		default:
			return !s.known || !s.holds(i), s
		}
	}
	return false, s
}

// Model is the porcupine model of Consul's KV store, partitioned by key: a history
// is linearizable if and only if each key's is.
var Model = porcupine.Model{
	Partition: partition,
	Init:      func() interface{} { return state{} },
	Step:      step,
	Hash: func(st interface{}) uint64 {
		s := st.(state)
		h := fnv.New64a()
		fmt.Fprintf(h, "%t%t%s", s.known, s.present, s.value)
		return h.Sum64()
	},
	DescribeOperation: func(in, out interface{}) string { return describe(in.(input), out.(output)) },
	DescribeState: func(st interface{}) string {
		s := st.(state)
		switch {
		case !s.known:
			return "?"
		case !s.present:
			return "absent"
		}
		return fmt.Sprintf("%q", s.value)
	},
}

func describe(i input, o output) string {
	var s string
	switch i.kind {
	case Get:
		s = "get"
	case Put:
		s = fmt.Sprintf("put(%q)", i.value)
	case CAS:
		exp := "absent"
		if !i.expectAbsent {
			exp = fmt.Sprintf("%q", i.expect)
		}
		s = fmt.Sprintf("cas(%s -> %q)", exp, i.value)
	}
	switch {
	case o.unknown:
		return s + " -> unknown"
	case i.kind == Get && !o.present:
		return s + " -> absent"
	case i.kind == Get:
		return fmt.Sprintf("%s -> %q", s, o.out)
	case i.kind == CAS && !o.ok:
		return s + " -> conflict"
	}
	return s + " -> ok"
}

// key is the operation's key: porcupine keeps it in Metadata.
func key(op porcupine.Operation) string { return op.Metadata.(string) }

func partition(history []porcupine.Operation) [][]porcupine.Operation {
	index := map[string]int{}
	var parts [][]porcupine.Operation
	for _, op := range history {
		i, ok := index[key(op)]
		if !ok {
			i = len(parts)
			index[key(op)] = i
			parts = append(parts, nil)
		}
		parts[i] = append(parts[i], op)
	}
	return parts
}

// operations converts ops for porcupine: unknown outcomes return after everything.
// Failed reads are dropped (see the package comment).
func operations(ops []Op) (hist []porcupine.Operation, unknown int) {
	var last int64
	for _, op := range ops {
		last = max(last, op.Call, op.Return)
	}
	hist = make([]porcupine.Operation, 0, len(ops))
	for _, op := range ops {
		if op.Unknown && op.Kind == Get {
			continue
		}
		in := input{kind: op.Kind, value: op.Value, expect: op.Expect, expectAbsent: op.ExpectAbsent}
		out := output{unknown: op.Unknown, present: op.Present, out: op.Out, ok: op.OK}
		ret := op.Return
		if op.Unknown {
			unknown++
			ret = last + 1
		}
		hist = append(hist, porcupine.Operation{Input: in, Call: op.Call, Output: out, Return: ret, Metadata: op.Key})
	}
	return hist, unknown
}

// Check checks ops within timeout (at least a second is used). On a violation it
// names the first key found whose history admits no linearization.
func Check(ops []Op, timeout time.Duration) Result {
	deadline := time.Now().Add(max(timeout, time.Second))
	hist, unknown := operations(ops)
	r := Result{Ops: len(hist), Unknown: unknown}
	switch porcupine.CheckOperationsTimeout(Model, hist, time.Until(deadline)) {
	case porcupine.Ok:
		r.Linearizable = true
		return r
	case porcupine.Unknown:
		r.TimedOut = true
		return r
	}
	// Illegal: find a key that is, and show what goes wrong there.
	for _, part := range partition(hist) {
		left := time.Until(deadline)
		if left <= 0 {
			r.Detail = "not linearizable (no time left to name the key)"
			return r
		}
		res, info := porcupine.CheckOperationsVerbose(Model, part, left)
		if res == porcupine.Illegal {
			r.Detail = explain(part, info)
			return r
		}
	}
	r.Detail = "not linearizable (the key was not found again in time)"
	return r
}

// explain describes one key's illegal history: how far the longest linearizable
// prefix got, and the earliest operations that could not follow it.
func explain(part []porcupine.Operation, info porcupine.LinearizationInfo) string {
	var longest []porcupine.Operation
	for _, p := range info.PartialLinearizationsOperations() {
		for _, l := range p {
			if len(l) > len(longest) {
				longest = l
			}
		}
	}
	type span struct{ call, ret int64 }
	in := map[span]int{}
	for _, op := range longest {
		in[span{op.Call, op.Return}]++
	}
	var stuck []porcupine.Operation
	for _, op := range part {
		s := span{op.Call, op.Return}
		if in[s] > 0 {
			in[s]--
			continue
		}
		stuck = append(stuck, op)
	}
	sort.Slice(stuck, func(i, j int) bool { return stuck[i].Return < stuck[j].Return })
	var origin int64 = -1
	for _, op := range part {
		if origin < 0 || op.Call < origin {
			origin = op.Call
		}
	}
	d := func(op porcupine.Operation) string {
		ret := "never"
		if !op.Output.(output).unknown {
			ret = fmt.Sprintf("%.1fms", float64(op.Return-origin)/1e6)
		}
		return fmt.Sprintf("%s [%.1fms, %s]", describe(op.Input.(input), op.Output.(output)), float64(op.Call-origin)/1e6, ret)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "key %q (%d operations; times from its first call): ", key(part[0]), len(part))
	b.WriteString("linearizable up to ")
	if len(longest) == 0 {
		b.WriteString("nothing")
	}
	for i, op := range longest[max(len(longest)-3, 0):] {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(d(op))
	}
	b.WriteString("; then none of ")
	for i, op := range stuck[:min(len(stuck), 3)] {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(d(op))
	}
	return b.String()
}
