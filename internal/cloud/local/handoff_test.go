//go:build linux

package local

import (
	"io"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/consul-rehydrate/consul-rehydrate/internal/cluster"
	"github.com/consul-rehydrate/consul-rehydrate/internal/gate"
	"github.com/consul-rehydrate/consul-rehydrate/test/testcluster"
)

// TestTerminate_TheLeaderHandsOffFirstNeverToAServerLeaving: terminating the
// leader (a roll's retire of it, or the group's) moves leadership off it while it
// still serves, as scripts/consul.service's stop does, and only then makes it
// leave; never to a server whose gate marked it leaving, even the one the hand-off
// would have chosen.
func TestTerminate_TheLeaderHandsOffFirstNeverToAServerLeaving(t *testing.T) {
	t.Parallel()
	p, _, _ := startCluster(t, 3)
	ctx := t.Context()
	_, err := p.Launch(ctx, "image-a", "launch/extra", nil)
	require.NoError(t, err)
	cl := consulClient(t, p)
	testcluster.WaitFor(t, wait, "4 healthy voters", func() (bool, string) {
		h, err := cl.Operator().AutopilotServerHealth(nil)
		if err != nil {
			return false, err.Error()
		}
		n := 0
		for _, s := range h.Servers {
			if s.Voter && s.Healthy {
				n++
			}
		}
		return n == 4, describeHealth(h)
	})
	obs, err := cluster.ObserveRaft(ctx, cl)
	require.NoError(t, err)
	require.NotNil(t, obs.Leader())
	leader := obs.Leader().Name
	preferred := gate.Successor(obs, leader, nil)
	require.NotNil(t, preferred)

	// The preferred successor's gate marks it leaving, through its own agent (the
	// mark is a session on its node).
	ins, err := p.Instances(ctx)
	require.NoError(t, err)
	var addr string
	for _, in := range ins {
		if in.ID == preferred.Name {
			addr = in.Address
		}
	}
	require.NotEmpty(t, addr)
	own, err := p.managementClient(addr, 10*time.Second)
	require.NoError(t, err)
	// The handlers' cluster name, which a provider that runs handlers has (New
	// requires it with BinDir); without one the marks' keys would hold "//", which
	// Consul's HTTP API stores as "/".
	p.cfg.Cluster = "handoff-test"
	require.NoError(t, gate.MarkLeaving(ctx, own, p.cfg.Cluster, preferred.Name))

	var out testcluster.SyncBuffer
	p.log = hclog.New(&hclog.LoggerOptions{Name: "local", Level: hclog.Debug, Output: io.MultiWriter(testLog{t}, &out)})
	require.NoError(t, p.Terminate(ctx, leader, "retire/leader"))
	logs := out.String()
	handedOff := strings.Index(logs, "leadership handed off")
	require.GreaterOrEqual(t, handedOff, 0, "the leader handed off")
	assert.Less(t, handedOff, strings.Index(logs, "instance's server left"), "before it left")

	now, err := cluster.ObserveRaft(ctx, cl)
	require.NoError(t, err)
	require.NotNil(t, now.Leader())
	assert.NotEqual(t, leader, now.Leader().Name, "leadership moved")
	assert.NotEqual(t, preferred.Name, now.Leader().Name, "never to a server leaving")
	assert.Contains(t, logs, "to="+now.Leader().Name, "the hand-off chose the leader there is now")
}
