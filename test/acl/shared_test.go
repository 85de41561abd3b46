package acl

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	consuld "github.com/consul-rehydrate/consul-rehydrate/consul.d"
	"github.com/consul-rehydrate/consul-rehydrate/internal/app"
	"github.com/consul-rehydrate/consul-rehydrate/internal/cluster"
	"github.com/consul-rehydrate/consul-rehydrate/internal/coord"
	"github.com/consul-rehydrate/consul-rehydrate/test/testcluster"
)

// TestSharedHandlerPolicy_ServesEveryServerAndNoOtherNode proves the policy of the one
// handler token all of a cluster's servers share on AWS (rehydrate-handlers-shared),
// on a secure cluster of three servers and a client. The harness names servers
// "server-N" and clients "client-N", so the policy is rendered with NodePrefix
// "server-", standing for AWS's "i-". With that one token, on each of two servers'
// agents: what a roll step asks of Consul (the agent's own node meta, the cluster's
// health and raft configuration, the roll record, the lock with its session on that
// agent's node, the event) and what `rehydrate leave` and the gate do (the agent's
// leave, agent:write: consul.service's real stop, on both). Refused: the agent and the
// sessions of a node whose name does not start with the prefix (its agent is neither
// read, reloaded nor made to leave; another application's session there survives),
// another cluster's keys and lock; and the recipe the README gave before (the
// per-server policy with only its session rule widened) on any server but its own.
func TestSharedHandlerPolicy_ServesEveryServerAndNoOtherNode(t *testing.T) {
	c := startACLCluster(t, testcluster.Options{Servers: 3, Clients: 1})
	admin := c.Client(t)
	client := c.Clients[0]
	tok := policyToken(t, admin, consuld.PolicyRehydrateHandlersShared,
		consuld.PolicyVars{Cluster: "acl", NodePrefix: "server-", EventName: "consul-rehydrate"})
	waitKnown(t, c.Agents(), tok)
	leader := c.Leader(t)
	var followers []*testcluster.Agent
	for _, s := range c.Servers {
		if s != leader {
			followers = append(followers, s)
		}
	}
	require.Len(t, followers, 2)
	ctx := context.Background()

	// A roll step's reads and writes, and agent:write, on each of two servers' agents.
	for _, s := range followers {
		h := as(t, s, tok)
		self, err := h.Agent().Self()
		require.NoError(t, err, "agent:read on %s (roll.selfInstance)", s.Name)
		assert.Equal(t, s.Name, self["Config"]["NodeName"], "the agent's own node")
		_, err = cluster.Observe(ctx, h)
		require.NoError(t, err, "the cluster's health and servers through %s", s.Name)
		_, err = cluster.ObserveRaft(ctx, h)
		require.NoError(t, err, "the raft configuration through %s", s.Name)
		store := coord.New(h, "acl")
		_, err = store.Roll(ctx)
		require.NoError(t, err, "the roll record through %s", s.Name)
		held, err := store.Lock(ctx, coord.LockOptions{TTL: 15 * time.Second, Wait: 5 * time.Second, Holder: "step on " + s.Name})
		require.NoError(t, err, "the lock through %s", s.Name)
		kv, _, err := admin.KV().Get(store.Key("lock"), nil)
		require.NoError(t, err)
		require.NotNil(t, kv)
		sess, _, err := admin.Session().Info(kv.Session, nil)
		require.NoError(t, err)
		require.NotNil(t, sess)
		assert.Equal(t, s.Name, sess.Node, "the lock's session is on the node of the agent it was taken through")
		require.NoError(t, held.Release())
		_, _, err = h.Event().Fire(&api.UserEvent{Name: "consul-rehydrate"}, nil)
		require.NoError(t, err, "the event through %s", s.Name)
		// Reload is checked as the leave is (AgentWriteAllowed on the agent's node).
		require.NoError(t, h.Agent().Reload(), "agent:write on %s", s.Name)
	}

	// A node whose name does not start with the prefix: its agent and its sessions.
	hc := as(t, client, tok)
	_, err := hc.Agent().Self()
	assertDenied(t, err, "agent:read", "the agent of "+client.Name)
	err = hc.Agent().Reload()
	assertDenied(t, err, "agent:write", "reloading the agent of "+client.Name)
	err = hc.Agent().Leave()
	assertDenied(t, err, "agent:write", "the leave of "+client.Name)
	assert.True(t, client.Running(), "%s still runs", client.Name)
	_, err = coord.New(hc, "acl").Lock(ctx, coord.LockOptions{TTL: 15 * time.Second, Wait: time.Second, Holder: "step on " + client.Name})
	assert.ErrorContains(t, err, "Permission denied", "a lock session on "+client.Name)
	_, _, err = as(t, followers[0], tok).Session().Create(&api.SessionEntry{Node: client.Name, Name: "x"}, nil)
	assertDenied(t, err, "session:write", "a session on "+client.Name)
	other := otherSession(t, admin, client.Name)
	_, err = as(t, followers[0], tok).Session().Destroy(other, nil)
	assertDenied(t, err, "session:write", "destroying another application's session on "+client.Name)
	assertSessionLives(t, admin, other)

	// Another cluster's keys and lock, including names that share this one's start.
	h := as(t, followers[0], tok)
	for _, key := range []string{"rehydrate/acl-2/roll", "rehydrate/aclx", "rehydrate/roll", "deploy/web/nodes/server-1/desired"} {
		_, err := h.KV().Put(&api.KVPair{Key: key, Value: []byte("x")}, nil)
		assertDenied(t, err, "key:write", "writing "+key)
	}
	_, err = coord.New(h, "acl-2").Lock(ctx, coord.LockOptions{TTL: 15 * time.Second, Wait: time.Second, Holder: "wrong cluster"})
	assert.ErrorContains(t, err, "Permission denied", "another cluster's lock")
	keys, _, err := admin.KV().Keys("rehydrate/", "", nil)
	require.NoError(t, err)
	for _, k := range keys {
		assert.Regexp(t, `^rehydrate/acl/`, k, "nothing written outside the cluster's keys")
	}

	// The recipe the README gave before: rehydrate-handlers rendered for one server with
	// only its session rule widened. Its agent rule stays exact: another server's roll
	// step cannot read its own agent, nor leave.
	rules, err := consuld.RenderPolicy(consuld.PolicyRehydrateHandlers,
		consuld.PolicyVars{Cluster: "acl", Node: followers[0].Name, EventName: "consul-rehydrate"})
	require.NoError(t, err)
	exact := `session "` + followers[0].Name + `" {`
	require.Contains(t, rules, exact)
	oldRecipe := c.Token(t, "old-recipe", strings.Replace(rules, exact, `session_prefix "server-" {`, 1))
	waitKnown(t, c.Servers, oldRecipe)
	_, err = as(t, followers[1], oldRecipe).Agent().Self()
	assertDenied(t, err, "agent:read", "the old recipe's token on another server's agent")
	err = as(t, followers[1], oldRecipe).Agent().Reload()
	assertDenied(t, err, "agent:write", "the old recipe's token: agent:write on another server")

	// consul.service's stop, `rehydrate leave`, with the same token on both followers:
	// each agent leaves the raft configuration and exits.
	cfg := leaveConfig(t)
	for i, f := range followers {
		code, out := unitStop(t, c, f, tok, cfg)
		require.Equal(t, app.ExitOK, code, out)
		assert.Contains(t, out, "left the cluster")
		testcluster.WaitFor(t, 60*time.Second, f.Name+"'s agent to exit after its leave", func() (bool, string) {
			return !f.Running(), "still running"
		})
		testcluster.WaitFor(t, 30*time.Second, f.Name+" out of the raft configuration", func() (bool, string) {
			rc, err := as(t, leader, tok).Operator().RaftGetConfiguration(nil)
			if err != nil {
				return false, err.Error()
			}
			return len(rc.Servers) == 2-i, "servers: " + raftNames(rc)
		})
	}
	assert.True(t, leader.Running(), "the leader stays")
}

func raftNames(rc *api.RaftConfiguration) string {
	var s string
	for _, r := range rc.Servers {
		s += r.Node + " "
	}
	return s
}
