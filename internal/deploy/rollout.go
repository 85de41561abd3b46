package deploy

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/consul-rehydrate/consul-rehydrate/internal/coord"
	"github.com/consul-rehydrate/consul-rehydrate/internal/poll"
)

// Rollout states, and the states of a node within one.
const (
	RolloutRunning = "running"
	RolloutDone    = "done"
	RolloutHalted  = "halted"

	NodePending    = "pending"
	NodeSkipped    = "skipped" // it ran the version already
	NodeDeploying  = "deploying"
	NodeTimedOut   = "timed_out"
	NodeReverting  = "reverting"
	NodeReverted   = "reverted" // the rollout rolled it back after another node failed
	NodeRevertFail = "revert_failed"
)

// Record is a rollout, kept at deploy/<service>/rollout.
type Record struct {
	ID             string       `json:"id"`
	Version        string       `json:"version"`
	Artifact       string       `json:"artifact,omitempty"`
	State          string       `json:"state"`
	Batch          int          `json:"batch"`
	MaxUnavailable int          `json:"max_unavailable"`
	Started        time.Time    `json:"started"`
	Finished       *time.Time   `json:"finished,omitempty"`
	Nodes          []NodeRecord `json:"nodes"`
	Error          string       `json:"error,omitempty"`
}

// NodeRecord is one node's part in a rollout.
type NodeRecord struct {
	Node     string `json:"node"`
	Previous string `json:"previous,omitempty"`
	State    string `json:"state"`
	Error    string `json:"error,omitempty"`
}

// Rollout deploys a version to every node of a service, a batch at a time.
type Rollout struct {
	Client   *api.Client
	Service  string
	Version  string
	Artifact string
	// Batch is how many nodes deploy at once.
	Batch int
	// MaxUnavailable is how many of the service's nodes may be out of passing at
	// once, counting those out for other reasons.
	MaxUnavailable int
	// NodeTimeout bounds a batch: from writing its desired values to every node's
	// final status.
	NodeTimeout time.Duration
	Poll        time.Duration
	Lock        coord.LockOptions
	// Out gets a line for every step.
	Out io.Writer
	Now func() time.Time

	rec   Record
	store kv
	held  *coord.Held
}

// item is a desired value for one node.
type item struct {
	node string
	want Desired
}

// Run runs the rollout. It halts at the first node whose deployment does not
// succeed, and rolls the nodes it updated back to the version each ran before.
func (r *Rollout) Run(ctx context.Context) (*Record, error) {
	r.store = kv{r.Client}
	id, err := newID(r.Now())
	if err != nil {
		return nil, err
	}
	r.Lock.Holder = fmt.Sprintf("rollout %s of %s %s", id, r.Service, r.Version)
	held, err := r.store.lock(ctx, ServiceKey(r.Service, KeyLock), r.Lock)
	if errors.Is(err, coord.ErrLockHeld) {
		holder, _ := coord.HolderOf(ctx, r.Client, ServiceKey(r.Service, KeyLock))
		return nil, fmt.Errorf("%w: %s holds %s", ErrBusy, holder, ServiceKey(r.Service, KeyLock))
	}
	if err != nil {
		return nil, consulErr(ctx, err)
	}
	r.held = held
	defer held.Release()
	ctx = held.Context()

	nodes, err := serviceNodes(ctx, r.Client, r.Service)
	if err != nil {
		return nil, err
	}
	r.rec = Record{ID: id, Version: r.Version, Artifact: r.Artifact, State: RolloutRunning, Batch: r.Batch,
		MaxUnavailable: r.MaxUnavailable, Started: r.Now().UTC()}
	keys, err := r.store.nodes(ctx, r.Service)
	if err != nil {
		return nil, err
	}
	var todo []item
	for _, n := range nodes {
		var cur string
		var st *Status
		if k := keys[n]; k != nil {
			cur, st = k.current, k.status
		}
		nr := NodeRecord{Node: n, Previous: cur, State: NodePending}
		if cur == r.Version && st != nil && st.State == StateSucceeded && st.Version == r.Version {
			nr.State = NodeSkipped
		} else {
			todo = append(todo, item{n, Desired{ID: id, Version: r.Version, Artifact: r.Artifact}})
		}
		r.rec.Nodes = append(r.rec.Nodes, nr)
	}
	if err := r.save(ctx); err != nil {
		return nil, err
	}
	r.printf("rollout %s: %s %s to %d of %d nodes (batch %d, max unavailable %d)",
		id, r.Service, r.Version, len(todo), len(nodes), r.Batch, r.MaxUnavailable)

	failed, err := r.walk(ctx, nodes, todo, false)
	if err == nil && failed == "" {
		r.rec.State = RolloutDone
		return &r.rec, r.end(ctx, "")
	}
	// Neither a lost lock nor the end of the rollout's time (or an interrupt) rolls
	// back: the nodes finish what they started, and the record says where it stopped.
	if s := stopped(ctx, err); s != nil {
		err = s
	}
	switch {
	case errors.Is(err, ErrLockLost):
		r.printf("lock lost; stopping: nodes finish what they started, nothing is rolled back")
		return &r.rec, err
	case errors.Is(err, ErrTimedOut):
		r.printf("ran out of time; stopping: nodes finish what they started, nothing is rolled back")
		return &r.rec, err
	case context.Cause(ctx) != nil:
		r.printf("stopped: %v", context.Cause(ctx))
		return &r.rec, err
	}
	cause := err
	if failed != "" {
		nr := r.node(failed)
		cause = fmt.Errorf("node %s %s: %s", failed, nr.State, nr.Error)
	}
	r.printf("halting: %v", cause)

	// Roll back what this rollout changed, each node to what it ran before.
	var back []item
	for _, nr := range r.rec.Nodes {
		if nr.State == StateSucceeded && nr.Previous != "" && nr.Previous != r.Version {
			back = append(back, item{nr.Node, Desired{ID: id + "-rollback", Version: nr.Previous}})
		}
	}
	if len(back) > 0 {
		r.printf("rolling back %d updated nodes", len(back))
		if _, err := r.walk(ctx, nodes, back, true); err != nil {
			cause = fmt.Errorf("%w; roll back: %w", cause, err)
		}
	}
	r.rec.State = RolloutHalted
	if err := r.end(ctx, cause.Error()); err != nil {
		return &r.rec, err
	}
	return &r.rec, fmt.Errorf("%w: rollout %s halted: %w", ErrFailed, id, cause)
}

// walk deploys items a batch at a time. It returns the first node whose
// deployment did not succeed, or an error that stopped the walk.
func (r *Rollout) walk(ctx context.Context, nodes []string, todo []item, revert bool) (string, error) {
	for len(todo) > 0 {
		batch, err := r.nextBatch(ctx, nodes, todo)
		if err != nil {
			return "", err
		}
		todo = todo[len(batch):]
		for _, it := range batch {
			if err := r.held.Verify(); err != nil {
				if s := stopped(ctx, err); s != nil {
					return "", s
				}
				// Not confirmed held is as good as lost: write nothing more.
				return "", fmt.Errorf("%w: %w", ErrLockLost, err)
			}
			if err := r.store.putJSON(ctx, NodeKey(r.Service, it.node, KeyDesired), it.want); err != nil {
				return "", err
			}
			state, doing := NodeDeploying, "deploying"
			if revert {
				state, doing = NodeReverting, "rolling back to"
			}
			r.setNode(it.node, state, "")
			r.printf("%s: %s %s", it.node, doing, it.want.Version)
		}
		if err := r.save(ctx); err != nil {
			return "", err
		}
		failed, err := r.await(ctx, batch, revert)
		if err != nil || failed != "" {
			return failed, err
		}
	}
	return "", nil
}

// nextBatch waits until taking the next nodes out keeps at most MaxUnavailable of
// the service's nodes out of passing, and returns them: up to Batch nodes from the
// front of todo. A node that is out already costs nothing to take.
func (r *Rollout) nextBatch(ctx context.Context, nodes []string, todo []item) ([]item, error) {
	var names, out []string
	for _, it := range todo {
		names = append(names, it.node)
	}
	n := 0
	err := poll.Until(ctx, r.Poll, r.NodeTimeout, func(ctx context.Context) (bool, error) {
		hs, err := health(ctx, r.Client, r.Service)
		if err != nil {
			return false, err
		}
		out = unavailable(hs, nodes)
		n = pick(names, out, r.Batch, r.MaxUnavailable)
		return n > 0, nil
	})
	if errors.Is(err, poll.ErrTimeout) {
		return nil, fmt.Errorf("%d nodes not passing (%s), and --max-unavailable %d leaves no room for %s after %s",
			len(out), strings.Join(out, ", "), r.MaxUnavailable, todo[0].node, r.NodeTimeout)
	}
	if err != nil {
		return nil, err
	}
	return todo[:n], nil
}

// pick says how many of the nodes at the front of todo to deploy next: at most
// batch, and no more than keep the nodes out of passing (out) within
// maxUnavailable. A node that is out already costs nothing to take.
func pick(todo, out []string, batch, maxUnavailable int) int {
	room := maxUnavailable - len(out)
	n := 0
	for n < len(todo) && n < batch {
		if !slices.Contains(out, todo[n]) {
			if room <= 0 {
				break
			}
			room--
		}
		n++
	}
	return n
}

// await waits until every node of the batch has a final status for its desired
// ID, or NodeTimeout has passed. It returns the first node that did not succeed.
func (r *Rollout) await(ctx context.Context, batch []item, revert bool) (string, error) {
	pending := slices.Clone(batch)
	failed := ""
	err := poll.Until(ctx, r.Poll, r.NodeTimeout, func(ctx context.Context) (bool, error) {
		keys, err := r.store.nodes(ctx, r.Service)
		if err != nil {
			return false, err
		}
		var still []item
		for _, it := range pending {
			k := keys[it.node]
			if k == nil || k.status == nil || k.status.ID != it.want.ID || !Final(k.status.State) {
				still = append(still, it)
				continue
			}
			st := k.status
			state := st.State
			if revert {
				state = NodeRevertFail
				if st.State == StateSucceeded {
					state = NodeReverted
				}
			}
			r.setNode(it.node, state, st.Error)
			r.printf("%s: %s (%s)", it.node, state, st.Version)
			if st.State != StateSucceeded && failed == "" {
				failed = it.node
			}
		}
		pending = still
		if err := r.save(ctx); err != nil {
			return false, err
		}
		return len(pending) == 0, nil
	})
	if errors.Is(err, poll.ErrTimeout) {
		for _, it := range pending {
			r.setNode(it.node, NodeTimedOut, fmt.Sprintf("no final status for %s within %s", it.want.ID, r.NodeTimeout))
			r.printf("%s: timed out", it.node)
			if failed == "" {
				failed = it.node
			}
		}
		return failed, r.save(ctx)
	}
	if err != nil {
		return "", err
	}
	return failed, nil
}

func (r *Rollout) node(name string) *NodeRecord {
	for i := range r.rec.Nodes {
		if r.rec.Nodes[i].Node == name {
			return &r.rec.Nodes[i]
		}
	}
	return nil
}

func (r *Rollout) setNode(name, state, errText string) {
	if nr := r.node(name); nr != nil {
		nr.State, nr.Error = state, errText
	}
}

func (r *Rollout) save(ctx context.Context) error {
	return r.store.putJSON(ctx, ServiceKey(r.Service, "rollout"), r.rec)
}

func (r *Rollout) end(ctx context.Context, errText string) error {
	t := r.Now().UTC()
	r.rec.Finished, r.rec.Error = &t, errText
	r.printf("rollout %s: %s", r.rec.ID, r.rec.State)
	return r.save(ctx)
}

func (r *Rollout) printf(format string, args ...any) {
	if r.Out != nil {
		fmt.Fprintf(r.Out, "%s %s\n", r.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
	}
}

// serviceNodes returns the names of the nodes the catalog has the service on.
func serviceNodes(ctx context.Context, c *api.Client, service string) ([]string, error) {
	var svcs []*api.CatalogService
	err := retry(ctx, func() (err error) {
		svcs, _, err = c.Catalog().Service(service, "", (&api.QueryOptions{}).WithContext(ctx))
		return err
	})
	if err != nil {
		return nil, consulErr(ctx, fmt.Errorf("catalog of service %s: %w", service, err))
	}
	var nodes []string
	for _, s := range svcs {
		if !slices.Contains(nodes, s.Node) {
			nodes = append(nodes, s.Node)
		}
	}
	if len(nodes) == 0 {
		return nil, fmt.Errorf("no instance of service %s in the catalog", service)
	}
	sort.Strings(nodes)
	return nodes, nil
}

// newID names a rollout: sortable by time, unique by its random part.
func newID(now time.Time) (string, error) {
	b := make([]byte, 3)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("new rollout id: %w", err)
	}
	return now.UTC().Format("20060102T150405Z") + "-" + hex.EncodeToString(b), nil
}
