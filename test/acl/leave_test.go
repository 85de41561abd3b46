package acl

import (
	"bufio"
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	consuld "github.com/consul-rehydrate/consul-rehydrate/consul.d"
	"github.com/consul-rehydrate/consul-rehydrate/internal/app"
	"github.com/consul-rehydrate/consul-rehydrate/internal/command"
	"github.com/consul-rehydrate/consul-rehydrate/internal/coord"
	"github.com/consul-rehydrate/consul-rehydrate/test/testcluster"
)

// unitCommand returns the command line of directive (ExecStart, ExecStop) in the
// systemd unit at path, split into words, with its exit-status prefix ("-") dropped
// and each ${VAR} expanded from env as systemd expands it from the unit's
// Environment= lines. It also returns those lines' variables. It fails t on a
// directive given more than once, on quoting (which this split does not handle), and on
// a ${VAR} that env does not map.
func unitCommand(t *testing.T, path, directive string, env map[string]string) (argv []string, unitEnv []string) {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	var line string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		if v, ok := strings.CutPrefix(l, "Environment="); ok {
			name, _, _ := strings.Cut(v, "=")
			unitEnv = append(unitEnv, name)
		}
		if v, ok := strings.CutPrefix(l, directive+"="); ok {
			require.Empty(t, line, "%s: %s given twice", path, directive)
			line = v
		}
	}
	require.NoError(t, sc.Err())
	require.NotEmpty(t, line, "%s has no %s", path, directive)
	require.NotContains(t, line, `"`, "quoted words")
	require.NotContains(t, line, `'`, "quoted words")
	line = strings.TrimLeft(line, "-")
	ref := regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)\}`)
	for _, w := range strings.Fields(line) {
		w = ref.ReplaceAllStringFunc(w, func(m string) string {
			v, ok := env[m[2:len(m)-1]]
			require.True(t, ok, "%s: %s uses %s, which the test does not map", path, directive, m)
			return v
		})
		argv = append(argv, w)
	}
	return argv, unitEnv
}

// TestHandlerPolicy_LetsItsServerHandOffAndLeaveAndNothingLessDoes proves the ACL
// side of issue 17's leader-aware stop and termination gate, on a secure cluster of
// three servers: the rehydrate-handlers policy rendered for a server lets that
// server's token take the departure lock (rehydrate/<cluster>/departure) and run
// consul.service's own ExecStop, `rehydrate leave`, exactly as the unit writes it: the
// leader hands leadership to another voter and its agent leaves the raft
// configuration and exits, and the cluster stays healthy on two. Nothing less does:
// the same policy with agent:read on its node (what it granted before issue 17), or
// rendered for another node, is refused the leave (agent:write), and its token cannot
// make another server's agent leave; each refusal changes nothing. What the policy's
// comment says agent:write and operator:write also allow is shown without harm:
// reloading and replacing the ACL tokens of its own agent only, and force-leave of any
// member.
func TestHandlerPolicy_LetsItsServerHandOffAndLeaveAndNothingLessDoes(t *testing.T) {
	c := startACLCluster(t, testcluster.Options{Servers: 3})
	admin := c.Client(t)
	leader := c.Leader(t)
	var follower *testcluster.Agent
	for _, s := range c.Servers {
		if s != leader {
			follower = s
			break
		}
	}

	vars := consuld.PolicyVars{Cluster: "acl", Node: leader.Name, EventName: "consul-rehydrate"}
	good := policyToken(t, admin, consuld.PolicyRehydrateHandlers, vars)
	followerVars := vars
	followerVars.Node = follower.Name
	followerGood := policyToken(t, admin, consuld.PolicyRehydrateHandlers, followerVars)
	otherCluster := vars
	otherCluster.Cluster = "acl-2"
	wrongCluster := policyToken(t, admin, consuld.PolicyRehydrateHandlers, otherCluster)
	// The follower's policy with its agent rule at read, everything else as shipped.
	rules, err := consuld.RenderPolicy(consuld.PolicyRehydrateHandlers, followerVars)
	require.NoError(t, err)
	agentWrite := "agent \"" + follower.Name + "\" {\n  policy = \"write\"\n}"
	require.Contains(t, rules, agentWrite, "the shipped policy grants agent:write on its node")
	readRules := strings.Replace(rules, agentWrite, "agent \""+follower.Name+"\" {\n  policy = \"read\"\n}", 1)
	p, _, err := admin.ACL().PolicyCreate(&api.ACLPolicy{Name: "rehydrate-handlers-agent-read", Rules: readRules}, nil)
	require.NoError(t, err)
	tok, _, err := admin.ACL().TokenCreate(&api.ACLToken{Description: "agent read", Policies: []*api.ACLTokenPolicyLink{{ID: p.ID}}}, nil)
	require.NoError(t, err)
	agentRead := tok.SecretID
	waitKnown(t, c.Servers, good, followerGood, wrongCluster, agentRead)

	// unchanged asserts that every server still runs as a voter under the same leader.
	unchanged := func(what string) {
		t.Helper()
		rc, err := admin.Operator().RaftGetConfiguration(nil)
		require.NoError(t, err)
		assert.Len(t, rc.Servers, 3, "%s: three servers in raft", what)
		for _, s := range c.Servers {
			assert.True(t, s.Running(), "%s: %s still runs", what, s.Name)
		}
		assert.Equal(t, leader, c.Leader(t), "%s: same leader", what)
	}

	// `rehydrate leave` as consul.service runs it on a server: its Environment=, with
	// this cluster's paths for the unit's, and its ExecStop with the test's configuration.
	cfg := leaveConfig(t)
	stop := func(on *testcluster.Agent, token string) (int, string) {
		t.Helper()
		return unitStop(t, c, on, token, cfg)
	}

	// Refused: the leave without agent:write on the node, with the policy rendered for
	// another node, and of another server's agent. The follower's command does not
	// lead, so it hands nothing off and fails at the leave itself.
	code, out := stop(follower, agentRead)
	assert.Equal(t, app.ExitConsul, code, out)
	assert.Contains(t, out, "Permission denied", "the policy with agent:read only")
	assert.Contains(t, out, "agent:write")
	unchanged("the unit's stop with agent:read")
	err = as(t, follower, agentRead).Agent().Leave()
	assertDenied(t, err, "agent:write", "a leave with agent:read")
	err = as(t, follower, good).Agent().Leave()
	assertDenied(t, err, "agent:write", "a leave of another server's agent")
	err = as(t, leader, followerGood).Agent().Leave()
	assertDenied(t, err, "agent:write", "a leave with the policy of another node")
	unchanged("refused leaves")

	// What agent:write on its node also allows, on its own agent only: a reload, and
	// the token endpoint. An unknown token name passes the ACL check and is refused by
	// name (404), changing no token; elsewhere the check itself refuses it.
	require.NoError(t, as(t, leader, good).Agent().Reload(), "reloading its own agent")
	err = as(t, follower, good).Agent().Reload()
	assertDenied(t, err, "agent:write", "reloading another server's agent")
	_, err = as(t, leader, good).Raw().Write("/v1/agent/token/not-a-token", &api.AgentToken{Token: "x"}, nil, nil)
	require.Error(t, err)
	assert.Contains(t, err.Error(), `Token "not-a-token" is unknown`, "agent:write reaches its agent's token endpoint")
	_, err = as(t, follower, good).Raw().Write("/v1/agent/token/not-a-token", &api.AgentToken{Token: "x"}, nil, nil)
	assertDenied(t, err, "agent:write", "another agent's token endpoint")
	// Force-leave is operator:write, which the transfer needs: the agent rule does not
	// confine it. A name that is no member shows it without harm.
	if err := as(t, leader, good).Agent().ForceLeave("no-such-node"); err != nil {
		assert.NotContains(t, err.Error(), "Permission denied", "operator:write may force-leave any member")
	}
	err = as(t, leader, bareToken(t, admin)).Agent().ForceLeave("no-such-node")
	assertDenied(t, err, "operator:write", "force-leave without operator:write")
	unchanged("reload, token endpoint, force-leave")

	// The departure lock the termination gate takes: the cluster's key, a session on
	// its own node. Not another cluster's.
	handler := as(t, leader, good)
	key := coord.New(handler, "acl").Key("departure")
	require.Equal(t, "rehydrate/acl/departure", key)
	ctx := context.Background()
	_, err = coord.LockKey(ctx, as(t, leader, wrongCluster), key, coord.LockOptions{TTL: 15 * time.Second, Wait: time.Second, Holder: "wrong cluster"})
	assert.ErrorContains(t, err, "Permission denied", "the departure lock of another cluster")
	held, err := coord.LockKey(ctx, handler, key, coord.LockOptions{TTL: 15 * time.Second, Wait: 5 * time.Second, Holder: "lifecycle gate on " + leader.Name})
	require.NoError(t, err, "the departure lock")
	require.NoError(t, held.Verify())

	// The unit's stop on the leader, with its own token: the hand-off (operator:write),
	// then the leave (agent:write on its node). The agent exits by itself.
	code, out = stop(leader, good)
	require.Equal(t, app.ExitOK, code, out)
	assert.Contains(t, out, "handing leadership off")
	assert.Contains(t, out, "leadership handed off")
	assert.Contains(t, out, "left the cluster")
	testcluster.WaitFor(t, 60*time.Second, leader.Name+"'s agent to exit after its leave", func() (bool, string) {
		return !leader.Running(), "still running"
	})
	admin = c.Client(t)
	rc, err := admin.Operator().RaftGetConfiguration(nil)
	require.NoError(t, err)
	assert.Len(t, rc.Servers, 2, "%s left the raft configuration", leader.Name)
	for _, s := range rc.Servers {
		assert.NotEqual(t, leader.Name, s.Node)
	}
	assert.NotEqual(t, leader, c.WaitForLeader(t, 30*time.Second))
	c.WaitHealthy(t, 60*time.Second)
	// The departure lock went with the node: its session was on it (SessionBehaviorDelete
	// removes the key), so the next server's gate can take it.
	testcluster.WaitFor(t, 30*time.Second, "the departure lock to go with "+leader.Name, func() (bool, string) {
		kv, _, err := admin.KV().Get(key, nil)
		if err != nil {
			return false, err.Error()
		}
		if kv != nil && kv.Session != "" {
			return false, "held by session " + kv.Session
		}
		return true, ""
	})
}

// unitStop runs consul.service's ExecStop, `rehydrate leave`, exactly as the unit writes
// it, against agent on with token in the unit's CONSUL_HTTP_TOKEN_FILE and cfg as the
// handlers' configuration, and returns its exit code and output.
func unitStop(t *testing.T, c *testcluster.Cluster, on *testcluster.Agent, token, cfg string) (int, string) {
	t.Helper()
	tokenFile := filepath.Join(t.TempDir(), "consul.token")
	require.NoError(t, os.WriteFile(tokenFile, []byte(token+"\n"), 0o600))
	env := map[string]string{"CONSUL_HTTP_ADDR": on.APIAddr(), "CONSUL_CACERT": c.CAFile(), "CONSUL_HTTP_TOKEN_FILE": tokenFile}
	argv, unitEnv := unitCommand(t, "../../scripts/consul.service", "ExecStop", env)
	require.ElementsMatch(t, []string{"CONSUL_HTTP_ADDR", "CONSUL_CACERT", "CONSUL_HTTP_TOKEN_FILE"}, unitEnv,
		"the unit's environment is what this test gives the command")
	require.Equal(t, "/opt/consul-rehydrate/bin/rehydrate", argv[0])
	args := append([]string(nil), argv[1:]...)
	n := 0
	for i, a := range args {
		if a == "/etc/consul-rehydrate/config.hcl" {
			args[i], n = cfg, n+1
		}
	}
	require.Equal(t, 1, n, "the unit names the handlers' configuration once: %v", argv)
	for k, v := range env {
		t.Setenv(k, v) // api.NewClient reads CONSUL_CACERT from the process
	}
	var out strings.Builder
	code := command.Rehydrate(args, app.Env{Stdin: strings.NewReader(""), Stdout: &out, Stderr: &out, Getenv: os.Getenv})
	assert.NotContains(t, out.String(), token, "the token is never printed")
	return code, out.String()
}
