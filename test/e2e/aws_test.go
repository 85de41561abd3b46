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

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"
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
	// booted and stopping, if set, run when an instance's server is up and before
	// it is shut down: the termination gate's service starts and stops with them.
	booted   func(id, ip string)
	stopping func(id string)
}

func (m *localMachines) Boot(ctx context.Context, ami string) (string, string, error) {
	m.mu.Lock()
	booted := m.booted
	if len(m.adopt) > 0 {
		i := m.adopt[0]
		m.adopt = m.adopt[1:]
		m.mu.Unlock()
		if booted != nil {
			booted(i.ID, i.Address)
		}
		return i.ID, i.Address, nil
	}
	m.n++
	n := m.n
	m.mu.Unlock()
	inst, err := m.p.Launch(ctx, ami, fmt.Sprintf("asg-launch-%d", n), nil)
	if err == nil && booted != nil {
		booted(inst.ID, inst.Address)
	}
	return inst.ID, inst.Address, err
}

func (m *localMachines) Shutdown(ctx context.Context, id string) error {
	m.mu.Lock()
	stopping := m.stopping
	m.mu.Unlock()
	if stopping != nil {
		stopping(id)
	}
	return m.p.Terminate(ctx, id, "asg-terminate/"+id)
}

// awsSetup is how a test shapes the fake before the cluster's group is made.
type awsSetup struct {
	fake awsfake.Options
	// group is the servers' group as AddGroup seeds it: by default 3 servers over
	// 3 zones on launch template version 1.
	group awsfake.Group
	// before runs after the images and the launch template are seeded, before
	// the group is made.
	before func(*awsfake.Server)
	// machines, if set, is given the group's machines before the group is made.
	machines func(*localMachines)
}

// newAWSEnv starts a 3-server cluster whose instances live in a fake Auto Scaling
// group spread over 3 zones, and writes a handler configuration for the aws
// provider pointing at the fake. Each shape function may change the setup.
func newAWSEnv(t *testing.T, shape ...func(*awsSetup)) (*env, *awsfake.Server) {
	t.Helper()
	dir := t.TempDir()
	block := testcluster.AllocateBlock(t)
	machines := &localMachines{}
	// The pessimistic reading of the user guide: AZRebalance may terminate a server
	// protected from scale-in, so only its suspension keeps it off the servers.
	setup := awsSetup{fake: awsfake.Options{RebalanceIgnoresProtection: true}, group: awsfake.Group{
		Name: "consul-servers", LaunchTemplate: "consul-server", Version: "1", Min: 3, Max: 3, Desired: 3,
		AZs: []string{"us-east-1a", "us-east-1b", "us-east-1c"},
	}}
	for _, f := range shape {
		f(&setup)
	}
	setup.fake.Machines = machines
	fake := awsfake.New(setup.fake)
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
	if setup.machines != nil {
		setup.machines(machines)
	}

	fake.AddImage(awsfake.Image{ID: "ami-0aaaaaaaaaaaaaaaa", Name: "consul-server-1", CreationDate: time.Now().Add(-48 * time.Hour), Tags: map[string]string{"role": "consul-server"}})
	fake.AddImage(awsfake.Image{ID: "ami-0cccccccccccccccc", Name: "other-thing", CreationDate: time.Now(), Tags: map[string]string{"role": "web"}})
	fake.AddLaunchTemplate("consul-server", "ami-0aaaaaaaaaaaaaaaa")
	if setup.before != nil {
		setup.before(fake)
	}
	fake.AddGroup(setup.group)

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
// servers run by the agents' watches. The group is the kind people run: 3 zones
// with AZRebalance on (the roll must suspend it), a scale-in policy whose alarm
// fires during the surge, and a termination hook an operator's tooling completes.
// It first proves that a persistent AWS error stops a step cleanly, then rolls
// under injected throttling and 5xx.
func TestAWSRoll_ThroughTheAutoScalingGroup(t *testing.T) {
	t.Parallel()
	e, fake := newAWSEnv(t)
	store := coord.New(e.client, "e2e-aws")
	ctx := context.Background()
	fake.AddLifecycleHook("consul-servers", awsfake.LifecycleHook{Name: "drain", Transition: "autoscaling:EC2_INSTANCE_TERMINATING"})
	fake.AddScalingPolicy("consul-servers", "scale-in", -1)

	// An AMI outside the filter is refused at once.
	out, code := e.run("fire", "--image", "ami-0cccccccccccccccc")
	assert.Equal(t, app.ExitRefused, code, out)
	assert.Contains(t, out, "not allowed by the image filter")

	// A persistent AWS error after a partial launch (the template version made and
	// the group pointed at it, the desired capacity refused): the step stops with a
	// clear error and the cloud exit code, leaves no receipt, and releases the lock;
	// the roll below resumes from the next trigger.
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
	// Every attempt of the load is recorded, check-and-sets on 3 hot keys included,
	// and the history must be linearizable: no stale read, no lost update.
	rec := workload.NewRecorder()
	writer := workload.StartWriterRecorded(e.client, "writes/", 20, 3, 5*time.Second, rec)
	caser := workload.StartCAS(e.client, []string{"cas/0", "cas/1", "cas/2"}, 5, 3, 5*time.Second, rec)
	leaders := workload.WatchLeader(e.client, 100*time.Millisecond)
	group := watchGroup(t, fake, "consul-servers", "drain", "scale-in")
	start := time.Now()
	out, code = e.run("fire", "--image", "ami-0bbbbbbbbbbbbbbbb")
	require.Equal(t, app.ExitOK, code, out)

	st := e.waitRolled("ami-0bbbbbbbbbbbbbbbb", 5*time.Minute)
	// The roll is done before its last retired server has finished terminating
	// (the hook holds it): wait for the group to settle before the last samples.
	testcluster.WaitFor(t, time.Minute, "the group back to 3 in service, restored", func() (bool, string) {
		g := fake.Group("consul-servers")
		return len(g.Instances) == 3 && len(g.Suspended) == 0 && g.Max == 3, fmt.Sprintf("%d instances, suspended %v, max %d", len(g.Instances), g.Suspended, g.Max)
	})
	seen := group.Stop()
	changes, _ := leaders.Stop()
	cas := caser.Stop()
	res, err := writer.Stop(ctx)
	rollSeconds := time.Since(start).Round(100 * time.Millisecond).Seconds() // before the check
	require.NoError(t, err)
	assert.Zero(t, res.Failed, "failed writes")
	assert.Zero(t, res.Lost, "lost writes")
	assert.Zero(t, cas.Failed, "failed check-and-sets")
	assert.Positive(t, cas.OK, "check-and-sets that went through")
	checkStart := time.Now()
	lin := rec.Check(time.Minute)
	t.Logf("check-and-sets %+v; linearizability of %d attempts (%d unknown) checked in %v: %+v",
		cas, lin.Ops, lin.Unknown, time.Since(checkStart).Round(time.Millisecond), lin)
	assert.True(t, lin.Linearizable, "the history is linearizable: %s", lin.Detail)
	assert.Positive(t, lin.Ops)

	g := fake.Group("consul-servers")
	assert.Equal(t, 3, g.Desired, "the group is back to N")
	for _, i := range g.Instances {
		if !strings.HasPrefix(i.LifecycleState, "Terminating") { // the last retired one may still be leaving
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
	azs := map[string]int{}
	for _, i := range g.Instances {
		azs[i.AZ]++
	}
	terminatedByGroup := 0
	for _, a := range fake.Activities("consul-servers") {
		if a.Kind == "terminate" && a.Origin != "TerminateInstanceInAutoScalingGroup" {
			terminatedByGroup++
			t.Errorf("the group terminated %s on its own: %s (%s)", a.InstanceID, a.Cause, a.Origin)
		}
	}
	final := fake.Group("consul-servers")
	result := awsRollResult{
		DemoResult: command.DemoResult{
			Servers: 3, Image: "ami-0bbbbbbbbbbbbbbbb", AllOnTarget: true, RollSeconds: rollSeconds,
			WritesOK: res.OK, WritesFailed: res.Failed, WritesLost: res.Lost, MaxWriteMS: res.Max.Milliseconds(), LeaderChanges: changes,
			Linearizable: &lin.Linearizable,
		},
		AZsAtEnd: azs, MaxInstances: seen.maxInstances, TerminatedByGroup: terminatedByGroup,
		ProcessesResumed: len(final.Suspended) == 0, MaxSizeRestored: final.Max == 3,
	}
	assert.Equal(t, map[string]int{"us-east-1a": 1, "us-east-1b": 1, "us-east-1c": 1}, azs, "one server per zone at the end")
	assert.LessOrEqual(t, seen.maxInstances, 4, "never more than N+1 instances")
	assert.True(t, seen.alarmTried, "the scale-in alarm fired during the surge")
	assert.False(t, seen.alarmExecuted, "the scale-in policy ran during the roll")
	assert.Positive(t, seen.hooksCompleted, "our retires went through the termination hook")
	assert.True(t, result.ProcessesResumed)
	assert.True(t, result.MaxSizeRestored)
	t.Logf("history: %v; faults answered: %v", steps, faulted)
	line, _ := json.Marshal(result)
	fmt.Println(string(line))
}

// awsRollResult is the demo's JSON line and what the group did.
type awsRollResult struct {
	command.DemoResult
	// AZsAtEnd counts the group's instances per zone once the roll is done.
	AZsAtEnd map[string]int `json:"azs_at_end"`
	// MaxInstances is the most instances the group held at once, counting those
	// launching and those a termination hook holds (still running servers).
	MaxInstances int `json:"max_instances"`
	// TerminatedByGroup counts the instances the group terminated on its own
	// (rebalancing, scale-in, health), not by the roll's terminate calls.
	TerminatedByGroup int  `json:"terminated_by_group"`
	ProcessesResumed  bool `json:"processes_resumed"`
	MaxSizeRestored   bool `json:"max_size_restored"`
}

// groupWatch samples a fake group every 100ms while a roll runs: it counts the
// instances, completes the termination hook of each instance it holds (after a
// second, as an operator's drain tooling would, through the real SDK), and fires
// the scale-in policy's alarm once, while the group is surged.
type groupWatch struct {
	stop, done     chan struct{}
	maxInstances   int
	alarmTried     bool
	alarmExecuted  bool
	hooksCompleted int
}

func watchGroup(t *testing.T, fake *awsfake.Server, name, hook, policy string) *groupWatch {
	w := &groupWatch{stop: make(chan struct{}), done: make(chan struct{})}
	client := autoscaling.NewFromConfig(fake.Config())
	go func() {
		defer close(w.done)
		waiting := map[string]time.Time{}
		for {
			select {
			case <-w.stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			g := fake.Group(name)
			n := g.Launching
			for _, i := range g.Instances {
				if strings.HasPrefix(i.LifecycleState, "Pending") || i.LifecycleState == "InService" || i.LifecycleState == "Terminating:Wait" {
					n++
				}
			}
			w.maxInstances = max(w.maxInstances, n)
			if !w.alarmTried && g.Desired == 4 {
				w.alarmTried, w.alarmExecuted = true, fake.Alarm(name, policy)
			}
			for _, id := range fake.WaitingForHook(name) {
				if _, ok := waiting[id]; !ok {
					waiting[id] = time.Now()
				}
				if time.Since(waiting[id]) < time.Second {
					continue
				}
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				_, err := client.CompleteLifecycleAction(ctx, &autoscaling.CompleteLifecycleActionInput{
					AutoScalingGroupName: aws.String(name), LifecycleHookName: aws.String(hook),
					InstanceId: aws.String(id), LifecycleActionResult: aws.String("CONTINUE"),
				})
				cancel()
				if err != nil {
					t.Errorf("complete the lifecycle action of %s: %v", id, err)
				} else {
					w.hooksCompleted++
					delete(waiting, id)
				}
			}
		}
	}()
	return w
}

// Stop ends the sampling and returns what it saw.
func (w *groupWatch) Stop() *groupWatch {
	close(w.stop)
	<-w.done
	return w
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
