// Package gate makes any departure of a Consul server invisible to the cluster: a
// leader hands leadership to an up-to-date voter before it leaves, and a server
// whose departure would leave the cluster unable to survive one more failure waits
// (bounded) until it can go. HandOff and Leave serve every stop (the systemd unit's
// stop path, the local provider's terminate); Gate runs on every server of an Auto
// Scaling group and applies both, then completes the group's termination
// lifecycle hook, whenever the group decides to terminate the instance.
package gate

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/consul-rehydrate/consul-rehydrate/internal/cluster"
	"github.com/consul-rehydrate/consul-rehydrate/internal/coord"
	"github.com/consul-rehydrate/consul-rehydrate/internal/poll"
)

// MayDepart says whether the server named self may leave now without leaving the
// cluster of servers (N) unable to survive one more failure. It may if every other
// server of the N is a healthy voter (the others number at least N-1) and the others
// alone are a majority of the raft configuration's voters, so that it is not needed
// for quorum now. A departure when fewer are healthy would
// leave, for N = 3, a single healthy voter, or none (../shared/AWS.md; issue 17).
// It is pure: obs is what cluster.ObserveRaft saw.
func MayDepart(obs *cluster.Observation, self string, servers int) (bool, string) {
	voters, others := 0, 0
	var names []string
	for _, s := range obs.Servers {
		if !s.Voter {
			continue
		}
		voters++
		if s.Name != self && s.Healthy {
			others++
			names = append(names, s.Name)
		}
	}
	// Not needed for quorum now: the others alone are a majority of the voters.
	need := max(servers-1, voters/2+1)
	if others >= need {
		// The names say which servers the departure relies on (a test checks a
		// replacement is among them).
		return true, fmt.Sprintf("%d other healthy voters (%s), %d needed", others, strings.Join(names, ", "), need)
	}
	return false, fmt.Sprintf("only %d other healthy voters of %d in the raft configuration; %d needed to lose %s and survive one more failure",
		others, voters, need, self)
}

// Successor picks the server to hand leadership to from self: a healthy voter,
// not self and not named in leaving, the most up to date first (largest log
// index, then name, so the choice is stable). Nil if there is none.
func Successor(obs *cluster.Observation, self string, leaving map[string]bool) *cluster.Server {
	cands := make([]cluster.Server, 0, len(obs.Servers))
	for _, s := range obs.Servers {
		if s.Voter && s.Healthy && s.Name != self && !leaving[s.Name] {
			cands = append(cands, s)
		}
	}
	if len(cands) == 0 {
		return nil
	}
	sort.Slice(cands, func(i, j int) bool {
		if cands[i].LastIndex != cands[j].LastIndex {
			return cands[i].LastIndex > cands[j].LastIndex
		}
		return cands[i].Name < cands[j].Name
	})
	return &cands[0]
}

// ErrNoSuccessor means the leader found no healthy voter to hand leadership to.
var ErrNoSuccessor = errors.New("no healthy voter to hand leadership to")

// Options bound the waits of HandOff and Leave.
type Options struct {
	// Timeout bounds the wait for leadership to move (roll.leave_timeout).
	Timeout time.Duration
	// Poll is how often the raft configuration is read meanwhile.
	Poll time.Duration
	// Leaving names servers that are leaving too: never chosen as successor.
	Leaving map[string]bool
	Log     hclog.Logger
}

func (o Options) withDefaults() Options {
	if o.Timeout <= 0 {
		o.Timeout = 30 * time.Second
	}
	if o.Poll <= 0 {
		o.Poll = 250 * time.Millisecond
	}
	if o.Log == nil {
		o.Log = hclog.NewNullLogger()
	}
	return o
}

// HandOff moves leadership away from the server named self if it leads, and waits
// (bounded by o.Timeout) until the raft configuration shows another leader. c may
// talk to any agent of the cluster: the transfer is forwarded to the leader. It
// reports whether self was the leader. A leader's own graceful leave also tries a
// transfer (Consul agent/consul/server.go, Server.Leave), but only after it has
// stopped serving, which cost 13 of 600 writes where a transfer first cost none
// (issue 17): so the transfer comes first, while self still serves.
func HandOff(ctx context.Context, c *api.Client, self string, o Options) (bool, error) {
	o = o.withDefaults()
	obs, err := cluster.ObserveRaft(ctx, c)
	if err != nil {
		return false, err
	}
	leader := obs.Leader()
	if leader == nil || leader.Name != self {
		return false, nil
	}
	to := Successor(obs, self, o.Leaving)
	if to == nil {
		return true, fmt.Errorf("%s leads: %w", self, ErrNoSuccessor)
	}
	o.Log.Info("handing leadership off", "node", self, "to", to.Name)
	if _, err := c.Operator().RaftLeaderTransfer(to.ID, (&api.QueryOptions{}).WithContext(ctx)); err != nil {
		return true, fmt.Errorf("transfer leadership from %s to %s: %w", self, to.Name, err)
	}
	err = poll.Until(ctx, o.Poll, o.Timeout, func(ctx context.Context) (bool, error) {
		obs, err := cluster.ObserveRaft(ctx, c)
		if err != nil {
			return false, nil // a read during the hand-over may fail: look again
		}
		l := obs.Leader()
		return l != nil && l.Name != self, nil
	})
	if err != nil {
		return true, fmt.Errorf("wait for leadership to leave %s: %w", self, err)
	}
	o.Log.Info("leadership handed off", "node", self, "to", to.Name)
	return true, nil
}

// Leave is the leader-aware graceful leave of the agent c talks to, whose node is
// self: HandOff, then the agent's own leave (PUT /v1/agent/leave, agent:write on
// its node). For a server that leave returns once the server is out of the raft
// configuration or Consul's removal grace period has passed (Server.Leave waits
// for it), and the agent then shuts down. A failed hand-off is logged and the leave
// goes on: a plain graceful leave is what the stop would have been anyway.
func Leave(ctx context.Context, c *api.Client, self string, o Options) error {
	o = o.withDefaults()
	if _, err := HandOff(ctx, c, self, o); err != nil {
		o.Log.Warn("leaving without a hand-off", "node", self, "error", err)
	}
	if err := leaveWithin(c, o.Timeout); err != nil {
		return err
	}
	o.Log.Info("left the cluster", "node", self)
	return nil
}

// leaveWithin asks the agent to leave (PUT /v1/agent/leave), waiting for the
// answer at most d plus the ten seconds a server's leave takes by itself (Consul's
// leave_drain_time, 5s, then up to 5s for its raft removal: Server.Leave). The
// API's call takes no context, so past the bound it is left to finish alone.
func leaveWithin(c *api.Client, d time.Duration) error {
	done := make(chan error, 1)
	go func() { done <- c.Agent().Leave() }()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("leave: %w", err)
		}
		return nil
	case <-time.After(d + 10*time.Second):
		return fmt.Errorf("leave: no answer within %s", d+10*time.Second)
	}
}

// leavingPrefix holds one key per server of the cluster that is departing
// (rehydrate/<cluster>/leaving/<node>): the handlers' ACL policy already lets each
// server write under rehydrate/<cluster>/.
func leavingPrefix(c *api.Client, clusterName string) string {
	return coord.New(c, clusterName).Key("leaving/")
}

// MarkLeaving records that the server named self is departing, so that a leader
// handing off (HandOff's Options.Leaving, read with Leaving) never chooses it. The
// key is held by a session on self's node whose behavior is delete: it vanishes
// when self leaves the cluster (its serfHealth check goes), with nothing to clean
// up, and a gate that dies leaves it only until its server is gone too.
func MarkLeaving(ctx context.Context, c *api.Client, clusterName, self string) error {
	q := (&api.WriteOptions{}).WithContext(ctx)
	id, _, err := c.Session().Create(&api.SessionEntry{
		Name:     "consul-rehydrate: " + self + " is leaving",
		Behavior: api.SessionBehaviorDelete,
	}, q)
	if err != nil {
		return fmt.Errorf("mark %s leaving: create session: %w", self, err)
	}
	ok, _, err := c.KV().Acquire(&api.KVPair{Key: leavingPrefix(c, clusterName) + self, Session: id}, q)
	if err != nil || !ok {
		// !ok: an earlier run of the gate on self marked it, and its session
		// lives on with self's node: self is marked already.
		_, _ = c.Session().Destroy(id, q)
	}
	if err != nil {
		return fmt.Errorf("mark %s leaving: %w", self, err)
	}
	return nil
}

// Leaving returns the servers of the cluster that MarkLeaving marked and that
// have not left yet.
func Leaving(ctx context.Context, c *api.Client, clusterName string) (map[string]bool, error) {
	prefix := leavingPrefix(c, clusterName)
	keys, _, err := c.KV().Keys(prefix, "", (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("read the servers leaving: %w", err)
	}
	out := make(map[string]bool, len(keys))
	for _, k := range keys {
		out[strings.TrimPrefix(k, prefix)] = true
	}
	return out, nil
}
