// Package deploy carries node-by-node deployments driven from Consul KV: the deploy
// watch handler that deploys one node (Node), and the rollout that walks a
// service's nodes in batches (Rollout).
//
// Everything lives under deploy/<service>/:
//
//	nodes/<node>/desired   what the node should run: {"id", "version", "artifact", "sha256"}
//	nodes/<node>/status    the node's last deployment: id, version, state, times, output
//	nodes/<node>/current   the version the node runs, as plain text
//	nodes/<node>/lock      held by the node's handler while it deploys
//	lock                   held by the one rollout of the service
//	rollout                the last rollout: id, version, state, each node's part
package deploy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/consul-rehydrate/consul-rehydrate/internal/coord"
	"github.com/consul-rehydrate/consul-rehydrate/internal/poll"
	"github.com/consul-rehydrate/consul-rehydrate/internal/printable"
)

// Prefix is where deployments live in KV.
const Prefix = "deploy/"

// Key names under a node's prefix.
const (
	KeyDesired = "desired"
	KeyStatus  = "status"
	KeyCurrent = "current"
	KeyLock    = "lock"
)

// States of a node's deployment. The last three are final.
const (
	StateDeploying   = "deploying"
	StateRollingBack = "rolling_back"
	StateSucceeded   = "succeeded"
	StateRolledBack  = "rolled_back"
	StateFailed      = "failed"
)

// Final reports whether state is one a deployment ends in.
func Final(state string) bool {
	return state == StateSucceeded || state == StateRolledBack || state == StateFailed
}

// Errors callers tell apart.
var (
	// ErrBadDesired means a desired value or its key is not one the handler acts on.
	ErrBadDesired = errors.New("bad desired value")
	// ErrRefused means a well-formed request was refused: its artifact is not on the
	// deploy block's allow-list, it lacks the sha256 the block requires, or a version
	// it would run (the node's current, a resumed deployment's previous) is not a
	// version. Nothing ran.
	ErrRefused = errors.New("refused")
	// ErrBadFilter means Consul refused the rollout's --node-filter expression.
	ErrBadFilter = errors.New("bad node filter")
	// ErrBadConfigFilter means Consul refused the deploy block's node_filter: the
	// configuration's fault, not the command line's. It wraps ErrBadFilter.
	ErrBadConfigFilter = fmt.Errorf("%w in the configuration", ErrBadFilter)
	// ErrConsul means Consul could not be read or written.
	ErrConsul = errors.New("consul")
	// ErrFailed means a deployment did not succeed (it may have rolled back).
	ErrFailed = errors.New("deployment failed")
	// ErrBusy means another rollout of the service holds its lock.
	ErrBusy = errors.New("another rollout is in progress")
	// ErrLockLost means the lock was lost part way; nothing more was started.
	ErrLockLost = errors.New("lock lost")
	// ErrTimedOut means the handler or rollout ran out of time (its context's
	// deadline passed) part way; its lock was not lost. An error that wraps it also
	// wraps context.DeadlineExceeded.
	ErrTimedOut = coord.ErrTimedOut
)

// stopped returns nil while ctx goes on; once it has ended, err classed by why
// (see coord.Stopped): ErrLockLost for a lost lock, ErrTimedOut for a deadline, the
// cause alone otherwise (an interrupt).
func stopped(ctx context.Context, err error) error {
	s := coord.Stopped(ctx, err)
	if errors.Is(s, coord.ErrLockLost) && !errors.Is(s, ErrLockLost) {
		return fmt.Errorf("%w: %w", ErrLockLost, s)
	}
	return s
}

// consulErr classes err, met reading or writing Consul: by why ctx ended once it
// has (see stopped), as ErrConsul otherwise.
func consulErr(ctx context.Context, err error) error {
	if s := stopped(ctx, err); s != nil {
		return s
	}
	return fmt.Errorf("%w: %w", ErrConsul, err)
}

// NodeKey returns the key name under the node's prefix for service.
func NodeKey(service, node, name string) string {
	return Prefix + service + "/nodes/" + node + "/" + name
}

// NodesPrefix is the prefix of every node's keys for service.
func NodesPrefix(service string) string { return Prefix + service + "/nodes/" }

// ServiceKey returns a key of the service itself (KeyLock, "rollout").
func ServiceKey(service, name string) string { return Prefix + service + "/" + name }

// segment is what a service or node name may be in a key: Consul's node names
// and service names, and nothing that walks out of the prefix.
var segment = lazy(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$`)

// nodeName reports whether s is a node name the deploy keys may hold: a segment
// without "..". Catalog node names are chosen by whoever registers them (the
// catalog takes nearly any string), so the rollout refuses the others.
func nodeName(s string) bool { return segment().MatchString(s) && !strings.Contains(s, "..") }

// ParseDesiredKey splits deploy/<service>/nodes/<node>/desired.
func ParseDesiredKey(key string) (service, node string, err error) {
	parts := strings.Split(key, "/")
	if len(parts) != 5 || parts[0]+"/" != Prefix || parts[2] != "nodes" || parts[4] != KeyDesired ||
		!segment().MatchString(parts[1]) || !segment().MatchString(parts[3]) || strings.Contains(key, "..") {
		return "", "", fmt.Errorf("%w: key %q is not %s<service>/nodes/<node>/%s", ErrBadDesired, key, Prefix, KeyDesired)
	}
	return parts[1], parts[3], nil
}

// Desired is what a node should run: the value of its desired key.
type Desired struct {
	// ID names the deployment; a new ID is a new deployment, the same ID is a replay.
	ID string `json:"id"`
	// Version is handed to the deploy command.
	Version string `json:"version"`
	// Artifact optionally says where the version comes from (a URL, a path).
	Artifact string `json:"artifact,omitempty"`
	// SHA256 optionally pins the artifact's content: 64 hex digits, which the
	// command gets in $REHYDRATE_DEPLOY_SHA256 to check its download against.
	SHA256 string `json:"sha256,omitempty"`
}

// Limits on a desired value.
const (
	maxDesiredBytes = 64 << 10
	maxIDLen        = 128
	maxVersionLen   = 128
	maxArtifactLen  = 2048
)

var (
	deploymentID = lazy(`^[A-Za-z0-9][A-Za-z0-9_.:-]*$`)
	// versionGrammar is what a version may be. A version reaches the deploy and
	// rollback commands (REHYDRATE_DEPLOY_VERSION, _PREVIOUS_VERSION), which put it in
	// paths, URLs and argv, often through a shell: so no "/", no shell
	// metacharacters, no spaces or control characters, no leading "-" (an option),
	// and no ".." (checked apart). Semantic versions (1.4.2-rc.1+build.5) and tags
	// (v2, 2026.01.15_1) fit.
	versionGrammar = lazy(`^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$`)
	sha256Grammar  = lazy(`^[0-9a-fA-F]{64}$`)
)

// CheckVersion reports what is wrong with v as a version: desired, current and a
// deployment's previous version are all held to it.
func CheckVersion(v string) error {
	if v == "" {
		return errors.New("missing version")
	}
	if !versionGrammar().MatchString(v) || strings.Contains(v, "..") {
		return fmt.Errorf("version %q must be 1 to %d characters of A-Z, a-z, 0-9 and . _ + -, starting with a letter or digit, without \"..\"",
			v, maxVersionLen)
	}
	return nil
}

// ParseDesired decodes and checks a desired value: JSON with a non-empty id and
// version and nothing else but an artifact and its sha256. Every problem is an
// ErrBadDesired.
func ParseDesired(value []byte) (Desired, error) {
	var d Desired
	if len(value) > maxDesiredBytes {
		return d, fmt.Errorf("%w: %d bytes, the limit is %d", ErrBadDesired, len(value), maxDesiredBytes)
	}
	dec := json.NewDecoder(bytes.NewReader(value))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&d); err != nil {
		return Desired{}, fmt.Errorf("%w: not a JSON object of id, version, artifact and sha256: %w", ErrBadDesired, err)
	}
	if dec.More() {
		return Desired{}, fmt.Errorf("%w: more than one JSON value", ErrBadDesired)
	}
	if err := d.Check(); err != nil {
		return Desired{}, err
	}
	return d, nil
}

// Check reports, as an ErrBadDesired, what is wrong with d's fields.
func (d Desired) Check() error {
	switch {
	case d.ID == "":
		return fmt.Errorf("%w: missing id", ErrBadDesired)
	case len(d.ID) > maxIDLen || !deploymentID().MatchString(d.ID):
		return fmt.Errorf("%w: id %q must be up to %d characters of A-Z, a-z, 0-9, _ . : -", ErrBadDesired, d.ID, maxIDLen)
	}
	if err := CheckVersion(d.Version); err != nil {
		return fmt.Errorf("%w: %w", ErrBadDesired, err)
	}
	switch {
	case len(d.Artifact) > maxArtifactLen || !printable.Is(d.Artifact):
		return fmt.Errorf("%w: artifact must be up to %d printable characters", ErrBadDesired, maxArtifactLen)
	case d.SHA256 != "" && !sha256Grammar().MatchString(d.SHA256):
		return fmt.Errorf("%w: sha256 %q must be 64 hex digits (a SHA-256 as sha256sum prints it)", ErrBadDesired, d.SHA256)
	}
	return nil
}

// Status is a node's last deployment: the value of its status key.
type Status struct {
	ID       string `json:"id"`
	Version  string `json:"version"`
	Previous string `json:"previous,omitempty"` // the version before, for the rollback
	// Artifact and SHA256 are the desired value's: a rollout that rolls the node
	// back to this version later asks for them again.
	Artifact string `json:"artifact,omitempty"`
	SHA256   string `json:"sha256,omitempty"`
	State    string `json:"state"`
	// Started and Finished are when the deployment started and ended (zero while
	// it runs).
	Started  time.Time  `json:"started"`
	Finished *time.Time `json:"finished,omitempty"`
	// Attempts counts the handlers that started it: more than one after a crash.
	Attempts int `json:"attempts"`
	// Output is the tail of the last command's output.
	Output string `json:"output,omitempty"`
	// Error says why it did not succeed.
	Error string `json:"error,omitempty"`
}

// Bounds of retry.
const (
	retryFor   = 20 * time.Second
	retryFirst = 250 * time.Millisecond
	retryMax   = 4 * time.Second
)

// retry runs op until it succeeds, fails for a reason another try cannot fix, or
// retryFor has passed: a rollout or a deployment rides out a leader election.
func retry(ctx context.Context, op func() error) error {
	return poll.Retry(ctx, retryFor, retryFirst, retryMax, func(err error) bool { return transient(ctx, err) }, op)
}

// transient says whether another try may succeed: a server error (5xx) or a failed
// connection, not a refusal (403, 400) or the end of ctx.
func transient(ctx context.Context, err error) bool {
	if ctx.Err() != nil || errors.Is(err, coord.ErrLockHeld) || errors.Is(err, coord.ErrLockLost) || errors.Is(err, ErrBadFilter) {
		return false
	}
	var se api.StatusError
	if errors.As(err, &se) {
		return se.Code >= 500
	}
	return !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded)
}

// kv reads and writes the deployment keys.
type kv struct{ c *api.Client }

func (s kv) get(ctx context.Context, key string, consistent bool) (*api.KVPair, error) {
	var p *api.KVPair
	err := retry(ctx, func() (err error) {
		p, _, err = s.c.KV().Get(key, (&api.QueryOptions{RequireConsistent: consistent}).WithContext(ctx))
		return err
	})
	if err != nil {
		return nil, consulErr(ctx, fmt.Errorf("read %s: %w", key, err))
	}
	return p, nil
}

// getJSON reads key into v; false if the key does not exist.
func (s kv) getJSON(ctx context.Context, key string, v any) (bool, error) {
	p, err := s.get(ctx, key, true)
	if err != nil || p == nil {
		return false, err
	}
	if err := json.Unmarshal(p.Value, v); err != nil {
		return false, fmt.Errorf("%w: decode %s: %w", ErrConsul, key, err)
	}
	return true, nil
}

func (s kv) put(ctx context.Context, key string, value []byte) error {
	err := retry(ctx, func() error {
		_, err := s.c.KV().Put(&api.KVPair{Key: key, Value: value}, (&api.WriteOptions{}).WithContext(ctx))
		return err
	})
	if err != nil {
		return consulErr(ctx, fmt.Errorf("write %s: %w", key, err))
	}
	return nil
}

func (s kv) putJSON(ctx context.Context, key string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode %s: %w", key, err)
	}
	return s.put(ctx, key, b)
}

// status reads a node's status; nil when it has none.
func (s kv) status(ctx context.Context, service, node string) (*Status, error) {
	var st Status
	ok, err := s.getJSON(ctx, NodeKey(service, node, KeyStatus), &st)
	if !ok || err != nil {
		return nil, err
	}
	return &st, nil
}

// lock takes the session lock at key (see coord.LockKey), riding out a leader
// election like every other call.
func (s kv) lock(ctx context.Context, key string, o coord.LockOptions) (*coord.Held, error) {
	var held *coord.Held
	err := retry(ctx, func() (err error) {
		held, err = coord.LockKey(ctx, s.c, key, o)
		return err
	})
	return held, err
}

// list lists the keys under prefix.
func (s kv) list(ctx context.Context, prefix string) (api.KVPairs, error) {
	var pairs api.KVPairs
	err := retry(ctx, func() (err error) {
		pairs, _, err = s.c.KV().List(prefix, (&api.QueryOptions{}).WithContext(ctx))
		return err
	})
	if err != nil {
		return nil, consulErr(ctx, fmt.Errorf("list %s: %w", prefix, err))
	}
	return pairs, nil
}

// nodeKeys is what KV holds for one node of a service.
type nodeKeys struct {
	current    string
	desired    []byte // the raw value, when hasDesired
	hasDesired bool
	status     *Status // nil when there is none, or it does not decode
}

// nodes reads the keys of every node of service, in one request.
func (s kv) nodes(ctx context.Context, service string) (map[string]*nodeKeys, error) {
	pairs, err := s.list(ctx, NodesPrefix(service))
	if err != nil {
		return nil, err
	}
	out := map[string]*nodeKeys{}
	for _, p := range pairs {
		node, name, ok := strings.Cut(strings.TrimPrefix(p.Key, NodesPrefix(service)), "/")
		if !ok || strings.Contains(name, "/") {
			continue
		}
		nk := out[node]
		if nk == nil {
			nk = &nodeKeys{}
			out[node] = nk
		}
		switch name {
		case KeyCurrent:
			nk.current = string(p.Value)
		case KeyDesired:
			nk.desired, nk.hasDesired = p.Value, true
		case KeyStatus:
			var st Status
			if json.Unmarshal(p.Value, &st) == nil {
				nk.status = &st
			}
		}
	}
	return out, nil
}

// previous returns the version a deployment of id on node rolls back to: the one
// the node's status records, when st is an unfinished deployment of id being
// resumed, else the node's current version ("" when there is none). Both keys are
// the node's to write, and the version becomes REHYDRATE_DEPLOY_VERSION of the
// rollback command: one that is not a version (CheckVersion) refuses the
// deployment with ErrRefused, before anything runs.
func (s kv) previous(ctx context.Context, service, node string, st *Status, id string) (string, error) {
	if st != nil && st.ID == id {
		if st.Previous != "" {
			if err := CheckVersion(st.Previous); err != nil {
				return "", fmt.Errorf("%w: %s: previous %v; it is what the unfinished deployment %s would roll back to: fix or delete the key",
					ErrRefused, NodeKey(service, node, KeyStatus), err, id)
			}
		}
		return st.Previous, nil
	}
	cur, err := s.current(ctx, service, node)
	if err != nil {
		return "", err
	}
	if cur != "" {
		if err := CheckVersion(cur); err != nil {
			return "", fmt.Errorf("%w: %s: %v; it is the version the node runs, which a failed deployment rolls back to: fix the key, or delete it to deploy with no version to roll back to",
				ErrRefused, NodeKey(service, node, KeyCurrent), err)
		}
	}
	return cur, nil
}

// current reads the version a node runs; "" when it is not known.
func (s kv) current(ctx context.Context, service, node string) (string, error) {
	p, err := s.get(ctx, NodeKey(service, node, KeyCurrent), true)
	if err != nil || p == nil {
		return "", err
	}
	return string(p.Value), nil
}

// lazy compiles expr on first use: a bounded repetition compiles to one copy of its
// class per repeat, and these were compiled at the start of every handler run that
// links this package (spinup does, through internal/command), deploying or not.
func lazy(expr string) func() *regexp.Regexp {
	return sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(expr) })
}
