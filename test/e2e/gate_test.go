package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/consul-rehydrate/consul-rehydrate/internal/cluster"
	"github.com/consul-rehydrate/consul-rehydrate/internal/fault"
	"github.com/consul-rehydrate/consul-rehydrate/internal/workload"
	"github.com/consul-rehydrate/consul-rehydrate/test/awsfake"
	"github.com/consul-rehydrate/consul-rehydrate/test/testcluster"
)

// gateHook is the group's termination hook in the gate tests: a short heartbeat
// timeout, so that a gate that dies is ended by it within the test.
const (
	gateHook        = "consul-rehydrate"
	gateHookTimeout = 20 * time.Second
)

// gates runs the termination gate (the real handlers/lifecycle binary, as
// scripts/rehydrate-lifecycle.service does) beside each of the group's servers,
// reading its target lifecycle state from the fake's metadata for that instance,
// or from a real ec2-metadata-mock; each gate's log is kept for the test's output.
type gates struct {
	t     *testing.T
	mu    sync.Mutex
	e     *env
	fake  *awsfake.Server
	dir   string
	ips   map[string]string // instance -> address, of servers booted
	procs map[string]*exec.Cmd
	done  map[string]chan struct{}
}

func newGates(t *testing.T) *gates {
	return &gates{t: t, dir: t.TempDir(), ips: map[string]string{}, procs: map[string]*exec.Cmd{}, done: map[string]chan struct{}{}}
}

// shape makes newAWSEnv's group carry the termination hook and start and stop a
// gate with each server.
func (g *gates) shape(s *awsSetup) {
	s.machines = func(m *localMachines) {
		m.booted = func(id, ip string) {
			g.mu.Lock()
			g.ips[id] = ip
			ready := g.e != nil
			g.mu.Unlock()
			if ready {
				g.start(id, "")
			}
		}
		m.stopping = g.stop
	}
}

// attach starts the gates of the servers booted so far; later ones start as they
// boot. The hook is made first: a gate reads its heartbeat timeout.
func (g *gates) attach(e *env, fake *awsfake.Server) {
	fake.AddLifecycleHook("consul-servers", awsfake.LifecycleHook{
		Name: gateHook, Transition: "autoscaling:EC2_INSTANCE_TERMINATING", HeartbeatTimeout: gateHookTimeout, DefaultResult: "CONTINUE",
	})
	g.mu.Lock()
	g.e, g.fake = e, fake
	var ids []string
	for id := range g.ips {
		ids = append(ids, id)
	}
	g.mu.Unlock()
	for _, id := range ids {
		g.start(id, "")
	}
	g.t.Cleanup(g.stopAll)
}

// start runs the gate of instance id, against the fake's metadata for it, or
// against imds when set; extra are more environment variables. It may run on the
// fake's goroutines (a server booting), so it reports a failure with Errorf.
func (g *gates) start(id, imds string, extra ...string) {
	if err := g.run(id, imds, extra); err != nil {
		g.t.Errorf("start the gate of %s: %v", id, err)
	}
}

func (g *gates) run(id, imds string, extra []string) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if imds == "" {
		imds = g.fake.IMDS(id)
	}
	base, err := os.ReadFile(g.e.cfgPath)
	if err != nil {
		return err
	}
	cfg := strings.Replace(string(base), "  max_attempts      = 6\n", fmt.Sprintf(
		"  max_attempts      = 6\n  lifecycle_hook    = %q\n  gate_max_hold     = \"3m\"\n  imds_endpoint     = %q\n", gateHook, imds), 1)
	if cfg == string(base) {
		return fmt.Errorf("no max_attempts line in %s to put the gate's settings after", g.e.cfgPath)
	}
	path := filepath.Join(g.dir, id+".hcl")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		return err
	}
	log, err := os.OpenFile(filepath.Join(g.dir, id+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	cmd := exec.Command(filepath.Join(binDir, "lifecycle"), "-config", path)
	cmd.Env = append(os.Environ(),
		"CONSUL_HTTP_ADDR=https://"+g.ips[id]+":8501",
		"CONSUL_CACERT="+g.e.p.CAFile(),
		"CONSUL_HTTP_TOKEN_FILE="+g.e.p.HandlerTokenFile(id))
	cmd.Env = append(cmd.Env, extra...)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		log.Close()
		return err
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		log.Close()
		close(done)
	}()
	g.procs[id], g.done[id] = cmd, done
	return nil
}

// stop stops the gate of id, if it runs: SIGTERM, then SIGKILL after 10s.
func (g *gates) stop(id string) {
	g.mu.Lock()
	cmd, done := g.procs[id], g.done[id]
	delete(g.procs, id)
	g.mu.Unlock()
	if cmd == nil {
		return
	}
	select {
	case <-done:
		return
	default:
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
}

func (g *gates) stopAll() {
	g.mu.Lock()
	var ids []string
	for id := range g.procs {
		ids = append(ids, id)
	}
	g.mu.Unlock()
	for _, id := range ids {
		g.stop(id)
	}
	if g.t.Failed() {
		logs, _ := filepath.Glob(filepath.Join(g.dir, "*.log"))
		for _, l := range logs {
			b, _ := os.ReadFile(l)
			g.t.Logf("gate log %s (tail):\n%s", filepath.Base(l), testcluster.Tail(string(b), 30))
		}
	}
}

// logOf returns what the gate of id has logged so far.
func (g *gates) logOf(id string) string {
	b, _ := os.ReadFile(filepath.Join(g.dir, id+".log"))
	return string(b)
}

// leaderInstance returns the instance ID (the node name) of the leader.
func leaderInstance(t *testing.T, e *env) string {
	t.Helper()
	obs, err := cluster.ObserveRaft(context.Background(), e.client)
	require.NoError(t, err)
	l := obs.Leader()
	require.NotNil(t, l)
	return l.Name
}

// voterWatch samples, every 200ms, the healthy voters autopilot counts.
type voterWatch struct {
	stop, done chan struct{}
	min        int
}

func watchVoters(e *env) *voterWatch {
	w := &voterWatch{stop: make(chan struct{}), done: make(chan struct{}), min: 1 << 30}
	go func() {
		defer close(w.done)
		for {
			select {
			case <-w.stop:
				return
			case <-time.After(200 * time.Millisecond):
			}
			h, err := e.client.Operator().AutopilotServerHealth(nil)
			if err != nil {
				continue // no answer: not a count
			}
			n := 0
			for _, s := range h.Servers {
				if s.Voter && s.Healthy {
					n++
				}
			}
			w.min = min(w.min, n)
		}
	}()
	return w
}

func (w *voterWatch) Stop() int {
	close(w.stop)
	<-w.done
	return w.min
}

// gateResult is a gate case's JSON line.
type gateResult struct {
	Case                 string  `json:"case"`
	WritesOK             int     `json:"writes_ok"`
	WritesFailed         int     `json:"writes_failed"`
	WritesLost           int     `json:"writes_lost"`
	SecondsWithoutLeader float64 `json:"seconds_without_leader"`
	MinHealthyVoters     int     `json:"min_healthy_voters"`
	HookCompleted        bool    `json:"hook_completed"`
	Seconds              float64 `json:"seconds"`
}

// underLoad runs f under the demo's write load, watching the leader and the
// healthy voters, and returns the case's result (HookCompleted left to the case).
func underLoad(t *testing.T, e *env, name string, f func()) gateResult {
	t.Helper()
	ctx := context.Background()
	writer := workload.StartWriter(e.client, "gate/"+name+"/", 50, 3, 5*time.Second)
	leaders := workload.WatchLeader(e.client, 100*time.Millisecond)
	voters := watchVoters(e)
	start := time.Now()
	f()
	minVoters := voters.Stop()
	_, noLeader := leaders.Stop()
	res, err := writer.Stop(ctx)
	require.NoError(t, err)
	return gateResult{
		Case: name, WritesOK: res.OK, WritesFailed: res.Failed, WritesLost: res.Lost,
		SecondsWithoutLeader: noLeader.Round(100 * time.Millisecond).Seconds(), MinHealthyVoters: minVoters,
		Seconds: time.Since(start).Round(100 * time.Millisecond).Seconds(),
	}
}

// completed reports whether the fake answered a CompleteLifecycleAction for id.
func completed(fake *awsfake.Server, id string) bool {
	for _, c := range fake.Calls() {
		if c.Action == "CompleteLifecycleAction" && c.Status == 200 && c.Params.Get("InstanceId") == id {
			return true
		}
	}
	return false
}

// waitHealthyThree waits until the cluster is back to 3 healthy voters and the
// group to 3 instances in service.
func waitHealthyThree(t *testing.T, e *env, fake *awsfake.Server, gone ...string) {
	t.Helper()
	testcluster.WaitFor(t, 3*time.Minute, "3 healthy voters and 3 instances in service", func() (bool, string) {
		h, err := e.client.Operator().AutopilotServerHealth(nil)
		if err != nil {
			return false, err.Error()
		}
		n := 0
		for _, s := range h.Servers {
			for _, g := range gone {
				if s.Name == g {
					return false, g + " still in raft"
				}
			}
			if s.Voter && s.Healthy {
				n++
			}
		}
		in := 0
		for _, i := range fake.Group("consul-servers").Instances {
			if i.LifecycleState == "InService" {
				in++
			}
		}
		return n == 3 && len(h.Servers) == 3 && in == 3, fmt.Sprintf("%d healthy voters of %d, %d in service", n, len(h.Servers), in)
	})
}

// TestGate_TheGroupTerminatesTheLeaderThenTwoServersAtOnce: the gate on every
// server. First the group replaces the leader on its own (its health check failed)
// and the leader's gate, reading the real ec2-metadata-mock, hands off, leaves and
// completes the hook: no write fails, no moment without a leader. Then an operator
// terminates two servers at once: the second waits in Terminating:Wait until the
// first one's replacement is a stable voter, so quorum is never at risk.
func TestGate_TheGroupTerminatesTheLeaderThenTwoServersAtOnce(t *testing.T) {
	t.Parallel()
	g := newGates(t)
	e, fake := newAWSEnv(t, g.shape, func(s *awsSetup) { s.group.HealthCheckGracePeriod = 0 })
	g.attach(e, fake)
	waitHealthyThree(t, e, fake)
	time.Sleep(2 * time.Second) // every gate watching

	// 1. The group terminates the leader (a failed health check): its gate reads
	// the target lifecycle state from the real ec2-metadata-mock, which turns
	// Terminated a few seconds after it starts; the group is told at once.
	leader := leaderInstance(t, e)
	mock := startLifecycleMock(t, leader, 8)
	g.stop(leader)
	g.start(leader, mock)
	r := underLoad(t, e, "leader_terminated_by_group", func() {
		time.Sleep(3 * time.Second)
		require.True(t, fake.SetInstanceHealth(leader, "Unhealthy"))
		waitHealthyThree(t, e, fake, leader)
		testcluster.WaitFor(t, time.Minute, "the leader's gate to complete the hook", func() (bool, string) {
			return completed(fake, leader), "not yet"
		})
	})
	r.HookCompleted = completed(fake, leader)
	line, _ := json.Marshal(r)
	fmt.Println(string(line))
	assert.True(t, r.HookCompleted, "the gate completed the hook")
	for _, step := range []string{"the group is terminating this server", "took the departure lock", "handing leadership off", "left the cluster", "completing the lifecycle action"} {
		assert.Contains(t, g.logOf(leader), step, "the leader's gate took each step itself")
	}
	assert.Zero(t, r.WritesFailed)
	assert.Zero(t, r.WritesLost)
	// A hand-off is a raft election on the spot: the client sees no leader for
	// milliseconds, more under load (one 100 ms sample, 0.1, in a full parallel
	// suite under the race detector). Not the seconds of an election timeout.
	assert.LessOrEqual(t, r.SecondsWithoutLeader, 0.3, "no election timeout's worth of time without a leader")
	assert.GreaterOrEqual(t, r.MinHealthyVoters, 2)

	// 2. Two followers terminated at once, replacements launched.
	now := leaderInstance(t, e)
	var two []string
	for _, i := range fake.Group("consul-servers").Instances {
		if i.ID != now && i.LifecycleState == "InService" {
			two = append(two, i.ID)
		}
	}
	require.Len(t, two, 2)
	client := autoscaling.NewFromConfig(fake.Config())
	heldBack := false
	r = underLoad(t, e, "two_terminated_at_once", func() {
		for _, id := range two {
			_, err := client.TerminateInstanceInAutoScalingGroup(context.Background(), &autoscaling.TerminateInstanceInAutoScalingGroupInput{
				InstanceId: aws.String(id), ShouldDecrementDesiredCapacity: aws.Bool(false),
			})
			require.NoError(t, err)
		}
		// One of them goes at once; the other waits, still a voter, for the first
		// one's replacement.
		testcluster.WaitFor(t, time.Minute, "one of the two out of raft", func() (bool, string) {
			obs, err := cluster.ObserveRaft(context.Background(), e.client)
			if err != nil {
				return false, err.Error()
			}
			in := 0
			for _, s := range obs.Servers {
				if s.Name == two[0] || s.Name == two[1] {
					in++
				}
			}
			// The one still in raft is held by the hook, not terminated.
			waiting := fake.WaitingForHook("consul-servers")
			for _, s := range obs.Servers {
				if (s.Name == two[0] || s.Name == two[1]) && in == 1 {
					for _, w := range waiting {
						heldBack = heldBack || w == s.Name
					}
				}
			}
			return in == 1, fmt.Sprintf("%d of the two in raft, held by the hook: %v", in, waiting)
		})
		waitHealthyThree(t, e, fake, two...)
		testcluster.WaitFor(t, 2*time.Minute, "both gates to complete the hook", func() (bool, string) {
			return completed(fake, two[0]) && completed(fake, two[1]), "not yet"
		})
	})
	r.HookCompleted = completed(fake, two[0]) && completed(fake, two[1])
	line, _ = json.Marshal(r)
	fmt.Println(string(line))
	assert.True(t, heldBack, "the second server was held in Terminating:Wait while the first was gone")
	// One departed, then the other.
	var tookAt []string
	for _, id := range two {
		assert.Contains(t, g.logOf(id), "left the cluster")
		m := regexp.MustCompile(`took the departure lock: node=\S+ took=(\S+)`).FindStringSubmatch(g.logOf(id))
		require.Len(t, m, 2, "%s took the lock", id)
		tookAt = append(tookAt, m[1])
	}
	waits := []time.Duration{}
	for _, s := range tookAt {
		d, err := time.ParseDuration(s)
		require.NoError(t, err)
		waits = append(waits, d)
	}
	// (The first may wait too: Consul's lock delay after the previous case's
	// departure.)
	assert.Greater(t, max(waits[0], waits[1])-min(waits[0], waits[1]), 5*time.Second,
		"the second took the departure lock only once the first had left: %v", tookAt)
	assert.True(t, r.HookCompleted)
	assert.GreaterOrEqual(t, r.MinHealthyVoters, 2, "quorum never at risk")
	assert.Zero(t, r.WritesLost)
	assert.Zero(t, r.WritesFailed)
}

// TestGate_ARebootStopOfTheLeaderAndAGateThatDies: the consul unit's stop path
// (`rehydrate leave`) on the leader, as a reboot runs it, fails no write; and a gate
// killed right after its hand-off leaves the termination to the hook's heartbeat
// timeout, with the cluster healthy throughout.
func TestGate_ARebootStopOfTheLeaderAndAGateThatDies(t *testing.T) {
	t.Parallel()
	g := newGates(t)
	e, fake := newAWSEnv(t, g.shape)
	g.attach(e, fake)
	waitHealthyThree(t, e, fake)

	// 1. A reboot: systemd's stop runs `rehydrate leave` with the unit's
	// environment, the agent leaves and exits; the instance comes back.
	leader := leaderInstance(t, e)
	var ip string
	for _, i := range fake.Group("consul-servers").Instances {
		if i.ID == leader {
			ip = i.PrivateIP
		}
	}
	r := underLoad(t, e, "reboot_stop_of_the_leader", func() {
		time.Sleep(3 * time.Second)
		cmd := exec.Command(filepath.Join(binDir, "rehydrate"), "-config", e.cfgPath, "leave")
		cmd.Env = append(os.Environ(), "CONSUL_HTTP_ADDR=https://"+ip+":8501", "CONSUL_CACERT="+e.p.CAFile(),
			"CONSUL_HTTP_TOKEN_FILE="+e.p.HandlerTokenFile(leader))
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, string(out))
		time.Sleep(3 * time.Second)
		require.NoError(t, e.p.Restart(context.Background(), leader))
		waitHealthyThree(t, e, fake)
	})
	line, _ := json.Marshal(r)
	fmt.Println(string(line))
	assert.Zero(t, r.WritesFailed)
	assert.Zero(t, r.WritesLost)
	assert.NotEqual(t, leader, leaderInstance(t, e), "leadership moved away from the stopped server")

	// 2. The leader's gate dies right after handing off: the hook's heartbeat
	// timeout ends the termination, the server leaves as the instance shuts down.
	leader = leaderInstance(t, e)
	g.stop(leader)
	g.start(leader, "", fault.EnvCrashAt+"=gate:handed-off")
	client := autoscaling.NewFromConfig(fake.Config())
	start := time.Now()
	r = underLoad(t, e, "gate_dies_after_hand_off", func() {
		time.Sleep(3 * time.Second)
		_, err := client.TerminateInstanceInAutoScalingGroup(context.Background(), &autoscaling.TerminateInstanceInAutoScalingGroupInput{
			InstanceId: aws.String(leader), ShouldDecrementDesiredCapacity: aws.Bool(false),
		})
		require.NoError(t, err)
		waitHealthyThree(t, e, fake, leader)
	})
	r.HookCompleted = completed(fake, leader)
	line, _ = json.Marshal(r)
	fmt.Println(string(line))
	assert.False(t, r.HookCompleted, "the gate died before completing")
	assert.GreaterOrEqual(t, time.Since(start), gateHookTimeout, "the heartbeat timeout ended it")
	assert.GreaterOrEqual(t, r.MinHealthyVoters, 2)
	assert.Zero(t, r.WritesLost)
	assert.Zero(t, r.WritesFailed)
}

// startLifecycleMock runs the real ec2-metadata-mock as instance id's metadata,
// whose target lifecycle state turns Terminated delay seconds after it starts.
func startLifecycleMock(t *testing.T, id string, delay int) string {
	t.Helper()
	bin, err := exec.LookPath("ec2-metadata-mock")
	require.NoError(t, err, "ec2-metadata-mock not on PATH: run the tests with `make test`, which installs it")
	dir := t.TempDir()
	cfg := filepath.Join(dir, "aemm.json")
	doc := fmt.Sprintf(`{"metadata":{"values":{"instance-id":%q}},"dynamic":{"values":{"instance-identity-document":{"instanceId":%q,"region":"us-east-1","imageId":%q}}}}`, id, id, amiA)
	require.NoError(t, os.WriteFile(cfg, []byte(doc), 0o600))
	port := freeLoopbackPort(t)
	cmd := exec.Command(bin, "--hostname", "127.0.0.1", "--port", port, "--imdsv2", "-c", cfg, "--asg-termination-delay-sec", fmt.Sprint(delay))
	cmd.Dir = dir
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return "http://127.0.0.1:" + port
}

func freeLoopbackPort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	return strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
}
