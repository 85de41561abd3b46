package fault

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestMain doubles as the process under test: with FAULT_TEST_POINT set it reaches
// that point and, if it survives, exits 0.
func TestMain(m *testing.M) {
	if p := os.Getenv("FAULT_TEST_POINT"); p != "" {
		Point(p)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func reach(t *testing.T, point string, env ...string) error {
	t.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), append(env, "FAULT_TEST_POINT="+point)...)
	return cmd.Run()
}

func killed(err error) bool {
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		return false
	}
	ws, ok := ee.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL
}

func TestPoint_UnarmedDoesNothing(t *testing.T) {
	require.NoError(t, reach(t, "locked"))
	require.NoError(t, reach(t, "locked", EnvCrashAt+"=acted:launch,left"))
}

func TestPoint_ArmedKills(t *testing.T) {
	err := reach(t, "acted:launch", EnvCrashAt+"=locked, acted:launch")
	assert.True(t, killed(err), "want SIGKILL, got %v", err)
}

func TestPoint_OncePerDir(t *testing.T) {
	dir := t.TempDir()
	env := []string{EnvCrashAt + "=left", EnvCrashDir + "=" + dir}
	err := reach(t, "left", env...)
	assert.True(t, killed(err), "first reach crashes, got %v", err)
	b, err := os.ReadFile(filepath.Join(dir, Marker("left")))
	require.NoError(t, err)
	assert.Contains(t, string(b), "crashed at left")
	assert.NoError(t, reach(t, "left", env...), "second reach goes on")
	assert.True(t, killed(reach(t, "left", EnvCrashAt+"=left", EnvCrashDir+"="+t.TempDir())), "a new dir arms it again")
}
