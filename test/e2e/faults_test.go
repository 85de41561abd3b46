package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/consul-rehydrate/consul-rehydrate/internal/app"
	"github.com/consul-rehydrate/consul-rehydrate/internal/cloud"
	"github.com/consul-rehydrate/consul-rehydrate/internal/command"
	"github.com/consul-rehydrate/consul-rehydrate/internal/coord"
	"github.com/consul-rehydrate/consul-rehydrate/internal/fault"
	"github.com/consul-rehydrate/consul-rehydrate/internal/workload"
	"github.com/consul-rehydrate/consul-rehydrate/test/testcluster"
)

// fastLock makes a crashed holder's lock free within about 20s (Consul invalidates
// a session up to 2 x TTL late) and lets lock.wait follow.
const fastLock = `
lock {
  session_ttl = "10s"
  lock_delay  = "1s"
}
`

// everLaunched returns every instance the provider has ever had, terminated ones too.
func (e *env) everLaunched() []cloud.Instance {
	e.t.Helper()
	b, err := os.ReadFile(filepath.Join(e.state, "state.json"))
	require.NoError(e.t, err)
	var st struct {
		Instances []struct {
			ID       string `json:"id"`
			ImageID  string `json:"image_id"`
			State    string `json:"state"`
			ActionID string `json:"action_id"`
		} `json:"instances"`
	}
	require.NoError(e.t, json.Unmarshal(b, &st))
	var out []cloud.Instance
	for _, i := range st.Instances {
		out = append(out, cloud.Instance{ID: i.ID, ImageID: i.ImageID, State: i.State, ActionID: i.ActionID})
	}
	return out
}

// checkRolled checks what every completed roll must show: the cluster back to N servers,
// all on image, and at most N+1 instances and raft servers seen at any time.
func (e *env) checkRolled(image string, maxLive, maxRaft int) {
	e.t.Helper()
	n := e.servers
	assert.LessOrEqual(e.t, maxLive, n+1, "never more than N+1 instances")
	assert.LessOrEqual(e.t, maxRaft, n+1, "never more than N+1 raft servers")
	raft, err := e.client.Operator().RaftGetConfiguration(nil)
	require.NoError(e.t, err)
	assert.Len(e.t, raft.Servers, n, "raft back to N")
	ever := e.everLaunched()
	onImage := 0
	for _, i := range ever {
		if i.ImageID == image {
			onImage++
		}
	}
	assert.Equal(e.t, n, onImage, "exactly N instances were ever launched on %s (no double launch): %v", image, ever)
}

// TestFaults_CrashAtEveryStepBoundaryStillCompletesTheRoll SIGKILLs a handler at
// each step boundary of one roll: holding the lock; after the launch, before its
// receipt; after a server's leave, before its instance is terminated; after a
// terminate, before it is recorded. Each crash happens once (the first handler to
// reach the point dies there, holding the lock). The roll must still complete with
// no double launch, never more than N+1 servers, and no failed or lost write.
func TestFaults_CrashAtEveryStepBoundaryStillCompletesTheRoll(t *testing.T) {
	t.Parallel()
	points := []string{"locked", "acted:launch", "left", "acted:retire"}
	crashDir := t.TempDir()
	e := newEnvWith(t, envOptions{servers: 3, extraHCL: fastLock, agentEnv: []string{
		fault.EnvCrashAt + "=" + strings.Join(points, ","), fault.EnvCrashDir + "=" + crashDir,
	}})
	writer := workload.StartWriter(e.client, "writes/", 20, 3, 5*time.Second)
	leaders := workload.WatchLeader(e.client, 100*time.Millisecond)
	samples := e.sample()
	out, code := e.run("local", "image", "register", "B")
	require.Equal(t, app.ExitOK, code, out)
	out, code = e.run("fire", "--image", "B")
	require.Equal(t, app.ExitOK, code, out)

	st := e.waitRolled("B", 8*time.Minute)
	maxLive, maxRaft := samples.Stop()
	_, noLeader := leaders.Stop()
	res, err := writer.Stop(context.Background())
	require.NoError(t, err)

	for _, p := range points {
		b, err := os.ReadFile(filepath.Join(crashDir, fault.Marker(p)))
		if assert.NoError(t, err, "a handler crashed at %s", p) {
			t.Logf("%s", strings.TrimSpace(string(b)))
		}
	}
	e.checkRolled("B", maxLive, maxRaft)
	assert.Zero(t, res.Failed, "failed writes")
	assert.Zero(t, res.Lost, "lost writes")
	assert.Less(t, noLeader, 5*time.Second, "quorum kept: never long without a leader")
	assert.Equal(t, coord.PhaseDone, st.Roll.Phase)
	t.Logf("rolled through %d crashes: %d writes ok, max write %s, no leader for %s", len(points), res.OK, res.Max, noLeader)
}

// fireRaw fires the roll's event with a raw payload, as anyone with event:write
// could, bypassing the checks of `rehydrate fire`. It returns the event ID.
func (e *env) fireRaw(payload []byte) string {
	e.t.Helper()
	id, _, err := e.client.Event().Fire(&api.UserEvent{Name: "consul-rehydrate", Payload: payload}, nil)
	require.NoError(e.t, err)
	return id
}

// waitHandled waits until some handler recorded the event as handled and returns
// what it recorded.
func (e *env) waitHandled(eventID string, timeout time.Duration) string {
	e.t.Helper()
	var kv *api.KVPair
	testcluster.WaitFor(e.t, timeout, "event "+eventID+" handled", func() (bool, string) {
		var err error
		kv, _, err = e.client.KV().Get("rehydrate/e2e/events/"+eventID, nil)
		return err == nil && kv != nil, fmt.Sprint(err)
	})
	return string(kv.Value)
}

// snapshot is what a refused request must not change.
type snapshot struct {
	instances []cloud.Instance
	roll      string
	keys      map[string]uint64 // rehydrate/ keys outside events/, by ModifyIndex
}

func (e *env) snapshot() snapshot {
	e.t.Helper()
	insts, err := e.p.Instances(context.Background())
	require.NoError(e.t, err)
	s := snapshot{instances: insts, keys: map[string]uint64{}}
	kvs, _, err := e.client.KV().List("rehydrate/e2e/", &api.QueryOptions{RequireConsistent: true})
	require.NoError(e.t, err)
	for _, kv := range kvs {
		if strings.HasPrefix(kv.Key, "rehydrate/e2e/events/") {
			continue // the record that a request was seen and refused
		}
		s.keys[kv.Key] = kv.ModifyIndex
		if kv.Key == "rehydrate/e2e/roll" {
			s.roll = string(kv.Value)
		}
	}
	return s
}

// agentLogs returns every server's agent log, concatenated.
func (e *env) agentLogs() string {
	e.t.Helper()
	paths, err := filepath.Glob(filepath.Join(e.state, "instances", "*", "agent.log"))
	require.NoError(e.t, err)
	var b strings.Builder
	for _, p := range paths {
		data, err := os.ReadFile(p)
		require.NoError(e.t, err)
		b.Write(data)
	}
	return b.String()
}

// TestFaults_ForgedAndStaleEventsAreRefusedAndChangeNothing fires, through the
// agents, events a careless or hostile writer could: an image outside the filter,
// an older image (a downgrade), a payload that is not JSON, one with an unknown
// field. Every server's handler refuses each with a log line naming the problem and
// a distinct exit code; no instance, roll record, receipt or lock changes.
func TestFaults_ForgedAndStaleEventsAreRefusedAndChangeNothing(t *testing.T) {
	t.Parallel()
	e := newEnvWith(t, envOptions{servers: 3, imagesBefore: []string{"old"}, extraHCL: "log_level = \"debug\"\n"})
	before := e.snapshot()

	refused := []struct {
		payload string
		record  string
	}{
		{`{"image_id":"Z"}`, "refused: image Z is not allowed by the image filter or does not exist"},
		{`{"image_id":"old"}`, "refused: image old is older than A, which"},
	}
	for _, r := range refused {
		id := e.fireRaw([]byte(r.payload))
		assert.Contains(t, e.waitHandled(id, time.Minute), r.record, "payload %s", r.payload)
	}
	malformed := []struct {
		payload string
		log     string
	}{
		{`not json`, "refusing event"},
		{`{"image":"A"}`, `unknown field \"image\"`},
	}
	var ids []string
	for _, m := range malformed {
		id := e.fireRaw([]byte(m.payload))
		ids = append(ids, id)
		testcluster.WaitFor(t, time.Minute, "every server's handler to refuse "+m.payload, func() (bool, string) {
			n := countLines(e.handlersLog(), id, m.log)
			return n >= e.servers, fmt.Sprintf("event %s refused by %d of %d handlers", id, n, e.servers)
		})
	}
	for _, id := range ids {
		kv, _, err := e.client.KV().Get("rehydrate/e2e/events/"+id, nil)
		require.NoError(t, err)
		assert.Nil(t, kv, "a malformed event is not even recorded")
	}
	// The agents saw the distinct exit codes: 17 refused, 13 bad payload.
	testcluster.WaitFor(t, 30*time.Second, "the agents to log the handlers' exit codes", func() (bool, string) {
		logs := e.agentLogs()
		return strings.Contains(logs, "exit status 17") && strings.Contains(logs, "exit status 13"), "no exit status 17 and 13 in the agent logs yet"
	})

	after := e.snapshot()
	assert.Equal(t, before.instances, after.instances, "no instance launched or retired")
	assert.Equal(t, before.keys, after.keys, "no roll record, receipt, lock or bad image written")
	out, code := e.run("status")
	require.Equal(t, app.ExitOK, code, out)
	assert.Contains(t, out, "roll: none yet")
}

func (e *env) handlersLog() string {
	b, err := os.ReadFile(filepath.Join(e.state, "handlers.log"))
	if err != nil {
		return ""
	}
	return string(b)
}

// countLines counts the lines that contain every one of subs.
func countLines(s string, subs ...string) int {
	n := 0
lines:
	for _, l := range strings.Split(s, "\n") {
		for _, sub := range subs {
			if !strings.Contains(l, sub) {
				continue lines
			}
		}
		n++
	}
	return n
}

// TestFaults_BadImageFailsTheRollAndLeavesTheClusterAlone rolls to an image whose
// servers can never join (their gossip is encrypted with a key the cluster does not
// use). After launch_timeout the new instance is terminated, the image is marked bad,
// the roll is marked failed, and the old servers are untouched and healthy. Firing
// the image again is refused, and status says why.
func TestFaults_BadImageFailsTheRollAndLeavesTheClusterAlone(t *testing.T) {
	t.Parallel()
	e := newEnvWith(t, envOptions{servers: 3, launchTimeout: "40s"})
	before := e.status()
	extra := filepath.Join(t.TempDir(), "broken.hcl")
	// A valid agent config, but a gossip key the cluster does not use: the server
	// starts, and never joins.
	require.NoError(t, os.WriteFile(extra, []byte(`encrypt = "pUqJrVyVRj5jsiYEkM/tFQYfWyJIv4s3XkvDwy7Cu5s="`+"\n"), 0o644))
	out, code := e.run("local", "image", "register", "broken", "--extra-hcl", extra)
	require.Equal(t, app.ExitOK, code, out)

	out, code = e.run("fire", "--image", "broken")
	require.Equal(t, app.ExitOK, code, out)
	var st command.Status
	testcluster.WaitFor(t, 3*time.Minute, "the roll to fail", func() (bool, string) {
		st = e.status()
		if st.Roll == nil {
			return false, "no roll yet"
		}
		return st.Roll.Phase == coord.PhaseFailed, fmt.Sprintf("roll %s, next: %s", st.Roll.Phase, st.Next.Reason)
	})
	assert.Contains(t, st.Roll.Failure, "is not a stable healthy voter")
	assert.Contains(t, st.Roll.Failure, "launch_timeout 40s")
	assert.Contains(t, st.BadImages, "broken")

	// The failed instance is gone; the old servers are the same, healthy, unchanged.
	var launched []cloud.Instance
	for _, i := range e.everLaunched() {
		if i.ImageID == "broken" {
			launched = append(launched, i)
		}
	}
	require.Len(t, launched, 1, "one instance launched on the bad image")
	testcluster.WaitFor(t, time.Minute, "the failed instance terminated and the cluster healthy", func() (bool, string) {
		st = e.status()
		h, err := e.client.Operator().AutopilotServerHealth(nil)
		if err != nil {
			return false, err.Error()
		}
		return len(st.Servers) == 3 && h.Healthy && len(h.Servers) == 3, fmt.Sprintf("%d instances, healthy %v, %d raft servers", len(st.Servers), h.Healthy, len(h.Servers))
	})
	for i := range before.Servers {
		assert.Equal(t, before.Servers[i].Instance, st.Servers[i].Instance)
		assert.Equal(t, "A", st.Servers[i].Image)
		assert.True(t, st.Servers[i].Healthy && st.Servers[i].Voter)
	}

	// Firing the bad image again is refused, by the CLI and by the handlers.
	out, code = e.run("fire", "--image", "broken")
	assert.Equal(t, app.ExitRefused, code, out)
	assert.Contains(t, out, "image broken is marked bad")
	id := e.fireRaw([]byte(`{"image_id":"broken"}`))
	assert.Contains(t, e.waitHandled(id, time.Minute), "refused: image broken is marked bad")
	assert.Len(t, e.everLaunched(), 4, "nothing launched again")

	out, code = e.run("status")
	require.Equal(t, app.ExitOK, code, out)
	assert.Contains(t, out, "failed")
	assert.Contains(t, out, "is not a stable healthy voter", "status says why the roll failed")
	assert.Contains(t, out, "broken", "status lists the bad image")
}

// TestFaults_UnhealthyClusterHoldsThenResumesOnRecovery takes one server down and
// fires: nothing is launched, and status and plan say why. When the server comes
// back, the roll proceeds by itself and completes.
func TestFaults_UnhealthyClusterHoldsThenResumesOnRecovery(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 3, "")
	out, code := e.run("local", "image", "register", "B")
	require.Equal(t, app.ExitOK, code, out)
	insts, err := e.p.Instances(context.Background())
	require.NoError(t, err)
	var down cloud.Instance
	for _, s := range e.status().Servers {
		if !s.Leader {
			down = cloud.Instance{ID: s.Instance}
			break
		}
	}
	require.NotEmpty(t, down.ID)
	killed := time.Now()
	require.NoError(t, e.p.Kill(context.Background(), down.ID))
	t.Logf("killed %s: %s", down.ID, e.procOf(down.ID))
	// cleanup_dead_servers (consul.d/server.hcl): once serf declares the server
	// failed, autopilot reports it unhealthy until its next reconcile removes it from
	// raft, then reports the two left healthy. That window may be a second, or none
	// at all when the removal comes before autopilot's next health update, so a
	// server gone from autopilot's list was seen down too.
	var seen string
	testcluster.WaitFor(t, time.Minute, "autopilot to see the server down", func() (bool, string) {
		h, err := e.client.Operator().AutopilotServerHealth(nil)
		if err != nil {
			return false, err.Error()
		}
		listed := slices.ContainsFunc(h.Servers, func(s api.ServerHealth) bool { return s.Name == down.ID })
		seen = fmt.Sprintf("%s after the kill: %s; killed %s: %s",
			time.Since(killed).Round(time.Millisecond), describeAutopilot(h), down.ID, e.procOf(down.ID))
		return !h.Healthy || !listed, seen
	})
	t.Logf("autopilot saw the server down: %s", seen)

	out, code = e.run("fire", "--image", "B")
	require.Equal(t, app.ExitOK, code, out)
	id := eventID(t, out)
	assert.Contains(t, e.waitHandled(id, time.Minute), "hold: ")

	out, code = e.run("plan")
	require.Equal(t, app.ExitOK, code, out)
	assert.Contains(t, out, "hold")
	assert.Contains(t, out, "cluster not healthy, will not launch")
	out, code = e.run("status")
	require.Equal(t, app.ExitOK, code, out)
	assert.Contains(t, out, "cluster not healthy, will not launch", "status explains the hold")
	now, err := e.p.Instances(context.Background())
	require.NoError(t, err)
	assert.Equal(t, insts, now, "nothing launched while the cluster is unhealthy")

	samples := e.sample()
	require.NoError(t, e.p.Restart(context.Background(), down.ID))
	e.waitRolled("B", 5*time.Minute)
	maxLive, maxRaft := samples.Stop()
	e.checkRolled("B", maxLive, maxRaft)
}

// describeAutopilot says what autopilot reports of each server, for a failure.
func describeAutopilot(h *api.OperatorHealthReply) string {
	parts := []string{fmt.Sprintf("healthy=%v", h.Healthy)}
	for _, s := range h.Servers {
		parts = append(parts, fmt.Sprintf("%s(healthy=%v serf=%s leader=%v last_contact=%s)", s.Name, s.Healthy, s.SerfStatus, s.Leader, s.LastContact))
	}
	return strings.Join(parts, " ")
}

// procOf says what /proc shows of the instance's server process, by the PID in the
// provider's state: whether a Kill reached it.
func (e *env) procOf(instanceID string) string {
	b, err := os.ReadFile(filepath.Join(e.state, "state.json"))
	if err != nil {
		return err.Error()
	}
	var st struct {
		Instances []struct {
			ID  string `json:"id"`
			PID int    `json:"pid"`
		} `json:"instances"`
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return err.Error()
	}
	for _, in := range st.Instances {
		if in.ID == instanceID {
			stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", in.PID))
			if err != nil {
				return fmt.Sprintf("pid %d: %v", in.PID, err)
			}
			// pid (comm) state ...: enough to tell running, zombie and gone apart.
			f := strings.Fields(string(stat))
			return fmt.Sprintf("pid %d: %s", in.PID, strings.Join(f[:min(3, len(f))], " "))
		}
	}
	return "not in the state"
}

// eventID reads the event ID from `rehydrate fire` output.
func eventID(t *testing.T, out string) string {
	t.Helper()
	i := strings.Index(out, "(event ")
	require.GreaterOrEqual(t, i, 0, out)
	var id string
	_, err := fmt.Sscanf(out[i:], "(event %36s", &id)
	require.NoError(t, err, out)
	return id
}
