//go:build linux

package local

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// fakeAgent writes a script that stands in for consul: it runs until killed, with
// its arguments (so the config path) on its command line. Call it before
// t.Parallel: a file being written while another goroutine forks is held open by
// that child until its exec, and exec-ing the file then fails with "text file busy".
func fakeAgent(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "consul")
	require.NoError(t, os.WriteFile(path, []byte("#!/bin/sh\nsleep 60\n"), 0o755))
	return path
}

// A liveness check right after cmd.Start used to see an empty /proc/<pid>/cmdline
// about one time in three (the kernel finishes the exec after the parent goes on),
// and took the starting agent for an exited one: Up then failed with "agent exited"
// and empty logs. Every start must now return a PID that is recognisably the agent.
func TestStartWith_ReturnsOnlyOnceTheAgentIsRecognisable(t *testing.T) {
	bin := fakeAgent(t)
	t.Parallel()
	p, err := New(Config{StateDir: t.TempDir(), Addresses: netip.MustParsePrefix("127.0.1.0/24")})
	require.NoError(t, err)
	dir := t.TempDir()
	cfg := configPath(dir)
	for i := range 100 {
		pid, err := p.startWith(t.Context(), bin, dir, "127.0.1.2")
		require.NoError(t, err)
		v := probe(pid, cfg)
		_ = syscall.Kill(-pid, syscall.SIGKILL) // the script and its sleep
		_, _ = syscall.Wait4(pid, nil, 0, nil)
		require.True(t, v.ours, "start %d: pid %d not recognised right after start: %s", i, pid, v.desc)
	}
}

func TestProbe_TellsTheAgentFromOthersAndFromExitedOnes(t *testing.T) {
	bin := fakeAgent(t)
	t.Parallel()
	p, err := New(Config{StateDir: t.TempDir(), Addresses: netip.MustParsePrefix("127.0.1.0/24")})
	require.NoError(t, err)
	dir := t.TempDir()
	pid, err := p.startWith(context.Background(), bin, dir, "127.0.1.2")
	require.NoError(t, err)

	v := probe(pid, configPath(dir))
	require.True(t, v.ours, v.desc)
	other := probe(pid, configPath(t.TempDir()))
	require.False(t, other.ours, "another agent's config: %s", other.desc)
	require.False(t, other.exited)
	require.True(t, other.gone(), "to an agent with another config, a reused PID is gone")
	require.Contains(t, other.desc, "another program")

	require.NoError(t, syscall.Kill(-pid, syscall.SIGKILL)) // the script and its sleep
	exited, err := waitExit(t.Context(), stopTimeout, agentProc{pid, configPath(dir)})
	require.NoError(t, err)
	require.True(t, exited)
	// waitExit waits for the zombie, not only for the arguments to go (mid-exit,
	// before the sockets close).
	v = probe(pid, configPath(dir))
	require.True(t, v.exited, "a zombie (never reaped) is gone: %s", v.desc)
	require.False(t, v.ours)
	_, _ = syscall.Wait4(pid, nil, 0, nil)
	v = probe(pid, configPath(dir))
	require.True(t, v.exited, "reaped: %s", v.desc)

	require.True(t, probe(0, "x").exited)
	require.Contains(t, probe(1<<30, "x").desc, "no process")
}

func TestProcView_AnEmptyCommandLineIsNeitherOursNorGone(t *testing.T) {
	tests := []struct {
		name string
		v    procView
		gone bool
	}{
		{"running, ours", procView{ours: true}, false},
		{"mid-exec or mid-exit: empty command line", procView{}, false},
		{"no process, or a zombie", procView{exited: true}, true},
		{"the PID runs another program", procView{other: true}, true},
	}
	for _, tt := range tests {
		assert.Equal(t, tt.gone, tt.v.gone(), tt.name)
	}
}
