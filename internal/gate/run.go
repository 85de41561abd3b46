package gate

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/consul-rehydrate/consul-rehydrate/internal/cluster"
	"github.com/consul-rehydrate/consul-rehydrate/internal/coord"
	"github.com/consul-rehydrate/consul-rehydrate/internal/fault"
	"github.com/consul-rehydrate/consul-rehydrate/internal/poll"
)

// TargetTerminated is the value of the instance metadata item
// autoscaling/target-lifecycle-state once the group has decided to terminate the
// instance (EC2 Auto Scaling user guide, "Retrieve the target lifecycle state
// through instance metadata").
const TargetTerminated = "Terminated"

// Metadata reads the instance's target lifecycle state (IMDSv2).
type Metadata interface {
	TargetLifecycleState(ctx context.Context) (string, error)
}

// Action is this instance's lifecycle action on the group's termination hook.
type Action interface {
	// Heartbeat restarts the hook's heartbeat timeout.
	Heartbeat(ctx context.Context) error
	// Complete lets the termination go on (CONTINUE).
	Complete(ctx context.Context) error
}

// Gate waits for the group to decide to terminate this server, then lets it go
// only once that is safe: under the cluster's departure lock (one departure at a
// time), once MayDepart holds (bounded by MaxHold, then it goes anyway and says
// so loudly), after HandOff (never to a server marked leaving: MarkLeaving),
// after the leave and once another server no longer lists it in the raft
// configuration (bounded); then it completes the lifecycle action. It heartbeats
// the action meanwhile. A gate stopped anywhere leaves the termination to the
// hook's heartbeat timeout: nothing worse than a plain shutdown.
type Gate struct {
	Consul  *api.Client // this server's own agent
	Self    string      // this server's node name
	Cluster string      // the configuration's cluster: the lock's key prefix
	Servers int         // N
	Meta    Metadata
	Action  Action

	// MaxHold bounds the whole wait before the leave: for the lock and for quorum.
	MaxHold time.Duration
	// Heartbeat is how often the lifecycle action is heartbeaten while waiting.
	Heartbeat time.Duration
	// Poll is how often the target lifecycle state and the raft configuration are read.
	Poll time.Duration
	// HandOffTimeout bounds the wait for leadership to move (roll.leave_timeout).
	HandOffTimeout time.Duration
	// LockTTL is the departure lock's session TTL (lock.session_ttl).
	LockTTL time.Duration
	// LockDelay is the departure lock's lock delay (lock.lock_delay). Zero means
	// Consul's default, 15s.
	LockDelay time.Duration
	// Peer returns a client for the HTTP API of another server of the cluster,
	// given its raft address (host:port): after the leave this server's own agent
	// is gone, and only another server can say it is out of the raft
	// configuration. Nil: the gate does not check.
	Peer func(raftAddr string) (*api.Client, error)
	Log  hclog.Logger
}

// Run watches the target lifecycle state until it is Terminated, then Departs. It
// returns when the departure is done, or with ctx (the service stopping).
func (g *Gate) Run(ctx context.Context) error {
	g.Log.Info("watching the target lifecycle state", "node", g.Self)
	for {
		st, err := g.Meta.TargetLifecycleState(ctx)
		switch {
		case err != nil:
			g.Log.Debug("read target lifecycle state", "error", err)
		case st == TargetTerminated:
			g.Log.Info("the group is terminating this server", "node", g.Self)
			return g.Depart(ctx)
		}
		if err := poll.Sleep(ctx, g.Poll); err != nil {
			return err
		}
	}
}

// departureKey is the lock that lets one server of the cluster depart at a time.
func (g *Gate) departureKey() string { return coord.New(g.Consul, g.Cluster).Key("departure") }

// Depart runs the gate's steps: mark leaving, lock, quorum hold, hand-off, leave,
// out of raft, complete.
func (g *Gate) Depart(ctx context.Context) error {
	deadline := time.Now().Add(g.MaxHold)
	hctx, stopBeats := context.WithCancel(ctx)
	beats := make(chan struct{})
	go func() {
		defer close(beats)
		g.heartbeat(hctx)
	}()
	defer func() { stopBeats(); <-beats }()

	// Marked first, so that no leader hands leadership to this server while it
	// waits for the lock or for quorum.
	if err := MarkLeaving(ctx, g.Consul, g.Cluster, g.Self); err != nil {
		g.Log.Warn("mark this server leaving", "node", g.Self, "error", err)
	}

	g.endPredecessor(ctx)

	// The lock stays held until this server has left: its session lives on this
	// node, which the leave takes out of the cluster, so the next gate takes it
	// only after this server is gone (lock delay included).
	held := g.lock(ctx, deadline)
	if held == nil {
		g.Log.Error("HOLD EXCEEDED: departing without the departure lock", "node", g.Self, "max_hold", g.MaxHold)
	}
	g.holdForQuorum(ctx, deadline)
	fault.Point("gate:held")

	// Other servers terminating at the same time (each marked by its own gate)
	// are no successors: leadership handed to one would move again at once.
	leaving, err := Leaving(ctx, g.Consul, g.Cluster)
	if err != nil {
		g.Log.Warn("handing off without knowing which servers are leaving", "node", g.Self, "error", err)
	}
	if _, err := HandOff(ctx, g.Consul, g.Self, Options{Timeout: g.HandOffTimeout, Poll: g.Poll, Leaving: leaving, Log: g.Log}); err != nil {
		g.Log.Warn("leaving without a hand-off", "node", g.Self, "error", err)
	}
	fault.Point("gate:handed-off")
	// The other servers, read before the leave takes this server's agent away.
	var peers []cluster.Server
	if obs, err := cluster.ObserveRaft(ctx, g.Consul); err == nil {
		for _, s := range obs.Servers {
			if s.Name != g.Self {
				peers = append(peers, s)
			}
		}
	}
	if err := leaveWithin(g.Consul, g.HandOffTimeout); err != nil {
		// Already gone (a second run, or the agent stopped): the leave is done.
		g.Log.Warn("leave", "node", g.Self, "error", err)
	} else {
		g.Log.Info("left the cluster", "node", g.Self)
	}
	fault.Point("gate:left")
	g.waitOutOfRaft(ctx, peers)
	stopBeats()
	<-beats
	g.Log.Info("completing the lifecycle action: the termination goes on", "node", g.Self)
	if err := g.Action.Complete(ctx); err != nil {
		return fmt.Errorf("complete the lifecycle action: %w", err)
	}
	g.Log.Info("completed the lifecycle action", "node", g.Self)
	return nil
}

// holder names this server's gate in the departure lock.
func (g *Gate) holder() string { return "lifecycle gate on " + g.Self }

// endPredecessor ends the departure lock session of a gate that ran on this server
// before this one and died (systemd restarts the unit on failure, and this gate
// runs the departure again). That session would hold the departure lock for up to
// twice its TTL after the death (Consul's TTL grace), while this gate waited for
// it. One gate runs per server, so a gate session on this node is a dead
// predecessor's: only this node's token can create one (session:write on the
// node). Its lock delay still applies.
func (g *Gate) endPredecessor(ctx context.Context) {
	sessions, _, err := g.Consul.Session().Node(g.Self, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		g.Log.Warn("read this server's sessions", "node", g.Self, "error", err)
		return
	}
	for _, s := range sessions {
		if s.Name != coord.SessionName(g.holder()) {
			continue
		}
		if _, err := g.Consul.Session().Destroy(s.ID, (&api.WriteOptions{}).WithContext(ctx)); err != nil {
			g.Log.Warn("end the departure lock session of an earlier gate", "node", g.Self, "session", s.ID, "error", err)
			continue
		}
		g.Log.Info("ended the departure lock session of a gate that ran here before", "node", g.Self, "session", s.ID)
	}
}

// lock takes the departure lock, waiting until deadline at most; nil if it could not.
func (g *Gate) lock(ctx context.Context, deadline time.Time) *coord.Held {
	start := time.Now()
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return nil
		}
		held, err := coord.LockKey(ctx, g.Consul, g.departureKey(), coord.LockOptions{
			TTL: g.LockTTL, Delay: g.LockDelay, Wait: min(left, 30*time.Second), Holder: g.holder(),
		})
		switch {
		case err == nil:
			g.Log.Info("took the departure lock", "node", g.Self, "took", time.Since(start).Round(100*time.Millisecond))
			return held
		case errors.Is(err, coord.ErrLockHeld):
			g.Log.Info("another server is departing; waiting", "node", g.Self)
		default:
			g.Log.Warn("take the departure lock", "node", g.Self, "error", err)
			if poll.Sleep(ctx, g.Poll) != nil {
				return nil
			}
		}
		if ctx.Err() != nil {
			return nil
		}
	}
}

// holdForQuorum waits until MayDepart, or deadline (then it says so loudly).
func (g *Gate) holdForQuorum(ctx context.Context, deadline time.Time) {
	last := ""
	err := poll.Until(ctx, g.Poll, max(time.Until(deadline), time.Millisecond), func(ctx context.Context) (bool, error) {
		obs, err := cluster.ObserveRaft(ctx, g.Consul)
		if err != nil {
			last = err.Error()
			return false, nil
		}
		ok, why := MayDepart(obs, g.Self, g.Servers)
		if !ok && why != last {
			g.Log.Info("holding the termination for quorum", "node", g.Self, "reason", why)
		}
		if ok {
			g.Log.Info("quorum allows the departure", "node", g.Self, "reason", why)
		}
		last = why
		return ok, nil
	})
	if err != nil {
		g.Log.Error("HOLD EXCEEDED: departing although quorum may need this server", "node", g.Self, "max_hold", g.MaxHold, "reason", last)
	}
}

// heartbeat keeps the lifecycle action alive until ctx ends.
func (g *Gate) heartbeat(ctx context.Context) {
	for poll.Sleep(ctx, g.Heartbeat) == nil {
		if err := g.Action.Heartbeat(ctx); err != nil && ctx.Err() == nil {
			g.Log.Warn("lifecycle action heartbeat", "node", g.Self, "error", err)
		}
	}
}

// waitOutOfRaft polls the raft configuration through the other servers, in turn,
// until this server is no longer in it, bounded by HandOffTimeout
// (roll.leave_timeout). A server's own leave stops waiting for its removal after
// five seconds (Consul agent/consul/server.go, Server.Leave), so its agent's
// answer alone does not say it is out. It only logs: past the bound the leader's
// reconciliation of the member that left removes it, and holding the termination
// longer would not help.
func (g *Gate) waitOutOfRaft(ctx context.Context, peers []cluster.Server) {
	if g.Peer == nil || len(peers) == 0 {
		g.Log.Warn("cannot check the raft configuration after the leave: no other server known", "node", g.Self)
		return
	}
	n, via, last := 0, "", ""
	err := poll.Until(ctx, g.Poll, max(g.HandOffTimeout, time.Second), func(ctx context.Context) (bool, error) {
		p := peers[n%len(peers)]
		n++
		c, err := g.Peer(p.Address)
		if err != nil {
			last = err.Error()
			return false, nil
		}
		obs, err := cluster.ObserveRaft(ctx, c)
		if err != nil {
			last = err.Error()
			return false, nil // that server may be leaving too, or electing: the next one
		}
		for _, s := range obs.Servers {
			if s.Name == g.Self {
				last = "still in the raft configuration"
				return false, nil
			}
		}
		via = p.Address
		return true, nil
	})
	if err != nil {
		g.Log.Warn("not seen out of the raft configuration after the leave", "node", g.Self, "error", err, "reason", last)
		return
	}
	g.Log.Info("out of the raft configuration", "node", g.Self, "address", via)
}
