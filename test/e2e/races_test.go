package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
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

	"github.com/consul-rehydrate/consul-rehydrate/internal/app"
	"github.com/consul-rehydrate/consul-rehydrate/internal/cloud"
	"github.com/consul-rehydrate/consul-rehydrate/internal/coord"
	"github.com/consul-rehydrate/consul-rehydrate/test/testcluster"
)

// storm runs n spindown binaries at once, each with the servers' current health
// entries on stdin, as n service watches firing together would. It returns their
// exit codes.
func (e *env) storm(n int) []int {
	e.t.Helper()
	entries, _, err := e.client.Health().Service("consul", "", false, nil)
	require.NoError(e.t, err)
	stdin, err := json.Marshal(entries)
	require.NoError(e.t, err)
	// As the servers' watches run it: on a server's agent, with its handler token.
	addr, env := e.asServer()
	codes := make([]int, n)
	var wg sync.WaitGroup
	for i := range codes {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, filepath.Join(binDir, "spindown"), "-config", e.cfgPath, "-http-addr", addr)
			cmd.Stdin = bytes.NewReader(stdin)
			for _, kv := range os.Environ() {
				if !strings.HasPrefix(kv, "CONSUL_") {
					cmd.Env = append(cmd.Env, kv)
				}
			}
			cmd.Env = append(cmd.Env, env...)
			var out bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &out
			err := cmd.Run()
			codes[i] = cmd.ProcessState.ExitCode()
			if err != nil && codes[i] != 0 {
				e.t.Logf("spindown %d exited %d: %s", i, codes[i], testcluster.Tail(out.String(), 5))
			}
		})
	}
	wg.Wait()
	return codes
}

// serving reports whether in's agent has joined, registered itself as a passing
// consul server, and accepts connections on its HTTPS port.
func (e *env) serving(in cloud.Instance) bool {
	entries, _, err := e.client.Health().Service("consul", "", true, nil)
	if err != nil {
		return false
	}
	registered := false
	for _, en := range entries {
		registered = registered || en.Node.Address == in.Address
	}
	if !registered {
		return false
	}
	conn, err := net.DialTimeout("tcp", net.JoinHostPort(in.Address, "8501"), time.Second)
	if err != nil {
		return false
	}
	_ = conn.Close()
	return true
}

func (e *env) live() []cloud.Instance {
	insts, err := e.p.Instances(context.Background())
	require.NoError(e.t, err)
	var out []cloud.Instance
	for _, i := range insts {
		if i.Live() {
			out = append(out, i)
		}
	}
	return out
}

// TestRaces_EventStormsWatchStormsAndReplaysMakeExactlyOneRoll fires the roll event
// ten times at once; every server's handler gets each of them at once, by
// design. While a step is in progress, storms of service-watch handlers run. Exactly
// one roll must follow: one launch and one retire per server, never more than N+1.
// Then every agent is reloaded (a watch's first run hands its handler everything the
// agent has buffered, up to 256 events) and restarted: nothing happens.
func TestRaces_EventStormsWatchStormsAndReplaysMakeExactlyOneRoll(t *testing.T) {
	t.Parallel()
	e := newEnvWith(t, envOptions{servers: 3, extraHCL: "log_level = \"debug\"\n"})
	out, code := e.run("local", "image", "register", "B")
	require.Equal(t, app.ExitOK, code, out)
	samples := e.sample()

	// Fired at once, not one after another: sequential fires over HTTPS on a busy
	// CI machine once took 1.8 s for ten, and a test must not hang on the clock.
	start := time.Now()
	var fired sync.WaitGroup
	errs := make(chan error, 10)
	for range 10 {
		fired.Add(1)
		go func() {
			defer fired.Done()
			_, _, err := e.client.Event().Fire(&api.UserEvent{Name: "consul-rehydrate"}, nil)
			errs <- err
		}()
	}
	fired.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	t.Logf("ten events fired in %s", time.Since(start).Round(time.Millisecond))

	// Storms while steps are in progress: whenever the surge is up.
	stop := make(chan struct{})
	stormed := make(chan int, 1)
	go func() {
		storms := 0
		defer func() { stormed <- storms }()
		for range 60 { // bounded: at most 60 looks, 3s apart
			select {
			case <-stop:
				return
			case <-time.After(3 * time.Second):
			}
			// The storm runs on the surge server (see asServer): wait until its agent
			// serves, as a watch's own agent always does. A running instance's agent
			// may not be listening yet (CI once stormed it 0.2 s after its launch).
			live := e.live()
			if storms >= 4 || len(live) != e.servers+1 || live[len(live)-1].State != cloud.StateRunning ||
				!e.serving(live[len(live)-1]) {
				continue
			}
			for i, c := range e.storm(10) {
				assert.Equal(t, app.ExitOK, c, "spindown %d in storm %d", i, storms)
			}
			storms++
		}
	}()
	st := e.waitRolled("B", 6*time.Minute)
	close(stop)
	storms := <-stormed
	maxLive, maxRaft := samples.Stop()
	assert.Positive(t, storms, "at least one storm hit a step in progress")

	e.checkRolled("B", maxLive, maxRaft)
	steps := map[string]int{}
	var history []string
	for _, h := range st.Roll.History {
		steps[h.Step]++
		history = append(history, h.Step+" "+h.Instance)
	}
	assert.Equal(t, 3, steps["launch"], "one launch per server; history %v", history)
	assert.Equal(t, 3, steps["retire"], "one retire per server; history %v", history)
	assert.Equal(t, 1, steps["done"], "one roll; history %v", history)
	t.Logf("%d storms of 10 handlers during the roll; history %v", storms, history)

	// Replays. A reload restarts an agent's watches, and the event watch's first run
	// hands its handler the agent's whole event buffer: here, the roll's events.
	before := e.snapshot()
	offset := len(e.handlersLog())
	for _, s := range st.Servers {
		require.NoError(t, e.p.Reload(context.Background(), s.Instance))
	}
	testcluster.WaitFor(t, time.Minute, "the reloaded agents' event handlers to take their buffers", func() (bool, string) {
		logs := e.handlersLog()[offset:]
		n := countLines(logs, "spinup: event already handled") + countLines(logs, "spinup: plan: step=nothing")
		return n >= 3, fmt.Sprintf("%d of 3 spinup handlers went through a replayed event", n)
	})
	// A restart empties the buffer (it lives in memory), and the handlers run on
	// start all the same: restart every agent, one at a time.
	for _, s := range st.Servers {
		require.NoError(t, e.p.Restart(context.Background(), s.Instance))
		testcluster.WaitFor(t, 2*time.Minute, "the cluster healthy after restarting "+s.Instance, func() (bool, string) {
			h, err := e.client.Operator().AutopilotServerHealth(nil)
			if err != nil {
				return false, err.Error()
			}
			return h.Healthy && len(h.Servers) == 3, fmt.Sprintf("healthy %v, %d servers", h.Healthy, len(h.Servers))
		})
	}
	testcluster.WaitFor(t, time.Minute, "the restarted agents' handlers to run", func() (bool, string) {
		logs := e.handlersLog()[offset:]
		up, down := countLines(logs, "spinup:"), countLines(logs, "spindown:")
		return up >= 6 && down >= 3, fmt.Sprintf("%d spinup and %d spindown log lines since the reloads", up, down)
	})
	testcluster.WaitFor(t, time.Minute, "no handler holding the lock", func() (bool, string) {
		holder, err := coord.New(e.client, "e2e").Holder(context.Background())
		return err == nil && holder == "", fmt.Sprint(holder, err)
	})
	after := e.snapshot()
	assert.Equal(t, before.roll, after.roll, "the roll record is unchanged")
	// A handler may take the lock to look closer (a retired server still draining is
	// a step in progress to the cheap look), so the lock key may change; nothing else.
	delete(before.keys, "rehydrate/e2e/lock")
	delete(after.keys, "rehydrate/e2e/lock")
	assert.Equal(t, before.keys, after.keys, "no receipt or bad image written")
	assert.Equal(t, before.instances, after.instances, "no instance launched or retired")
	logs := e.handlersLog()[offset:]
	assert.Zero(t, countLines(logs, "step taken"), "no step taken after the restarts:\n%s", logs)
	if b, err := os.ReadFile(filepath.Join(e.state, "handlers.log")); err == nil {
		t.Logf("handler lines after the restarts:\n%s", testcluster.Tail(strings.TrimSpace(string(b[offset:])), 30))
	}
}
