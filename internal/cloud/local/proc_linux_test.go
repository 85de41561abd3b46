//go:build linux

package local

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"
)

// fakeAgent writes a script that stands in for consul: it runs until killed, with
// its arguments (so the config path) on its command line.
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
	t.Parallel()
	p, err := New(Config{StateDir: t.TempDir(), Addresses: netip.MustParsePrefix("127.0.1.0/24")})
	require.NoError(t, err)
	bin := fakeAgent(t)
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
	t.Parallel()
	p, err := New(Config{StateDir: t.TempDir(), Addresses: netip.MustParsePrefix("127.0.1.0/24")})
	require.NoError(t, err)
	dir := t.TempDir()
	pid, err := p.startWith(context.Background(), fakeAgent(t), dir, "127.0.1.2")
	require.NoError(t, err)

	v := probe(pid, configPath(dir))
	require.True(t, v.ours, v.desc)
	other := probe(pid, configPath(t.TempDir()))
	require.False(t, other.ours, "another agent's config: %s", other.desc)
	require.False(t, other.exited)
	require.Contains(t, other.desc, "another program")

	require.NoError(t, syscall.Kill(-pid, syscall.SIGKILL)) // the script and its sleep
	exited, err := waitExit(t.Context(), stopTimeout, agentProc{pid, configPath(dir)})
	require.NoError(t, err)
	require.True(t, exited)
	v = probe(pid, configPath(dir))
	require.True(t, v.exited, "a zombie (never reaped) is gone: %s", v.desc)
	require.False(t, v.ours)
	_, _ = syscall.Wait4(pid, nil, 0, nil)
	v = probe(pid, configPath(dir))
	require.True(t, v.exited, "reaped: %s", v.desc)

	require.True(t, probe(0, "x").exited)
	require.Contains(t, probe(1<<30, "x").desc, "no process")
}
