package spindown_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/consul-rehydrate/consul-rehydrate/internal/app"
	"github.com/consul-rehydrate/consul-rehydrate/internal/coord"
	"github.com/consul-rehydrate/consul-rehydrate/internal/spindown"
	"github.com/consul-rehydrate/consul-rehydrate/test/testcluster"
)

// binDir holds the executables; spindown hands steps to the real rehydrate there.
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

func TestSpindown_IdleStopsAtOneReadAndARollInProgressGoesToRehydrate(t *testing.T) {
	c := testcluster.Start(t, testcluster.Options{Servers: 3})
	cl := c.Client(t)
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "rehydrate.hcl")
	require.NoError(t, os.WriteFile(cfgPath, []byte(fmt.Sprintf(`cluster = "w"
servers = 3
roll {
  launch_timeout = "1s"
  poll_interval  = "200ms"
}
provider "local" {
  state_dir = %q
  addresses = "127.0.250.0/28"
}
`, filepath.Join(dir, "state"))), 0o644))
	entries, _, err := cl.Health().Service("consul", "", false, nil)
	require.NoError(t, err)
	stdin, err := json.Marshal(entries)
	require.NoError(t, err)

	// The handler talks to Consul through a proxy that counts its requests.
	var requests atomic.Int32
	target, err := url.Parse("http://" + c.Servers[0].HTTPAddr())
	require.NoError(t, err)
	rp := httputil.NewSingleHostReverseProxy(target)
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(proxy.Close)

	run := func() (int, string) {
		var out bytes.Buffer
		requests.Store(0)
		code := spindown.Main([]string{"-config", cfgPath, "-http-addr", strings.TrimPrefix(proxy.URL, "http://")}, app.Env{
			Stdin: bytes.NewReader(stdin), Stdout: &out, Stderr: &out,
			Getenv: func(k string) string {
				switch k {
				case app.EnvBinDir:
					return binDir
				case "PATH":
					return os.Getenv(k)
				}
				return ""
			},
		})
		return code, out.String()
	}

	// No roll: done after reading the roll record.
	code, out := run()
	assert.Equal(t, app.ExitOK, code, out)
	assert.NotContains(t, out, "plan", "nothing planned when idle")
	assert.Equal(t, int32(1), requests.Load(), "idle, one request to Consul")

	// A roll in progress: rehydrate takes the step. This cluster has no instances in
	// the provider, so the step is to hold, and the full handler says so.
	require.NoError(t, coord.New(cl, "w").PutRoll(t.Context(), &coord.Roll{Target: "B", Phase: coord.PhaseRolling}))
	code, out = run()
	assert.Equal(t, app.ExitOK, code, out)
	assert.Contains(t, out, "spindown: plan: step=hold", "the full handler ran")
	assert.Greater(t, requests.Load(), int32(1), "the full handler observed the cluster")

	// What rehydrate exits with, spindown exits with: a broken payload never gets
	// there, a Consul it cannot reach does.
	var buf bytes.Buffer
	code = spindown.Main([]string{"-config", cfgPath, "-http-addr", "127.0.0.1:1"}, app.Env{
		Stdin: strings.NewReader("[]"), Stdout: &buf, Stderr: &buf,
		// Only the bin dir: the environment is the program's whole environment now,
		// its configuration included.
		Getenv: func(k string) string { return map[string]string{app.EnvBinDir: binDir}[k] },
	})
	assert.Equal(t, app.ExitConsul, code, buf.String())
}

func TestCheckServices_RefusesOtherServices(t *testing.T) {
	ok := []*api.ServiceEntry{{Service: &api.AgentService{Service: "consul"}}}
	assert.NoError(t, spindown.CheckServices(ok))
	assert.EqualError(t, spindown.CheckServices(append(ok, &api.ServiceEntry{Service: &api.AgentService{Service: "web"}})), `entry for service "web", want "consul"`)
	assert.EqualError(t, spindown.CheckServices([]*api.ServiceEntry{{}}), `entry for service "", want "consul"`)
}

// TestSpindown_LinksNoProviderPlannerOrAWSSDK keeps the idle path lean: the
// executable that runs at every membership change is built from this package and
// package app, not from the roll's. The roll record (package coord) names the
// provider-neutral types of package cloud, which import nothing; the providers under
// it are banned.
func TestSpindown_LinksNoProviderPlannerOrAWSSDK(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "../../handlers/spindown").CombinedOutput()
	require.NoError(t, err, string(out))
	deps := strings.Fields(string(out))
	require.Contains(t, deps, "github.com/consul-rehydrate/consul-rehydrate/internal/app", "the list is of the right program")
	for _, d := range deps {
		for _, banned := range []string{"/internal/cloud/", "/internal/plan", "/internal/roll", "/internal/command", "github.com/aws/"} {
			assert.NotContains(t, d, banned)
		}
	}
}
