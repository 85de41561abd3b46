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
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/consul-rehydrate/consul-rehydrate/config"
	"github.com/consul-rehydrate/consul-rehydrate/internal/coord"
	"github.com/consul-rehydrate/consul-rehydrate/internal/poll"
	"github.com/consul-rehydrate/consul-rehydrate/internal/printable"
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
	NodeRefused    = "refused" // the rollout would not deploy to it; its Error says why
)

// Record is a rollout, kept at deploy/<service>/rollout.
type Record struct {
	ID       string `json:"id"`
	Version  string `json:"version"`
	Artifact string `json:"artifact,omitempty"`
	SHA256   string `json:"sha256,omitempty"`
	// NodeFilter is the filter the catalog selected the nodes with: the deploy
	// block's node_filter and the rollout's --node-filter, both when both are set.
	NodeFilter     string       `json:"node_filter,omitempty"`
	State          string       `json:"state"`
	Batch          int          `json:"batch"`
	MaxUnavailable int          `json:"max_unavailable"`
	Started        time.Time    `json:"started"`
	Finished       *time.Time   `json:"finished,omitempty"`
	Nodes          []NodeRecord `json:"nodes"`
	// Refused are the nodes the catalog has the service on that the rollout did not
	// deploy to (state NodeRefused), each with why.
	Refused []NodeRecord `json:"refused,omitempty"`
	Error   string       `json:"error,omitempty"`
}

// NodeRecord is one node's part in a rollout.
type NodeRecord struct {
	Node     string `json:"node"`
	Previous string `json:"previous,omitempty"`
	// PreviousArtifact and PreviousSHA256 are what the node's last deployment of
	// Previous was asked with: a rollback asks for them again, so that a deploy block
	// with an allow-list or require_sha256 takes it.
	PreviousArtifact string `json:"previous_artifact,omitempty"`
	PreviousSHA256   string `json:"previous_sha256,omitempty"`
	State            string `json:"state"`
	Error            string `json:"error,omitempty"`
}

// Rollout deploys a version to every node of a service, a batch at a time.
type Rollout struct {
	Client   *api.Client
	Service  string
	Version  string
	Artifact string
	SHA256   string
	// NodeFilter is a Consul filter expression on the catalog's nodes of the service
	// (the fields of /v1/catalog/service/:service, as `consul catalog nodes -service
	// web -filter` takes), e.g. `Node matches "^web-"` or `NodeMeta.pool == "blue"`;
	// only the nodes it selects are deployed to. Empty: every node of the service.
	// Whatever it selects, a node must also pass eligibleNodes.
	//
	// It can only narrow Policy's node_filter, never widen it: a node must be
	// selected by both. The configured filter says which nodes the operator means the
	// service to run on; a flag given for one rollout cannot reach past it.
	NodeFilter string
	// Policy, when set, is the service's deploy block: the rollout refuses a desired
	// value its handlers would refuse (Allowed) before it writes anything, and deploys
	// only to the nodes its node_filter selects.
	Policy *config.DeployConfig
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
// It deploys only to the nodes plan accepts, and records the others as refused; a
// rollout with no node to deploy to is refused (ErrRefused) before it takes the
// lock, and writes nothing.
func (r *Rollout) Run(ctx context.Context) (*Record, error) {
	r.store = kv{r.Client}
	want := Desired{ID: "check", Version: r.Version, Artifact: r.Artifact, SHA256: r.SHA256}
	if err := want.Check(); err != nil {
		return nil, err
	}
	if r.Policy != nil {
		if err := Allowed(r.Policy, want); err != nil {
			return nil, err
		}
	}
	// Planned before the lock too, so that a rollout refused for want of nodes writes
	// nothing; planned again under it, where it counts.
	if _, err := r.plan(ctx, ""); err != nil {
		return nil, err
	}
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

	p, err := r.plan(ctx, id)
	if err != nil {
		return nil, err
	}
	nodes, todo := p.nodes, p.todo
	r.rec = Record{ID: id, Version: r.Version, Artifact: r.Artifact, SHA256: r.SHA256, NodeFilter: r.filter().expr(),
		State: RolloutRunning, Batch: r.Batch, MaxUnavailable: r.MaxUnavailable, Started: r.Now().UTC(),
		Nodes: p.records, Refused: p.refused}
	if err := r.save(ctx); err != nil {
		return nil, err
	}
	for _, nr := range p.refused {
		r.printf("refusing node %s: %s", nr.Node, nr.Error)
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
			back = append(back, item{nr.Node, Desired{ID: id + "-rollback", Version: nr.Previous,
				Artifact: nr.PreviousArtifact, SHA256: nr.PreviousSHA256}})
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

// printf prints a line of the rollout's progress. Node names, versions and errors
// come from the catalog and from nodes' keys: the line is shown escaped, so that none
// of them can drive the terminal.
func (r *Rollout) printf(format string, args ...any) {
	if r.Out != nil {
		fmt.Fprintf(r.Out, "%s %s\n", r.Now().Format("15:04:05"), printable.String(fmt.Sprintf(format, args...)))
	}
}

// plan is what a rollout deploys, and to which nodes.
type plan struct {
	nodes   []string     // the nodes it deploys to, sorted
	records []NodeRecord // one per node of nodes
	todo    []item       // the nodes of nodes not on the version yet, with their desired values
	refused []NodeRecord // the service's nodes it does not deploy to, with why
}

// plan reads which of the service's nodes the rollout deploys to, what each runs,
// and which of them need the version (the desired values get the rollout id id).
// A node is refused if eligibleNodes refuses it, or if its current key is not a
// version: it would become the node's rollback version, and its handler would refuse
// the deployment anyway. A rollout left with no node is refused (ErrRefused).
func (r *Rollout) plan(ctx context.Context, id string) (*plan, error) {
	nodes, refused, err := eligibleNodes(ctx, r.Client, r.Service, r.filter())
	if err != nil {
		return nil, err
	}
	keys, err := r.store.nodes(ctx, r.Service)
	if err != nil {
		return nil, err
	}
	p := &plan{refused: refused}
	for _, n := range nodes {
		var cur string
		var st *Status
		if k := keys[n]; k != nil {
			cur, st = k.current, k.status
		}
		if cur != "" {
			if err := CheckVersion(cur); err != nil {
				p.refused = append(p.refused, NodeRecord{Node: n, State: NodeRefused,
					Error: fmt.Sprintf("%s: %v", NodeKey(r.Service, n, KeyCurrent), err)})
				continue
			}
		}
		nr := NodeRecord{Node: n, Previous: cur, State: NodePending}
		if st != nil && st.State == StateSucceeded && cur != "" && st.Version == cur {
			// Asked for again if the rollout rolls the node back; the node wrote them,
			// so only well-formed ones, and only to the node itself.
			if (Desired{ID: "check", Version: cur, Artifact: st.Artifact, SHA256: st.SHA256}).Check() == nil {
				nr.PreviousArtifact, nr.PreviousSHA256 = st.Artifact, st.SHA256
			}
		}
		if cur == r.Version && st != nil && st.State == StateSucceeded && st.Version == r.Version {
			nr.State = NodeSkipped
		} else {
			p.todo = append(p.todo, item{n, Desired{ID: id, Version: r.Version, Artifact: r.Artifact, SHA256: r.SHA256}})
		}
		p.nodes = append(p.nodes, n)
		p.records = append(p.records, nr)
	}
	if len(p.nodes) == 0 {
		why := make([]string, len(p.refused))
		for i, nr := range p.refused {
			why[i] = fmt.Sprintf("%s: %s", strconv.Quote(nr.Node), nr.Error)
		}
		return nil, fmt.Errorf("%w: no node of service %s to deploy to; refused %s", ErrRefused, r.Service, strings.Join(why, "; "))
	}
	return p, nil
}

// nodeFilter is what selects a rollout's nodes in the catalog: the deploy block's
// node_filter (configured) and the rollout's --node-filter (flag), either or both.
type nodeFilter struct {
	service, configured, flag string
}

func (r *Rollout) filter() nodeFilter {
	f := nodeFilter{service: r.Service, flag: r.NodeFilter}
	if r.Policy != nil {
		f.configured = r.Policy.NodeFilter
	}
	return f
}

// expr is the catalog's filter expression: both filters, each in parentheses, joined
// with "and", so that the flag narrows the configured filter and cannot widen it
// (go-bexpr's grammar takes a parenthesized expression wherever it takes a match).
func (f nodeFilter) expr() string {
	switch {
	case f.configured == "":
		return f.flag
	case f.flag == "":
		return f.configured
	}
	return "(" + f.configured + ") and (" + f.flag + ")"
}

// configKey is the configured filter's key, for messages.
func (f nodeFilter) configKey() string {
	return config.KeyDeploy + "." + f.service + "." + config.AttrDeployNodeFilter
}

// String names the filters in messages, as the operator set them.
func (f nodeFilter) String() string {
	var parts []string
	if f.configured != "" {
		parts = append(parts, fmt.Sprintf("%s %q", f.configKey(), f.configured))
	}
	if f.flag != "" {
		parts = append(parts, fmt.Sprintf("--node-filter %q", f.flag))
	}
	return strings.Join(parts, " and ")
}

// badFilter says whether err is Consul's refusal of a filter: go-bexpr's "Failed to
// create boolean expression evaluator" (hashicorp/go-bexpr filter.go) for one that
// does not parse or names no field, a 400 from a server, a 500 through a client
// agent's RPC.
func badFilter(err error) (string, bool) {
	var se api.StatusError
	if errors.As(err, &se) && strings.Contains(se.Body, "Failed to create boolean expression evaluator") {
		return strings.TrimSpace(se.Body), true
	}
	return "", false
}

// refused returns the error for Consul's refusal (body) of the filters: the
// configuration's (ErrBadConfigFilter) when the configured filter alone is refused,
// the command line's (ErrBadFilter) otherwise. The load checked the configured
// filter's syntax, not its fields, so it may be the one at fault.
func (f nodeFilter) refused(ctx context.Context, c *api.Client, body string) error {
	configBad := f.configured != "" && f.flag == ""
	if f.configured != "" && f.flag != "" {
		err := retry(ctx, func() error {
			_, _, err := c.Catalog().Service(f.service, "", (&api.QueryOptions{Filter: f.configured}).WithContext(ctx))
			if b, bad := badFilter(err); bad {
				configBad, body = true, b
				return nil
			}
			return err
		})
		if err != nil {
			return consulErr(ctx, fmt.Errorf("catalog of service %s: %w", f.service, err))
		}
	}
	if configBad {
		return fmt.Errorf("%w: %s %q: %s", ErrBadConfigFilter, f.configKey(), f.configured, body)
	}
	return fmt.Errorf("%w: %s: %s", ErrBadFilter, f, body)
}

// LAN gossip member states (api.AgentMember.Status, serf.MemberStatus).
const memberLeft = 3

// eligibleNodes returns the nodes the catalog has the service on that a rollout
// may deploy to, sorted, and those it refuses, each with why. The catalog is
// anyone's to write who holds node or service write for some name: a node must
// also
//
//   - be selected by filter (the deploy block's node_filter and --node-filter, both
//     Consul filter expressions evaluated by the catalog; none selects every node),
//   - have a name fit for a key (nodeName), and
//   - be a member of the LAN gossip pool of the agent the rollout talks to, and not
//     one that has left. A node registered through /v1/catalog/register alone has
//     no agent behind it, and the leader keeps such a node in the catalog (it
//     deregisters only nodes that have a serfHealth check and are not members:
//     reconcileReaped in hashicorp/consul agent/consul/leader.go), so the catalog
//     alone cannot tell a fake registration from a node. With gossip encryption,
//     joining the pool takes the key. Names compare case-insensitively, as there.
func eligibleNodes(ctx context.Context, c *api.Client, service string, filter nodeFilter) ([]string, []NodeRecord, error) {
	var svcs []*api.CatalogService
	var refusal string
	err := retry(ctx, func() (err error) {
		svcs, _, err = c.Catalog().Service(service, "", (&api.QueryOptions{Filter: filter.expr()}).WithContext(ctx))
		if body, bad := badFilter(err); bad && filter.expr() != "" {
			refusal = body
			return nil
		}
		return err
	})
	if err != nil {
		return nil, nil, consulErr(ctx, fmt.Errorf("catalog of service %s: %w", service, err))
	}
	if refusal != "" {
		return nil, nil, filter.refused(ctx, c, refusal)
	}
	if len(svcs) == 0 {
		if filter.expr() != "" {
			return nil, nil, fmt.Errorf("%w: no instance of service %s in the catalog that %s selects", ErrRefused, service, filter)
		}
		return nil, nil, fmt.Errorf("%w: no instance of service %s in the catalog", ErrRefused, service)
	}
	var members []*api.AgentMember
	err = retry(ctx, func() (err error) {
		members, err = c.Agent().Members(false)
		return err
	})
	if err != nil {
		return nil, nil, consulErr(ctx, fmt.Errorf("LAN members: %w", err))
	}
	status := map[string]int{}
	for _, m := range members {
		status[strings.ToLower(m.Name)] = m.Status
	}
	var nodes []string
	var refused []NodeRecord
	seen := map[string]bool{}
	for _, s := range svcs {
		if seen[s.Node] {
			continue
		}
		seen[s.Node] = true
		st, member := status[strings.ToLower(s.Node)]
		switch {
		case !nodeName(s.Node):
			refused = append(refused, NodeRecord{Node: s.Node, State: NodeRefused,
				Error: "not a node name: want 1 to 128 characters of A-Z, a-z, 0-9 and _ . -, starting with a letter or digit, without \"..\""})
		case !member || st == memberLeft:
			refused = append(refused, NodeRecord{Node: s.Node, State: NodeRefused,
				Error: "in the catalog but not a member of the gossip pool: a registration with no agent behind it"})
		default:
			nodes = append(nodes, s.Node)
		}
	}
	sort.Strings(nodes)
	slices.SortFunc(refused, func(a, b NodeRecord) int { return strings.Compare(a.Node, b.Node) })
	return nodes, refused, nil
}

// newID names a rollout: sortable by time, unique by its random part.
func newID(now time.Time) (string, error) {
	b := make([]byte, 3)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("new rollout id: %w", err)
	}
	return now.UTC().Format("20060102T150405Z") + "-" + hex.EncodeToString(b), nil
}
