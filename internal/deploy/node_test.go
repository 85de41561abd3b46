package deploy

// Integration tests of the deploy handler (Node.Handle) and the rollout's edges
// (Rollout.Run), against a real Consul: one server and one client agent, shared by
// the cases of TestNode. Each test registers its own service on the client agent,
// with a TTL check whose health the test sets, so the tests stay independent and
// run in parallel. The deploy and rollback commands are /bin/sh scripts that log
// every run, with its environment, to a file in the test's temporary directory.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/consul-rehydrate/consul-rehydrate/config"
	"github.com/consul-rehydrate/consul-rehydrate/internal/coord"
	"github.com/consul-rehydrate/consul-rehydrate/test/testcluster"
)

// ---------------------------------------------------------------------------
// One cluster for the package: each case is a parallel subtest of TestNode.

// shared is TestNode's cluster, which every case's fixture uses.
var shared *testcluster.Cluster

// TestNode runs every case against one cluster of one server and one client agent.
func TestNode(t *testing.T) {
	shared = testcluster.Start(t, testcluster.Options{Servers: 1, Clients: 1})
	for _, tc := range []struct {
		name string
		run  func(*testing.T)
	}{
		{"Handle_DeploysTheVersionInMaintenanceThenRecordsSuccessAndTheNewCurrent", testHandle_DeploysTheVersionInMaintenanceThenRecordsSuccessAndTheNewCurrent},
		{"Handle_ReplayOfAFinishedDeploymentRunsNothingAndChangesNothing", testHandle_ReplayOfAFinishedDeploymentRunsNothingAndChangesNothing},
		{"Handle_UnhealthyAfterTheDeployAndAfterTheRollbackEndsFailedAndInMaintenance", testHandle_UnhealthyAfterTheDeployAndAfterTheRollbackEndsFailedAndInMaintenance},
		{"Handle_UnhealthyAfterTheDeployButHealthyAfterTheRollbackEndsRolledBack", testHandle_UnhealthyAfterTheDeployButHealthyAfterTheRollbackEndsRolledBack},
		{"Handle_FailedDeployWithoutAPreviousVersionEndsFailedAndInMaintenance", testHandle_FailedDeployWithoutAPreviousVersionEndsFailedAndInMaintenance},
		{"Handle_ResumesADeploymentWhoseHandlerDiedFromTheSamePreviousVersion", testHandle_ResumesADeploymentWhoseHandlerDiedFromTheSamePreviousVersion},
		{"Handle_NodeLockHeldByAnotherHandlerReturnsWithinTheLockWaitDoingNothing", testHandle_NodeLockHeldByAnotherHandlerReturnsWithinTheLockWaitDoingNothing},
		{"Handle_ActsOnTheDesiredValueReadUnderTheLockNotTheStalePayload", testHandle_ActsOnTheDesiredValueReadUnderTheLockNotTheStalePayload},
		{"Handle_CommandPastItsTimeoutIsKilledWithItsWholeProcessGroup", testHandle_CommandPastItsTimeoutIsKilledWithItsWholeProcessGroup},
		{"Rollout_ServiceLockHeldByAnotherRolloutIsBusyAndNamesTheHolder", testRollout_ServiceLockHeldByAnotherRolloutIsBusyAndNamesTheHolder},
		{"Rollout_EveryNodeAlreadyOnTheVersionWritesNoDesiredValueAndEndsDone", testRollout_EveryNodeAlreadyOnTheVersionWritesNoDesiredValueAndEndsDone},
		{"Handle_OutOfTimeMidDeployIsErrTimedOutNotLockLostAndRollsNothingBack", testHandle_OutOfTimeMidDeployIsErrTimedOutNotLockLostAndRollsNothingBack},
		{"Handle_LockLostBeforeTheRollbackIsErrLockLostNotErrTimedOut", testHandle_LockLostBeforeTheRollbackIsErrLockLostNotErrTimedOut},
		{"Rollout_OutOfTimeAwaitingANodeIsErrTimedOutNotLockLostAndRollsNothingBack", testRollout_OutOfTimeAwaitingANodeIsErrTimedOutNotLockLostAndRollsNothingBack},
		{"Rollout_LockLostAwaitingANodeIsErrLockLostNotErrTimedOut", testRollout_LockLostAwaitingANodeIsErrLockLostNotErrTimedOut},
		{"Handle_CurrentThatIsNotAVersionIsRefusedBeforeTheLockAndRunsNothing", testHandle_CurrentThatIsNotAVersionIsRefusedBeforeTheLockAndRunsNothing},
		{"Handle_ResumedPreviousThatIsNotAVersionIsRefusedAndRunsNothing", testHandle_ResumedPreviousThatIsNotAVersionIsRefusedAndRunsNothing},
		{"Handle_ArtifactAllowListAndRequiredSHA256RefuseOrPassTheDigestOn", testHandle_ArtifactAllowListAndRequiredSHA256RefuseOrPassTheDigestOn},
		{"Rollout_AFakeCatalogRegistrationDoesNotJoinTheRollout", testRollout_AFakeCatalogRegistrationDoesNotJoinTheRollout},
		{"Rollout_NodeFilterSelectsTheNodesAndABadOneIsAUsageError", testRollout_NodeFilterSelectsTheNodesAndABadOneIsAUsageError},
		{"Rollout_ConfiguredNodeFilterLeavesOutARealNodeAndTheFlagOnlyNarrowsIt", testRollout_ConfiguredNodeFilterLeavesOutARealNodeAndTheFlagOnlyNarrowsIt},
		{"Rollout_NodeWhoseCurrentIsNotAVersionIsRefusedAndAsksAgainForThePreviousArtifact", testRollout_NodeWhoseCurrentIsNotAVersionIsRefusedAndAsksAgainForThePreviousArtifact},
		{"Show_EscapesTerminalControlsInEveryNodeWritableString", testShow_EscapesTerminalControlsInEveryNodeWritableString},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.run(t)
		})
	}
}

// ---------------------------------------------------------------------------
// A service on the client agent, its deploy block, and a handler for it.

const (
	minHealthy = 300 * time.Millisecond
	waitLimit  = 30 * time.Second // bound of every wait on something the test set in motion
)

type fixture struct {
	t     *testing.T
	agent *testcluster.Agent
	c     *api.Client
	svc   string
	check string
	dir   string // the scripts' working directory: their run log, gates and pid files
	dc    *config.DeployConfig
	node  *Node
}

// newFixture registers service svc on the client agent with a TTL check in state
// health, and returns a handler whose deploy block runs the deploy and rollback
// scripts (see script).
func newFixture(t *testing.T, svc, health, deploy, rollback string) *fixture {
	t.Helper()
	a := shared.Clients[0]
	f := &fixture{t: t, agent: a, c: a.Client(), svc: svc, check: "ttl-" + svc, dir: t.TempDir()}
	require.NoError(t, f.c.Agent().ServiceRegister(&api.AgentServiceRegistration{
		ID: svc, Name: svc, Port: 8080,
		Check: &api.AgentServiceCheck{CheckID: f.check, Name: svc + " ttl", TTL: "30s", Status: health},
	}))
	f.dc = &config.DeployConfig{
		Service:         svc,
		Command:         f.script(deploy),
		RollbackCommand: f.script(rollback),
		Timeout:         10 * time.Second,
		HealthTimeout:   2 * time.Second,
		MinHealthyTime:  minHealthy,
	}
	f.node = &Node{
		Client: f.c,
		Name:   a.Name,
		Config: &config.Config{Deploys: []*config.DeployConfig{f.dc}},
		Log:    hclog.New(&hclog.LoggerOptions{Name: svc, Output: testWriter{t}, Level: hclog.Debug}),
		Lock:   coord.LockOptions{TTL: 10 * time.Second, Delay: time.Second, Wait: 2 * time.Second, Holder: "test"},
		Poll:   100 * time.Millisecond,
		Now:    time.Now,
	}
	return f
}

// testWriter sends the handler's log to the test's log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// script is a command that first appends a line with its environment to the run
// log, then runs body, in the fixture's directory.
func (f *fixture) script(body string) []string {
	return []string{"/bin/sh", "-c", fmt.Sprintf(`cd '%s' || exit 99
printf 'version=%%s id=%%s artifact=%%s sha256=%%s previous=%%s rollback=%%s service=%%s\n' \
  "$%s" "$%s" "$%s" "$%s" "$%s" "$%s" "$%s" >> runs
%s`, f.dir, EnvVersion, EnvID, EnvArtifact, EnvSHA256, EnvPreviousVersion, EnvRollback, EnvService, body)}
}

// gate is script body that stops at a gate: it creates name.started and waits (at
// most 10s) for name.go, which the test's atGate creates.
func gate(name string) string {
	return fmt.Sprintf(`touch %[1]s.started
i=0; while [ ! -e %[1]s.go ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
`, name)
}

// atGate runs fn while a script waits at the gate name, then lets it through.
// The returned stop ends the watch and reports whether fn ran.
func (f *fixture) atGate(name string, fn func()) (stop func() bool) {
	quit, ran := make(chan struct{}), make(chan bool, 1)
	go func() {
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			if _, err := os.Stat(filepath.Join(f.dir, name+".started")); err == nil {
				fn()
				_ = os.WriteFile(filepath.Join(f.dir, name+".go"), nil, 0o644)
				ran <- true
				return
			}
			select {
			case <-quit:
				ran <- false
				return
			case <-tick.C:
			}
		}
	}()
	return func() bool { close(quit); return <-ran }
}

// runs returns the scripts' runs, in order, each its environment.
func (f *fixture) runs() []map[string]string {
	b, err := os.ReadFile(filepath.Join(f.dir, "runs"))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	require.NoError(f.t, err)
	var out []map[string]string
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		env := map[string]string{}
		for _, kv := range strings.Fields(line) {
			k, v, _ := strings.Cut(kv, "=")
			env[k] = v
		}
		out = append(out, env)
	}
	return out
}

func (f *fixture) ctx() context.Context {
	ctx, cancel := context.WithTimeout(f.t.Context(), time.Minute)
	f.t.Cleanup(cancel)
	return ctx
}

func (f *fixture) key(name string) string { return NodeKey(f.svc, f.agent.Name, name) }

func (f *fixture) put(name string, value []byte) {
	f.t.Helper()
	_, err := f.c.KV().Put(&api.KVPair{Key: f.key(name), Value: value}, nil)
	require.NoError(f.t, err)
}

func (f *fixture) putJSON(name string, v any) {
	f.t.Helper()
	b, err := json.Marshal(v)
	require.NoError(f.t, err)
	f.put(name, b)
}

func (f *fixture) get(name string) *api.KVPair {
	f.t.Helper()
	p, _, err := f.c.KV().Get(f.key(name), &api.QueryOptions{RequireConsistent: true})
	require.NoError(f.t, err)
	return p
}

// desire writes the node's desired value and returns the pair read back, as the
// key watch would hand it to the handler.
func (f *fixture) desire(d Desired) *api.KVPair {
	f.t.Helper()
	f.putJSON(KeyDesired, d)
	p := f.get(KeyDesired)
	require.NotNil(f.t, p)
	return p
}

func (f *fixture) status() *Status {
	f.t.Helper()
	p := f.get(KeyStatus)
	if p == nil {
		return nil
	}
	var st Status
	require.NoError(f.t, json.Unmarshal(p.Value, &st), "status %s", p.Value)
	return &st
}

func (f *fixture) current() string {
	f.t.Helper()
	p := f.get(KeyCurrent)
	if p == nil {
		return ""
	}
	return string(p.Value)
}

// maintenance returns the service's maintenance check on the agent, nil if it is
// not in maintenance.
func (f *fixture) maintenance() *api.AgentCheck {
	f.t.Helper()
	checks, err := f.c.Agent().Checks()
	require.NoError(f.t, err)
	return maintenanceOf(checks, f.svc)
}

func maintenanceOf(checks map[string]*api.AgentCheck, svc string) *api.AgentCheck {
	for id, chk := range checks {
		if strings.HasPrefix(id, "_service_maintenance:") && chk.ServiceID == svc {
			return chk
		}
	}
	return nil
}

func (f *fixture) setHealth(status string) error {
	return f.c.Agent().UpdateTTL(f.check, "set by the test", status)
}

// ---------------------------------------------------------------------------
// The deploy handler.

func testHandle_DeploysTheVersionInMaintenanceThenRecordsSuccessAndTheNewCurrent(t *testing.T) {
	f := newFixture(t, "success", api.HealthPassing,
		`echo "deploying $REHYDRATE_DEPLOY_VERSION"; echo "a warning" >&2
`+gate("deploy")+`echo "deployed $REHYDRATE_DEPLOY_VERSION"`,
		`exit 0`)
	f.put(KeyCurrent, []byte("v1"))
	pair := f.desire(Desired{ID: "d-success", Version: "v2", Artifact: "file:///srv/web-v2.tar.gz"})

	// While the command waits at its gate, the service must be in maintenance.
	var during *api.AgentCheck
	var duringErr error
	stop := f.atGate("deploy", func() {
		var checks map[string]*api.AgentCheck
		if checks, duringErr = f.c.Agent().Checks(); duringErr == nil {
			during = maintenanceOf(checks, f.svc)
		}
	})
	err := f.node.Handle(f.ctx(), pair)
	require.True(t, stop(), "the deploy command never reached its gate")
	require.NoError(t, err)

	require.NoError(t, duringErr)
	require.NotNil(t, during, "the service was not in maintenance while the deploy command ran")
	assert.Equal(t, api.HealthCritical, during.Status)
	assert.Contains(t, during.Notes, "d-success", "the maintenance reason names the deployment")

	runs := f.runs()
	require.Len(t, runs, 1, "one run of the deploy command")
	assert.Equal(t, map[string]string{
		"version": "v2", "id": "d-success", "artifact": "file:///srv/web-v2.tar.gz", "sha256": "",
		"previous": "v1", "rollback": "false", "service": "success",
	}, runs[0])

	st := f.status()
	require.NotNil(t, st)
	assert.Equal(t, StateSucceeded, st.State)
	assert.Equal(t, "d-success", st.ID)
	assert.Equal(t, "v2", st.Version)
	assert.Equal(t, "v1", st.Previous)
	assert.Equal(t, 1, st.Attempts)
	assert.Empty(t, st.Error)
	require.NotNil(t, st.Finished)
	assert.False(t, st.Finished.Before(st.Started))
	assert.Contains(t, st.Output, "deploying v2")
	assert.Contains(t, st.Output, "a warning")
	assert.Contains(t, st.Output, "deployed v2")
	assert.Equal(t, "v2", f.current())
	assert.Nil(t, f.maintenance(), "maintenance is off after a successful deployment")
}

func testHandle_ReplayOfAFinishedDeploymentRunsNothingAndChangesNothing(t *testing.T) {
	f := newFixture(t, "replay", api.HealthPassing, `echo ok`, `exit 0`)
	f.put(KeyCurrent, []byte("v1"))
	pair := f.desire(Desired{ID: "d-replay", Version: "v2"})
	require.NoError(t, f.node.Handle(f.ctx(), pair))
	require.Len(t, f.runs(), 1)
	before := f.get(KeyStatus)
	require.NotNil(t, before)
	require.Contains(t, string(before.Value), StateSucceeded)

	require.NoError(t, f.node.Handle(f.ctx(), pair), "a replay is no error")
	assert.Len(t, f.runs(), 1, "a replay runs no command")
	after := f.get(KeyStatus)
	require.NotNil(t, after)
	assert.Equal(t, before.ModifyIndex, after.ModifyIndex, "a replay does not write the status")
	assert.Equal(t, string(before.Value), string(after.Value))
	assert.Equal(t, "v2", f.current())
}

func testHandle_UnhealthyAfterTheDeployAndAfterTheRollbackEndsFailedAndInMaintenance(t *testing.T) {
	// The TTL check stays critical throughout.
	f := newFixture(t, "unhealthy", api.HealthCritical, `echo deployed`, `echo rolled back`)
	f.put(KeyCurrent, []byte("v1"))
	pair := f.desire(Desired{ID: "d-unhealthy", Version: "v2", Artifact: "art-v2"})

	err := f.node.Handle(f.ctx(), pair)
	require.Error(t, err)
	assert.ErrorIs(t, err, ErrFailed)
	assert.Contains(t, err.Error(), "did not pass")

	runs := f.runs()
	require.Len(t, runs, 2, "the deploy, then the rollback")
	assert.Equal(t, "v2", runs[0]["version"])
	assert.Equal(t, "false", runs[0]["rollback"])
	assert.Equal(t, map[string]string{
		"version": "v1", "id": "d-unhealthy", "artifact": "", "sha256": "", "previous": "v1",
		"rollback": "true", "service": "unhealthy",
	}, runs[1], "the rollback runs with the previous version and without the failed version's artifact")

	st := f.status()
	require.NotNil(t, st)
	assert.Equal(t, StateFailed, st.State)
	assert.Equal(t, "v2", st.Version)
	assert.Equal(t, "v1", st.Previous)
	assert.Contains(t, st.Error, "roll back to v1")
	assert.Contains(t, st.Output, "rolled back", "the output is the last command's")
	require.NotNil(t, st.Finished)
	assert.Equal(t, "v1", f.current(), "current is not moved to a version that never became healthy")

	m := f.maintenance()
	require.NotNil(t, m, "a node whose rollback failed stays in maintenance")
	assert.Contains(t, m.Notes, "d-unhealthy", "the maintenance reason names the deployment")
	assert.Contains(t, m.Notes, f.key(KeyStatus), "the maintenance reason points to the status")
}

func testHandle_UnhealthyAfterTheDeployButHealthyAfterTheRollbackEndsRolledBack(t *testing.T) {
	f := newFixture(t, "rolledback", api.HealthCritical, `echo deployed`, gate("rollback")+`echo rolled back`)
	f.put(KeyCurrent, []byte("v1"))
	pair := f.desire(Desired{ID: "d-rolledback", Version: "v2"})

	// The old version is healthy again: the check passes once the rollback runs.
	var flipErr error
	stop := f.atGate("rollback", func() { flipErr = f.setHealth(api.HealthPassing) })
	err := f.node.Handle(f.ctx(), pair)
	require.True(t, stop(), "the rollback command never reached its gate")
	require.NoError(t, flipErr)

	require.Error(t, err)
	assert.ErrorIs(t, err, ErrFailed, "a rolled back deployment is still a failed one")
	assert.Contains(t, err.Error(), "rolled back to v1")

	runs := f.runs()
	require.Len(t, runs, 2)
	assert.Equal(t, "false", runs[0]["rollback"])
	assert.Equal(t, "v1", runs[1]["version"])
	assert.Equal(t, "true", runs[1]["rollback"])

	st := f.status()
	require.NotNil(t, st)
	assert.Equal(t, StateRolledBack, st.State)
	assert.Equal(t, "v1", st.Previous)
	assert.Contains(t, st.Error, "did not pass", "the status says why the deployment failed")
	require.NotNil(t, st.Finished)
	assert.Equal(t, "v1", f.current(), "current is the previous version after a rollback")
	assert.Nil(t, f.maintenance(), "a rolled back node is healthy and out of maintenance")
}

func testHandle_FailedDeployWithoutAPreviousVersionEndsFailedAndInMaintenance(t *testing.T) {
	f := newFixture(t, "noprevious", api.HealthPassing, `echo "cannot install $REHYDRATE_DEPLOY_VERSION" >&2; exit 1`, `exit 0`)
	pair := f.desire(Desired{ID: "d-noprevious", Version: "v2"})

	err := f.node.Handle(f.ctx(), pair)
	require.Error(t, err)
	assert.ErrorIs(t, err, ErrFailed)
	assert.Contains(t, err.Error(), "no previous version")

	runs := f.runs()
	require.Len(t, runs, 1, "no rollback without a version to roll back to")
	assert.Equal(t, "", runs[0]["previous"])

	st := f.status()
	require.NotNil(t, st)
	assert.Equal(t, StateFailed, st.State)
	assert.Equal(t, "", st.Previous)
	assert.Contains(t, st.Error, "no previous version")
	assert.Contains(t, st.Output, "cannot install v2")
	assert.Equal(t, "", f.current())

	m := f.maintenance()
	require.NotNil(t, m, "a node in an unknown state stays in maintenance")
	assert.Contains(t, m.Notes, "d-noprevious")
	// The reason stays the same from the deploy's start to its end (the agent keeps
	// the first one), and points to the status, which says the deployment failed.
	want := fmt.Sprintf("consul-rehydrate: deployment d-noprevious of noprevious v2; its state is in %s", f.key(KeyStatus))
	assert.Equal(t, want, m.Notes)
}

func testHandle_ResumesADeploymentWhoseHandlerDiedFromTheSamePreviousVersion(t *testing.T) {
	f := newFixture(t, "resume", api.HealthPassing, `echo ok`, `exit 0`)
	started := time.Now().UTC().Add(-time.Minute).Truncate(time.Second)
	// The dead handler had written current already: the previous version must come
	// from the status it left, not from current.
	f.put(KeyCurrent, []byte("v2"))
	f.putJSON(KeyStatus, Status{ID: "d-resume", Version: "v2", Previous: "v1", State: StateDeploying,
		Started: started, Attempts: 1})
	pair := f.desire(Desired{ID: "d-resume", Version: "v2"})

	require.NoError(t, f.node.Handle(f.ctx(), pair))
	runs := f.runs()
	require.Len(t, runs, 1, "the unfinished deployment runs again")
	assert.Equal(t, "v2", runs[0]["version"])
	assert.Equal(t, "v1", runs[0]["previous"])

	st := f.status()
	require.NotNil(t, st)
	assert.Equal(t, StateSucceeded, st.State)
	assert.Equal(t, 2, st.Attempts)
	assert.Equal(t, "v1", st.Previous)
	assert.True(t, st.Started.Equal(started), "started is the first attempt's: %s, want %s", st.Started, started)
	assert.Equal(t, "v2", f.current())
}

func testHandle_NodeLockHeldByAnotherHandlerReturnsWithinTheLockWaitDoingNothing(t *testing.T) {
	f := newFixture(t, "locked", api.HealthPassing, `echo ok`, `exit 0`)
	f.put(KeyCurrent, []byte("v1"))
	held, err := coord.LockKey(f.ctx(), f.c, f.key(KeyLock),
		coord.LockOptions{TTL: 10 * time.Second, Delay: time.Second, Wait: 2 * time.Second, Holder: "other handler"})
	require.NoError(t, err)
	defer func() { assert.NoError(t, held.Release()) }()
	pair := f.desire(Desired{ID: "d-locked", Version: "v2"})

	start := time.Now()
	require.NoError(t, f.node.Handle(f.ctx(), pair), "the lock holder will handle the newest value")
	elapsed := time.Since(start)
	assert.Less(t, elapsed, f.node.Lock.Wait+3*time.Second, "Handle waits about Lock.Wait for the lock")
	assert.Empty(t, f.runs(), "nothing runs without the lock")
	assert.Nil(t, f.get(KeyStatus), "no status is written without the lock")
	assert.Equal(t, "v1", f.current())
	assert.Nil(t, f.maintenance())
	require.NoError(t, held.Verify(), "the other handler still holds its lock")
}

func testHandle_ActsOnTheDesiredValueReadUnderTheLockNotTheStalePayload(t *testing.T) {
	f := newFixture(t, "stale", api.HealthPassing, `echo ok`, `exit 0`)
	f.put(KeyCurrent, []byte("v1"))
	stale := f.desire(Desired{ID: "d-stale-a", Version: "v2"})
	f.desire(Desired{ID: "d-stale-b", Version: "v3"})

	require.NoError(t, f.node.Handle(f.ctx(), stale))
	runs := f.runs()
	require.Len(t, runs, 1, "one deployment: the key's value now")
	assert.Equal(t, "d-stale-b", runs[0]["id"])
	assert.Equal(t, "v3", runs[0]["version"])

	st := f.status()
	require.NotNil(t, st)
	assert.Equal(t, "d-stale-b", st.ID)
	assert.Equal(t, StateSucceeded, st.State)
	assert.Equal(t, "v3", f.current())
}

func testHandle_CommandPastItsTimeoutIsKilledWithItsWholeProcessGroup(t *testing.T) {
	f := newFixture(t, "timeout", api.HealthPassing, `sleep 30 &
echo $! > child.pid
echo "started child"
sleep 30`, `exit 0`)
	f.dc.Timeout = time.Second
	pair := f.desire(Desired{ID: "d-timeout", Version: "v2"})

	start := time.Now()
	err := f.node.Handle(f.ctx(), pair)
	elapsed := time.Since(start)
	require.Error(t, err)
	assert.ErrorIs(t, err, ErrFailed)
	assert.Contains(t, err.Error(), "killed after its timeout")
	assert.Less(t, elapsed, 10*time.Second, "the handler is not held up by the killed command")

	st := f.status()
	require.NotNil(t, st)
	assert.Equal(t, StateFailed, st.State)
	assert.Contains(t, st.Error, "killed after its timeout")
	assert.Contains(t, st.Output, "started child")

	b, err := os.ReadFile(filepath.Join(f.dir, "child.pid"))
	require.NoError(t, err, "the script recorded its background child's pid")
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	require.NoError(t, err)
	// Nothing reaps orphans here (PID 1 does not), so a killed child may linger as a
	// zombie: that counts as gone.
	deadline := time.Now().Add(3 * time.Second)
	for !processGone(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("the command's background child %d still runs 3s after the timeout: the process group was not killed", pid)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// processGone reports whether pid has exited: no such process, or a zombie.
func processGone(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	// pid (comm) state ...; comm may hold spaces and parentheses.
	i := bytes.LastIndexByte(b, ')')
	fields := strings.Fields(string(b[i+1:]))
	return len(fields) > 0 && (fields[0] == "Z" || fields[0] == "X")
}

// ---------------------------------------------------------------------------
// The rollout.

func newRollout(c *api.Client, svc, version string) *Rollout {
	return &Rollout{
		Client: c, Service: svc, Version: version, Batch: 1, MaxUnavailable: 1,
		NodeTimeout: 10 * time.Second, Poll: 100 * time.Millisecond,
		Lock: coord.LockOptions{TTL: 10 * time.Second, Delay: time.Second, Wait: time.Second},
		Now:  time.Now,
	}
}

func testRollout_ServiceLockHeldByAnotherRolloutIsBusyAndNamesTheHolder(t *testing.T) {
	f := newFixture(t, "busy", api.HealthPassing, `echo ok`, `exit 0`)
	holder := "rollout 20260101T000000Z-abcdef of busy v9"
	held, err := coord.LockKey(f.ctx(), f.c, ServiceKey(f.svc, KeyLock),
		coord.LockOptions{TTL: 10 * time.Second, Delay: time.Second, Wait: time.Second, Holder: holder})
	require.NoError(t, err)
	defer func() { assert.NoError(t, held.Release()) }()

	r := newRollout(f.c, f.svc, "v2")
	start := time.Now()
	rec, err := r.Run(f.ctx())
	require.Error(t, err)
	assert.ErrorIs(t, err, ErrBusy)
	assert.Contains(t, err.Error(), holder, "the error names who holds the lock")
	assert.Nil(t, rec)
	assert.Less(t, time.Since(start), r.Lock.Wait+3*time.Second)
	p, _, err := f.c.KV().Get(ServiceKey(f.svc, "rollout"), nil)
	require.NoError(t, err)
	assert.Nil(t, p, "a busy rollout writes no record")
	assert.Nil(t, f.get(KeyDesired), "a busy rollout writes no desired value")
}

func testRollout_EveryNodeAlreadyOnTheVersionWritesNoDesiredValueAndEndsDone(t *testing.T) {
	f := newFixture(t, "uptodate", api.HealthPassing, `echo ok`, `exit 0`)
	f.put(KeyCurrent, []byte("v2"))
	fin := time.Now().UTC()
	f.putJSON(KeyStatus, Status{ID: "d-earlier", Version: "v2", Previous: "v1", State: StateSucceeded,
		Started: fin.Add(-time.Minute), Finished: &fin, Attempts: 1})
	testcluster.WaitFor(t, waitLimit, "the service in the catalog", func() (bool, string) {
		svcs, _, err := f.c.Catalog().Service(f.svc, "", nil)
		return err == nil && len(svcs) == 1, fmt.Sprintf("%d instances, error %v", len(svcs), err)
	})

	var out bytes.Buffer
	r := newRollout(f.c, f.svc, "v2")
	r.Out = &out
	rec, err := r.Run(f.ctx())
	require.NoError(t, err, "output:\n%s", out.String())
	require.NotNil(t, rec)
	assert.Equal(t, RolloutDone, rec.State)
	assert.Equal(t, "v2", rec.Version)
	assert.Equal(t, []NodeRecord{{Node: f.agent.Name, Previous: "v2", State: NodeSkipped}}, rec.Nodes)
	require.NotNil(t, rec.Finished)

	assert.Nil(t, f.get(KeyDesired), "no desired value for a node on the version")
	assert.Empty(t, f.runs())
	p, _, err := f.c.KV().Get(ServiceKey(f.svc, "rollout"), &api.QueryOptions{RequireConsistent: true})
	require.NoError(t, err)
	require.NotNil(t, p, "the rollout is recorded")
	var stored Record
	require.NoError(t, json.Unmarshal(p.Value, &stored))
	assert.Equal(t, RolloutDone, stored.State)
	assert.Equal(t, rec.ID, stored.ID)
	assert.Equal(t, rec.Nodes, stored.Nodes)
	holder, err := coord.HolderOf(f.ctx(), f.c, ServiceKey(f.svc, KeyLock))
	require.NoError(t, err)
	assert.Empty(t, holder, "the service lock is released")
}

// ---------------------------------------------------------------------------
// A lost lock and running out of time are told apart.

func testHandle_OutOfTimeMidDeployIsErrTimedOutNotLockLostAndRollsNothingBack(t *testing.T) {
	f := newFixture(t, "outoftime", api.HealthPassing, gate("deploy")+`echo deployed`, `echo rolled back`)
	f.put(KeyCurrent, []byte("v1"))
	pair := f.desire(Desired{ID: "d-outoftime", Version: "v2"})

	// Long enough to reach the deploy command on a loaded machine; the command then
	// waits at its gate until the handler's time is up.
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
	defer cancel()
	stop := f.atGate("deploy", func() { <-ctx.Done() })
	err := f.node.Handle(ctx, pair)
	require.True(t, stop(), "the deploy command never reached its gate")

	require.ErrorIs(t, err, ErrTimedOut)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.NotErrorIs(t, err, ErrLockLost, "running out of time is not losing the lock")
	require.NotErrorIs(t, err, ErrFailed, "the deployment did not fail: its handler ran out of time")
	require.NotErrorIs(t, err, ErrConsul)
	assert.Len(t, f.runs(), 1, "no rollback ran")
	st := f.status()
	require.NotNil(t, st)
	assert.Equal(t, StateDeploying, st.State, "not final: the next handler resumes it")
	assert.Equal(t, "v1", f.current())
	holder, err := coord.HolderOf(t.Context(), f.c, f.key(KeyLock))
	require.NoError(t, err)
	assert.Empty(t, holder, "the node lock is released")
}

func testHandle_LockLostBeforeTheRollbackIsErrLockLostNotErrTimedOut(t *testing.T) {
	f := newFixture(t, "lostlock", api.HealthPassing, gate("deploy")+`exit 1`, `echo rolled back`)
	f.put(KeyCurrent, []byte("v1"))
	pair := f.desire(Desired{ID: "d-lostlock", Version: "v2"})

	// While the deploy command runs, the node lock's session ends; the command then
	// fails, and the rollback must not start without the lock.
	var destroyErr error
	stop := f.atGate("deploy", func() { destroyErr = destroyLockSession(f.c, f.key(KeyLock)) })
	ctx := f.ctx() // a deadline, far off
	err := f.node.Handle(ctx, pair)
	require.True(t, stop(), "the deploy command never reached its gate")
	require.NoError(t, destroyErr)

	require.ErrorIs(t, err, ErrLockLost)
	require.NotErrorIs(t, err, ErrTimedOut)
	require.NotErrorIs(t, err, context.DeadlineExceeded)
	require.NoError(t, ctx.Err(), "the deadline had not passed")
	assert.Len(t, f.runs(), 1, "the rollback command did not run without the lock")
}

func testRollout_OutOfTimeAwaitingANodeIsErrTimedOutNotLockLostAndRollsNothingBack(t *testing.T) {
	f := newFixture(t, "rollout-outoftime", api.HealthPassing, `echo ok`, `exit 0`)
	f.put(KeyCurrent, []byte("v1"))
	waitInCatalog(t, f)

	// No handler runs here: the node never reports, and the rollout waits for it
	// until its time is up, well before NodeTimeout.
	var out bytes.Buffer
	r := newRollout(f.c, f.svc, "v2")
	r.Out = &out
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
	defer cancel()
	start := time.Now()
	rec, err := r.Run(ctx)
	require.Less(t, time.Since(start), r.NodeTimeout, "stopped by the deadline, not the node's timeout")

	require.ErrorIs(t, err, ErrTimedOut, "output:\n%s", out.String())
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.NotErrorIs(t, err, ErrLockLost, "running out of time is not losing the lock")
	require.NotErrorIs(t, err, ErrFailed)
	require.NotNil(t, rec)
	assert.Equal(t, RolloutRunning, rec.State, "not halted")
	assert.NotContains(t, out.String(), "rolling back")
	var d Desired
	require.NoError(t, json.Unmarshal(f.get(KeyDesired).Value, &d))
	assert.Equal(t, Desired{ID: rec.ID, Version: "v2"}, d, "the node keeps the rollout's desired value: no rollback")
	holder, err := coord.HolderOf(t.Context(), f.c, ServiceKey(f.svc, KeyLock))
	require.NoError(t, err)
	assert.Empty(t, holder, "the service lock is released")
}

func testRollout_LockLostAwaitingANodeIsErrLockLostNotErrTimedOut(t *testing.T) {
	f := newFixture(t, "rollout-lostlock", api.HealthPassing, `echo ok`, `exit 0`)
	f.put(KeyCurrent, []byte("v1"))
	waitInCatalog(t, f)

	// As the rollout starts the node, its lock's session ends.
	var out bytes.Buffer
	var destroyErr error
	destroyed := false
	r := newRollout(f.c, f.svc, "v2")
	r.Out = writerFunc(func(p []byte) (int, error) {
		if !destroyed && strings.Contains(string(p), ": deploying v2") {
			destroyed, destroyErr = true, destroyLockSession(f.c, ServiceKey(f.svc, KeyLock))
		}
		return out.Write(p)
	})
	ctx := f.ctx() // a deadline, far off
	start := time.Now()
	rec, err := r.Run(ctx)
	require.Less(t, time.Since(start), r.NodeTimeout, "stopped by the loss, not the node's timeout")
	require.True(t, destroyed, "output:\n%s", out.String())
	require.NoError(t, destroyErr)

	require.ErrorIs(t, err, ErrLockLost)
	require.NotErrorIs(t, err, ErrTimedOut)
	require.NotErrorIs(t, err, context.DeadlineExceeded)
	require.NoError(t, ctx.Err(), "the deadline had not passed")
	require.NotNil(t, rec)
	assert.Equal(t, RolloutRunning, rec.State, "not halted")
	assert.NotContains(t, out.String(), "rolling back")
}

// destroyLockSession ends the session that holds the lock at key, as a lost
// session would.
func destroyLockSession(c *api.Client, key string) error {
	kv, _, err := c.KV().Get(key, &api.QueryOptions{RequireConsistent: true})
	if err != nil {
		return err
	}
	if kv == nil || kv.Session == "" {
		return fmt.Errorf("%s is not held", key)
	}
	_, err = c.Session().Destroy(kv.Session, nil)
	return err
}

func waitInCatalog(t *testing.T, f *fixture) {
	t.Helper()
	testcluster.WaitFor(t, waitLimit, "the service in the catalog", func() (bool, string) {
		svcs, _, err := f.c.Catalog().Service(f.svc, "", nil)
		return err == nil && len(svcs) == 1, fmt.Sprintf("%d instances, error %v", len(svcs), err)
	})
}

type writerFunc func([]byte) (int, error)

func (w writerFunc) Write(p []byte) (int, error) { return w(p) }

// ---------------------------------------------------------------------------
// Whoever writes a node's keys chooses what its commands run with: what they may
// choose.

func testHandle_CurrentThatIsNotAVersionIsRefusedBeforeTheLockAndRunsNothing(t *testing.T) {
	f := newFixture(t, "badcurrent", api.HealthPassing, `echo ok`, `exit 0`)
	f.put(KeyCurrent, []byte("$(touch pwned)"))
	pair := f.desire(Desired{ID: "d-badcurrent", Version: "v2"})

	err := f.node.Handle(f.ctx(), pair)
	require.ErrorIs(t, err, ErrRefused)
	assert.Equal(t, 17, exitCode(err), "exit 17, refused")
	assert.Contains(t, err.Error(), f.key(KeyCurrent)+`: version "$(touch pwned)" must be 1 to 128 characters`)
	assert.Empty(t, f.runs(), "nothing ran")
	assert.Nil(t, f.get(KeyStatus), "nothing recorded")
	assert.Nil(t, f.get(KeyLock), "refused before the node lock was taken")
	assert.Nil(t, f.maintenance())
	_, err = os.Stat(filepath.Join(f.dir, "pwned"))
	assert.ErrorIs(t, err, os.ErrNotExist)

	// Deleted, the node deploys with no version to roll back to.
	_, err = f.c.KV().Delete(f.key(KeyCurrent), nil)
	require.NoError(t, err)
	require.NoError(t, f.node.Handle(f.ctx(), pair))
	require.Len(t, f.runs(), 1)
	assert.Equal(t, "", f.runs()[0]["previous"])
}

func testHandle_ResumedPreviousThatIsNotAVersionIsRefusedAndRunsNothing(t *testing.T) {
	f := newFixture(t, "badprevious", api.HealthCritical, `echo deployed`, `echo rolled back`)
	f.put(KeyCurrent, []byte("v2"))
	// A status of an unfinished deployment, as a hostile writer left it: its previous
	// version would become the rollback command's REHYDRATE_DEPLOY_VERSION.
	f.putJSON(KeyStatus, Status{ID: "d-badprevious", Version: "v2", Previous: "../../etc/cron.d/x", State: StateDeploying,
		Started: time.Now().UTC().Add(-time.Minute), Attempts: 1})
	before := f.get(KeyStatus)
	pair := f.desire(Desired{ID: "d-badprevious", Version: "v2"})

	err := f.node.Handle(f.ctx(), pair)
	require.ErrorIs(t, err, ErrRefused)
	assert.Contains(t, err.Error(), f.key(KeyStatus)+`: previous version "../../etc/cron.d/x" must be`)
	assert.Empty(t, f.runs(), "nothing ran: not the deploy, not the rollback")
	after := f.get(KeyStatus)
	require.NotNil(t, after)
	assert.Equal(t, before.ModifyIndex, after.ModifyIndex, "the status is left as it was")
	assert.Nil(t, f.get(KeyLock))
	assert.Equal(t, "v2", f.current())
}

func testHandle_ArtifactAllowListAndRequiredSHA256RefuseOrPassTheDigestOn(t *testing.T) {
	f := newFixture(t, "pinned", api.HealthPassing, `echo ok`, `exit 0`)
	f.dc.Artifacts = []string{"https://releases.example.com/pinned/*"}
	f.dc.RequireSHA256 = true
	f.put(KeyCurrent, []byte("v1"))
	sum := strings.Repeat("AB", 32)

	refused := []struct {
		d    Desired
		want string
	}{
		{Desired{ID: "d-nosum", Version: "v2", Artifact: "https://releases.example.com/pinned/v2.tgz"}, "no sha256, and deploy.pinned.require_sha256 is set"},
		{Desired{ID: "d-elsewhere", Version: "v2", Artifact: "https://evil.test/pinned/v2.tgz", SHA256: sum}, "matches none of deploy.pinned.artifacts"},
		{Desired{ID: "d-noartifact", Version: "v2", SHA256: sum}, "no artifact, and deploy.pinned.artifacts is set"},
		{Desired{ID: "d-dotdot", Version: "v2", Artifact: "https://releases.example.com/pinned/../admin/x", SHA256: sum}, `has ".."`},
	}
	for _, r := range refused {
		pair := f.desire(r.d)
		err := f.node.Handle(f.ctx(), pair)
		require.ErrorIs(t, err, ErrRefused, r.d.ID)
		assert.Equal(t, 17, exitCode(err))
		assert.Contains(t, err.Error(), r.want, r.d.ID)
		assert.Empty(t, f.runs(), "%s ran a command", r.d.ID)
		assert.Nil(t, f.get(KeyStatus), "%s recorded something", r.d.ID)
		assert.Nil(t, f.get(KeyLock), "%s took the lock", r.d.ID)
	}
	// A malformed digest is a bad desired value, whatever the block says.
	pair := f.desire(Desired{ID: "d-badsum", Version: "v2", Artifact: "https://releases.example.com/pinned/v2.tgz", SHA256: "abc"})
	err := f.node.Handle(f.ctx(), pair)
	require.ErrorIs(t, err, ErrBadDesired)
	assert.Contains(t, err.Error(), `sha256 "abc" must be 64 hex digits`)
	assert.Empty(t, f.runs())

	// Allowed: the command gets the digest (lowercase) to check its download.
	pair = f.desire(Desired{ID: "d-pinned", Version: "v2", Artifact: "https://releases.example.com/pinned/v2.tgz", SHA256: sum})
	require.NoError(t, f.node.Handle(f.ctx(), pair))
	runs := f.runs()
	require.Len(t, runs, 1)
	assert.Equal(t, strings.ToLower(sum), runs[0]["sha256"])
	assert.Equal(t, "https://releases.example.com/pinned/v2.tgz", runs[0]["artifact"])
	st := f.status()
	require.NotNil(t, st)
	assert.Equal(t, StateSucceeded, st.State)
	assert.Equal(t, sum, st.SHA256, "the status keeps what was asked, for a later rollback to ask again")
	assert.Equal(t, "https://releases.example.com/pinned/v2.tgz", st.Artifact)
}

// registerFake registers, through the catalog API alone, a node with no agent behind
// it that runs svc, as any holder of node and service write for those names can.
func registerFake(t *testing.T, c *api.Client, node, svc string) {
	t.Helper()
	_, err := c.Catalog().Register(&api.CatalogRegistration{
		Node: node, Address: "127.0.0.1",
		Service: &api.AgentService{ID: svc, Service: svc, Port: 8080},
	}, nil)
	require.NoError(t, err, "register %q", node)
	t.Cleanup(func() { _, _ = c.Catalog().Deregister(&api.CatalogDeregistration{Node: node}, nil) })
}

func testRollout_AFakeCatalogRegistrationDoesNotJoinTheRollout(t *testing.T) {
	f := newFixture(t, "fake", api.HealthPassing, `echo ok`, `exit 0`)
	// The real node runs the version already: the rollout has nothing to wait for.
	f.put(KeyCurrent, []byte("v2"))
	fin := time.Now().UTC()
	f.putJSON(KeyStatus, Status{ID: "d-earlier", Version: "v2", State: StateSucceeded, Started: fin, Finished: &fin, Attempts: 1})
	fakes := []string{"fake-web-1", "fake..web", "fake web\x1b[2J"}
	for _, n := range fakes {
		registerFake(t, f.c, n, f.svc)
	}
	testcluster.WaitFor(t, waitLimit, "the real node and the fakes in the catalog", func() (bool, string) {
		svcs, _, err := f.c.Catalog().Service(f.svc, "", nil)
		return err == nil && len(svcs) == 1+len(fakes), fmt.Sprintf("%d instances, error %v", len(svcs), err)
	})

	var out bytes.Buffer
	r := newRollout(f.c, f.svc, "v2")
	r.Out = &out
	rec, err := r.Run(f.ctx())
	require.NoError(t, err, "output:\n%s", out.String())
	assert.Equal(t, RolloutDone, rec.State)
	assert.Equal(t, []NodeRecord{{Node: f.agent.Name, Previous: "v2", State: NodeSkipped}}, rec.Nodes, "only the real node")
	require.Len(t, rec.Refused, len(fakes))
	why := map[string]string{}
	for _, nr := range rec.Refused {
		assert.Equal(t, NodeRefused, nr.State)
		why[nr.Node] = nr.Error
	}
	assert.Contains(t, why["fake-web-1"], "not a member of the gossip pool")
	assert.Contains(t, why["fake..web"], "not a node name")
	assert.Contains(t, why["fake web\x1b[2J"], "not a node name")
	assert.Contains(t, out.String(), `refusing node fake-web-1: in the catalog but not a member of the gossip pool`)
	assert.Contains(t, out.String(), `refusing node fake web\x1b[2J: not a node name`, "the output escapes the name")
	assert.NotContains(t, out.String(), "\x1b")

	pairs, _, err := f.c.KV().List(NodesPrefix(f.svc), nil)
	require.NoError(t, err)
	for _, p := range pairs {
		assert.True(t, strings.HasPrefix(p.Key, NodesPrefix(f.svc)+f.agent.Name+"/"), "a key for a node that is not the real one: %q", p.Key)
	}

	// A rollout to only fake nodes is refused before it takes the lock: it writes
	// nothing, not even its record.
	g := newFixture(t, "onlyfake", api.HealthPassing, `echo ok`, `exit 0`)
	require.NoError(t, g.c.Agent().ServiceDeregister(g.svc))
	registerFake(t, g.c, "fake-only", g.svc)
	testcluster.WaitFor(t, waitLimit, "only the fake in the catalog", func() (bool, string) {
		svcs, _, err := g.c.Catalog().Service(g.svc, "", nil)
		return err == nil && len(svcs) == 1 && svcs[0].Node == "fake-only", fmt.Sprintf("%d instances, error %v", len(svcs), err)
	})
	rec, err = newRollout(g.c, g.svc, "v2").Run(g.ctx())
	require.ErrorIs(t, err, ErrRefused)
	assert.Equal(t, 17, exitCode(err))
	assert.Contains(t, err.Error(), `no node of service onlyfake to deploy to; refused "fake-only": in the catalog but not a member of the gossip pool`)
	assert.Nil(t, rec)
	pairs, _, err = g.c.KV().List(Prefix+g.svc+"/", nil)
	require.NoError(t, err)
	assert.Empty(t, pairs, "nothing written")
}

func testRollout_NodeFilterSelectsTheNodesAndABadOneIsAUsageError(t *testing.T) {
	f := newFixture(t, "filtered", api.HealthPassing, `echo ok`, `exit 0`)
	waitInCatalog(t, f)

	// A filter that leaves the node out: nothing to deploy to, nothing written.
	r := newRollout(f.c, f.svc, "v2")
	r.NodeFilter = fmt.Sprintf("Node != %q", f.agent.Name)
	rec, err := r.Run(f.ctx())
	require.ErrorIs(t, err, ErrRefused)
	assert.Nil(t, rec)
	assert.Contains(t, err.Error(), fmt.Sprintf(`no instance of service filtered in the catalog that --node-filter %q selects`, r.NodeFilter))
	pairs, _, err := f.c.KV().List(Prefix+f.svc+"/", nil)
	require.NoError(t, err)
	assert.Empty(t, pairs, "nothing written")

	// A filter Consul cannot evaluate is a usage error, naming the filter.
	r = newRollout(f.c, f.svc, "v2")
	r.NodeFilter = "Node ==="
	_, err = r.Run(f.ctx())
	require.ErrorIs(t, err, ErrBadFilter)
	assert.Equal(t, 11, exitCode(err), "a usage error")
	assert.Contains(t, err.Error(), `--node-filter "Node ==="`)

	// A filter that selects the node: it is deployed to (the node runs the version
	// already, so the rollout has nothing to wait for) and the record keeps the filter.
	f.put(KeyCurrent, []byte("v2"))
	fin := time.Now().UTC()
	f.putJSON(KeyStatus, Status{ID: "d-earlier", Version: "v2", State: StateSucceeded, Started: fin, Finished: &fin, Attempts: 1})
	registerFake(t, f.c, "fake-filtered", f.svc)
	r = newRollout(f.c, f.svc, "v2")
	r.NodeFilter = fmt.Sprintf("Node == %q", f.agent.Name)
	rec, err = r.Run(f.ctx())
	require.NoError(t, err)
	assert.Equal(t, []NodeRecord{{Node: f.agent.Name, Previous: "v2", State: NodeSkipped}}, rec.Nodes)
	assert.Empty(t, rec.Refused, "the filter left the fake out before any other check")
	assert.Equal(t, r.NodeFilter, rec.NodeFilter)
}

// The catalog is anyone's to write who may register a service: the deploy block's
// node_filter says which nodes the operator means. A node in the catalog, with an
// agent, running the service, but outside the configured filter is not touched; a
// --node-filter narrows the configured filter and cannot widen it.
func testRollout_ConfiguredNodeFilterLeavesOutARealNodeAndTheFlagOnlyNarrowsIt(t *testing.T) {
	f := newFixture(t, "cfgfilter", api.HealthPassing, `echo ok`, `exit 0`)
	// The client's node runs the version already: the rollout has nothing to wait for.
	f.put(KeyCurrent, []byte("v2"))
	fin := time.Now().UTC()
	f.putJSON(KeyStatus, Status{ID: "d-earlier", Version: "v2", State: StateSucceeded, Started: fin, Finished: &fin, Attempts: 1})
	// The same service on the server's node: a real member of the gossip pool, with a
	// passing check, that a rollout without the filter would deploy to.
	server := shared.Servers[0]
	sc := server.Client()
	require.NoError(t, sc.Agent().ServiceRegister(&api.AgentServiceRegistration{
		ID: f.svc, Name: f.svc, Port: 8080,
		Check: &api.AgentServiceCheck{CheckID: "ttl-" + f.svc, TTL: "30s", Status: api.HealthPassing},
	}))
	t.Cleanup(func() { _ = sc.Agent().ServiceDeregister(f.svc) })
	testcluster.WaitFor(t, waitLimit, "the service on both nodes in the catalog", func() (bool, string) {
		svcs, _, err := f.c.Catalog().Service(f.svc, "", nil)
		return err == nil && len(svcs) == 2, fmt.Sprintf("%d instances, error %v", len(svcs), err)
	})

	// Without a filter, the server's node would be deployed to (planned, not run).
	r := newRollout(f.c, f.svc, "v2")
	r.store = kv{f.c}
	p, err := r.plan(f.ctx(), "")
	require.NoError(t, err)
	assert.ElementsMatch(t, []string{f.agent.Name, server.Name}, p.nodes)

	// With the deploy block's filter, it is left out: no key of it is written.
	f.dc.NodeFilter = fmt.Sprintf("Node == %q", f.agent.Name)
	r = newRollout(f.c, f.svc, "v2")
	r.Policy = f.dc
	var out bytes.Buffer
	r.Out = &out
	rec, err := r.Run(f.ctx())
	require.NoError(t, err, "output:\n%s", out.String())
	assert.Equal(t, RolloutDone, rec.State)
	assert.Equal(t, []NodeRecord{{Node: f.agent.Name, Previous: "v2", State: NodeSkipped}}, rec.Nodes, "only the node the filter selects")
	assert.Empty(t, rec.Refused, "a node outside the filter is not the rollout's to refuse: it is not selected")
	assert.Equal(t, f.dc.NodeFilter, rec.NodeFilter)
	serverKeys := func() []string {
		pairs, _, err := f.c.KV().List(NodesPrefix(f.svc)+server.Name+"/", nil)
		require.NoError(t, err)
		var keys []string
		for _, p := range pairs {
			keys = append(keys, p.Key)
		}
		return keys
	}
	assert.Empty(t, serverKeys(), "nothing written for the node outside the configured filter")
	before, _, err := f.c.KV().Get(ServiceKey(f.svc, "rollout"), nil)
	require.NoError(t, err)

	// A --node-filter that selects only the server's node cannot widen the configured
	// filter: no node is selected by both, and nothing is written.
	r = newRollout(f.c, f.svc, "v2")
	r.Policy = f.dc
	r.NodeFilter = fmt.Sprintf("Node == %q", server.Name)
	rec, err = r.Run(f.ctx())
	require.ErrorIs(t, err, ErrRefused)
	assert.Equal(t, 17, exitCode(err))
	assert.Nil(t, rec)
	assert.Contains(t, err.Error(), fmt.Sprintf(`no instance of service cfgfilter in the catalog that deploy.cfgfilter.node_filter %q and --node-filter %q selects`,
		f.dc.NodeFilter, r.NodeFilter))
	assert.Empty(t, serverKeys())
	after, _, err := f.c.KV().Get(ServiceKey(f.svc, "rollout"), nil)
	require.NoError(t, err)
	assert.Equal(t, before.ModifyIndex, after.ModifyIndex, "no new rollout record")

	// Both filters that select the client's node: the record keeps both.
	r = newRollout(f.c, f.svc, "v2")
	r.Policy = f.dc
	r.NodeFilter = `Node matches "."`
	rec, err = r.Run(f.ctx())
	require.NoError(t, err)
	assert.Equal(t, []NodeRecord{{Node: f.agent.Name, Previous: "v2", State: NodeSkipped}}, rec.Nodes)
	assert.Equal(t, fmt.Sprintf(`(Node == %q) and (Node matches ".")`, f.agent.Name), rec.NodeFilter)
	assert.Empty(t, serverKeys())

	// A configured filter that parses (the load checks that) but names no field of the
	// catalog's entries is the configuration's error, with or without a flag.
	for _, flag := range []string{"", `Node matches "."`} {
		dc := *f.dc
		dc.NodeFilter = `NoSuchField == "x"`
		r = newRollout(f.c, f.svc, "v2")
		r.Policy, r.NodeFilter = &dc, flag
		_, err = r.Run(f.ctx())
		require.ErrorIs(t, err, ErrBadConfigFilter, "flag %q", flag)
		assert.Equal(t, 12, exitCode(err), "a configuration error")
		assert.Contains(t, err.Error(), `deploy.cfgfilter.node_filter "NoSuchField == \"x\""`)
	}
	// A bad flag with a good configured filter is the command line's.
	r = newRollout(f.c, f.svc, "v2")
	r.Policy, r.NodeFilter = f.dc, `NoSuchField == "x"`
	_, err = r.Run(f.ctx())
	require.ErrorIs(t, err, ErrBadFilter)
	assert.NotErrorIs(t, err, ErrBadConfigFilter)
	assert.Equal(t, 11, exitCode(err), "a usage error")
	assert.Contains(t, err.Error(), `--node-filter "NoSuchField == \"x\""`)
	assert.Empty(t, serverKeys())
}

func testRollout_NodeWhoseCurrentIsNotAVersionIsRefusedAndAsksAgainForThePreviousArtifact(t *testing.T) {
	f := newFixture(t, "rollout-badcurrent", api.HealthPassing, `echo ok`, `exit 0`)
	f.put(KeyCurrent, []byte("v1;reboot"))
	waitInCatalog(t, f)
	r := newRollout(f.c, f.svc, "v2")
	r.store = kv{f.c}
	_, err := r.Run(f.ctx())
	require.ErrorIs(t, err, ErrRefused, "its only node is refused")
	assert.Contains(t, err.Error(), f.key(KeyCurrent)+`: version "v1;reboot" must be`)
	assert.Nil(t, f.get(KeyDesired), "nothing written")

	// A node whose last deployment succeeded: the rollout would roll it back with the
	// artifact and digest it was deployed with, so that an allow-list and
	// require_sha256 take the rollback too.
	sum := strings.Repeat("cd", 32)
	f.put(KeyCurrent, []byte("v1"))
	fin := time.Now().UTC()
	f.putJSON(KeyStatus, Status{ID: "d-v1", Version: "v1", Artifact: "https://releases.example.com/web/v1.tgz", SHA256: sum,
		State: StateSucceeded, Started: fin, Finished: &fin, Attempts: 1})
	p, err := r.plan(f.ctx(), "id-1")
	require.NoError(t, err)
	assert.Equal(t, []NodeRecord{{Node: f.agent.Name, Previous: "v1", PreviousArtifact: "https://releases.example.com/web/v1.tgz",
		PreviousSHA256: sum, State: NodePending}}, p.records)
	assert.Equal(t, []item{{f.agent.Name, Desired{ID: "id-1", Version: "v2"}}}, p.todo)

	// A policy the rollout is given refuses before anything is written.
	r.Policy = &config.DeployConfig{Service: f.svc, RequireSHA256: true}
	_, err = r.Run(f.ctx())
	require.ErrorIs(t, err, ErrRefused)
	assert.Contains(t, err.Error(), "no sha256")
	assert.Nil(t, f.get(KeyDesired))
	p2, _, err := f.c.KV().Get(ServiceKey(f.svc, "rollout"), nil)
	require.NoError(t, err)
	assert.Nil(t, p2)
}

func testShow_EscapesTerminalControlsInEveryNodeWritableString(t *testing.T) {
	f := newFixture(t, "hostile", api.HealthPassing, `echo ok`, `exit 0`)
	esc := "\x1b[2J\x1b]0;owned\x07"
	f.put(KeyCurrent, []byte("v1"+esc))
	fin := time.Now().UTC()
	f.putJSON(KeyStatus, Status{ID: "d" + esc, Version: "v2" + esc, Previous: "v0\n" + esc, State: "failed" + esc,
		Error: "boom" + esc, Started: fin, Finished: &fin, Attempts: 1})
	f.put(KeyDesired, []byte(`{"id":"x","version":"v3\u001b[31m"}`))
	// A node in the catalog only, its name itself hostile (Consul refuses such a KV
	// key, but the catalog takes the name).
	registerFake(t, f.c, "evil\x1b[5m", f.svc)
	testcluster.WaitFor(t, waitLimit, "the fake in the catalog", func() (bool, string) {
		svcs, _, err := f.c.Catalog().Service(f.svc, "", nil)
		return err == nil && len(svcs) == 2, fmt.Sprintf("%d instances, error %v", len(svcs), err)
	})
	rec, err := json.Marshal(Record{ID: "r" + esc, Version: "v2" + esc, State: "halted" + esc, Error: "halted" + esc,
		Started: fin, Refused: []NodeRecord{{Node: "fake" + esc, State: NodeRefused, Error: "no" + esc}}})
	require.NoError(t, err)
	_, err = f.c.KV().Put(&api.KVPair{Key: ServiceKey(f.svc, "rollout"), Value: rec}, nil)
	require.NoError(t, err)

	var out bytes.Buffer
	require.NoError(t, Show(f.ctx(), f.c, f.svc, nil, &out, false))
	text := out.String()
	t.Logf("deploy status:\n%s", text)
	for _, r := range text {
		require.True(t, r == '\n' || unicode.IsPrint(r), "deploy status printed %q", r)
	}
	for _, want := range []string{
		`rollout r\x1b[2J\x1b]0;owned\a: hostile to v2\x1b[2J\x1b]0;owned\a, halted\x1b[2J\x1b]0;owned\a`,
		`refused node fake\x1b[2J\x1b]0;owned\a: no\x1b[2J`,
		`evil\x1b[5m`,
		f.agent.Name + `: current version refused: version "v1\x1b[2J\x1b]0;owned\a" must be`,
		f.agent.Name + `: desired value refused: version "v3\x1b[31m" must be`,
		f.agent.Name + `: status refused: version "v2\x1b[2J`,
		f.agent.Name + `: boom\x1b[2J\x1b]0;owned\a`,
	} {
		assert.Contains(t, text, want)
	}
	assert.Regexp(t, f.agent.Name+`\s+invalid\s+invalid\s+failed\\x1b`, text, "the columns hold")

	// JSON is escaped by the encoder: no raw control character either.
	out.Reset()
	require.NoError(t, Show(f.ctx(), f.c, f.svc, nil, &out, true))
	assert.NotContains(t, out.String(), "\x1b")
	assert.Contains(t, out.String(), `\u001b[2J`)
	var v View
	require.NoError(t, json.Unmarshal(out.Bytes(), &v))
	require.Len(t, v.Nodes, 2)
}
