// Package e2e runs whole rolls on the local provider: real Consul servers as detached
// processes, and the real spinup and spindown binaries run by those servers' watches.
// The tests only set up, fire and observe; they never call a handler themselves.
package e2e

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/consul-rehydrate/consul-rehydrate/internal/app"
	"github.com/consul-rehydrate/consul-rehydrate/internal/cloud"
	"github.com/consul-rehydrate/consul-rehydrate/internal/cloud/local"
	"github.com/consul-rehydrate/consul-rehydrate/internal/command"
	"github.com/consul-rehydrate/consul-rehydrate/internal/coord"
	"github.com/consul-rehydrate/consul-rehydrate/internal/workload"
	"github.com/consul-rehydrate/consul-rehydrate/test/testcluster"
)

// binDir holds the handler binaries built once for the package.
var binDir string

func TestMain(m *testing.M) {
	dir, err := testcluster.BuildHandlers("../..")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	// The aws provider's handlers (children of the test's Consul agents) find fake
	// static credentials here, and never a real profile or instance metadata.
	for k, v := range map[string]string{
		"AWS_ACCESS_KEY_ID": "AKIDFAKEFAKEFAKEFAKE", "AWS_SECRET_ACCESS_KEY": "fake-secret",
		"AWS_CONFIG_FILE": os.DevNull, "AWS_SHARED_CREDENTIALS_FILE": os.DevNull,
		"AWS_EC2_METADATA_DISABLED": "true", "AWS_PROFILE": "",
	} {
		os.Setenv(k, v)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// env is a local cluster under test.
type env struct {
	t       *testing.T
	cfgPath string
	state   string
	servers int
	// httpAddr, if set, is the Consul agent the CLI talks to (the local provider's
	// client agent is found by itself).
	httpAddr string
	// operatorEnv is added to the CLI's environment with httpAddr: its CA and token.
	operatorEnv []string
	p           *local.Provider
	client      *api.Client
}

func newEnv(t *testing.T, servers int, extraHCL string) *env {
	return newEnvWith(t, envOptions{servers: servers, extraHCL: extraHCL})
}

// envOptions shape a local cluster under test.
type envOptions struct {
	servers  int
	extraHCL string // appended to the handler configuration
	// agentEnv, if set, is added to the environment of every agent, hence of every
	// handler and of every server the handlers launch (e.g. crash points).
	agentEnv []string
	// imagesBefore are registered before the cluster's image A, so they are older.
	imagesBefore []string
	// launchTimeout is roll.launch_timeout, default 3m.
	launchTimeout string
	// consulA, if set, is the consul binary of image A (default the provider's, the
	// pinned one): a roll to B is then a Consul upgrade.
	consulA string
}

func newEnvWith(t *testing.T, o envOptions) *env {
	t.Helper()
	if _, err := testcluster.ConsulBinary(); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	block := testcluster.AllocateBlock(t)
	e := &env{t: t, cfgPath: filepath.Join(dir, "rehydrate.hcl"), state: filepath.Join(dir, "state"), servers: o.servers}
	cfg := fmt.Sprintf(`cluster = "e2e"
servers = %d

roll {
  stabilization  = "10s"
  launch_timeout = %q
  poll_interval  = "500ms"
}
%s
provider "local" {
  state_dir     = %q
  consul_binary = "consul"
  addresses     = %q
}
`, o.servers, cmp.Or(o.launchTimeout, "3m"), o.extraHCL, e.state, block.Prefix().String())
	require.NoError(t, os.WriteFile(e.cfgPath, []byte(cfg), 0o644))
	t.Cleanup(func() {
		if t.Failed() {
			if b, err := os.ReadFile(filepath.Join(e.state, "handlers.log")); err == nil {
				t.Logf("handlers.log (tail):\n%s", testcluster.Tail(string(b), 80))
			}
			// What the agents said of their watches and handlers.
			if paths, err := filepath.Glob(filepath.Join(e.state, "instances", "*", "agent.log")); err == nil {
				for _, p := range paths {
					b, _ := os.ReadFile(p)
					var lines []string
					for _, l := range strings.Split(string(b), "\n") {
						if strings.Contains(l, "watch") || strings.Contains(l, "handler") || strings.Contains(l, "user event") {
							lines = append(lines, l)
						}
					}
					t.Logf("%s, watch lines (tail):\n%s", p, testcluster.Tail(strings.Join(lines, "\n"), 20))
				}
			}
			// The client agent carries the workload's writes: what went wrong there.
			if b, err := os.ReadFile(filepath.Join(e.state, "client", "agent.log")); err == nil {
				var lines []string
				for _, l := range strings.Split(string(b), "\n") {
					if strings.Contains(l, "[WARN]") || strings.Contains(l, "[ERROR]") {
						lines = append(lines, l)
					}
				}
				t.Logf("client agent.log, warnings and errors (tail):\n%s", testcluster.Tail(strings.Join(lines, "\n"), 40))
			}
		}
		e.run("local", "down")
	})

	for _, img := range o.imagesBefore {
		out, code := e.run("local", "image", "register", img)
		require.Equal(t, app.ExitOK, code, out)
	}
	if o.consulA != "" {
		out, code := e.run("local", "image", "register", "--consul-binary", o.consulA, "A")
		require.Equal(t, app.ExitOK, code, out)
	}
	up := []string{"local", "up", "--servers", fmt.Sprint(o.servers), "--image", "A"}
	if len(o.agentEnv) == 0 {
		out, code := e.run(up...)
		require.Equal(t, app.ExitOK, code, out)
	} else {
		// The agents inherit the environment of the process that starts them.
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, filepath.Join(binDir, "rehydrate"), append([]string{"-config", e.cfgPath}, up...)...)
		for _, kv := range os.Environ() {
			if !strings.HasPrefix(kv, "CONSUL_") {
				cmd.Env = append(cmd.Env, kv)
			}
		}
		cmd.Env = append(append(cmd.Env, app.EnvBinDir+"="+binDir), o.agentEnv...)
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, "%s", out)
	}
	var err error
	e.p, err = local.New(local.Config{StateDir: e.state, Addresses: block.Prefix()})
	require.NoError(t, err)
	// The operator's client: the client agent over HTTPS, with the management token.
	cfgAPI, err := e.p.APIConfig()
	require.NoError(t, err)
	e.client, err = api.NewClient(cfgAPI)
	require.NoError(t, err)
	return e
}

// asServer returns how a handler on a live server reaches Consul, as that server's
// watches run it: the server's own agent over HTTPS (-http-addr) and the environment
// with the cluster's CA and the server's handler token, which holds only the
// rehydrate-handlers policy rendered for that node. It picks the newest running
// server: during a roll, one on the target image, which the roll never retires (a
// handler on a server that leaves loses its session with it).
func (e *env) asServer() (httpAddr string, env []string) {
	e.t.Helper()
	insts, err := e.p.Instances(context.Background())
	require.NoError(e.t, err)
	for _, in := range slices.Backward(insts) {
		if in.State == cloud.StateRunning {
			return "https://" + in.Address + ":8501", []string{
				"CONSUL_CACERT=" + e.p.CAFile(),
				"CONSUL_HTTP_TOKEN_FILE=" + e.p.HandlerTokenFile(in.ID),
			}
		}
	}
	e.t.Fatalf("no running server: %v", insts)
	return "", nil
}

// run runs the operator CLI in-process and returns its output and exit code.
func (e *env) run(args ...string) (string, int) {
	var out bytes.Buffer
	pre := []string{"-config", e.cfgPath}
	if e.httpAddr != "" {
		pre = append(pre, "-http-addr", e.httpAddr)
	}
	code := command.Rehydrate(append(pre, args...), app.Env{
		Stdin: strings.NewReader(""), Stdout: &out, Stderr: &out, Getenv: e.getenvWith(e.operatorEnv),
	})
	return out.String(), code
}

// getenv is the environment the in-process commands see: the test's own, with the
// handler binaries and without a Consul address or token from outside.
func (e *env) getenv(k string) string {
	switch k {
	case app.EnvBinDir:
		return binDir
	case api.HTTPAddrEnvName, api.HTTPTokenEnvName, api.HTTPTokenFileEnvName, api.HTTPCAFile, api.HTTPCAPath,
		api.HTTPClientCert, api.HTTPClientKey, api.HTTPTLSServerName, api.HTTPSSLEnvName:
		return ""
	}
	return os.Getenv(k)
}

// getenvWith is getenv with the KEY=value pairs of kvs on top.
func (e *env) getenvWith(kvs []string) func(string) string {
	return func(k string) string {
		for _, kv := range kvs {
			if name, v, _ := strings.Cut(kv, "="); name == k {
				return v
			}
		}
		return e.getenv(k)
	}
}

func (e *env) status() command.Status {
	e.t.Helper()
	out, code := e.run("status", "--json")
	require.Equal(e.t, app.ExitOK, code, out)
	var st command.Status
	require.NoError(e.t, json.Unmarshal([]byte(out[strings.Index(out, "{"):]), &st), out)
	return st
}

// sampler records, every 100ms, the most live instances and raft servers seen.
type sampler struct {
	mu               sync.Mutex
	maxLive, maxRaft int
	stop             chan struct{}
	done             chan struct{}
}

func (e *env) sample() *sampler {
	s := &sampler{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		for {
			select {
			case <-s.stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			insts, err := e.p.Instances(context.Background())
			live := 0
			for _, i := range insts {
				if i.Live() {
					live++
				}
			}
			raft, rerr := e.client.Operator().RaftGetConfiguration(nil)
			s.mu.Lock()
			if err == nil {
				s.maxLive = max(s.maxLive, live)
			}
			if rerr == nil {
				s.maxRaft = max(s.maxRaft, len(raft.Servers))
			}
			s.mu.Unlock()
		}
	}()
	return s
}

func (s *sampler) Stop() (maxLive, maxRaft int) {
	close(s.stop)
	<-s.done
	return s.maxLive, s.maxRaft
}

// waitRolled waits until the roll record says done on image and every server runs it.
func (e *env) waitRolled(image string, timeout time.Duration) command.Status {
	e.t.Helper()
	var st command.Status
	testcluster.WaitFor(e.t, timeout, "every server on "+image, func() (bool, string) {
		st = e.status()
		on := 0
		for _, s := range st.Servers {
			if s.Image == image && s.State == "running" && s.Voter && s.Healthy {
				on++
			}
		}
		if st.Roll != nil && st.Roll.Phase == coord.PhaseFailed {
			e.t.Fatalf("roll failed: %s", st.Roll.Failure)
		}
		phase := ""
		if st.Roll != nil {
			phase = st.Roll.Phase
		}
		return on == e.servers && len(st.Servers) == e.servers && phase == coord.PhaseDone,
			fmt.Sprintf("%d/%d on %s, %d instances, roll %q, next: %s", on, e.servers, image, len(st.Servers), phase, st.Next.Reason)
	})
	return st
}

func TestRoll_ReplacesEveryServerLeaderLastWithoutLosingWrites(t *testing.T) {
	for _, n := range []int{3, 5} {
		t.Run(fmt.Sprintf("%d servers", n), func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, n, "")
			before := e.status()
			require.Len(t, before.Servers, n)
			var leaderInstance string
			for _, s := range before.Servers {
				if s.Leader {
					leaderInstance = s.Instance
				}
			}
			require.NotEmpty(t, leaderInstance)

			// Data written before the roll must survive it.
			for i := 0; i < 50; i++ {
				_, err := e.client.KV().Put(&api.KVPair{Key: fmt.Sprintf("seed/%d", i), Value: []byte("x")}, nil)
				require.NoError(t, err)
			}
			writer := workload.StartWriter(e.client, "writes/", 20, 3, 5*time.Second)
			samples := e.sample()

			out, code := e.run("local", "image", "register", "B")
			require.Equal(t, app.ExitOK, code, out)
			out, code = e.run("fire", "--image", "B")
			require.Equal(t, app.ExitOK, code, out)

			st := e.waitRolled("B", time.Duration(n)*90*time.Second)
			maxLive, maxRaft := samples.Stop()
			res, err := writer.Stop(context.Background())
			require.NoError(t, err)

			assert.Zero(t, res.Failed, "failed writes")
			assert.Zero(t, res.Lost, "lost writes")
			assert.Greater(t, res.OK, 100)
			assert.LessOrEqual(t, maxLive, n+1, "never more than N+1 instances")
			assert.LessOrEqual(t, maxRaft, n+1, "never more than N+1 raft servers")
			raft, err := e.client.Operator().RaftGetConfiguration(nil)
			require.NoError(t, err)
			assert.Len(t, raft.Servers, n, "raft back to N")
			seed, _, err := e.client.KV().List("seed/", &api.QueryOptions{RequireConsistent: true})
			require.NoError(t, err)
			assert.Len(t, seed, 50, "data written before the roll is all there")

			// The history: N launches and N retires; the original leader retired last,
			// right after leadership moved away from it.
			var steps []string
			for _, h := range st.Roll.History {
				steps = append(steps, fmt.Sprintf("+%.1fs %s %s", h.Time.Sub(st.Roll.Started).Seconds(), h.Step, h.Instance))
			}
			var retires []string
			for _, h := range st.Roll.History {
				if h.Step == "retire" {
					retires = append(retires, h.Instance)
				}
			}
			require.Len(t, retires, n, "history: %v", steps)
			assert.Equal(t, leaderInstance, retires[n-1], "the leader is retired last; history: %v", steps)
			for i, h := range st.Roll.History {
				if h.Step == "retire" && h.Instance == leaderInstance {
					require.Greater(t, i, 0)
					assert.Equal(t, "transfer", st.Roll.History[i-1].Step, "a transfer precedes the leader's retirement; history: %v", steps)
				}
			}
			assert.Equal(t, "done", st.Roll.History[len(st.Roll.History)-1].Step)
			if os.Getenv("E2E_SHOW_HANDLERS") != "" {
				b, _ := os.ReadFile(filepath.Join(e.state, "handlers.log"))
				t.Logf("handlers.log:\n%s", b)
			}
			t.Logf("%d servers rolled: %d writes ok, max write %s, history %v", n, res.OK, res.Max, steps)
		})
	}
}

func TestRoll_FiringWhenUpToDateLaunchesNothing(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 3, "")
	before := e.status()

	out, code := e.run("plan")
	require.Equal(t, app.ExitOK, code, out)
	assert.Contains(t, out, "nothing: up to date: all 3 servers run A")

	out, code = e.run("fire")
	require.Equal(t, app.ExitOK, code, out)
	// The handlers took the event and decided; wait for their record of it.
	var eventID string
	_, err := fmt.Sscanf(out[strings.Index(out, "(event "):], "(event %36s", &eventID)
	require.NoError(t, err, out)
	var handled *api.KVPair
	testcluster.WaitFor(t, 30*time.Second, "the event to be handled", func() (bool, string) {
		handled, _, err = e.client.KV().Get("rehydrate/e2e/events/"+eventID, nil)
		return err == nil && handled != nil, fmt.Sprint(err)
	})
	assert.Contains(t, string(handled.Value), "nothing: up to date")
	after := e.status()
	// Which servers run which image, not how healthy autopilot found each at that
	// moment: on a loaded machine a server's last contact may pass the 200ms
	// threshold (server.hcl) for a sample.
	servers := func(st command.Status) []string {
		var out []string
		for _, s := range st.Servers {
			out = append(out, s.Instance+" "+s.Image+" "+s.State)
		}
		return out
	}
	assert.Equal(t, servers(before), servers(after), "no instance launched or retired")
	assert.Nil(t, after.Roll, "no roll recorded")
	insts, err := e.p.Instances(context.Background())
	require.NoError(t, err)
	assert.Len(t, insts, 3)

	out, code = e.run("status")
	require.Equal(t, app.ExitOK, code, out)
	assert.Contains(t, out, "roll: none yet")
	assert.Contains(t, out, "next: nothing: up to date")
}
