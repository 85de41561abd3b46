package command

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/consul-rehydrate/consul-rehydrate/internal/app"
	"github.com/consul-rehydrate/consul-rehydrate/internal/payload"
	"github.com/consul-rehydrate/consul-rehydrate/internal/roll"
)

// A config whose Consul address nothing listens on: any request would fail, so a
// test passing through these paths proves the handler refused before asking Consul.
const unreachableConfig = `cluster = "t"
servers = 3
consul { address = "127.0.0.1:1" }
provider "local" {
  state_dir = "state"
}
`

func writeConfig(t *testing.T, src string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "rehydrate.hcl")
	require.NoError(t, os.WriteFile(p, []byte(src), 0o644))
	return p
}

func run(prog func([]string, app.Env) int, args []string, stdin string) (int, string) {
	var out bytes.Buffer
	code := prog(args, app.Env{Stdin: strings.NewReader(stdin), Stdout: &out, Stderr: &out, Getenv: func(string) string { return "" }})
	return code, out.String()
}

func TestHandlers_RefuseBadInputBeforeTalkingToConsul(t *testing.T) {
	cfg := writeConfig(t, unreachableConfig)
	broken := writeConfig(t, "cluster = \"t\"\nservers = \"three\"\nbogus = 1\n")
	tests := []struct {
		name    string
		prog    func([]string, app.Env) int
		args    []string
		stdin   string
		code    int
		message string
	}{
		{"spinup: not JSON", Spinup, []string{"-config", cfg}, "hello", app.ExitBadPayload, "refusing event payload"},
		{"spinup: empty stdin", Spinup, []string{"-config", cfg}, "", app.ExitBadPayload, "empty payload"},
		{"spinup: null", Spinup, []string{"-config", cfg}, "null", app.ExitBadPayload, "expected array"},
		{"spinup: object", Spinup, []string{"-config", cfg}, `{"ID":"x"}`, app.ExitBadPayload, "expected array"},
		{"spinup: invalid base64", Spinup, []string{"-config", cfg}, `[{"ID":"00000000-0000-0000-0000-0000000000e1","Name":"consul-rehydrate","Payload":"!!"}]`, app.ExitBadPayload, "refusing event payload"},
		{"spinup: wrong event name", Spinup, []string{"-config", cfg}, `[{"ID":"00000000-0000-0000-0000-0000000000e1","Name":"deploy"}]`, app.ExitBadPayload, `event name \"deploy\", want \"consul-rehydrate\"`},
		{"spinup: unknown field in our payload", Spinup, []string{"-config", cfg}, `[{"ID":"00000000-0000-0000-0000-0000000000e1","Name":"consul-rehydrate","Payload":"eyJpbWFnZSI6ImEifQ=="}]`, app.ExitBadPayload, "image"},
		{"spinup: a malformed event does not hide an earlier good one", Spinup, []string{"-config", cfg},
			`[{"ID":"00000000-0000-0000-0000-0000000000e1","Name":"consul-rehydrate"},{"ID":"00000000-0000-0000-0000-0000000000e2","Name":"consul-rehydrate","Payload":"bm90IGpzb24="}]`, app.ExitConsul, "refusing event: event_id=00000000-0000-0000-0000-0000000000e2"},
		{"spinup: a malformed event before a good one is refused too", Spinup, []string{"-config", cfg},
			`[{"ID":"00000000-0000-0000-0000-0000000000e2","Name":"consul-rehydrate","Payload":"bm90IGpzb24="},{"ID":"00000000-0000-0000-0000-0000000000e1","Name":"consul-rehydrate"}]`, app.ExitConsul, "refusing event: event_id=00000000-0000-0000-0000-0000000000e2"},
		{"spinup: the line of a failed step names its event", Spinup, []string{"-config", cfg},
			`[{"ID":"00000000-0000-0000-0000-0000000000e1","Name":"consul-rehydrate"}]`, app.ExitConsul, "exit_code=14 event_id=00000000-0000-0000-0000-0000000000e1"},
		{"spinup: no events does nothing", Spinup, []string{"-config", cfg}, `[]`, app.ExitOK, ""},
		{"spindown: not JSON", Spindown, []string{"-config", cfg}, "[{", app.ExitBadPayload, "refusing service payload"},
		{"spindown: another service", Spindown, []string{"-config", cfg}, `[{"Service":{"Service":"web"}}]`, app.ExitBadPayload, `entry for service \"web\", want \"consul\"`},
		{"spinup: no config", Spinup, nil, "[]", app.ExitConfig, "no configuration"},
		{"spindown: broken config names file and line", Spindown, []string{"-config", broken}, "[]", app.ExitConfig, "rehydrate.hcl:2:"},
		{"spindown: missing config file", Spindown, []string{"-config", "/nonexistent/x.hcl"}, "[]", app.ExitConfig, "/nonexistent/x.hcl"},
		{"spinup: unknown flag", Spinup, []string{"-bogus"}, "[]", app.ExitUsage, "flag provided but not defined"},
		{"rehydrate: no command", Rehydrate, nil, "", app.ExitUsage, "usage: rehydrate"},
		{"rehydrate: unknown command", Rehydrate, []string{"-config", cfg, "explode"}, "", app.ExitUsage, `unknown command "explode"`},
		{"rehydrate: fire with an invalid image id", Rehydrate, []string{"-config", cfg, "fire", "--image", "has space"}, "", app.ExitUsage, "invalid image"},
		{"rehydrate: a stray argument", Rehydrate, []string{"-config", cfg, "status", "now"}, "", app.ExitUsage, `rehydrate status: unexpected argument "now"`},
		{"rehydrate: register with two names", Rehydrate, []string{"-config", cfg, "local", "image", "register", "B", "--extra-hcl", "x.hcl", "C"}, "", app.ExitUsage, `rehydrate local image register: unexpected argument "C"`},
		{"rehydrate: local up without image", Rehydrate, []string{"-config", cfg, "local", "up"}, "", app.ExitUsage, "--image is required"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out := run(tt.prog, tt.args, tt.stdin)
			assert.Equal(t, tt.code, code, out)
			assert.Contains(t, out, tt.message)
		})
	}
}

func TestExitCode_TellsALostLockFromADeadlineWhateverFailedUnderThem(t *testing.T) {
	a := &prog{log: hclog.NewNullLogger()}
	tests := []struct {
		name string
		err  error
		code int
	}{
		{"nothing", nil, app.ExitOK},
		{"refused", fmt.Errorf("%w: older", roll.ErrRefused), app.ExitRefused},
		{"lock lost", fmt.Errorf("%w: session gone", roll.ErrLockLost), app.ExitLockLost},
		{"out of time", fmt.Errorf("%w: %w", roll.ErrTimedOut, context.DeadlineExceeded), app.ExitTimedOut},
		// coord.Stopped keeps a Consul error met because the lock was lost or time ran
		// out apart; should one carry both, the cause decides.
		{"lock lost under a consul error", fmt.Errorf("%w: %w", roll.ErrConsul, fmt.Errorf("%w: x", roll.ErrLockLost)), app.ExitLockLost},
		{"out of time under a cloud error", fmt.Errorf("%w: %w", roll.ErrCloud, roll.ErrTimedOut), app.ExitTimedOut},
		{"consul", fmt.Errorf("%w: 500", roll.ErrConsul), app.ExitConsul},
		{"cloud", fmt.Errorf("%w: capacity", roll.ErrCloud), app.ExitCloud},
		{"bad payload", fmt.Errorf("x: %w", payload.ErrBadPayload), app.ExitBadPayload},
		{"anything else", errors.New("boom"), app.ExitError},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.code, a.exitCode(tt.err))
		})
	}
}

// The promise: make demo says in its first lines that it runs with gossip
// encryption, TLS and ACLs (the local provider always does: internal/cloud/local
// TestSecureCluster_*), and where the secrets it made are.
func TestDemoBanner_SaysTheClusterRunsWithGossipEncryptionTLSAndACLs(t *testing.T) {
	b := demoBanner(3, "/tmp/demo/state")
	lines := strings.Split(strings.TrimSuffix(b, "\n"), "\n")
	require.LessOrEqual(t, len(lines), 5, "the first lines, not buried in the roll's output")
	assert.Contains(t, lines[0], "starting 3 servers")
	for _, want := range []string{"gossip encryption", "TLS on RPC and HTTPS", "verify_incoming", "ACLs on with default deny", "/tmp/demo/state/secrets"} {
		assert.Contains(t, b, want)
	}
}
