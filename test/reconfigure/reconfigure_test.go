// Package reconfigure runs the reconfigure handler end to end: 3 Consul servers and 3
// client agents. Two clients provide "monitoring" (the shipped
// consul.d/reconfigure-service.hcl, served by test/demoapp); the third depends on it
// and runs the real reconfigure handler in the service watch, and its check, from the
// shipped consul.d/reconfigure-watch.hcl. The test only changes the world and
// observes: the rendered file, the reload count, the health API, the agent's DNS
// answers and the check.
//
// The cluster is secure as the shipped image's (testcluster.Options.Secure: gossip
// encryption, TLS, HTTPS only, ACLs default deny). The consumer's watch, handler and
// check hold only watchPolicy's token and reach their agent over HTTPS through the
// consul CLI's variables (CONSUL_HTTP_ADDR=https://..., CONSUL_CACERT,
// CONSUL_HTTP_TOKEN_FILE); its DNS answers with a token of the same rules.
package reconfigure

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/consul-rehydrate/consul-rehydrate/config"
	consuld "github.com/consul-rehydrate/consul-rehydrate/consul.d"
	"github.com/consul-rehydrate/consul-rehydrate/internal/app"
	"github.com/consul-rehydrate/consul-rehydrate/internal/runcmd"
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
	// The agents run the handlers with the test's environment; the agent logs a
	// handler's output only at debug level, so the handlers log here too.
	os.Setenv(app.EnvLogFile, filepath.Join(dir, "handlers.log"))
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// watchPolicy is all the consumer's watch needs: it reads
// /v1/health/service/monitoring, which needs service:read on monitoring and leaves out
// every instance on a node the token cannot read (node:read; Consul filters the health
// endpoints' results by both). The instances may be on any node, external ones
// registered straight into the catalog included, hence node_prefix "". The handler and
// its check call no API (the watch hands the handler the instances). DNS lookups of
// monitoring.service.consul need the same two reads.
const watchPolicy = `service "monitoring" {
  policy = "read"
}
node_prefix "" {
  policy = "read"
}
`

const (
	checkID   = "reconfigure-monitoring"
	expect    = 6 * time.Second
	probation = 8 * time.Second
)

type env struct {
	t        *testing.T
	c        *testcluster.Cluster
	dir      string
	cfg      string // the consumer's handler configuration
	dest     string
	reloads  string
	envFile  string // the reload command's environment, as it last ran
	consumer *testcluster.Agent
	api      *api.Client          // the consumer's: one client, so that polls reuse its connections
	apps     map[string]*exec.Cmd // by "ip:port"
	logStart int64                // handlers.log's size when the test began
}

// inlineTemplate is the template of the first test: one line per instance.
const inlineTemplate = `# monitoring targets
{{- range .Instances }}
target {{ .Node }} {{ .Address }}:{{ .Port }}
{{- end }}
`

// newEnv starts the cluster, with the consumer rendering tmpl.
func newEnv(t *testing.T, tmpl string) *env {
	e := &env{t: t, dir: t.TempDir(), apps: map[string]*exec.Cmd{}}
	if fi, err := os.Stat(filepath.Join(binDir, "handlers.log")); err == nil {
		e.logStart = fi.Size() // an earlier run's lines (go test -count) are not this one's
	}
	e.dest = filepath.Join(e.dir, "etc", "monitoring.conf")
	e.reloads = filepath.Join(e.dir, "reloads")
	e.envFile = filepath.Join(e.dir, "reload.env")
	require.NoError(t, os.MkdirAll(filepath.Dir(e.dest), 0o755))
	cfg := filepath.Join(e.dir, "reconfigure.hcl")
	consumerOnly := func(rules string) func(a *testcluster.Agent) string {
		return func(a *testcluster.Agent) string {
			if a.Name == "client-3" {
				return rules
			}
			return ""
		}
	}
	e.c = testcluster.Start(t, testcluster.Options{
		Servers: 3, Clients: 3, Secure: true,
		// client-1 and -2 register monitoring from their files; client-3 its check.
		Services: func(a *testcluster.Agent) []string {
			if a.Name == "client-1" || a.Name == "client-2" {
				return []string{"monitoring"}
			}
			return nil
		},
		HandlerPolicy: consumerOnly(watchPolicy),
		DNSPolicy:     consumerOnly(watchPolicy),
		Files: func(a *testcluster.Agent) map[string]string {
			switch a.Name {
			case "client-1", "client-2":
				return map[string]string{"monitoring.hcl": strings.ReplaceAll(consuld.ReconfigureServiceHCL, "127.0.0.1", a.IP)}
			case "client-3":
				e.cfg = cfg
				e.writeConfig(tmpl)
				return map[string]string{"reconfigure.hcl": strings.NewReplacer(
					consuld.BinDir, binDir,
					consuld.ReconfigureConfigPath, cfg,
					`interval = "10s"`, `interval = "1s"`,
				).Replace(consuld.ReconfigureWatchHCL)}
			}
			return nil
		},
	})
	e.consumer = e.c.Clients[2]
	e.api = e.consumer.Client()
	t.Cleanup(func() {
		for addr := range e.apps {
			e.stopApp(addr)
		}
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(binDir, "handlers.log"))
			t.Logf("handlers.log (tail):\n%s", testcluster.Tail(string(b), 40))
			b, _ = os.ReadFile(e.dest)
			t.Logf("%s:\n%s", e.dest, b)
		}
	})
	return e
}

// writeConfig writes the consumer's handler configuration, rendering tmpl. The
// reload command records its environment and appends the count of instances.
func (e *env) writeConfig(tmpl string) {
	e.t.Helper()
	testcluster.WriteFile(e.t, e.cfg, fmt.Sprintf(`log_level = "debug"
reconfigure "monitoring" {
  template           = %q
  destination        = %q
  reload_command     = ["/bin/sh", "-c", "env > %s; echo \"$REHYDRATE_RECONFIGURE_INSTANCES\" >> %s"]
  expect_replacement = %q
  probation          = %q
  state_file         = %q
}
`, tmpl, e.dest, e.envFile, e.reloads, expect, probation, filepath.Join(e.dir, "state.json")))
}

// startApp serves "monitoring" on addr until stopApp or the test's end.
func (e *env) startApp(addr string) {
	e.t.Helper()
	cmd := exec.Command(filepath.Join(binDir, "demoapp"), "serve", "-addr", addr, "-version", "m1",
		"-pidfile", filepath.Join(e.dir, strings.ReplaceAll(addr, ":", "_")+".pid"), "-watch-pid", fmt.Sprint(os.Getpid()))
	require.NoError(e.t, cmd.Start())
	e.apps[addr] = cmd
}

func (e *env) stopApp(addr string) {
	if cmd := e.apps[addr]; cmd != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		delete(e.apps, addr)
	}
}

// targets are the "target" lines of the rendered file.
func (e *env) targets() []string {
	b, err := os.ReadFile(e.dest)
	if err != nil {
		return nil
	}
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "target ") {
			out = append(out, strings.TrimPrefix(l, "target "))
		}
	}
	return out
}

func (e *env) waitTargets(what string, want ...string) {
	e.t.Helper()
	testcluster.WaitFor(e.t, 30*time.Second, what, func() (bool, string) {
		got := e.targets()
		return slices.Equal(got, want), fmt.Sprintf("targets %q", got)
	})
}

func (e *env) reloadCount() int {
	b, err := os.ReadFile(e.reloads)
	if err != nil {
		return 0
	}
	return strings.Count(string(b), "\n")
}

// waitReloads waits until the reload command has run n times in all (the file is
// renamed into place a moment before its reload runs), then checks it ran no more.
func (e *env) waitReloads(n int) {
	e.t.Helper()
	testcluster.WaitFor(e.t, 10*time.Second, fmt.Sprintf("%d reloads", n), func() (bool, string) {
		got := e.reloadCount()
		return got >= n, fmt.Sprintf("%d reloads", got)
	})
	// A second reload for the same change would come right after the first.
	time.Sleep(300 * time.Millisecond)
	assert.Equal(e.t, n, e.reloadCount(), "one change, one reload")
}

// check returns the consumer's reconfigure check.
func (e *env) check() *api.AgentCheck {
	e.t.Helper()
	checks, err := e.api.Agent().Checks()
	require.NoError(e.t, err)
	return checks[checkID]
}

func (e *env) waitCheck(status, note string, timeout time.Duration) *api.AgentCheck {
	e.t.Helper()
	var last *api.AgentCheck
	testcluster.WaitFor(e.t, timeout, "check "+status, func() (bool, string) {
		last = e.check()
		if last == nil {
			return false, "no check"
		}
		return last.Status == status && strings.Contains(last.Output, note), last.Status + ": " + last.Output
	})
	return last
}

// passing returns the addresses the health API gives as passing instances.
func (e *env) passing() []string {
	e.t.Helper()
	entries, _, err := e.api.Health().Service("monitoring", "", true, nil)
	require.NoError(e.t, err)
	var out []string
	for _, en := range entries {
		out = append(out, fmt.Sprintf("%s:%d", en.Node.Address, en.Service.Port))
	}
	slices.Sort(out)
	return out
}

// dns asks the consumer's agent, on its DNS port, for monitoring's A and SRV records.
func (e *env) dns() (hosts, srv []string) {
	e.t.Helper()
	r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "udp", e.consumer.DNSAddr())
	}}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	hosts, _ = r.LookupHost(ctx, "monitoring.service.consul.")
	slices.Sort(hosts)
	_, recs, _ := r.LookupSRV(ctx, "", "", "monitoring.service.consul.")
	for _, s := range recs {
		srv = append(srv, fmt.Sprintf("%s:%d", strings.SplitN(s.Target, ".", 2)[0], s.Port))
	}
	slices.Sort(srv)
	return hosts, srv
}

// handlerLines counts this test's handler log lines containing sub.
func (e *env) handlerLines(sub string) int {
	b, _ := os.ReadFile(filepath.Join(binDir, "handlers.log"))
	if int64(len(b)) < e.logStart {
		return 0
	}
	return strings.Count(string(b[e.logStart:]), sub)
}

func TestReconfigure_FollowsTheHealthyInstancesAndExpectsAReplacement(t *testing.T) {
	e := newEnv(t, inlineTemplate)
	c1, c2 := e.c.Clients[0], e.c.Clients[1]
	a1, a2 := c1.IP+":9090", c2.IP+":9090"
	e.startApp(a1)
	e.startApp(a2)

	// Both healthy: the file lists both, and so do the health API and DNS.
	both := []string{"client-1 " + a1, "client-2 " + a2}
	e.waitTargets("both instances rendered", both...)
	assert.Equal(t, []string{a1, a2}, e.passing())
	hosts, srv := e.dns()
	assert.Equal(t, []string{c1.IP, c2.IP}, hosts)
	assert.Equal(t, []string{"client-1:9090", "client-2:9090"}, srv)
	e.waitCheck(api.HealthPassing, "2 healthy instance(s) of monitoring", 20*time.Second)
	testcluster.WaitFor(t, 10*time.Second, "a reload", func() (bool, string) { return e.reloadCount() > 0, "none" })
	time.Sleep(300 * time.Millisecond)
	reloads := e.reloadCount()

	// One fails its check: it leaves the file, the health API and DNS.
	e.stopApp(a1)
	e.waitTargets("the failed instance removed", "client-2 "+a2)
	assert.Equal(t, []string{a2}, e.passing())
	testcluster.WaitFor(t, 10*time.Second, "DNS without the failed instance", func() (bool, string) {
		hosts, srv := e.dns()
		return slices.Equal(hosts, []string{c2.IP}) && slices.Equal(srv, []string{"client-2:9090"}), fmt.Sprintf("%q %q", hosts, srv)
	})
	e.waitReloads(reloads + 1)
	reloads++

	// The handler run again on what it has already rendered (an agent reload hands
	// every watch the current state) reloads nothing.
	unchanged := e.handlerLines("unchanged")
	reload := exec.Command(e.c.Binary, "reload", "-http-addr", e.consumer.APIAddr())
	reload.Env = append(os.Environ(), e.consumer.Env(e.c.ManagementTokenFile())...)
	out, err := reload.CombinedOutput()
	require.NoError(t, err, "%s", out)
	testcluster.WaitFor(t, 20*time.Second, "the handler to run on the same instances", func() (bool, string) {
		return e.handlerLines("unchanged") > unchanged, "no new \"unchanged\" line in handlers.log"
	})
	assert.Equal(t, reloads, e.reloadCount(), "the same content: no reload")

	// The last one goes: an empty configuration, and a replacement is expected.
	e.stopApp(a2)
	e.waitTargets("no instance rendered")
	assert.Empty(t, e.passing())
	gone := time.Now()
	hosts, srv = e.dns()
	assert.Empty(t, hosts)
	assert.Empty(t, srv)
	e.waitReloads(reloads + 1)
	reloads++
	e.waitCheck(api.HealthWarning, "a replacement is expected by", 10*time.Second)
	chk := e.waitCheck(api.HealthCritical, "none came", expect+15*time.Second)
	t.Logf("critical %s after the last instance went: %s", time.Since(gone).Round(100*time.Millisecond), chk.Output)
	assert.GreaterOrEqual(t, time.Since(gone), expect-2*time.Second, "not before the deadline")
	assert.Contains(t, chk.Output, "no healthy instance of monitoring since")

	// A new instance restores the file and clears the check.
	a3 := c1.IP + ":9091"
	e.startApp(a3)
	require.NoError(t, c1.Client().Agent().ServiceRegister(&api.AgentServiceRegistration{
		ID: "monitoring-new", Name: "monitoring", Port: 9091,
		Check: &api.AgentServiceCheck{HTTP: "http://" + a3 + "/health", Interval: "1s", Timeout: "1s"},
	}))
	e.waitTargets("the new instance rendered", "client-1 "+a3)
	e.waitCheck(api.HealthPassing, "1 healthy instance(s) of monitoring", 10*time.Second)
	e.waitReloads(reloads + 1)
	reloads++

	// The old one comes back, and flaps during its probation: the check warns, while
	// the file follows every change.
	e.startApp(a2)
	e.waitTargets("the returning instance rendered", "client-1 "+a3, "client-2 "+a2)
	e.stopApp(a2)
	e.waitTargets("the flapping instance removed", "client-1 "+a3)
	chk = e.waitCheck(api.HealthWarning, "flapped during probation", 10*time.Second)
	assert.Contains(t, chk.Output, "client-2/monitoring left")
	e.waitReloads(reloads + 2)
	reloads += 2

	// Every reload followed a change of the file; every change was reloaded.
	assert.Equal(t, e.handlerLines("rendered:"), reloads, "reloads = renders")
	assert.Positive(t, e.handlerLines("unchanged"))
}

// evil is the line an injection would add to the file.
const evil = "target evil 203.0.113.66:9090"

// The shipped example's template, rendering what any catalog writer may register:
// an instance with a control character in any field, or an address that is no IP
// or hostname, is left out of the file and named in the check's output, and every
// other instance is rendered, quoted. A render that fails turns the check critical
// until one succeeds. The reload command sees none of the handler's environment but
// the allow-list and its own variables.
func TestReconfigure_RefusesHostileInstancesAndRendersTheRest(t *testing.T) {
	example, err := config.LoadFor("../../config/example-reconfigure.hcl", config.JobReconfigure, config.NoEnv)
	require.NoError(t, err)
	require.Len(t, example.Reconfigures, 1)
	e := newEnv(t, example.Reconfigures[0].Template)
	c1 := e.c.Clients[0]
	a1 := c1.IP + ":9090"
	e.startApp(a1)
	good := fmt.Sprintf(`"client-1" %s tags="prometheus"`, a1)
	e.waitTargets("the real instance rendered", good)
	e.waitCheck(api.HealthPassing, "1 healthy instance(s) of monitoring", 20*time.Second)

	// External nodes (no checks: healthy), registered straight into the catalog, as
	// anyone with node and service write may.
	catalog := e.c.Client(t).Catalog()
	register := func(node, addr string, nodeMeta map[string]string, svc *api.AgentService) {
		t.Helper()
		svc.Service, svc.Port = "monitoring", 9100
		if svc.ID == "" {
			svc.ID = "monitoring"
		}
		_, err := catalog.Register(&api.CatalogRegistration{Node: node, Address: addr, NodeMeta: nodeMeta, Service: svc}, nil)
		require.NoError(t, err, "register %q", node)
	}
	hostile := []struct {
		node, addr string
		nodeMeta   map[string]string
		svc        *api.AgentService
		field      string // as the log names it
	}{
		{"evil-tag", "127.0.0.1", nil, &api.AgentService{Tags: []string{"x\n" + evil + "\n# "}}, "Tags[0]"},
		{"evil\n" + evil, "127.0.0.1", nil, &api.AgentService{}, "Node"},
		{"evil-meta", "127.0.0.1", nil, &api.AgentService{Meta: map[string]string{"version": "1\n" + evil}}, `Meta[\"version\"]`},
		{"evil-node-meta", "127.0.0.1", map[string]string{"rack": "r1\r\n" + evil}, &api.AgentService{}, `NodeMeta[\"rack\"]`},
		{"evil-id", "127.0.0.1", nil, &api.AgentService{ID: "m\n" + evil}, "ID"},
		{"evil-addr-newline", "1.2.3.4\n", nil, &api.AgentService{}, "Address"},
		{"evil-addr-command", "127.0.0.1", nil, &api.AgentService{Address: "$(touch /tmp/pwned)"}, "Address"},
		{"evil-addr-space", "127.0.0.1", nil, &api.AgentService{Address: "a b"}, "Address"},
	}
	for _, h := range hostile {
		register(h.node, h.addr, h.nodeMeta, h.svc)
	}
	// Plain text, however awkward, is rendered: quoted by the template.
	register("ext-ok", "web.example", map[string]string{"rack": "r2"}, &api.AgentService{Tags: []string{`a "b" # c`, "v2"}})

	e.waitTargets("the hostile instances left out, the awkward one quoted", good, `"ext-ok" web.example:9100 tags="a \"b\" # c,v2"`)
	b, err := os.ReadFile(e.dest)
	require.NoError(t, err)
	assert.NotContains(t, string(b), "evil", "no hostile instance, and no line of one")
	chk := e.waitCheck(api.HealthWarning, "8 healthy instance(s) refused, left out of the file", 20*time.Second)
	t.Logf("check: %s", chk.Output)
	// The first five, by node; the log names every one (below).
	assert.Contains(t, chk.Output, `"evil\ntarget evil 203.0.113.66:9090/monitoring" (Node "evil\ntarget evil 203.0.113.66:9090" holds the control character U+000A at byte 4)`)
	assert.Contains(t, chk.Output, `evil-addr-command/monitoring (Address "$(touch /tmp/pwned)" is neither an IP address nor a hostname)`)
	assert.Contains(t, chk.Output, `evil-addr-newline/monitoring (Address "1.2.3.4\n" holds the control character U+000A at byte 7)`)
	assert.Contains(t, chk.Output, `evil-addr-space/monitoring (Address "a b" is neither an IP address nor a hostname)`)
	assert.Contains(t, chk.Output, `"evil-id/m\ntarget evil 203.0.113.66:9090" (ID "m\ntarget evil 203.0.113.66:9090" holds the control character U+000A at byte 1)`)
	assert.Contains(t, chk.Output, "and 3 more")
	assert.NotContains(t, chk.Output, "\n"+evil, "the check's output holds no line of a hostile field")
	for _, h := range hostile {
		assert.Positive(t, e.handlerLines(strings.SplitN(h.node, "\n", 2)[0]), "the handler's log names %q", h.node)
		assert.Positive(t, e.handlerLines(h.field), "the handler's log names the field %s", h.field)
	}
	assert.Zero(t, e.handlerLines("\n"+evil), "the handler's log holds no line of a hostile field")
	assert.NoFileExists(t, "/tmp/pwned")

	// The reload command ran with the allow-list and its own variables only: not
	// REHYDRATE_LOG_FILE, which the agent and the handler have (TestMain sets it).
	reloadEnv := map[string]string{}
	for _, kv := range strings.Split(strings.TrimSpace(mustRead(t, e.envFile)), "\n") {
		k, v, _ := strings.Cut(kv, "=")
		reloadEnv[k] = v
	}
	assert.Equal(t, e.dest, reloadEnv["REHYDRATE_RECONFIGURE_FILE"])
	assert.Equal(t, os.Getenv("PATH"), reloadEnv["PATH"])
	assert.NotContains(t, reloadEnv, app.EnvLogFile, "the handler's environment is not the command's")
	for k := range reloadEnv {
		assert.True(t, len(runcmd.Environ([]string{k + "=x"}, nil)) == 1 || strings.HasPrefix(k, "REHYDRATE_RECONFIGURE_") ||
			k == "PWD" || k == "SHLVL" || k == "_", "the reload command saw %s", k) // the last three /bin/sh sets itself
	}

	// Fixed, they are rendered and the check passes again.
	for _, h := range hostile {
		_, err := catalog.Deregister(&api.CatalogDeregistration{Node: h.node}, nil)
		require.NoError(t, err)
	}
	e.waitTargets("the hostile instances gone", good, `"ext-ok" web.example:9100 tags="a \"b\" # c,v2"`)
	e.waitCheck(api.HealthPassing, "2 healthy instance(s) of monitoring", 20*time.Second)

	// A template that fails to render keeps the file, and the check turns critical
	// until a render succeeds: a passing check must not hide a stale file.
	before := mustRead(t, e.dest)
	e.writeConfig(`{{ (index .Instances 5).Address }}`)
	register("ext-more", "127.0.0.1", nil, &api.AgentService{}) // a change, for the watch to run the handler
	chk = e.waitCheck(api.HealthCritical, "the file is not up to date: the render has failed since", 20*time.Second)
	assert.Contains(t, chk.Output, "index out of range")
	assert.Equal(t, before, mustRead(t, e.dest), "the previous file is kept")
	e.writeConfig(example.Reconfigures[0].Template)
	_, err = catalog.Deregister(&api.CatalogDeregistration{Node: "ext-more"}, nil)
	require.NoError(t, err)
	e.waitCheck(api.HealthPassing, "2 healthy instance(s) of monitoring", 20*time.Second)
}

func mustRead(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	return string(b)
}
