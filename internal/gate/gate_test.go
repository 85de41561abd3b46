package gate_test

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/consul-rehydrate/consul-rehydrate/internal/cluster"
	"github.com/consul-rehydrate/consul-rehydrate/internal/coord"
	"github.com/consul-rehydrate/consul-rehydrate/internal/gate"
	"github.com/consul-rehydrate/consul-rehydrate/internal/workload"
	"github.com/consul-rehydrate/consul-rehydrate/test/testcluster"
)

func servers(spec ...string) *cluster.Observation {
	// Each spec is "name:flags": v voter, h healthy, l leader; e.g. "a:vhl".
	obs := &cluster.Observation{}
	for i, s := range spec {
		name, flags := s[:1], s[2:]
		has := func(c byte) bool {
			for j := 0; j < len(flags); j++ {
				if flags[j] == c {
					return true
				}
			}
			return false
		}
		obs.Servers = append(obs.Servers, cluster.Server{ID: "id-" + name, Name: name, Voter: has('v'), Healthy: has('h'), Leader: has('l'), LastIndex: uint64(100 + i)})
	}
	return obs
}

func TestMayDepart(t *testing.T) {
	for _, tc := range []struct {
		name    string
		obs     *cluster.Observation
		self    string
		servers int
		ok      bool
	}{
		{"3 healthy: one may go", servers("a:vhl", "b:vh", "c:vh"), "a", 3, true},
		{"3, another unhealthy: hold (it would leave one)", servers("a:vh", "b:vhl", "c:v"), "a", 3, false},
		{"3, another already gone: hold until a replacement is a voter", servers("a:vh", "b:vhl"), "a", 3, false},
		{"replacement joined, not a voter yet: hold", servers("a:vh", "b:vhl", "d:h"), "a", 3, false},
		{"replacement a stable voter: go", servers("a:vh", "b:vhl", "d:vh"), "a", 3, true},
		{"during a roll's surge, 4 voters: the others are a majority", servers("a:vh", "b:vhl", "c:vh", "d:vh"), "a", 3, true},
		{"4 voters, one other unhealthy: 2 of 4 is no majority", servers("a:vh", "b:vhl", "c:v", "d:vh"), "a", 3, false},
		{"5 servers, all healthy", servers("a:vh", "b:vhl", "c:vh", "d:vh", "e:vh"), "a", 5, true},
		{"5 servers, one other down: hold", servers("a:vh", "b:vhl", "c:vh", "d:vh", "e:v"), "a", 5, false},
		{"self unhealthy: the others decide", servers("a:v", "b:vhl", "c:vh"), "a", 3, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ok, why := gate.MayDepart(tc.obs, tc.self, tc.servers)
			assert.Equal(t, tc.ok, ok, why)
			assert.NotEmpty(t, why)
		})
	}
}

func TestSuccessor_IsTheMostUpToDateHealthyVoterNotLeaving(t *testing.T) {
	obs := servers("a:vhl", "b:vh", "c:vh", "d:h", "e:v")
	s := gate.Successor(obs, "a", nil)
	require.NotNil(t, s)
	assert.Equal(t, "c", s.Name, "the largest log index among healthy voters")
	s = gate.Successor(obs, "a", map[string]bool{"c": true})
	require.NotNil(t, s)
	assert.Equal(t, "b", s.Name, "not one that is leaving too")
	assert.Nil(t, gate.Successor(servers("a:vhl", "d:h", "e:v"), "a", nil), "no healthy voter")
}

// TestLeave_HandsOffThenLeavesWithoutAFailedWrite: the leader's stop path under
// 50 writes/s (each tried up to 3 times, as the demo's): leadership moves to another server first, then the leader leaves
// through its agent's API, out of the raft configuration, and no write fails.
func TestLeave_HandsOffThenLeavesWithoutAFailedWrite(t *testing.T) {
	t.Parallel()
	c := testcluster.Start(t, testcluster.Options{Servers: 3, Clients: 1})
	client := c.Clients[0].Client()
	// Three attempts per write, as the demo's writer makes: a write the client
	// agent forwarded through the server that is draining may fail once (1 of 654,
	// with one attempt, in a full parallel suite) and succeed at once when retried.
	writer := workload.StartWriter(client, "gate/", 50, 3, 5*time.Second)
	leaders := workload.WatchLeader(client, 50*time.Millisecond)
	time.Sleep(2 * time.Second)

	leader := c.Leader(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	require.NoError(t, gate.Leave(ctx, leader.Client(), leader.Name, gate.Options{Timeout: 30 * time.Second}))

	testcluster.WaitFor(t, 30*time.Second, "the old leader out of raft and its agent gone", func() (bool, string) {
		obs, err := cluster.ObserveRaft(ctx, client)
		if err != nil {
			return false, err.Error()
		}
		for _, s := range obs.Servers {
			if s.Name == leader.Name {
				return false, "still in raft"
			}
		}
		return !leader.Running(), fmt.Sprintf("%d in raft, agent running %v", len(obs.Servers), leader.Running())
	})
	time.Sleep(2 * time.Second)
	changes, noLeader := leaders.Stop()
	res, err := writer.Stop(ctx)
	require.NoError(t, err)
	assert.Zero(t, res.Failed, "failed writes")
	assert.Zero(t, res.Lost, "lost writes")
	assert.Equal(t, 1, changes, "one leader change: the hand-off")
	assert.Less(t, noLeader, time.Second)
	t.Logf("writes ok %d, max %s, leader changes %d, without leader %s", res.OK, res.Max, changes, noLeader)

	// A follower's hand-off moves nothing.
	now := c.Leader(t)
	var follower *testcluster.Agent
	for _, s := range c.Servers {
		if s != now && s != leader {
			follower = s
		}
	}
	require.NotNil(t, follower)
	moved, err := gate.HandOff(ctx, follower.Client(), follower.Name, gate.Options{})
	require.NoError(t, err)
	assert.False(t, moved)
}

// countingAction is the lifecycle action of a test: it counts heartbeats and the
// completion.
type countingAction struct{ beats, completes atomic.Int32 }

func (a *countingAction) Heartbeat(context.Context) error { a.beats.Add(1); return nil }
func (a *countingAction) Complete(context.Context) error  { a.completes.Add(1); return nil }

// TestDepart_HoldExceededThenHandsOffPastALeavingServerAndLeavesRaft: the gate of
// the leader on a real cluster, told the cluster needs one server more than it has
// (so quorum never allows the departure): it holds, heartbeating, only until
// MaxHold, then says HOLD EXCEEDED and goes; it hands leadership to the one server
// not marked leaving (not the one it would have chosen); it sees itself out of the
// raft configuration through another server; it completes the action; and its
// leaving mark vanishes with it.
func TestDepart_HoldExceededThenHandsOffPastALeavingServerAndLeavesRaft(t *testing.T) {
	t.Parallel()
	c := testcluster.Start(t, testcluster.Options{Servers: 3, Clients: 1})
	client := c.Clients[0].Client()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	leader := c.Leader(t)

	// The server the leader would hand off to, marked leaving by its own gate.
	obs, err := cluster.ObserveRaft(ctx, client)
	require.NoError(t, err)
	marked := gate.Successor(obs, leader.Name, nil)
	require.NotNil(t, marked)
	var markedAgent *testcluster.Agent
	for _, s := range c.Servers {
		if s.Name == marked.Name {
			markedAgent = s
		}
	}
	require.NotNil(t, markedAgent)
	require.NoError(t, gate.MarkLeaving(ctx, markedAgent.Client(), "gate-test", marked.Name))
	require.NoError(t, gate.MarkLeaving(ctx, markedAgent.Client(), "gate-test", marked.Name), "marking again is no error")
	leaving, err := gate.Leaving(ctx, client, "gate-test")
	require.NoError(t, err)
	assert.Equal(t, map[string]bool{marked.Name: true}, leaving)

	var out testcluster.SyncBuffer
	action := &countingAction{}
	g := &gate.Gate{
		Consul: leader.Client(), Self: leader.Name, Cluster: "gate-test",
		Servers: 4, // one more than there are: quorum never allows the departure
		Action:  action, MaxHold: 3 * time.Second, Heartbeat: 500 * time.Millisecond, Poll: 250 * time.Millisecond,
		HandOffTimeout: 30 * time.Second, LockTTL: 15 * time.Second,
		Peer: func(raftAddr string) (*api.Client, error) {
			for _, s := range c.Servers {
				if s.ServerAddr() == raftAddr {
					return s.Client(), nil
				}
			}
			return nil, fmt.Errorf("no server at %s", raftAddr)
		},
		Log: hclog.New(&hclog.LoggerOptions{Output: &out, Level: hclog.Debug}),
	}
	require.NoError(t, g.Depart(ctx))
	logs := out.String()
	t.Log(logs)
	for _, step := range []string{"holding the termination for quorum", "HOLD EXCEEDED: departing although quorum may need this server",
		"handing leadership off", "left the cluster", "out of the raft configuration", "completed the lifecycle action"} {
		assert.Contains(t, logs, step)
	}
	assert.Less(t, strings.Index(logs, "HOLD EXCEEDED"), strings.Index(logs, "handing leadership off"), "the hold ended before the hand-off")
	assert.Less(t, strings.Index(logs, "left the cluster"), strings.Index(logs, "out of the raft configuration"))
	assert.Less(t, strings.Index(logs, "out of the raft configuration"), strings.Index(logs, "completing the lifecycle action"))
	assert.Positive(t, action.beats.Load(), "heartbeats while held")
	assert.Equal(t, int32(1), action.completes.Load())

	// Out of raft when the action completed; the leader is the server not marked.
	obs, err = cluster.ObserveRaft(ctx, client)
	require.NoError(t, err)
	for _, s := range obs.Servers {
		assert.NotEqual(t, leader.Name, s.Name, "out of the raft configuration")
	}
	now := obs.Leader()
	require.NotNil(t, now)
	assert.NotEqual(t, marked.Name, now.Name, "leadership went to the server not leaving")
	assert.Contains(t, logs, "to="+now.Name)

	// The departed server's mark went with it; the marked one's stays while it is here.
	testcluster.WaitFor(t, 30*time.Second, "the departed server's mark gone", func() (bool, string) {
		leaving, err := gate.Leaving(ctx, client, "gate-test")
		if err != nil {
			return false, err.Error()
		}
		return !leaving[leader.Name] && leaving[marked.Name], fmt.Sprint(leaving)
	})
}

// TestDepart_ARestartedGateEndsItsDeadPredecessorsLockSession: the gate of a server
// died holding the departure lock, and systemd started it again. Its session would
// hold the lock for up to twice its TTL (15 s here) after the death, and the lock
// delay after that, longer than this gate's MaxHold: without ending it, the gate
// would depart without the lock, HOLD EXCEEDED. It ends that session (and no other:
// another server's gate's stays), takes the lock, leaves and completes.
func TestDepart_ARestartedGateEndsItsDeadPredecessorsLockSession(t *testing.T) {
	t.Parallel()
	c := testcluster.Start(t, testcluster.Options{Servers: 3, Clients: 1})
	client := c.Clients[0].Client()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var self, other *testcluster.Agent
	leader := c.Leader(t)
	for _, s := range c.Servers {
		switch {
		case s == leader:
		case self == nil:
			self = s
		default:
			other = s
		}
	}
	key := coord.New(client, "gate-test").Key("departure")
	lock := func(a *testcluster.Agent) *coord.Held {
		held, err := coord.LockKey(ctx, a.Client(), key+"-"+a.Name, coord.LockOptions{
			TTL: 15 * time.Second, Delay: time.Second, Holder: "lifecycle gate on " + a.Name,
		})
		require.NoError(t, err)
		return held
	}
	// The other server's gate holds a lock of its own: it must keep it.
	otherHeld := lock(other)
	defer func() { _ = otherHeld.Release() }()
	// The dead predecessor: its session holds the departure lock, never released.
	_, err := coord.LockKey(ctx, self.Client(), key, coord.LockOptions{
		TTL: 15 * time.Second, Delay: time.Second, Holder: "lifecycle gate on " + self.Name,
	})
	require.NoError(t, err)

	var out testcluster.SyncBuffer
	action := &countingAction{}
	g := &gate.Gate{
		Consul: self.Client(), Self: self.Name, Cluster: "gate-test", Servers: 3, Action: action,
		MaxHold: 10 * time.Second, Heartbeat: 500 * time.Millisecond, Poll: 250 * time.Millisecond,
		HandOffTimeout: 30 * time.Second, LockTTL: 15 * time.Second, LockDelay: time.Second,
		Log: hclog.New(&hclog.LoggerOptions{Output: &out, Level: hclog.Debug}),
	}
	require.NoError(t, g.Depart(ctx))
	logs := out.String()
	t.Log(logs)
	assert.Equal(t, 1, strings.Count(logs, "ended the departure lock session of a gate that ran here before"), "one session ended")
	assert.Contains(t, logs, "took the departure lock")
	assert.NotContains(t, logs, "HOLD EXCEEDED")
	assert.Contains(t, logs, "left the cluster")
	assert.Equal(t, int32(1), action.completes.Load())

	// The other server's gate still holds its lock.
	kv, _, err := client.KV().Get(key+"-"+other.Name, &api.QueryOptions{RequireConsistent: true})
	require.NoError(t, err)
	require.NotNil(t, kv)
	assert.NotEmpty(t, kv.Session, "another server's gate's lock is untouched")
}
