package testcluster

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestCluster_LeaderCrashElectsNewLeaderAndRestartHeals(t *testing.T) {
	t.Parallel()
	c := Start(t, Options{Servers: 3, Clients: 1})

	// The cluster works end to end: a write through the client agent is readable
	// consistently from a server.
	_, err := c.Clients[0].Client().KV().Put(&api.KVPair{Key: "probe", Value: []byte("1")}, nil)
	require.NoError(t, err)
	kv, _, err := c.Servers[0].Client().KV().Get("probe", &api.QueryOptions{RequireConsistent: true})
	require.NoError(t, err)
	require.NotNil(t, kv)
	assert.Equal(t, "1", string(kv.Value))

	old := c.Leader(t)
	old.Kill(t)
	require.False(t, old.Running())

	newLeader := c.WaitForLeader(t, 30*time.Second)
	assert.NotEqual(t, old.Name, newLeader.Name, "a killed leader cannot lead")
	c.WaitUnhealthy(t, 30*time.Second)
	h, err := c.Health()
	require.NoError(t, err)
	assert.False(t, h.Healthy)

	old.Restart(t)
	c.WaitHealthy(t, 60*time.Second)
	h, err = c.Health()
	require.NoError(t, err)
	assert.True(t, h.Healthy)
	assert.Len(t, h.Servers, 3)
}

func TestCluster_GracefulLeaveShrinksRaftConfiguration(t *testing.T) {
	t.Parallel()
	c := Start(t, Options{Servers: 3})

	var follower *Agent
	leader := c.Leader(t)
	for _, s := range c.Servers {
		if s != leader {
			follower = s
			break
		}
	}
	follower.Leave(t)
	require.False(t, follower.Running())

	WaitFor(t, 30*time.Second, "raft configuration of 2", func() (bool, string) {
		cfg, err := leader.Client().Operator().RaftGetConfiguration(nil)
		if err != nil {
			return false, err.Error()
		}
		return len(cfg.Servers) == 2, "servers in raft: " + itoa(len(cfg.Servers))
	})
	// A leave is not a failure: the two remaining servers are a healthy cluster.
	c.WaitHealthy(t, 30*time.Second)
}

func TestAllocateBlock_NeverHandsOutTheSameBlockTwice(t *testing.T) {
	seen := map[string]bool{}
	for i := 0; i < 5; i++ {
		b := AllocateBlock(t)
		require.False(t, seen[b.Addr(1)], "block %s handed out twice", b.Addr(1))
		seen[b.Addr(1)] = true
		assert.True(t, b.Prefix().Contains(mustAddr(t, b.Addr(200))))
		assert.False(t, b.Prefix().Contains(mustAddr(t, b.Addr(1))), "the harness's own agents stay outside Prefix")
	}
}

func itoa(i int) string { return fmt.Sprint(i) }

func mustAddr(t *testing.T, s string) netip.Addr {
	t.Helper()
	a, err := netip.ParseAddr(s)
	require.NoError(t, err)
	return a
}
