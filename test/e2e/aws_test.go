package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
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
	"github.com/consul-rehydrate/consul-rehydrate/test/awsfake"
	"github.com/consul-rehydrate/consul-rehydrate/test/testcluster"
)

// localMachines are the hardware behind the fake's instances: each instance the Auto
// Scaling group launches boots as a real Consul server process (the local provider's
// launcher), and terminating it makes that server leave and stop. The first instances
// booted adopt the servers `Up` already started.
type localMachines struct {
	p     *local.Provider
	mu    sync.Mutex
	adopt []cloud.Instance
	n     int
}

func (m *localMachines) Boot(ctx context.Context, ami string) (string, string, error) {
	m.mu.Lock()
	if len(m.adopt) > 0 {
		i := m.adopt[0]
		m.adopt = m.adopt[1:]
		m.mu.Unlock()
		return i.ID, i.Address, nil
	}
	m.n++
	n := m.n
	m.mu.Unlock()
	inst, err := m.p.Launch(ctx, ami, fmt.Sprintf("asg-launch-%d", n), nil)
	return inst.ID, inst.Address, err
}

func (m *localMachines) Shutdown(ctx context.Context, id string) error {
	return m.p.Terminate(ctx, id, "asg-terminate/"+id)
}

// newAWSEnv starts a 3-server cluster whose instances live in a fake Auto Scaling
// group, and writes a handler configuration for the aws provider pointing at the fake.
func newAWSEnv(t *testing.T) (*env, *awsfake.Server) {
	t.Helper()
	dir := t.TempDir()
	block := testcluster.AllocateBlock(t)
	machines := &localMachines{}
	fake := awsfake.New(awsfake.Options{Machines: machines})
	e := &env{t: t, cfgPath: filepath.Join(dir, "rehydrate.hcl"), state: filepath.Join(dir, "state"), servers: 3}
	cfg := fmt.Sprintf(`cluster = "e2e-aws"
servers = 3

roll {
  stabilization  = "10s"
  launch_timeout = "3m"
  poll_interval  = "500ms"
}

provider "aws" {
  region            = "us-east-1"
  autoscaling_group = "consul-servers"
  launch_template   = "consul-server"
  endpoint_url      = %q
  max_attempts      = 6
  image {
    owners       = ["self"]
    name_pattern = "consul-server-*"
    tags         = { role = "consul-server" }
  }
}
`, fake.URL)
	require.NoError(t, os.WriteFile(e.cfgPath, []byte(cfg), 0o644))

	var err error
	e.p, err = local.New(local.Config{StateDir: e.state, Addresses: block.Prefix(), ConsulBinary: "consul", BinDir: binDir, ConfigPath: e.cfgPath,
		Cluster: "e2e-aws", EventName: "consul-rehydrate"})
	require.NoError(t, err)
	t.Cleanup(func() {
		if t.Failed() {
			if b, err := os.ReadFile(filepath.Join(e.state, "handlers.log")); err == nil {
				t.Logf("handlers.log (tail):\n%s", testcluster.Tail(string(b), 60))
			}
		}
		fake.Close()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_ = e.p.Down(ctx)
	})
	ctx := context.Background()
	for _, ami := range []string{"ami-0aaaaaaaaaaaaaaaa", "ami-0bbbbbbbbbbbbbbbb"} {
		_, err = e.p.RegisterImage(ctx, ami, local.ImageOptions{})
		require.NoError(t, err)
	}
	booted, err := e.p.Up(ctx, 3, "ami-0aaaaaaaaaaaaaaaa")
	require.NoError(t, err)
	// The group's first three launches adopt the servers Up started.
	machines.mu.Lock()
	machines.p, machines.adopt = e.p, booted
	machines.mu.Unlock()

	fake.AddImage(awsfake.Image{ID: "ami-0aaaaaaaaaaaaaaaa", Name: "consul-server-1", CreationDate: time.Now().Add(-48 * time.Hour), Tags: map[string]string{"role": "consul-server"}})
	fake.AddImage(awsfake.Image{ID: "ami-0cccccccccccccccc", Name: "other-thing", CreationDate: time.Now(), Tags: map[string]string{"role": "web"}})
	fake.AddLaunchTemplate("consul-server", "ami-0aaaaaaaaaaaaaaaa")
	fake.AddGroup(awsfake.Group{Name: "consul-servers", LaunchTemplate: "consul-server", Version: "1", Min: 3, Max: 3, Desired: 3})

	cfgAPI, err := e.p.APIConfig()
	require.NoError(t, err)
	e.client, err = api.NewClient(cfgAPI)
	require.NoError(t, err)
	// The operator's CLI talks to the client agent with the management token.
	e.httpAddr = "https://" + cfgAPI.Address
	e.operatorEnv = []string{"CONSUL_CACERT=" + e.p.CAFile(), "CONSUL_HTTP_TOKEN_FILE=" + e.p.ManagementTokenFile()}
	testcluster.WaitFor(t, 30*time.Second, "the group to adopt the 3 servers", func() (bool, string) {
		g := fake.Group("consul-servers")
		inService := 0
		for _, i := range g.Instances {
			if i.LifecycleState == "InService" {
				inService++
			}
		}
		return inService == 3, fmt.Sprintf("%d in service", inService)
	})
	return e, fake
}

// TestAWSRoll_ThroughTheAutoScalingGroup rolls 3 servers to a new AMI through the aws
// provider: the real SDK against the wire fake, whose instances are real Consul
// servers run by the agents' watches. It first proves that a persistent AWS error
// stops a step cleanly, then rolls under injected throttling and 5xx.
func TestAWSRoll_ThroughTheAutoScalingGroup(t *testing.T) {
	t.Parallel()
	e, fake := newAWSEnv(t)
	store := coord.New(e.client, "e2e-aws")
	ctx := context.Background()

	// An AMI outside the filter is refused at once.
	out, code := e.run("fire", "--image", "ami-0cccccccccccccccc")
	assert.Equal(t, app.ExitRefused, code, out)
	assert.Contains(t, out, "not allowed by the image filter")

	// A persistent AWS error: the step stops with a clear error and the cloud exit
	// code, leaves no receipt, and releases the lock.
	fake.AddImage(awsfake.Image{ID: "ami-0bbbbbbbbbbbbbbbb", Name: "consul-server-2", CreationDate: time.Now().Add(-time.Hour), Tags: map[string]string{"role": "consul-server"}})
	fake.Inject("SetDesiredCapacity", awsfake.Fault{Code: "InternalFailure", Status: http.StatusInternalServerError, Message: "persistent"})
	code, logs := e.runHandler(command.Spinup, `[{"ID":"00000000-0000-0000-0000-00000000e001","Name":"consul-rehydrate","Version":1,"LTime":1}]`)
	assert.Equal(t, app.ExitCloud, code, logs)
	assert.Contains(t, logs, "set desired capacity of group")
	// The roll is recorded as in progress before the launch, so the servers' own
	// service watches may retry the step meanwhile, and fail the same way: wait for
	// every handler to have given up, then nothing may be left.
	testcluster.WaitFor(t, time.Minute, "no receipt left and the lock released", func() (bool, string) {
		keys, _, err := e.client.KV().Keys("rehydrate/e2e-aws/actions/", "", nil)
		require.NoError(t, err)
		holder, err := store.Holder(ctx)
		require.NoError(t, err)
		return len(keys) == 0 && holder == "", fmt.Sprintf("receipts %v, lock held by %q", keys, holder)
	})
	assert.Equal(t, 3, fake.Group("consul-servers").Desired)
	fake.Clear()

	// The roll, under throttling and transient 5xx on the calls it makes.
	fake.Throttle("DescribeAutoScalingGroups", 3)
	fake.Throttle("DescribeImages", 2)
	fake.ServerError("SetDesiredCapacity", 1)
	fake.ServerError("TerminateInstanceInAutoScalingGroup", 1)
	fake.Throttle("CreateLaunchTemplateVersion", 1)
	writer := workload.StartWriter(e.client, "writes/", 20, 3, 5*time.Second)
	leaders := workload.WatchLeader(e.client, 100*time.Millisecond)
	start := time.Now()
	out, code = e.run("fire", "--image", "ami-0bbbbbbbbbbbbbbbb")
	require.Equal(t, app.ExitOK, code, out)

	st := e.waitRolled("ami-0bbbbbbbbbbbbbbbb", 5*time.Minute)
	changes, _ := leaders.Stop()
	res, err := writer.Stop(ctx)
	require.NoError(t, err)
	assert.Zero(t, res.Failed, "failed writes")
	assert.Zero(t, res.Lost, "lost writes")

	g := fake.Group("consul-servers")
	assert.Equal(t, 3, g.Desired, "the group is back to N")
	for _, i := range g.Instances {
		if i.LifecycleState != "Terminating" { // the last retired one may still be leaving
			assert.Equal(t, "ami-0bbbbbbbbbbbbbbbb", i.ImageID, "instance %s", i.ID)
		}
	}
	faulted := map[string]int{}
	for _, c := range fake.Calls() {
		if c.Status >= 400 {
			faulted[c.Action]++
		}
	}
	for _, a := range []string{"DescribeAutoScalingGroups", "SetDesiredCapacity", "TerminateInstanceInAutoScalingGroup", "CreateLaunchTemplateVersion"} {
		assert.Positive(t, faulted[a], "a fault was injected into %s and retried", a)
	}
	var steps []string
	for _, h := range st.Roll.History {
		steps = append(steps, h.Step)
	}
	line, _ := json.Marshal(command.DemoResult{
		Servers: 3, Image: "ami-0bbbbbbbbbbbbbbbb", AllOnTarget: true, RollSeconds: time.Since(start).Round(100 * time.Millisecond).Seconds(),
		WritesOK: res.OK, WritesFailed: res.Failed, WritesLost: res.Lost, MaxWriteMS: res.Max.Milliseconds(), LeaderChanges: changes,
	})
	t.Logf("history: %v; faults answered: %v", steps, faulted)
	fmt.Println(string(line))
}

// runHandler runs a handler in-process with stdin, as a server's watch would: on
// that server's agent, with its handler token.
func (e *env) runHandler(h func([]string, app.Env) int, stdin string) (int, string) {
	var out strings.Builder
	addr, env := e.asServer()
	code := h([]string{"-config", e.cfgPath, "-http-addr", addr}, app.Env{
		Stdin: strings.NewReader(stdin), Stdout: &out, Stderr: &out, Getenv: e.getenvWith(env),
	})
	return code, out.String()
}
