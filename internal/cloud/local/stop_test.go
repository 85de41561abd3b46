//go:build linux

package local

import (
	"fmt"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/consul-rehydrate/consul-rehydrate/internal/cloud"
	"github.com/consul-rehydrate/consul-rehydrate/test/testcluster"
)

// Shutdown is what an instance refresh does to a server with leave_on_terminate:
// SIGTERM, a graceful leave of the leader itself (no hand-off first), then the
// process exits and the instance is terminated.
func TestShutdown_TheLeaderLeavesWithoutAHandOffAndTheInstanceEnds(t *testing.T) {
	t.Parallel()
	p, cfg, _ := startCluster(t, 3)
	_, err := p.Launch(t.Context(), "image-a", "launch/extra", nil)
	require.NoError(t, err)
	cl := consulClient(t, p)
	testcluster.WaitFor(t, wait, "a healthy cluster of 4 voters", func() (bool, string) {
		h, err := cl.Operator().AutopilotServerHealth(nil)
		if err != nil {
			return false, err.Error()
		}
		voters := 0
		for _, s := range h.Servers {
			if s.Voter && s.Healthy {
				voters++
			}
		}
		return h.Healthy && voters == 4, describeHealth(h)
	})
	leader := ""
	testcluster.WaitFor(t, wait, "a leader", func() (bool, string) {
		h, err := cl.Operator().AutopilotServerHealth(nil)
		if err != nil {
			return false, err.Error()
		}
		i := slices.IndexFunc(h.Servers, func(s api.ServerHealth) bool { return s.Leader })
		if i < 0 {
			return false, describeHealth(h)
		}
		leader = h.Servers[i].Name
		return true, ""
	})
	pid, err := p.PID(leader)
	require.NoError(t, err)
	require.NotZero(t, pid, "the leader runs")

	killed, err := p.Shutdown(t.Context(), leader, time.Minute)
	require.NoError(t, err)
	assert.False(t, killed, "it stopped on its own")
	pid, err = p.PID(leader)
	require.NoError(t, err)
	assert.Zero(t, pid, "it has exited when Shutdown returns")
	ins, err := p.Instances(t.Context())
	require.NoError(t, err)
	assert.False(t, slices.ContainsFunc(ins, func(i cloud.Instance) bool { return i.ID == leader }), "terminated: not listed")
	log := readFile(t, filepath.Join(cfg.StateDir, "instances", leader, "agent.log"))
	assert.Contains(t, log, "server starting leave", "left gracefully")

	// The three left elect one of themselves and drop the leaver from raft.
	testcluster.WaitFor(t, wait, "3 servers in raft, without the leaver", func() (bool, string) {
		rc, err := cl.Operator().RaftGetConfiguration(nil)
		if err != nil {
			return false, err.Error()
		}
		return len(rc.Servers) == 3 && !slices.ContainsFunc(rc.Servers, func(s *api.RaftServer) bool { return s.Node == leader }),
			fmt.Sprintf("%d servers in raft", len(rc.Servers))
	})
	waitHealthy3(t, cl, "after the leader's shutdown")

	killed, err = p.Shutdown(t.Context(), leader, time.Minute)
	require.NoError(t, err, "shutting down again is a no-op")
	assert.False(t, killed)
	_, err = p.Shutdown(t.Context(), "i-00000000000000000", time.Minute)
	require.ErrorIs(t, err, ErrUnknownInstance)
	_, err = p.PID("i-00000000000000000")
	require.ErrorIs(t, err, ErrUnknownInstance)
}
