package command

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/consul-rehydrate/consul-rehydrate/internal/app"
	"github.com/consul-rehydrate/consul-rehydrate/internal/coord"
	"github.com/consul-rehydrate/consul-rehydrate/internal/rollcheck"
	"github.com/consul-rehydrate/consul-rehydrate/test/testcluster"
)

// `rehydrate check` against a real Consul, with the roll record as each case
// writes it: the exit code is Consul's script check convention, and the output
// says why and ends with the status command.
func TestCheck_JudgesTheRollRecordInConsul(t *testing.T) {
	c := testcluster.Start(t, testcluster.Options{Servers: 1})
	cl := c.Client(t)
	cfg := writeConfig(t, fmt.Sprintf(`cluster = "chk"
servers = 3
consul { address = %q }
roll {
  launch_timeout = "2m"
  stuck_warning  = "1m"
}
provider "local" {
  state_dir = "state"
}
`, c.Servers[0].HTTPAddr()))
	store := coord.New(cl, "chk")
	now := time.Now()
	put := func(t *testing.T, v any) {
		t.Helper()
		var b []byte
		switch v := v.(type) {
		case nil:
			_, err := cl.KV().Delete(store.Key("roll"), nil)
			require.NoError(t, err)
			return
		case string:
			b = []byte(v)
		default:
			var err error
			b, err = json.Marshal(v)
			require.NoError(t, err)
		}
		_, err := cl.KV().Put(&api.KVPair{Key: store.Key("roll"), Value: b}, nil)
		require.NoError(t, err)
	}
	rolling := func(started time.Duration, entries ...coord.Entry) *coord.Roll {
		r := &coord.Roll{Target: "B", Phase: coord.PhaseRolling, Started: now.Add(-started)}
		for _, e := range entries {
			r.Add(e)
		}
		return r
	}
	held := coord.Entry{Time: now.Add(-90 * time.Second), Step: "hold", Detail: "cluster not healthy, will not launch: autopilot reports unhealthy"}
	failed := rolling(5*time.Minute, coord.Entry{Time: now.Add(-time.Minute), Step: "fail", Instance: "i-4", Detail: "terminated failed i-4"})
	failed.Phase, failed.Failure = coord.PhaseFailed, "i-4 on B is not a stable healthy voter"
	done := rolling(5*time.Minute, coord.Entry{Time: now.Add(-time.Minute), Step: "done", Detail: "all 3 servers run B"})
	done.Complete(now.Add(-time.Minute))

	tests := []struct {
		name   string
		record any
		code   int
		says   string
	}{
		{"no roll ever", nil, rollcheck.ExitPassing, "PASSING: cluster chk: no roll has run on this cluster"},
		{"a roll just started", rolling(10 * time.Second), rollcheck.ExitPassing, "PASSING: cluster chk: the roll to B is progressing"},
		// The records are timed from now, taken once before the cases run: on a
		// loaded machine a case may run seconds later (a cold CI run saw 1m31s).
		{"held past stuck_warning", rolling(90*time.Second, held), rollcheck.ExitWarning,
			"WARNING: cluster chk: the roll to B has made no progress for 1m3"},
		{"held past launch_timeout", rolling(3*time.Minute, held), rollcheck.ExitCritical,
			"CRITICAL: cluster chk: the roll to B has made no progress for 3m"},
		{"failed", failed, rollcheck.ExitCritical, "CRITICAL: cluster chk: the roll to B failed at"},
		{"done", done, rollcheck.ExitPassing, "PASSING: cluster chk: no roll in progress: the last one rolled the servers to B"},
		{"not JSON", "{not json", rollcheck.ExitCritical, "CRITICAL: cluster chk: cannot judge the roll: the roll record is not one: decode rehydrate/chk/roll"},
		{"not a roll record", `{"phase": 5}`, rollcheck.ExitCritical, "cannot judge the roll: the roll record is not one"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			put(t, tt.record)
			code, out := run(Rehydrate, []string{"-config", cfg, "check"}, "")
			assert.Equal(t, tt.code, code, out)
			assert.Contains(t, out, tt.says)
			assertEndsWithStatusHint(t, out, cfg)
		})
	}
}

// The check cannot judge: critical, whatever the cause, and the cause is named.
func TestCheck_CriticalWhenItCannotJudge(t *testing.T) {
	unreachable := writeConfig(t, unreachableConfig)
	broken := writeConfig(t, "cluster = \"t\"\nservers = \"three\"\n")
	tests := []struct {
		name string
		args []string
		code int
		says string
	}{
		{"consul unreachable", []string{"-config", unreachable, "check"}, app.ExitConsul, "CRITICAL: cluster t: cannot judge the roll: read rehydrate/t/roll: "},
		{"a broken configuration", []string{"-config", broken, "check"}, app.ExitConfig, "rehydrate.hcl:2:"},
		{"no configuration", []string{"check"}, app.ExitConfig, "no configuration"},
		{"a flag it does not take", []string{"-config", unreachable, "check", "-json"}, app.ExitUsage, "flag provided but not defined: -json"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*checkTimeout)
			defer cancel()
			var code int
			var out string
			done := make(chan struct{})
			go func() { code, out = run(Rehydrate, tt.args, ""); close(done) }()
			select {
			case <-done:
			case <-ctx.Done():
				t.Fatalf("the check did not return within %s", 2*checkTimeout)
			}
			assert.Equal(t, tt.code, code, out)
			assert.Greater(t, code, rollcheck.ExitWarning, "critical for Consul")
			assert.Contains(t, out, tt.says)
		})
	}
}

func assertEndsWithStatusHint(t *testing.T, out, cfg string) {
	t.Helper()
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	assert.Len(t, lines, 2, "a reason line and the status command: %q", out)
	assert.Equal(t, "details: rehydrate -config "+cfg+" status", lines[len(lines)-1])
}
