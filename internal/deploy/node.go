package deploy

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/consul-rehydrate/consul-rehydrate/config"
	"github.com/consul-rehydrate/consul-rehydrate/internal/coord"
	"github.com/consul-rehydrate/consul-rehydrate/internal/runcmd"
)

// Environment the deploy and rollback commands get, besides the handler's own.
const (
	EnvVersion         = "REHYDRATE_DEPLOY_VERSION"
	EnvID              = "REHYDRATE_DEPLOY_ID"
	EnvArtifact        = "REHYDRATE_DEPLOY_ARTIFACT"
	EnvSHA256          = "REHYDRATE_DEPLOY_SHA256"
	EnvPreviousVersion = "REHYDRATE_DEPLOY_PREVIOUS_VERSION"
	EnvRollback        = "REHYDRATE_DEPLOY_ROLLBACK"
	EnvService         = "REHYDRATE_DEPLOY_SERVICE"
)

// Node deploys on this node what its desired key says: the deploy watch handler.
type Node struct {
	Client *api.Client
	// Name is this agent's node name; a desired key for another node is refused.
	// Empty, Handle asks the agent, once the payload has passed every check that
	// needs no Consul.
	Name string
	// Config has the deploy blocks; a desired key for a service without one is refused.
	Config *config.Config
	Log    hclog.Logger
	// Lock tunes the node's lock, which keeps two handlers on one node (say, after
	// an agent reload re-fired the watch) from deploying at once. An empty Holder
	// becomes "deploy handler on <node>".
	Lock coord.LockOptions
	// Poll is how often health is re-checked.
	Poll time.Duration
	Now  func() time.Time
}

// Handle acts on a key watch payload: pair is the desired key, nil when it does
// not exist. A deployment whose ID the node's status already records as final is
// a replay and does nothing. A bad payload is refused before anything talks to
// Consul, except a key that names another node, which only the agent can tell; a
// desired value the deploy block does not allow (Allowed) is refused as early. A
// node whose current version, or whose unfinished deployment's previous one, is
// not a version is refused before the node lock is taken (ErrRefused): it writes
// nothing and runs nothing.
// A lost lock stops it with ErrLockLost, running out of time with ErrTimedOut,
// each with its own log line; neither rolls back.
func (n *Node) Handle(ctx context.Context, pair *api.KVPair) error {
	err := n.handle(ctx, pair)
	switch {
	case errors.Is(err, ErrLockLost):
		n.Log.Error("lock lost; stopping: no command starts without the node lock", "error", err)
	case errors.Is(err, ErrTimedOut):
		n.Log.Error("ran out of time; stopping: the next handler resumes the deployment", "error", err)
	}
	return err
}

func (n *Node) handle(ctx context.Context, pair *api.KVPair) error {
	if pair == nil {
		n.Log.Info("no desired key: nothing to deploy")
		return nil
	}
	service, node, err := ParseDesiredKey(pair.Key)
	if err != nil {
		return err
	}
	dc := n.Config.Deploy(service)
	if dc == nil {
		return fmt.Errorf("%w: key %s is for service %q, which has no deploy block in the configuration", ErrBadDesired, pair.Key, service)
	}
	want, err := ParseDesired(pair.Value)
	if err == nil {
		err = Allowed(dc, want)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", pair.Key, err)
	}
	if n.Name == "" {
		if n.Name, err = n.Client.Agent().NodeName(); err != nil {
			return consulErr(ctx, fmt.Errorf("this agent's node name: %w", err))
		}
	}
	if node != n.Name {
		return fmt.Errorf("%w: key %s is for node %q, and this agent is %q", ErrBadDesired, pair.Key, node, n.Name)
	}
	if n.Lock.Holder == "" {
		n.Lock.Holder = "deploy handler on " + node
	}
	log := n.Log.With("node", node, "service", service, "deployment_id", want.ID, "version", want.Version)
	store := kv{n.Client}
	st, err := store.status(ctx, service, node)
	if err != nil {
		return err
	}
	if st != nil && st.ID == want.ID && Final(st.State) {
		log.Info("deployment already handled", "state", st.State)
		return nil
	}
	// Refused before the lock, so that a refusal writes nothing; checked again
	// under it (run), where it counts.
	if _, err := store.previous(ctx, service, node, st, want.ID); err != nil {
		return err
	}

	held, err := store.lock(ctx, NodeKey(service, node, KeyLock), n.Lock)
	if errors.Is(err, coord.ErrLockHeld) {
		log.Info("another handler on this node is deploying; it will see the newest desired value when it is done")
		return nil
	}
	if err != nil {
		return consulErr(ctx, err)
	}
	defer func() {
		if err := held.Release(); err != nil {
			log.Warn("release node lock", "error", err)
		}
	}()

	// Under the lock, act on what the key says now, not on what the watch saw: the
	// handler that held the lock may have deployed it already, or a newer one may
	// have been written since.
	now, err := store.get(ctx, pair.Key, true)
	if err != nil {
		return err
	}
	if now == nil {
		log.Info("desired key deleted meanwhile: nothing to deploy")
		return nil
	}
	if want, err = ParseDesired(now.Value); err == nil {
		err = Allowed(dc, want)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", pair.Key, err)
	}
	if st, err = store.status(ctx, service, node); err != nil {
		return err
	}
	if st != nil && st.ID == want.ID && Final(st.State) {
		log.Info("deployment already handled", "state", st.State)
		return nil
	}
	d := &deployment{n: n, dc: dc, node: node, want: want, held: held, store: store,
		log: n.Log.With("node", node, "service", service, "deployment_id", want.ID, "version", want.Version)}
	return d.run(ctx, st)
}

// deployment is one deployment on this node, under the node's lock.
type deployment struct {
	n     *Node
	dc    *config.DeployConfig
	node  string
	want  Desired
	held  *coord.Held
	store kv
	log   hclog.Logger
	st    Status
}

func (d *deployment) run(ctx context.Context, last *Status) error {
	// A resumed deployment keeps its previous version: the dead handler may have
	// written current already.
	previous, err := d.store.previous(ctx, d.dc.Service, d.node, last, d.want.ID)
	if err != nil {
		return err
	}
	d.st = Status{ID: d.want.ID, Version: d.want.Version, Previous: previous, Artifact: d.want.Artifact,
		SHA256: d.want.SHA256, State: StateDeploying, Started: d.n.Now().UTC(), Attempts: 1}
	if last != nil && last.ID == d.want.ID {
		// A handler that started this deployment died before it ended: start over,
		// from the same previous version.
		d.st.Started, d.st.Attempts = last.Started, last.Attempts+1
		d.log.Warn("resuming a deployment a handler did not finish", "attempt", d.st.Attempts, "state", last.State)
	}
	if err := d.save(ctx); err != nil {
		return err
	}
	ids, err := d.instances(ctx)
	if err != nil {
		return d.fail(ctx, err)
	}

	d.log.Info("deploying", "previous_version", d.st.Previous, "instances", len(ids))
	if err := d.maintenance(ctx, ids, true); err != nil {
		return d.fail(ctx, err)
	}
	out, err := d.command(ctx, d.dc.Command, d.want.Version, false)
	d.st.Output = out
	if err == nil {
		if err = d.maintenance(ctx, ids, false); err == nil {
			err = waitHealthy(ctx, d.n.Client, d.dc.Service, d.node, d.dc.MinHealthyTime, d.dc.HealthTimeout, d.n.Poll)
		}
	}
	if err == nil {
		d.st.State = StateSucceeded
		if err := d.store.put(ctx, NodeKey(d.dc.Service, d.node, KeyCurrent), []byte(d.want.Version)); err != nil {
			return err
		}
		if err := d.finish(ctx); err != nil {
			return err
		}
		d.log.Info("deployed", "attempts", d.st.Attempts)
		return nil
	}
	if h := halt(ctx, err); h != nil {
		return h
	}
	d.log.Error("deployment failed", "error", err, "output", lastLines(out, 5))
	return d.rollback(ctx, ids, err)
}

// halt returns the error that ends the deployment where it is, with no rollback
// and no final status, or nil when err is the deployment's own failure: the
// handler ran out of time (ErrTimedOut), the lock was lost, or Consul failed.
func halt(ctx context.Context, err error) error {
	if s := stopped(ctx, err); s != nil {
		return s
	}
	if errors.Is(err, ErrLockLost) || errors.Is(err, ErrConsul) {
		return err
	}
	return nil
}

// rollback runs the rollback command with the previous version after cause.
func (d *deployment) rollback(ctx context.Context, ids []string, cause error) error {
	d.st.Error = cause.Error()
	if d.st.Previous == "" {
		return d.fail(ctx, fmt.Errorf("%w, and there is no previous version to roll back to", cause))
	}
	d.st.State = StateRollingBack
	if err := d.save(ctx); err != nil {
		return err
	}
	if err := d.maintenance(ctx, ids, true); err != nil {
		return d.fail(ctx, fmt.Errorf("%w; roll back: %w", cause, err))
	}
	d.log.Info("rolling back", "previous_version", d.st.Previous)
	out, err := d.command(ctx, d.dc.RollbackCommand, d.st.Previous, true)
	d.st.Output = out
	if err == nil {
		if err = d.maintenance(ctx, ids, false); err == nil {
			err = waitHealthy(ctx, d.n.Client, d.dc.Service, d.node, d.dc.MinHealthyTime, d.dc.HealthTimeout, d.n.Poll)
		}
	}
	if err != nil {
		if h := halt(ctx, err); h != nil {
			return h
		}
		d.log.Error("rollback failed", "error", err, "output", lastLines(out, 5))
		return d.fail(ctx, fmt.Errorf("%w; roll back to %s: %w", cause, d.st.Previous, err))
	}
	d.st.State = StateRolledBack
	if err := d.finish(ctx); err != nil {
		return err
	}
	d.log.Warn("rolled back", "previous_version", d.st.Previous)
	return fmt.Errorf("%w: %w; rolled back to %s", ErrFailed, cause, d.st.Previous)
}

// fail ends the deployment as failed. The service stays in maintenance, so that no
// traffic reaches a node in an unknown state; the status says what happened.
func (d *deployment) fail(ctx context.Context, cause error) error {
	if h := halt(ctx, cause); h != nil {
		return h
	}
	d.st.State, d.st.Error = StateFailed, cause.Error()
	if ids, err := d.instances(ctx); err == nil {
		if err := d.maintenance(ctx, ids, true); err != nil {
			d.log.Warn("keep the service in maintenance", "error", err)
		}
	}
	if err := d.finish(ctx); err != nil {
		return err
	}
	return fmt.Errorf("%w: %w", ErrFailed, cause)
}

func (d *deployment) save(ctx context.Context) error {
	return d.store.putJSON(ctx, NodeKey(d.dc.Service, d.node, KeyStatus), d.st)
}

func (d *deployment) finish(ctx context.Context) error {
	t := d.n.Now().UTC()
	d.st.Finished = &t
	return d.save(ctx)
}

// instances returns the IDs of the service's instances registered on this agent.
func (d *deployment) instances(ctx context.Context) ([]string, error) {
	svcs, err := d.n.Client.Agent().ServicesWithFilterOpts(
		fmt.Sprintf("Service == %s", strconv.Quote(d.dc.Service)), (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, consulErr(ctx, fmt.Errorf("services of this agent: %w", err))
	}
	var ids []string
	for id := range svcs {
		ids = append(ids, id)
	}
	if len(ids) == 0 {
		return nil, fmt.Errorf("service %s is not registered on this agent (%s)", d.dc.Service, d.node)
	}
	return ids, nil
}

// maintenance puts the instances into maintenance (on) or takes them out. The reason
// is the same from the first step of a deployment to its end, pointing to the status
// for what happened: the agent keeps the first reason of a service that is in
// maintenance already, and taking it out only to change the reason would let traffic
// in for a moment.
func (d *deployment) maintenance(ctx context.Context, ids []string, on bool) error {
	a := d.n.Client.Agent()
	reason := fmt.Sprintf("consul-rehydrate: deployment %s of %s %s; its state is in %s",
		d.want.ID, d.dc.Service, d.want.Version, NodeKey(d.dc.Service, d.node, KeyStatus))
	for _, id := range ids {
		var err error
		if on {
			err = a.EnableServiceMaintenanceOpts(id, reason, (&api.QueryOptions{}).WithContext(ctx))
		} else {
			err = a.DisableServiceMaintenanceOpts(id, (&api.QueryOptions{}).WithContext(ctx))
		}
		if err != nil {
			return consulErr(ctx, fmt.Errorf("maintenance of %s: %w", id, err))
		}
	}
	return nil
}

// command runs argv for version, once the lock is confirmed still held: a handler
// that lost it must not start a command another handler may be running.
func (d *deployment) command(ctx context.Context, argv []string, version string, rollback bool) (string, error) {
	if err := d.held.Verify(); err != nil {
		// Classed by why the lock's context ended: lost, or out of time.
		if s := stopped(d.held.Context(), err); s != nil {
			return "", s
		}
		return "", fmt.Errorf("%w: %w", ErrConsul, err)
	}
	artifact, sha := d.want.Artifact, strings.ToLower(d.want.SHA256)
	what := "deploy command"
	if rollback {
		artifact, sha = "", "" // they are the failed version's
		what = "rollback command"
	}
	return runcmd.Run(ctx, runcmd.Spec{
		What: what,
		Argv: argv,
		Env: []string{
			EnvVersion + "=" + version,
			EnvID + "=" + d.want.ID,
			EnvArtifact + "=" + artifact,
			EnvSHA256 + "=" + sha,
			EnvPreviousVersion + "=" + d.st.Previous,
			EnvRollback + "=" + strconv.FormatBool(rollback),
			EnvService + "=" + d.dc.Service,
		},
		Timeout: d.dc.Timeout,
	})
}

// lastLines returns the last n lines of s, for a log line.
func lastLines(s string, n int) string {
	end := len(s)
	for end > 0 && s[end-1] == '\n' {
		end--
	}
	i := end
	for ; i > 0 && n > 0; i-- {
		if s[i-1] == '\n' {
			n--
			if n == 0 {
				break
			}
		}
	}
	return s[i:end]
}
