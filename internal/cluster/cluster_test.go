package cluster_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/consul-rehydrate/consul-rehydrate/internal/cluster"
	"github.com/consul-rehydrate/consul-rehydrate/test/testcluster"
)

func TestObserve_ReportsRaftHealthLeaderAndNodeMeta(t *testing.T) {
	t.Parallel()
	c := testcluster.Start(t, testcluster.Options{Servers: 3, NodeMeta: func(name string) map[string]string {
		return map[string]string{cluster.MetaImageID: "img-A", cluster.MetaInstanceID: "i-" + name}
	}})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	var obs *cluster.Observation
	testcluster.WaitFor(t, 30*time.Second, "node meta of all servers", func() (bool, string) {
		var err error
		obs, err = cluster.Observe(ctx, c.Client(t))
		if err != nil {
			return false, err.Error()
		}
		for _, s := range obs.Servers {
			if s.InstanceID == "" {
				return false, s.Name + " has no instance_id yet"
			}
		}
		return len(obs.Servers) == 3, "servers: " + itoa(len(obs.Servers))
	})
	assert.True(t, obs.Healthy)
	assert.Equal(t, 1, obs.FailureTolerance)
	require.NotNil(t, obs.Leader())
	assert.Equal(t, c.Leader(t).Name, obs.Leader().Name)
	for _, s := range obs.Servers {
		assert.Equal(t, "img-A", s.ImageID)
		assert.Equal(t, "i-"+s.Name, s.InstanceID)
		assert.True(t, s.Voter)
		assert.True(t, s.Healthy)
		if found := obs.ByInstance(s.InstanceID); assert.NotNil(t, found) {
			assert.Equal(t, s.Name, found.Name, "ByInstance finds the server with that instance_id")
		}
		assert.LessOrEqual(t, obs.Trailing(&s), uint64(10))
	}
	assert.Empty(t, obs.Joining)

	// A crashed follower is still in the raft configuration, unhealthy.
	var victim *testcluster.Agent
	for _, s := range c.Servers {
		if s.Name != obs.Leader().Name {
			victim = s
			break
		}
	}
	victim.Kill(t)
	testcluster.WaitFor(t, 30*time.Second, "autopilot to see the crash", func() (bool, string) {
		var err error
		obs, err = cluster.Observe(ctx, c.Client(t))
		if err != nil {
			return false, err.Error()
		}
		return !obs.Healthy, "still healthy"
	})
	require.Len(t, obs.Servers, 3)
	for _, s := range obs.Servers {
		if s.Name == victim.Name {
			assert.False(t, s.Healthy)
			assert.Equal(t, victim.ServerAddr(), s.Address, "a failed server is still known by its address")
		}
	}
}

func itoa(i int) string { return strconv.Itoa(i) }

func TestObserveRaft_SeesALeadershipTransferAtOnce(t *testing.T) {
	t.Parallel()
	c := testcluster.Start(t, testcluster.Options{Servers: 3, NodeMeta: func(name string) map[string]string {
		return map[string]string{cluster.MetaImageID: "img-A", cluster.MetaInstanceID: "i-" + name}
	}})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cl := c.Client(t)
	testcluster.WaitFor(t, 30*time.Second, "a healthy cluster of 3 with node meta", func() (bool, string) {
		obs, err := cluster.Observe(ctx, cl)
		if err != nil {
			return false, err.Error()
		}
		for _, s := range obs.Servers {
			if s.InstanceID == "" {
				return false, s.Name + " has no instance_id yet"
			}
		}
		return obs.Healthy && len(obs.Servers) == 3, "not yet"
	})
	before, err := cluster.ObserveRaft(ctx, cl)
	require.NoError(t, err)
	require.Len(t, before.Servers, 3)
	old := before.Leader()
	require.NotNil(t, old)
	var to *cluster.Server
	for i := range before.Servers {
		if before.Servers[i].ID != old.ID {
			to = &before.Servers[i]
			break
		}
	}
	_, err = cl.Operator().RaftLeaderTransfer(to.ID, nil)
	require.NoError(t, err)
	// Right away: autopilot refreshes every 2s, the raft configuration does not lag.
	after, err := cluster.ObserveRaft(ctx, cl)
	require.NoError(t, err)
	require.NotNil(t, after.Leader())
	assert.Equal(t, to.ID, after.Leader().ID, "the new leader, without waiting for autopilot")
	assert.Len(t, after.Servers, 3)
	for _, s := range after.Servers {
		assert.Equal(t, "i-"+s.Name, s.InstanceID, "node meta kept")
		assert.True(t, s.Voter)
	}
}
