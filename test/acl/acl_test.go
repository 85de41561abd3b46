// Package acl proves, on real Consul with ACLs on and default deny (consul.d/acl.hcl),
// that each ACL policy of consul.d/acl, rendered for its cluster, node and service by
// consuld.RenderPolicy, is enough for its job; that a token without it, or rendered for
// another node or cluster, is refused and changes nothing; and that each reaches no
// further than its own cluster's keys, its own node's sessions and keys, its own
// event, and (the handlers' policy) the leave of its own node's agent.
package acl

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	consuld "github.com/consul-rehydrate/consul-rehydrate/consul.d"
	"github.com/consul-rehydrate/consul-rehydrate/internal/app"
	"github.com/consul-rehydrate/consul-rehydrate/internal/command"
	"github.com/consul-rehydrate/consul-rehydrate/test/awsfake"
	"github.com/consul-rehydrate/consul-rehydrate/test/testcluster"
)

const management = "6b0f0d33-0c7a-4ad0-9a69-3c2d1f1b7e01" // this test's own cluster only

// machines hand the fake's group the IDs of the test cluster's servers first, so the
// group's instances and Consul's servers are the same three. The fake boots
// concurrently.
type machines struct {
	mu  sync.Mutex
	ids []string
}

func (m *machines) Boot(_ context.Context, _ string) (string, string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.ids) > 0 {
		id := m.ids[0]
		m.ids = m.ids[1:]
		return id, "192.0.2.10", nil
	}
	return fmt.Sprintf("i-%017d", time.Now().UnixNano()%1e17), "192.0.2.20", nil
}

func (m *machines) Shutdown(context.Context, string) error { return nil }

// TestHandlerPolicy_IsEnoughForARollStepAndNothingLessIs takes a roll step with the
// spinup handler on server-1, holding the rehydrate-handlers policy rendered for
// cluster "acl" and node server-1. Tokens without the policy, or with it rendered for
// another node (its lock session would be on server-1) or another cluster, are refused
// and change nothing. The handler's token then transfers leadership, the step that needs
// operator:write.
func TestHandlerPolicy_IsEnoughForARollStepAndNothingLessIs(t *testing.T) {
	ids := []string{"i-00000000000000001", "i-00000000000000002", "i-00000000000000003"}
	c := startACLCluster(t, testcluster.Options{
		Servers: 3,
		NodeMeta: func(name string) map[string]string {
			n := name[len(name)-1:]
			return map[string]string{"image_id": "ami-0aaaaaaaaaaaaaaaa", "instance_id": "i-0000000000000000" + n}
		},
	})
	admin := c.Client(t)
	testcluster.WaitFor(t, 30*time.Second, "every server's node meta in the catalog", func() (bool, string) {
		svcs, _, err := admin.Catalog().Service("consul", "", nil)
		if err != nil {
			return false, err.Error()
		}
		n := 0
		for _, s := range svcs {
			if s.NodeMeta["instance_id"] != "" {
				n++
			}
		}
		return n == 3, fmt.Sprintf("%d of 3", n)
	})

	handlerVars := consuld.PolicyVars{Cluster: "acl", Node: c.Servers[0].Name, EventName: "consul-rehydrate"}
	good := policyToken(t, admin, consuld.PolicyRehydrateHandlers, handlerVars)
	otherNode := handlerVars
	otherNode.Node = c.Servers[1].Name
	wrongNode := policyToken(t, admin, consuld.PolicyRehydrateHandlers, otherNode)
	otherCluster := handlerVars
	otherCluster.Cluster = "acl-2"
	wrongCluster := policyToken(t, admin, consuld.PolicyRehydrateHandlers, otherCluster)
	bare := bareToken(t, admin)

	fake := awsfake.New(awsfake.Options{Machines: &machines{ids: ids}})
	t.Cleanup(fake.Close)
	fake.AddImage(awsfake.Image{ID: "ami-0aaaaaaaaaaaaaaaa", Name: "consul-server-1", CreationDate: time.Now().Add(-48 * time.Hour)})
	fake.AddImage(awsfake.Image{ID: "ami-0bbbbbbbbbbbbbbbb", Name: "consul-server-2", CreationDate: time.Now().Add(-time.Hour)})
	fake.AddLaunchTemplate("consul-server", "ami-0aaaaaaaaaaaaaaaa")
	fake.AddGroup(awsfake.Group{Name: "consul-servers", LaunchTemplate: "consul-server", Version: "1", Min: 3, Max: 3, Desired: 3,
		AZs: []string{"us-east-1a", "us-east-1b", "us-east-1c"}})
	testcluster.WaitFor(t, 10*time.Second, "the group to be in service", func() (bool, string) {
		n := 0
		for _, i := range fake.Group("consul-servers").Instances {
			if i.LifecycleState == "InService" {
				n++
			}
		}
		return n == 3, fmt.Sprint(n)
	})
	for k, v := range map[string]string{
		"AWS_ACCESS_KEY_ID": "AKIDFAKEFAKEFAKEFAKE", "AWS_SECRET_ACCESS_KEY": "fake-secret",
		"AWS_CONFIG_FILE": os.DevNull, "AWS_SHARED_CREDENTIALS_FILE": os.DevNull, "AWS_EC2_METADATA_DISABLED": "true",
	} {
		t.Setenv(k, v)
	}

	spinup := func(token string) (int, string) {
		dir := t.TempDir()
		tokenFile := filepath.Join(dir, "token")
		require.NoError(t, os.WriteFile(tokenFile, []byte(token+"\n"), 0o600))
		cfg := filepath.Join(dir, "rehydrate.hcl")
		require.NoError(t, os.WriteFile(cfg, []byte(fmt.Sprintf(`cluster = "acl"
servers = 3
consul {
  address    = %q
  token_file = %q
  tls {
    ca_file = %q
  }
}
provider "aws" {
  region            = "us-east-1"
  autoscaling_group = "consul-servers"
  launch_template   = "consul-server"
  endpoint_url      = %q
  max_attempts      = 2
  image {
    name_pattern = "consul-server-*"
  }
}
`, c.Servers[0].APIAddr(), tokenFile, c.CAFile(), fake.URL)), 0o644))
		var out strings.Builder
		code := command.Spinup([]string{"-config", cfg}, app.Env{
			Stdin:  strings.NewReader(`[{"ID":"00000000-0000-0000-0000-0000000ac1e1","Name":"consul-rehydrate","Version":1,"LTime":1}]`),
			Stdout: &out, Stderr: &out, Getenv: func(k string) string {
				if strings.HasPrefix(k, "CONSUL_") {
					return ""
				}
				return os.Getenv(k)
			},
		})
		assert.NotContains(t, out.String(), token, "the token is never printed")
		return code, out.String()
	}

	// Without the policy, or with it rendered for another node or another cluster:
	// refused by Consul, and nothing changed anywhere.
	for _, tc := range []struct{ name, token, perm string }{
		{"no policy", bare, "read rehydrate/acl/"},
		{"rendered for " + otherNode.Node, wrongNode, "session:write"},
		{"rendered for cluster " + otherCluster.Cluster, wrongCluster, "read rehydrate/acl/"},
	} {
		code, out := spinup(tc.token)
		assert.Equal(t, app.ExitConsul, code, "%s: %s", tc.name, out)
		assert.Contains(t, out, "Permission denied", tc.name)
		assert.Contains(t, out, tc.perm, tc.name)
		keys, _, err := admin.KV().Keys("rehydrate/", "", nil)
		require.NoError(t, err)
		assert.Empty(t, keys, tc.name)
		assert.Equal(t, 3, fake.Group("consul-servers").Desired, tc.name)
	}

	// With it: the step is taken — lock, roll record, receipt, event records, the
	// launch through the group, and the event fired again.
	code, out := spinup(good)
	require.Equal(t, app.ExitOK, code, out)
	assert.Contains(t, out, "step taken: step=launch")
	assert.Equal(t, 4, fake.Group("consul-servers").Desired, "surged to N+1")
	roll, _, err := admin.KV().Get("rehydrate/acl/roll", nil)
	require.NoError(t, err)
	require.NotNil(t, roll)
	assert.Contains(t, string(roll.Value), `"phase":"rolling"`)
	events, _, err := admin.Event().List("consul-rehydrate", nil)
	require.NoError(t, err)
	assert.NotEmpty(t, events, "the handler fired the event again")

	// Leadership transfer (operator:write), as roll.go asks for it: to a named server.
	handler := as(t, c.Servers[0], good)
	before := c.Leader(t)
	var to *testcluster.Agent
	for _, s := range c.Servers {
		if s != before {
			to = s
			break
		}
	}
	rc, err := handler.Operator().RaftGetConfiguration(nil)
	require.NoError(t, err, "operator:read: the raft configuration")
	id := ""
	for _, s := range rc.Servers {
		if s.Node == to.Name {
			id = s.ID
		}
	}
	require.NotEmpty(t, id, "%s in the raft configuration", to.Name)
	_, err = as(t, c.Servers[0], bare).Operator().RaftLeaderTransfer(id, nil)
	assertDenied(t, err, "operator:write", "leadership transfer without the policy")
	_, err = handler.Operator().RaftLeaderTransfer(id, nil)
	require.NoError(t, err, "leadership transfer with the handlers' policy")
	testcluster.WaitFor(t, 30*time.Second, "leadership on "+to.Name, func() (bool, string) {
		l := c.WaitForLeader(t, 10*time.Second)
		return l == to, "leader " + l.Name
	})
}

// TestHandlerPolicy_ReachesOnlyItsClusterItsNodesSessionsAndItsEvent holds the
// rehydrate-handlers policy rendered for cluster "prod" and node server-1 against what
// the old shipped policy allowed: its cluster's keys, sessions on its own node and its
// event are writable (the job); another cluster's keys (even one whose name starts
// with "prod"), any session on another node — another application's lock —, another
// event, another agent, mesh, peering, the keyring and ACLs are not. And it proves what
// the policy's comment says operator:write also allows: removing a Raft peer.
func TestHandlerPolicy_ReachesOnlyItsClusterItsNodesSessionsAndItsEvent(t *testing.T) {
	c := startACLCluster(t, testcluster.Options{Servers: 1, Clients: 1})
	server, client := c.Servers[0], c.Clients[0]
	admin := c.Client(t)
	tok := policyToken(t, admin, consuld.PolicyRehydrateHandlers, consuld.PolicyVars{Cluster: "prod", Node: server.Name, EventName: "consul-rehydrate"})
	h := as(t, server, tok)

	// The job.
	_, err := h.KV().Put(&api.KVPair{Key: "rehydrate/prod/roll", Value: []byte("{}")}, nil)
	require.NoError(t, err, "its cluster's keys")
	own, _, err := h.Session().Create(&api.SessionEntry{Name: "handler lock", TTL: "10m"}, nil)
	require.NoError(t, err, "a session on its own node (the agent's default)")
	_, _, err = h.Session().Renew(own, nil)
	require.NoError(t, err, "renewing it")
	ok, _, err := h.KV().Acquire(&api.KVPair{Key: "rehydrate/prod/lock", Session: own}, nil)
	require.NoError(t, err)
	assert.True(t, ok, "the lock")
	_, err = h.Session().Destroy(own, nil)
	require.NoError(t, err, "destroying its own session")
	_, _, err = h.Event().Fire(&api.UserEvent{Name: "consul-rehydrate"}, nil)
	require.NoError(t, err, "its event")
	_, err = h.Agent().Self()
	require.NoError(t, err, "its own agent")
	_, err = h.Operator().AutopilotServerHealth(nil)
	require.NoError(t, err, "autopilot health")
	nodes, _, err := h.Catalog().Service("consul", "", nil)
	require.NoError(t, err)
	assert.Len(t, nodes, 1, "the servers in the catalog")

	// Other clusters' keys, including prefixes that share its name's start.
	for _, key := range []string{"rehydrate/prod-2/roll", "rehydrate/prodx", "rehydrate/other/lock", "rehydrate/roll", "deploy/web/nodes/server-1/desired"} {
		_, err := h.KV().Put(&api.KVPair{Key: key, Value: []byte("x")}, nil)
		assertDenied(t, err, "key:write", "writing "+key)
	}
	// Another application's session on another node: neither destroyed nor renewed,
	// and no session may be made there.
	other := otherSession(t, admin, client.Name)
	_, err = h.Session().Destroy(other, nil)
	assertDenied(t, err, "session:write", "destroying a session on "+client.Name)
	_, _, err = h.Session().Renew(other, nil)
	assertDenied(t, err, "", "renewing a session on "+client.Name) // a bare 403
	assertSessionLives(t, admin, other)
	_, _, err = h.Session().Create(&api.SessionEntry{Node: client.Name, Name: "x"}, nil)
	assertDenied(t, err, "session:write", "a session on "+client.Name)
	// Another event, another agent.
	_, _, err = h.Event().Fire(&api.UserEvent{Name: "deploy-everything"}, nil)
	assertDenied(t, err, "", "another event") // "403 (Permission denied)"
	_, err = as(t, client, tok).Agent().Self()
	assertDenied(t, err, "agent:read", "another node's agent")
	// operator:write would grant mesh and peering writes; the policy denies them.
	_, _, err = h.ConfigEntries().Set(&api.ProxyConfigEntry{Kind: api.ProxyDefaults, Name: api.ProxyConfigGlobal}, nil)
	assertDenied(t, err, "mesh:write", "a proxy-defaults config entry")
	_, _, err = h.Peerings().GenerateToken(context.Background(), api.PeeringGenerateTokenRequest{PeerName: "evil"}, nil)
	assertDenied(t, err, "peering:write", "a peering token")
	// Not granted at all: ACLs (and so snapshots, which hold every token) and the keyring.
	_, _, err = h.ACL().TokenList(nil)
	assertDenied(t, err, "acl:read", "listing ACL tokens")
	_, _, err = h.Snapshot().Save(nil)
	assert.ErrorContains(t, err, "Permission denied", "a snapshot")

	// What operator:write also allows, as documented: removing a Raft peer. An address
	// that is no peer shows it without harm: the token passes the ACL check and Consul
	// answers that the address is not in the configuration; without operator:write
	// the same call is refused.
	err = h.Operator().RaftRemovePeerByAddress("127.0.0.254:8300", nil)
	require.Error(t, err)
	assert.NotContains(t, err.Error(), "Permission denied", "operator:write may remove Raft peers")
	assert.Contains(t, err.Error(), "not found in the Raft configuration")
	err = as(t, server, bareToken(t, admin)).Operator().RaftRemovePeerByAddress("127.0.0.254:8300", nil)
	assertDenied(t, err, "operator:write", "removing a Raft peer without operator:write")
}
