// Package rollcheck runs the roll's alarm end to end: a secure local cluster (the
// local provider: real Consul servers, TLS, ACLs default deny), whose servers load
// the shipped consul.d/check-roll.hcl, so that each agent runs the real `rehydrate
// check` as a script check with the environment its watches get, and registers it
// in the catalog. The test only changes the world (kills a server, fires a roll,
// restarts the server) and reads what operators would: the checks in the health
// API.
package rollcheck

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	consuld "github.com/consul-rehydrate/consul-rehydrate/consul.d"
	"github.com/consul-rehydrate/consul-rehydrate/internal/agentsec"
	"github.com/consul-rehydrate/consul-rehydrate/internal/app"
	"github.com/consul-rehydrate/consul-rehydrate/internal/cloud/local"
	"github.com/consul-rehydrate/consul-rehydrate/internal/command"
	"github.com/consul-rehydrate/consul-rehydrate/internal/coord"
	"github.com/consul-rehydrate/consul-rehydrate/internal/rollcheck"
	"github.com/consul-rehydrate/consul-rehydrate/test/testcluster"
)

var binDir string

func TestMain(m *testing.M) {
	dir, err := testcluster.BuildHandlers("../..")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// What the shipped file names, and the thresholds of this test's roll.
const (
	service       = "consul-rehydrate"
	checkID       = "rehydrate-roll"
	cluster       = "rollcheck"
	stuckWarning  = 15 * time.Second
	launchTimeout = 60 * time.Second
)

// checkRollHCL returns the shipped check-roll.hcl as this test's servers load it:
// the handlers and their configuration where the test has them, the check run every
// 2s instead of 30s, and the token the agent registers it with.
func checkRollHCL(t *testing.T, cfgPath, registrationToken string) string {
	t.Helper()
	b, err := os.ReadFile("../../consul.d/check-roll.hcl")
	require.NoError(t, err)
	src := string(b)
	for _, s := range []string{consuld.BinDir + "/rehydrate", consuld.ConfigPath, `interval = "30s"`} {
		require.Contains(t, src, s, "the shipped file changed: the test must follow it")
	}
	src = strings.NewReplacer(consuld.BinDir, binDir, consuld.ConfigPath, cfgPath, `interval = "30s"`, `interval = "2s"`).Replace(src)
	// The image's own settings may set any agent setting (image.hcl, loaded last);
	// Consul merges the acl block with secure.hcl's.
	return src + fmt.Sprintf("\nacl {\n  tokens {\n    config_file_service_registration = %q\n  }\n}\n", registrationToken)
}

type env struct {
	t       *testing.T
	cfgPath string
	state   string
	p       *local.Provider
	client  *api.Client // the client agent's, with the management token
	start   time.Time
	seen    []string // every change in what the checks say, timestamped
	last    string
	agents  map[string]*api.Client // each server's own agent, by address
}

func newEnv(t *testing.T) *env {
	_, err := testcluster.ConsulBinary()
	require.NoError(t, err)
	dir := t.TempDir()
	block := testcluster.AllocateBlock(t)
	e := &env{t: t, cfgPath: filepath.Join(dir, "rehydrate.hcl"), state: filepath.Join(dir, "state"), start: time.Now()}
	cfg := fmt.Sprintf(`cluster = %q
servers = 3

roll {
  stabilization  = "3s"
  launch_timeout = %q
  stuck_warning  = %q
  poll_interval  = "500ms"
}

provider "local" {
  state_dir     = %q
  consul_binary = "consul"
  addresses     = %q
}
`, cluster, launchTimeout, stuckWarning, e.state, block.Prefix().String())
	require.NoError(t, os.WriteFile(e.cfgPath, []byte(cfg), 0o644))
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("what the checks said:\n%s", strings.Join(e.seen, "\n"))
			if b, err := os.ReadFile(filepath.Join(e.state, "handlers.log")); err == nil {
				t.Logf("handlers.log (tail):\n%s", testcluster.Tail(string(b), 60))
			}
			if paths, err := filepath.Glob(filepath.Join(e.state, "instances", "*", "agent.log")); err == nil {
				for _, p := range paths {
					b, _ := os.ReadFile(p)
					var lines []string
					for _, l := range strings.Split(string(b), "\n") {
						if strings.Contains(l, "check") || strings.Contains(l, "ACL") || strings.Contains(l, "[ERROR]") {
							lines = append(lines, l)
						}
					}
					t.Logf("%s, check lines (tail):\n%s", p, testcluster.Tail(strings.Join(lines, "\n"), 15))
				}
			}
		}
		e.run("local", "down")
	})

	// Both images carry the check, as a real image would carry consul.d/.
	registration := agentsec.NewSecretID()
	extra := filepath.Join(dir, "image.hcl")
	require.NoError(t, os.WriteFile(extra, []byte(checkRollHCL(t, e.cfgPath, registration)), 0o600))
	for _, img := range []string{"A", "B"} {
		out, code := e.run("local", "image", "register", img, "--extra-hcl", extra)
		require.Equal(t, app.ExitOK, code, out)
	}
	out, code := e.run("local", "up", "--servers", "3", "--image", "A")
	require.Equal(t, app.ExitOK, code, out)

	e.p, err = local.New(local.Config{StateDir: e.state, Addresses: block.Prefix()})
	require.NoError(t, err)
	ac, err := e.p.APIConfig()
	require.NoError(t, err)
	e.client, err = api.NewClient(ac)
	require.NoError(t, err)

	// The registration token: only service:write on consul-rehydrate (a service
	// identity), as check-roll.hcl says the agent needs. It can exist only once the
	// cluster does: the first servers' registrations at boot were refused, and the
	// agent retries at its next full sync, or with the check's first status change
	// (a check's sync carries its service, Consul agent/local/state.go syncCheck).
	// The servers a roll launches find it at boot.
	_, _, err = e.client.ACL().TokenCreate(&api.ACLToken{
		SecretID: registration, Description: "config_file_service_registration of the servers",
		ServiceIdentities: []*api.ACLServiceIdentity{{ServiceName: service}},
	}, nil)
	require.NoError(t, err)
	e.agents = map[string]*api.Client{}
	return e
}

// run runs the operator CLI in-process, as e2e does: the test's environment with
// the handler binaries, and no Consul settings from outside.
func (e *env) run(args ...string) (string, int) {
	return e.runWith(nil, args...)
}

func (e *env) runWith(vars map[string]string, args ...string) (string, int) {
	var out bytes.Buffer
	code := command.Rehydrate(append([]string{"-config", e.cfgPath}, args...), app.Env{
		Stdin: strings.NewReader(""), Stdout: &out, Stderr: &out,
		Getenv: func(k string) string {
			if v, ok := vars[k]; ok {
				return v
			}
			switch k {
			case app.EnvBinDir:
				return binDir
			case api.HTTPAddrEnvName, api.HTTPTokenEnvName, api.HTTPTokenFileEnvName, api.HTTPCAFile, api.HTTPCAPath,
				api.HTTPClientCert, api.HTTPClientKey, api.HTTPTLSServerName, api.HTTPSSLEnvName:
				return ""
			}
			return os.Getenv(k)
		},
	})
	return out.String(), code
}

// checks is what each live server's agent says of its check, by node: the agent's
// own view (/v1/agent/checks), current to its last run. The catalog, where the UI
// and `consul watch -type=checks` read, gets a status change at once, but an output
// that changes under the same status only every check_update_interval (5m by
// default); catalogChecks reads it.
type checks map[string]*api.AgentCheck

func (e *env) checks() (checks, error) {
	insts, err := e.p.Instances(context.Background())
	if err != nil {
		return nil, err
	}
	out := checks{}
	for _, in := range insts {
		if in.State != "running" {
			continue
		}
		c, err := e.agent(in.Address)
		if err != nil {
			return nil, err
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		got, err := c.Agent().ChecksWithFilterOpts("", (&api.QueryOptions{}).WithContext(ctx))
		cancel()
		if err != nil {
			continue // a killed server's agent: not live
		}
		if chk := got[checkID]; chk != nil {
			out[in.ID] = chk
		}
	}
	return out, nil
}

// agent returns a management client of the server agent at ip.
func (e *env) agent(ip string) (*api.Client, error) {
	if c := e.agents[ip]; c != nil {
		return c, nil
	}
	ac, err := e.p.APIConfig()
	if err != nil {
		return nil, err
	}
	ac.Address = ip + ":8501"
	c, err := api.NewClient(ac)
	if err != nil {
		return nil, err
	}
	e.agents[ip] = c
	return c, nil
}

func (cs checks) String() string {
	var parts []string
	for n, c := range cs {
		parts = append(parts, n+"="+c.Status)
	}
	sort.Strings(parts)
	return strings.Join(parts, " ")
}

// catalogChecks is what the health API says of the check, by node, for the live
// servers (serfHealth passing: a server whose agent is down keeps its check's last
// status there).
func (e *env) catalogChecks() (map[string]*api.HealthCheck, error) {
	entries, _, err := e.client.Health().Service(service, "", false, nil)
	if err != nil {
		return nil, err
	}
	out := map[string]*api.HealthCheck{}
	for _, en := range entries {
		var serf, ours *api.HealthCheck
		for _, c := range en.Checks {
			switch c.CheckID {
			case "serfHealth":
				serf = c
			case checkID:
				ours = c
			}
		}
		if serf != nil && serf.Status == api.HealthPassing && ours != nil {
			out[en.Node.Node] = ours
		}
	}
	return out, nil
}

// waitAll waits until the checks of at least least live servers, and of every live
// one, say status with an output containing says; it records every change seen.
// With catalog, it then waits until the catalog says status for them too: what
// operators see.
func (e *env) waitAll(status string, says string, least int, timeout time.Duration, catalog bool) (checks, time.Time) {
	e.t.Helper()
	var got checks
	testcluster.WaitFor(e.t, timeout, fmt.Sprintf("every live server's check %s (%q)", status, says), func() (bool, string) {
		var err error
		got, err = e.checks()
		if err != nil {
			return false, err.Error()
		}
		e.record(got)
		ok := len(got) >= least
		var output string
		for _, c := range got {
			output = c.Output
			ok = ok && c.Status == status && strings.Contains(c.Output, says)
		}
		return ok, got.String() + "; one says: " + output
	})
	at := time.Now()
	if !catalog {
		return got, at
	}
	// The live servers change as a roll goes on: each round looks at those live then.
	testcluster.WaitFor(e.t, time.Minute, "the catalog to say "+status+" for every live server", func() (bool, string) {
		live, err := e.checks()
		if err != nil {
			return false, err.Error()
		}
		cat, err := e.catalogChecks()
		if err != nil {
			return false, err.Error()
		}
		var parts []string
		ok := len(live) > 0
		for node := range live {
			c := cat[node]
			if c == nil {
				parts, ok = append(parts, node+"=(not in the catalog yet)"), false
				continue
			}
			parts, ok = append(parts, node+"="+c.Status), ok && c.Status == status
		}
		sort.Strings(parts)
		return ok, strings.Join(parts, " ")
	})
	return got, at
}

// record notes what the checks say when it changes: a status, or what the output
// says apart from its times and durations.
func (e *env) record(cs checks) {
	var out string
	for _, c := range cs {
		if out == "" || c.Status != api.HealthPassing {
			out = c.Output // one of the worst: they read the same record
		}
	}
	gist, _, _ := strings.Cut(out, " for ")
	gist, _, _ = strings.Cut(gist, " at ")
	if s := cs.String() + " " + gist; s != e.last {
		e.last = s
		s := cs.String()
		e.seen = append(e.seen, fmt.Sprintf("+%5.1fs %s\n         %s", time.Since(e.start).Seconds(), s,
			strings.ReplaceAll(strings.TrimSpace(out), "\n", "\n         ")))
	}
}

// A roll held by an unhealthy cluster turns the check warning after
// roll.stuck_warning, then critical after roll.launch_timeout; recovery turns it
// passing, and it stays so once the roll is done.
func TestCheck_AStuckRollWarnsThenGoesCriticalAndRecovers(t *testing.T) {
	e := newEnv(t)
	hint := "details: rehydrate -config " + e.cfgPath + " status"

	before, _ := e.waitAll(api.HealthPassing, "no roll has run on this cluster", 3, 90*time.Second, false)
	for _, c := range before {
		assert.True(t, strings.HasSuffix(strings.TrimSpace(c.Output), hint), "the output ends with the status command: %q", c.Output)
	}

	// A token that may register the check but not read the roll record: the check
	// cannot judge, and says so, critical.
	insts, err := e.p.Instances(context.Background())
	require.NoError(t, err)
	tokenFile := filepath.Join(t.TempDir(), "token")
	tok, _, err := e.client.ACL().TokenCreate(&api.ACLToken{ServiceIdentities: []*api.ACLServiceIdentity{{ServiceName: service}}}, nil)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(tokenFile, []byte(tok.SecretID), 0o600))
	out, code := e.runWith(map[string]string{api.HTTPCAFile: e.p.CAFile(), api.HTTPTokenFileEnvName: tokenFile},
		"-http-addr", "https://"+insts[0].Address+":8501", "check")
	assert.Equal(t, app.ExitConsul, code, out)
	assert.Contains(t, out, "CRITICAL: cluster rollcheck: cannot judge the roll: read rehydrate/rollcheck/roll: ")
	assert.Contains(t, out, "Permission denied")
	assert.NotContains(t, out, tok.SecretID, "no secret in the output")

	// One server down: the cluster is unhealthy, and a roll fired now holds.
	var down string
	for _, s := range e.status().Servers {
		if !s.Leader {
			down = s.Instance
			break
		}
	}
	require.NotEmpty(t, down)
	require.NoError(t, e.p.Kill(context.Background(), down))
	// Autopilot must see that server down, not merely call the cluster unhealthy for
	// a moment (a cold, loaded machine can, with every server alive): a roll fired
	// while autopilot still counts the killed server healthy launches, and replaces
	// it first, and nothing holds (seen once in a cold run of scripts/fresh-check).
	testcluster.WaitFor(t, time.Minute, "autopilot to see the server down", func() (bool, string) {
		h, err := e.client.Operator().AutopilotServerHealth(nil)
		if err != nil {
			return false, err.Error()
		}
		i := slices.IndexFunc(h.Servers, func(s api.ServerHealth) bool { return s.Name == down })
		if i < 0 {
			return true, ""
		}
		return !h.Servers[i].Healthy && !h.Healthy, fmt.Sprintf("cluster healthy=%v, %s healthy=%v serf=%s", h.Healthy, down, h.Servers[i].Healthy, h.Servers[i].SerfStatus)
	})
	fired := time.Now()
	out, code = e.run("fire", "--image", "B")
	require.Equal(t, app.ExitOK, code, out)

	// Held: passing while it is young, then warning past stuck_warning.
	warned, warnedAt := e.waitAll(api.HealthWarning, "has made no progress for", 2, stuckWarning+time.Minute, true)
	assert.GreaterOrEqual(t, warnedAt.Sub(fired), stuckWarning, "no warning before roll.stuck_warning")
	for _, c := range warned {
		assert.Contains(t, c.Output, "WARNING: cluster rollcheck: the roll to B has made no progress for")
		assert.Contains(t, c.Output, "holding: cluster not healthy, will not launch", "the reason is the hold's")
		assert.True(t, strings.HasSuffix(strings.TrimSpace(c.Output), hint), "the output ends with the status command: %q", c.Output)
	}

	// Still held past launch_timeout: critical.
	crit, critAt := e.waitAll(api.HealthCritical, "(critical after roll.launch_timeout 1m0s)", 2, launchTimeout+time.Minute, true)
	assert.GreaterOrEqual(t, critAt.Sub(fired), launchTimeout, "not critical before roll.launch_timeout")
	for _, c := range crit {
		assert.Contains(t, c.Output, "CRITICAL: cluster rollcheck: the roll to B has made no progress for")
		assert.Contains(t, c.Output, "holding: cluster not healthy, will not launch")
		assert.True(t, strings.HasSuffix(strings.TrimSpace(c.Output), hint), "the output ends with the status command: %q", c.Output)
	}
	// Listed with the cluster's critical checks, where a monitor looks.
	critical, _, err := e.client.Health().State(api.HealthCritical, nil)
	require.NoError(t, err)
	assert.True(t, slices.ContainsFunc(critical, func(c *api.HealthCheck) bool { return c.CheckID == checkID && c.ServiceName == service }),
		"the critical check is listed with the cluster's critical checks")

	// The server comes back: the roll resumes, and the check passes again.
	require.NoError(t, e.p.Restart(context.Background(), down))
	e.waitAll(api.HealthPassing, "is progressing", 3, 2*time.Minute, true)
	e.waitRolled("B", 4*time.Minute)
	done, _ := e.waitAll(api.HealthPassing, "no roll in progress: the last one rolled the servers to B", 3, time.Minute, true)
	for _, c := range done {
		assert.True(t, strings.HasSuffix(strings.TrimSpace(c.Output), hint), "the output ends with the status command: %q", c.Output)
	}
	t.Logf("fired at +%.1fs; what the checks said:\n%s", fired.Sub(e.start).Seconds(), strings.Join(e.seen, "\n"))
}

func (e *env) status() command.Status {
	e.t.Helper()
	out, code := e.run("status", "--json")
	require.Equal(e.t, app.ExitOK, code, out)
	var st command.Status
	require.NoError(e.t, json.Unmarshal([]byte(out[strings.Index(out, "{"):]), &st), out)
	return st
}

// waitRolled waits until the roll record says done on image with every server on
// it, recording what the checks say meanwhile.
func (e *env) waitRolled(image string, timeout time.Duration) {
	e.t.Helper()
	testcluster.WaitFor(e.t, timeout, "the roll to "+image+" to be done", func() (bool, string) {
		if cs, err := e.checks(); err == nil {
			e.record(cs)
		}
		st := e.status()
		if st.Roll != nil && st.Roll.Phase == coord.PhaseFailed {
			e.t.Fatalf("roll failed: %s", st.Roll.Failure)
		}
		on := 0
		for _, s := range st.Servers {
			if s.Image == image && s.State == "running" && s.Voter {
				on++
			}
		}
		phase := ""
		if st.Roll != nil {
			phase = st.Roll.Phase
		}
		return phase == coord.PhaseDone && on == 3 && len(st.Servers) == 3, fmt.Sprintf("%d/3 on %s, roll %q, next: %s", on, image, phase, st.Next.Reason)
	})
}

// The shipped file is valid agent configuration beside the files every server
// runs (consul validate), and script checks come with it: the agent refuses a
// script check unless enable_local_script_checks (or the never-wanted
// enable_script_checks) is on.
func TestCheckRollHCL_ValidatesWithTheServersFiles(t *testing.T) {
	consul, err := testcluster.ConsulBinary()
	require.NoError(t, err)
	dir := t.TempDir()
	for _, f := range []string{"server.hcl", "watches.hcl", "acl.hcl", "check-roll.hcl"} {
		b, err := os.ReadFile(filepath.Join("../../consul.d", f))
		require.NoError(t, err)
		if f == "check-roll.hcl" {
			assert.Contains(t, string(b), "\nenable_local_script_checks = true\n")
			assert.NotContains(t, string(b), "\nenable_script_checks")
		}
		require.NoError(t, os.WriteFile(filepath.Join(dir, f), b, 0o644))
	}
	node := `node_name = "i-0123456789abcdef0"
data_dir = "` + filepath.Join(dir, "data") + `"
bind_addr = "127.0.0.1"
bootstrap_expect = 3
node_meta { image_id = "ami-0123456789abcdef0", instance_id = "i-0123456789abcdef0" }
`
	require.NoError(t, os.WriteFile(filepath.Join(dir, "node.hcl"), []byte(node), 0o644))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, consul, "validate", dir).CombinedOutput()
	require.NoError(t, err, "%s", out)
	assert.Contains(t, string(out), "Configuration is valid!")
	// The exit codes the file promises are the check's.
	assert.Equal(t, []int{0, 1, 2}, []int{rollcheck.Passing.ExitCode(), rollcheck.Warning.ExitCode(), rollcheck.Critical.ExitCode()})
}
