// Package deploy runs node-by-node deployments end to end: 3 Consul servers, 3 client
// agents each running the demo service (test/demoapp) and, from the shipped
// consul.d/deploy-web.hcl, its HTTP check and the real deploy handler in a key watch.
// The tests drive rollouts with the real `rehydrate deploy` and only observe.
//
// The cluster is secure as the shipped image's (testcluster.Options.Secure: gossip
// encryption, TLS, HTTPS only, ACLs default deny), and every program holds only its
// policy's token, reaching its agent over HTTPS through the consul CLI's variables
// (CONSUL_HTTP_ADDR=https://..., CONSUL_CACERT, CONSUL_HTTP_TOKEN_FILE): each node's
// watch and deploy handler a token of consul.d/acl/deploy-handler.hcl rendered for
// that node, and `rehydrate deploy` one of deploy-rollout.hcl rendered for the node
// of the agent it talks to (the first server).
package deploy

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
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
	"github.com/consul-rehydrate/consul-rehydrate/internal/deploy"
	"github.com/consul-rehydrate/consul-rehydrate/test/testcluster"
)

var binDir string

func TestMain(m *testing.M) {
	dir, err := testcluster.BuildHandlers("../..", "test/demoapp")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	// The agents run the handlers with the test's environment: their log lines (the
	// agent logs a handler's output only at debug level) go here too.
	os.Setenv(app.EnvLogFile, filepath.Join(dir, "handlers.log"))
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

const appPort = 8080

// env is a cluster whose clients run the web service.
type env struct {
	t       *testing.T
	c       *testcluster.Cluster
	appDir  string
	cfgDir  string // each client's handler configuration, <node>.hcl
	client  *api.Client
	rollout string // the token file of `rehydrate deploy`
}

func newEnv(t *testing.T) *env {
	t.Helper()
	e := &env{t: t, appDir: t.TempDir(), cfgDir: t.TempDir()}
	// The demo's artifacts: v1 and v2 deploy; v3 stops the old server and then fails,
	// like a deploy that breaks the node half way. v4 has no artifact at all.
	for v, content := range map[string]string{"v1": "ok", "v2": "ok", "v3": "fail-after-stop"} {
		testcluster.WriteFile(t, filepath.Join(e.appDir, "artifacts", v), content)
	}
	e.c = testcluster.Start(t, testcluster.Options{
		Servers: 3, Clients: 3, Secure: true,
		// Each node's web service, with its check, is registered from deploy-web.hcl.
		Services: func(a *testcluster.Agent) []string {
			if a.Server {
				return nil
			}
			return []string{"web"}
		},
		// The node's key watch and its deploy handler hold this node's deploy-handler
		// token only.
		HandlerPolicy: func(a *testcluster.Agent) string {
			if a.Server {
				return ""
			}
			rules, err := consuld.RenderPolicy(consuld.PolicyDeployHandler, consuld.PolicyVars{Service: "web", Node: a.Name})
			require.NoError(t, err)
			return rules
		},
		Files: func(a *testcluster.Agent) map[string]string {
			if a.Server {
				return nil
			}
			// Each node's handler deploys its own app; it talks to its own agent, with
			// its token, as the agent's environment says (no consul block).
			cfg := e.configOf(a)
			testcluster.WriteFile(t, cfg, fmt.Sprintf(`
lock {
  session_ttl = "10s"
  lock_delay  = "1s"
}
deploy "web" {
  command          = [%q, "deploy", "-dir", %q, "-name", %q, "-addr", "%s:%d", "-watch-pid", "%d"]
  timeout          = "30s"
  health_timeout   = "20s"
  min_healthy_time = "2s"
}
`, filepath.Join(binDir, "demoapp"), e.appDir, a.Name, a.IP, appPort, os.Getpid()))
			// The shipped example, rendered for this node as user-data would.
			hcl := strings.NewReplacer(
				consuld.BinDir, binDir,
				consuld.DeployConfigPath, cfg,
				consuld.NodeName, a.Name,
				"127.0.0.1", a.IP,
			).Replace(consuld.DeployWebHCL)
			return map[string]string{"deploy-web.hcl": hcl}
		},
	})
	t.Cleanup(func() {
		for _, a := range e.c.Clients {
			_ = exec.Command(filepath.Join(binDir, "demoapp"), "stop", "-dir", e.appDir, "-name", a.Name).Run()
		}
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(binDir, "handlers.log"))
			t.Logf("handlers.log (every test's, tail):\n%s", testcluster.Tail(string(b), 60))
			for _, a := range e.c.Clients {
				b, _ := os.ReadFile(filepath.Join(e.appDir, a.Name+".log"))
				t.Logf("%s app log:\n%s", a.Name, testcluster.Tail(string(b), 10))
			}
		}
	})
	e.client = e.c.Client(t)
	rules, err := consuld.RenderPolicy(consuld.PolicyDeployRollout, consuld.PolicyVars{Service: "web", Node: e.c.Servers[0].Name})
	require.NoError(t, err)
	e.rollout = e.c.TokenFile(t, "deploy-rollout", rules)
	// A client registers web shortly after it joins; a rollout deploys the nodes
	// the catalog has.
	testcluster.WaitFor(t, 30*time.Second, "web registered on every client", func() (bool, string) {
		svcs, _, err := e.client.Catalog().Service("web", "", nil)
		return err == nil && len(svcs) == 3, fmt.Sprintf("%d instances, err %v", len(svcs), err)
	})
	return e
}

// rehydrate runs the real CLI against the first server's HTTPS API, with the
// rollout's token.
func (e *env) rehydrate(args ...string) (string, int) {
	e.t.Helper()
	s := e.c.Servers[0]
	return e.run(s.Env(e.rollout), "", "rehydrate", append([]string{"-http-addr", s.APIAddr(), "deploy"}, args...)...)
}

// handler runs the real deploy handler of node by hand with stdin, as its watch would:
// with its agent's address and CA and its own token.
func (e *env) handler(a *testcluster.Agent, stdin string) (string, int) {
	e.t.Helper()
	return e.run(a.Env(a.HandlerTokenFile()), stdin, "deploy", "-config", e.configOf(a))
}

// run runs one of the built executables with the test's environment, without its
// Consul settings, plus consul, bounded, and returns its output and exit code.
func (e *env) run(consul []string, stdin, prog string, args ...string) (string, int) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, prog), args...)
	cmd.Env = append(cleanEnv(), consul...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else {
		require.NoError(e.t, err)
	}
	return string(out), code
}

// configOf is the handler configuration of node a, which its watch names.
func (e *env) configOf(a *testcluster.Agent) string { return filepath.Join(e.cfgDir, a.Name+".hcl") }

func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "CONSUL_") && !strings.HasPrefix(kv, app.EnvConfig+"=") {
			env = append(env, kv)
		}
	}
	return env
}

// served returns the version node's app answers with, or "" if it does not answer.
func (e *env) served(a *testcluster.Agent) string {
	c := http.Client{Timeout: time.Second}
	resp, err := c.Get(fmt.Sprintf("http://%s:%d/version", a.IP, appPort))
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return strings.TrimSpace(string(b))
}

func (e *env) kv(key string) *api.KVPair {
	e.t.Helper()
	p, _, err := e.client.KV().Get(key, &api.QueryOptions{RequireConsistent: true})
	require.NoError(e.t, err)
	return p
}

func (e *env) status(node string) deploy.Status {
	e.t.Helper()
	p := e.kv(deploy.NodeKey("web", node, deploy.KeyStatus))
	require.NotNil(e.t, p, "no status for %s", node)
	var st deploy.Status
	require.NoError(e.t, json.Unmarshal(p.Value, &st))
	return st
}

func (e *env) current(node string) string {
	e.t.Helper()
	p := e.kv(deploy.NodeKey("web", node, deploy.KeyCurrent))
	if p == nil {
		return ""
	}
	return string(p.Value)
}

// passingSampler counts, every 100ms, the passing instances of web.
type passingSampler struct {
	stop    chan struct{}
	done    chan struct{}
	mu      sync.Mutex
	min     int
	samples int
	errs    int
}

func (e *env) samplePassing() *passingSampler {
	s := &passingSampler{stop: make(chan struct{}), done: make(chan struct{}), min: 1 << 30}
	go func() {
		defer close(s.done)
		// Bounded: at most 10 minutes of samples.
		for i := 0; i < 6000; i++ {
			entries, _, err := e.client.Health().Service("web", "", true, nil)
			s.mu.Lock()
			if err != nil {
				s.errs++
			} else {
				s.samples++
				s.min = min(s.min, len(entries))
			}
			s.mu.Unlock()
			select {
			case <-s.stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	return s
}

func (s *passingSampler) Stop() (minPassing, samples, errs int) {
	close(s.stop)
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.min, s.samples, s.errs
}

// bootstrap rolls v1 out to every node and checks it landed.
func (e *env) bootstrap() {
	e.t.Helper()
	out, code := e.rehydrate("start", "--service", "web", "--version", "v1")
	require.Equal(e.t, app.ExitOK, code, out)
	for _, a := range e.c.Clients {
		require.Equal(e.t, "v1", e.current(a.Name))
		require.Equal(e.t, "v1", e.served(a))
	}
}

func TestDeploy_RolloutReachesEveryNodeWithAPassingInstanceAtEveryMoment(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.bootstrap()

	s := e.samplePassing()
	start := time.Now()
	out, code := e.rehydrate("start", "--service", "web", "--version", "v2")
	took := time.Since(start)
	minPassing, samples, errs := s.Stop()
	require.Equal(t, app.ExitOK, code, out)
	t.Logf("rollout of v2 to 3 nodes took %s; %d samples, at least %d passing at every one", took.Round(time.Millisecond), samples, minPassing)

	assert.GreaterOrEqual(t, minPassing, 1, "an instance was passing at every moment")
	assert.LessOrEqual(t, minPassing, 2, "the sampler saw a node out, or it saw nothing")
	assert.Greater(t, samples, 20)
	assert.Zero(t, errs)
	for _, a := range e.c.Clients {
		assert.Equal(t, "v2", e.current(a.Name), a.Name)
		assert.Equal(t, "v2", e.served(a), a.Name)
		st := e.status(a.Name)
		assert.Equal(t, deploy.StateSucceeded, st.State, a.Name)
		assert.Equal(t, "v1", st.Previous, a.Name)
		assert.Equal(t, 1, st.Attempts, a.Name)
		assert.Contains(t, st.Output, "deployed v2", a.Name)
		assert.NotNil(t, st.Finished)
	}
	// Maintenance is off again everywhere: all three pass.
	entries, _, err := e.client.Health().Service("web", "", true, nil)
	require.NoError(t, err)
	assert.Len(t, entries, 3)

	// A second rollout of the same version has nothing to do.
	out, code = e.rehydrate("start", "--service", "web", "--version", "v2")
	require.Equal(t, app.ExitOK, code, out)
	assert.Contains(t, out, "to 0 of 3 nodes")

	out, code = e.rehydrate("status", "--service", "web")
	require.Equal(t, app.ExitOK, code, out)
	for _, a := range e.c.Clients {
		assert.Regexp(t, a.Name+`\s+v2\s+v2\s+succeeded\s+1\s+\S+\s+passing`, out)
	}
}

func TestDeploy_FailingVersionHaltsAfterTheFirstNodeWhichRollsBack(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.bootstrap()
	before := map[string]deploy.Status{}
	for _, a := range e.c.Clients[1:] {
		before[a.Name] = e.status(a.Name)
	}

	out, code := e.rehydrate("start", "--service", "web", "--version", "v3")
	require.Equal(t, app.ExitFailed, code, out)
	assert.Contains(t, out, "halted")

	first := e.c.Clients[0]
	st := e.status(first.Name)
	assert.Equal(t, deploy.StateRolledBack, st.State)
	assert.Equal(t, "v3", st.Version)
	assert.Equal(t, "v1", st.Previous)
	assert.Contains(t, st.Error, "exit status 1")
	assert.Contains(t, st.Output, "deployed v1", "the tail is the rollback's")
	assert.Equal(t, "v1", e.current(first.Name))
	assert.Equal(t, "v1", e.served(first), "the rollback restarted v1")
	testcluster.WaitFor(t, 10*time.Second, "3 passing instances", func() (bool, string) {
		entries, _, err := e.client.Health().Service("web", "", true, nil)
		return err == nil && len(entries) == 3, fmt.Sprintf("%d passing, err %v", len(entries), err)
	})

	// The others were never asked: same status, same version, same process.
	for _, a := range e.c.Clients[1:] {
		assert.Equal(t, before[a.Name], e.status(a.Name), a.Name)
		assert.Equal(t, "v1", e.current(a.Name), a.Name)
		assert.Equal(t, "v1", e.served(a), a.Name)
	}
	var rec deploy.Record
	require.NoError(t, json.Unmarshal(e.kv(deploy.ServiceKey("web", "rollout")).Value, &rec))
	assert.Equal(t, deploy.RolloutHalted, rec.State)
	assert.Equal(t, []deploy.NodeRecord{
		{Node: first.Name, Previous: "v1", State: deploy.StateRolledBack, Error: st.Error},
		{Node: e.c.Clients[1].Name, Previous: "v1", State: deploy.NodePending},
		{Node: e.c.Clients[2].Name, Previous: "v1", State: deploy.NodePending},
	}, rec.Nodes)
}

func TestDeploy_SecondNodeFailingRollsTheFirstBack(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.bootstrap()
	// The first node deploys v2; the artifact is gone by the time the second node's
	// desired value says v2, so its deploy fails there.
	second := e.c.Clients[1]
	stop := make(chan struct{})
	watched := make(chan struct{})
	t.Cleanup(func() { close(stop); <-watched })
	go func() {
		defer close(watched)
		deadline := time.Now().Add(2 * time.Minute)
		for time.Now().Before(deadline) {
			if p, _, err := e.client.KV().Get(deploy.NodeKey("web", second.Name, deploy.KeyDesired), nil); err == nil && p != nil {
				if d, err := deploy.ParseDesired(p.Value); err == nil && d.Version == "v2" {
					_ = os.Remove(filepath.Join(e.appDir, "artifacts", "v2"))
					return
				}
			}
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()

	out, code := e.rehydrate("start", "--service", "web", "--version", "v2")
	require.Equal(t, app.ExitFailed, code, out)

	first, third := e.c.Clients[0], e.c.Clients[2]
	assert.Equal(t, deploy.StateRolledBack, e.status(second.Name).State)
	assert.Equal(t, "v1", e.served(second))
	// The first node had v2 and is rolled back to v1 by the rollout.
	st := e.status(first.Name)
	assert.Equal(t, deploy.StateSucceeded, st.State)
	assert.Equal(t, "v1", st.Version, "the rollout's rollback deployed v1")
	assert.True(t, strings.HasSuffix(st.ID, "-rollback"), st.ID)
	assert.Equal(t, "v1", e.current(first.Name))
	assert.Equal(t, "v1", e.served(first))
	assert.Equal(t, "v1", e.served(third))
	assert.Contains(t, out, first.Name+": reverted")
}

func TestDeploy_ReplaysAndBadDesiredValuesChangeNothing(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.bootstrap()
	a := e.c.Clients[1]
	key := deploy.NodeKey("web", a.Name, deploy.KeyDesired)
	desired := e.kv(key)
	require.NotNil(t, desired)
	pid := func() string {
		b, err := os.ReadFile(filepath.Join(e.appDir, a.Name+".pid"))
		require.NoError(t, err)
		return strings.TrimSpace(string(b))
	}
	snapshot := func() string {
		pairs, _, err := e.client.KV().List("deploy/", &api.QueryOptions{RequireConsistent: true})
		require.NoError(t, err)
		var b strings.Builder
		for _, p := range pairs {
			if !strings.HasSuffix(p.Key, "/"+deploy.KeyDesired) {
				fmt.Fprintf(&b, "%s=%s\n", p.Key, p.Value)
			}
		}
		return b.String() + "pid=" + pid()
	}
	before := snapshot()

	payload := func(p *api.KVPair) string {
		b, err := json.Marshal(p)
		require.NoError(t, err)
		return string(b)
	}
	// A replay of the deployment the node already did.
	out, code := e.handler(a, payload(desired))
	assert.Equal(t, app.ExitOK, code, out)
	assert.Contains(t, out, "deployment already handled")
	assert.Equal(t, before, snapshot())

	bad := []struct {
		name, stdin, want string
		code              int
	}{
		{"not JSON at all", `{{{`, "key watch payload", app.ExitBadPayload},
		{"value not JSON", payload(&api.KVPair{Key: key, Value: []byte("v2 please")}), "not a JSON object", app.ExitBadPayload},
		{"missing id", payload(&api.KVPair{Key: key, Value: []byte(`{"version":"v2"}`)}), "missing id", app.ExitBadPayload},
		{"missing version", payload(&api.KVPair{Key: key, Value: []byte(`{"id":"x"}`)}), "missing version", app.ExitBadPayload},
		{"unknown field", payload(&api.KVPair{Key: key, Value: []byte(`{"id":"x","version":"v2","verison":"v3"}`)}), "verison", app.ExitBadPayload},
		{"another node's key", payload(&api.KVPair{Key: deploy.NodeKey("web", e.c.Clients[0].Name, deploy.KeyDesired),
			Value: []byte(`{"id":"x","version":"v2"}`)}), "is for node", app.ExitBadPayload},
		{"a service without a deploy block", payload(&api.KVPair{Key: deploy.NodeKey("db", a.Name, deploy.KeyDesired),
			Value: []byte(`{"id":"x","version":"v2"}`)}), "no deploy block", app.ExitBadPayload},
		{"a key outside the layout", payload(&api.KVPair{Key: "deploy/web/nodes/../../x/desired", Value: []byte(`{"id":"x","version":"v2"}`)}),
			"is not deploy/<service>/nodes/<node>/desired", app.ExitBadPayload},
	}
	for _, b := range bad {
		out, code := e.handler(a, b.stdin)
		assert.Equal(t, b.code, code, "%s: %s", b.name, out)
		assert.Contains(t, out, b.want, b.name)
		assert.Equal(t, before, snapshot(), "%s changed something", b.name)
	}

	// A bad value written to the key itself: the watch's handler refuses it, and
	// `deploy status` says why.
	logStart := 0
	if b, err := os.ReadFile(filepath.Join(binDir, "handlers.log")); err == nil {
		logStart = len(b) // lines before this point are not this refusal's
	}
	_, err := e.client.KV().Put(&api.KVPair{Key: key, Value: []byte(`{"version":"v2"}`)}, nil)
	require.NoError(t, err)
	testcluster.WaitFor(t, 30*time.Second, "the handler to refuse the value", func() (bool, string) {
		b, _ := os.ReadFile(filepath.Join(binDir, "handlers.log"))
		return len(b) > logStart && strings.Contains(string(b[logStart:]), key+": bad desired value: missing id"), "not in handlers.log"
	})
	assert.Equal(t, before, snapshot())
	out, code = e.rehydrate("status", "--service", "web")
	require.Equal(t, app.ExitOK, code, out)
	assert.Contains(t, out, a.Name+": desired value refused: missing id")

	// Whoever can write the catalog registers a node that runs web, with no agent
	// behind it; the operator limits the rollout to two nodes with --node-filter. Only
	// those two are deployed to: the fake is refused and never gets a desired value.
	_, err = e.client.Catalog().Register(&api.CatalogRegistration{
		Node: "fake-web", Address: "127.0.0.1",
		Service: &api.AgentService{ID: "web", Service: "web", Port: appPort},
	}, nil)
	require.NoError(t, err)
	left := e.c.Clients[2]
	filter := fmt.Sprintf("Node != %q", left.Name)
	out, code = e.rehydrate("start", "--service", "web", "--version", "v2", "--node-filter", filter)
	require.Equal(t, app.ExitOK, code, out)
	assert.Contains(t, out, "refusing node fake-web: in the catalog but not a member of the gossip pool")
	assert.Contains(t, out, "to 2 of 2 nodes")
	assert.Nil(t, e.kv(deploy.NodeKey("web", "fake-web", deploy.KeyDesired)), "the fake node got a desired value")
	for _, n := range e.c.Clients[:2] {
		assert.Equal(t, "v2", e.current(n.Name), n.Name)
		assert.Equal(t, "v2", e.served(n), n.Name)
	}
	assert.Equal(t, "v1", e.current(left.Name), "the node the filter leaves out is not deployed to")
	assert.Equal(t, "v1", e.served(left))
	leftDesired, err := deploy.ParseDesired(e.kv(deploy.NodeKey("web", left.Name, deploy.KeyDesired)).Value)
	require.NoError(t, err)
	assert.Equal(t, "v1", leftDesired.Version, "the left-out node's desired value is the bootstrap's")
	var rec deploy.Record
	require.NoError(t, json.Unmarshal(e.kv(deploy.ServiceKey("web", "rollout")).Value, &rec))
	assert.Equal(t, filter, rec.NodeFilter)
	require.Len(t, rec.Refused, 1)
	assert.Equal(t, "fake-web", rec.Refused[0].Node)
	out, code = e.rehydrate("status", "--service", "web")
	require.Equal(t, app.ExitOK, code, out)
	assert.Contains(t, out, "refused node fake-web: in the catalog but not a member of the gossip pool")
}
