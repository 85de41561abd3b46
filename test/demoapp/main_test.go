package main

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestDeploy builds demoapp and deploys versions with it the way the watch handler does.
func TestDeploy(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "demoapp")
	build, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	require.NoError(t, err, "go build: %s", build)

	dir := t.TempDir()
	require.NoError(t, os.Mkdir(filepath.Join(dir, "artifacts"), 0o755))
	for v, content := range map[string]string{"v1": "v1\n", "v2": "v2\n", "v3": "fail-after-stop\n"} {
		require.NoError(t, os.WriteFile(filepath.Join(dir, "artifacts", v), []byte(content), 0o644))
	}
	addr := freeAddr(t)
	pidfile := filepath.Join(dir, "app.pid")

	// demoapp runs the binary and returns its exit code and combined output.
	demoapp := func(env []string, args ...string) (int, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, bin, args...)
		cmd.Env = append(os.Environ(), env...)
		cmd.WaitDelay = 5 * time.Second
		out, err := cmd.CombinedOutput()
		var exitErr *exec.ExitError
		if errors.As(err, &exitErr) {
			return exitErr.ExitCode(), string(out)
		}
		require.NoError(t, err, "run demoapp %v: %s", args, out)
		return 0, string(out)
	}
	stop := func() (int, string) { return demoapp(nil, "stop", "-dir", dir, "-name", "app") }
	t.Cleanup(func() {
		if code, out := stop(); code != 0 {
			t.Errorf("demoapp stop: exit %d: %s", code, out)
		}
	})
	deploy := func(version, previous string) (int, string) {
		return demoapp([]string{
			"REHYDRATE_DEPLOY_VERSION=" + version,
			"REHYDRATE_DEPLOY_ID=id-" + version,
			"REHYDRATE_DEPLOY_PREVIOUS_VERSION=" + previous,
			"REHYDRATE_DEPLOY_ROLLBACK=false",
		}, "deploy", "-dir", dir, "-name", "app", "-addr", addr, "-watch-pid", strconv.Itoa(os.Getpid()))
	}
	readPID := func() string {
		b, err := os.ReadFile(pidfile)
		require.NoError(t, err)
		return strings.TrimSpace(string(b))
	}

	code, out := deploy("v1", "")
	require.Equal(t, 0, code, out)
	require.Contains(t, out, "deploying v1 (id id-v1, previous , rollback=false)\n")
	require.Contains(t, out, "deployed v1\n")
	require.Equal(t, "v1\n", get(t, addr, "/version"))
	require.Equal(t, "v1\n", get(t, addr, "/"))
	require.Equal(t, "ok v1\n", get(t, addr, "/health"))
	pid1 := readPID()

	code, out = deploy("v2", "v1")
	require.Equal(t, 0, code, out)
	require.Equal(t, "v2\n", get(t, addr, "/version"))
	pid2 := readPID()
	require.NotEqual(t, pid1, pid2, "deploy must replace the server process")

	code, out = deploy("v9", "v2")
	require.Equal(t, 1, code, out)
	require.Contains(t, out, "no artifact for version v9: "+filepath.Join(dir, "artifacts", "v9"))
	require.Equal(t, "v2\n", get(t, addr, "/version"), "a deploy without artifact must not touch the server")
	require.Equal(t, pid2, readPID())

	code, out = deploy("", "v2")
	require.Equal(t, 2, code, out)
	require.Contains(t, out, "REHYDRATE_DEPLOY_VERSION")
	code, out = deploy("../artifacts/v1", "v2")
	require.Equal(t, 2, code, out)
	require.Equal(t, "v2\n", get(t, addr, "/version"))

	code, out = deploy("v3", "v2")
	require.Equal(t, 1, code, out)
	require.Contains(t, out, "artifact v3 is broken")
	_, err = http.Get("http://" + addr + "/version")
	require.Error(t, err, "the broken deploy must have stopped the server")
	require.NoFileExists(t, pidfile)

	code, out = stop()
	require.Equal(t, 0, code, out)
}

// freeAddr returns a loopback address with a port that was free a moment ago.
func freeAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	return l.Addr().String()
}

func get(t *testing.T, addr, path string) string {
	client := &http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get("http://" + addr + path)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode, "GET %s: %s", path, body)
	return string(body)
}
