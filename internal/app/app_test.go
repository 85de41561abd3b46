package app

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/consul-rehydrate/consul-rehydrate/config"
)

const minimal = "cluster = \"t\"\nservers = 3\nprovider \"local\" {\n  state_dir = \"s\"\n}\n"

// envOf is an environment with vars and out for both output streams.
func envOf(out *bytes.Buffer, vars map[string]string) Env {
	return Env{Stdin: strings.NewReader(""), Stdout: out, Stderr: out, Getenv: func(k string) string { return vars[k] }}
}

func writeFile(t *testing.T, name, src string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	require.NoError(t, os.WriteFile(p, []byte(src), 0o600))
	return p
}

func TestFlags_Parse(t *testing.T) {
	tests := []struct {
		name       string
		positional []string
		args       []string
		want       []string
		code       int
		message    string
	}{
		{name: "nothing", code: ExitOK},
		{name: "common flags", args: []string{"-config", "x.hcl", "-http-addr", "127.0.0.1:8500"}, code: ExitOK},
		{name: "a stray argument", args: []string{"now"}, code: ExitUsage, message: `t: unexpected argument "now"`},
		{name: "an unknown flag is named", args: []string{"-image", "x"}, code: ExitUsage, message: "flag provided but not defined: -image"},
		{name: "a positional argument", positional: []string{"NAME"}, args: []string{"B"}, want: []string{"B"}, code: ExitOK},
		{name: "flags after the positional argument", positional: []string{"NAME"}, args: []string{"B", "-config", "x.hcl"}, want: []string{"B"}, code: ExitOK},
		{name: "a missing positional argument", positional: []string{"NAME"}, code: ExitUsage, message: "t: missing argument NAME"},
		{name: "one too many", positional: []string{"NAME"}, args: []string{"B", "C"}, code: ExitUsage, message: `t: unexpected argument "C"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var out bytes.Buffer
			f := NewFlags("t", envOf(&out, nil))
			f.Positional = tt.positional
			got, code := f.Parse(tt.args)
			assert.Equal(t, tt.code, code, out.String())
			assert.Equal(t, tt.want, got)
			assert.Contains(t, out.String(), tt.message)
		})
	}
}

func TestNewFlags_ConfigDefaultsToTheProgramsEnvironment(t *testing.T) {
	var out bytes.Buffer
	f := NewFlags("t", envOf(&out, map[string]string{EnvConfig: "/etc/r.hcl"}))
	_, code := f.Parse(nil)
	require.Equal(t, ExitOK, code)
	assert.Equal(t, "/etc/r.hcl", f.ConfigPath)
}

func TestLoad_ReadsTheConfigurationThroughTheProgramsEnvironment(t *testing.T) {
	t.Parallel()
	cfg := writeFile(t, "r.hcl", minimal)
	var out bytes.Buffer
	f := NewFlags("t", envOf(&out, map[string]string{"CONSUL_HTTP_ADDR": "127.0.0.5:8500", "CONSUL_HTTP_TOKEN": "tok"}))
	f.ConfigPath = cfg
	p, code := Load(f, config.JobRoll, FileRequired)
	require.Equal(t, ExitOK, code, out.String())
	defer p.Close()
	assert.Equal(t, "127.0.0.5:8500", p.Config.Consul.Address)
	assert.Equal(t, cfg, p.ConfigPath)
	c, err := p.Consul()
	require.NoError(t, err)
	again, err := p.Consul()
	require.NoError(t, err)
	assert.Same(t, c, again, "one client per program")
}

func TestLoad_Failures(t *testing.T) {
	t.Parallel()
	broken := writeFile(t, "broken.hcl", "cluster = \"t\"\nservers = \"three\"\n")
	tests := []struct {
		name, config string
		file         File
		code         int
		message      string
	}{
		{name: "no configuration", file: FileRequired, code: ExitConfig, message: "t: no configuration: pass -config FILE or set $REHYDRATE_CONFIG"},
		{name: "a missing file", config: "/nonexistent/r.hcl", code: ExitConfig, message: "/nonexistent/r.hcl"},
		{name: "a broken file names file and line", config: broken, code: ExitConfig, message: "broken.hcl:2:"},
		{name: "no configuration, optional: the defaults", file: FileOptional, code: ExitOK},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			f := NewFlags("t", envOf(&out, nil))
			f.ConfigPath = tt.config
			p, code := Load(f, config.JobRoll, tt.file)
			require.Equal(t, tt.code, code, out.String())
			assert.Contains(t, out.String(), tt.message)
			if code == ExitOK {
				defer p.Close()
				assert.Equal(t, config.DefaultConsulAddress, p.Config.Consul.Address)
			}
		})
	}
}

func TestLoad_LogFile(t *testing.T) {
	t.Parallel()
	cfg := writeFile(t, "r.hcl", minimal)
	logPath := filepath.Join(t.TempDir(), "handler.log")

	var out bytes.Buffer
	f := NewFlags("rehydrate status", envOf(&out, map[string]string{EnvLogFile: logPath}))
	f.ConfigPath = cfg
	p, code := Load(f, config.JobRoll, FileRequired)
	require.Equal(t, ExitOK, code, out.String())
	p.Log.Info("hello", "node", "n1")
	p.Close()
	b, err := os.ReadFile(logPath)
	require.NoError(t, err)
	assert.Contains(t, string(b), "rehydrate.status: hello: node=n1")
	assert.Contains(t, out.String(), "hello", "stderr has the line too")
	st, err := os.Stat(logPath)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), st.Mode().Perm(), "log lines are not for every local user")

	// A log file that cannot be opened is said, and the program still runs.
	out.Reset()
	f = NewFlags("t", envOf(&out, map[string]string{EnvLogFile: filepath.Join(t.TempDir(), "absent", "x.log")}))
	f.ConfigPath = cfg
	p, code = Load(f, config.JobRoll, FileRequired)
	require.Equal(t, ExitOK, code)
	defer p.Close()
	assert.Contains(t, out.String(), "t: logging to stderr only: $REHYDRATE_LOG_FILE: open ")
}

// TestLoad_LogFileOfOursLeftReadableByOthersIsMade0600: OpenFile's 0600 applies only
// to a file it creates. An existing log file of ours that group or others may read
// is made 0600 (and that is said); one of another user's is left as it is and that is
// said; either way the program logs to it. /dev/null, not a regular file, is never
// changed.
func TestLoad_LogFileOfOursLeftReadableByOthersIsMade0600(t *testing.T) {
	t.Parallel()
	cfg := writeFile(t, "r.hcl", minimal)
	load := func(t *testing.T, logPath string) string {
		t.Helper()
		var out bytes.Buffer
		f := NewFlags("t", envOf(&out, map[string]string{EnvLogFile: logPath}))
		f.ConfigPath = cfg
		p, code := Load(f, config.JobRoll, FileRequired)
		require.Equal(t, ExitOK, code, out.String())
		p.Log.Info("hello", "node", "n1")
		p.Close()
		return out.String()
	}
	mode := func(t *testing.T, path string) os.FileMode {
		t.Helper()
		st, err := os.Stat(path)
		require.NoError(t, err)
		return st.Mode().Perm()
	}
	existing := func(t *testing.T, perm os.FileMode) string {
		t.Helper()
		p := filepath.Join(t.TempDir(), "handler.log")
		require.NoError(t, os.WriteFile(p, []byte("before\n"), perm))
		require.NoError(t, os.Chmod(p, perm)) // whatever the umask
		return p
	}

	for _, perm := range []os.FileMode{0o644, 0o640, 0o606, 0o666} {
		t.Run(fmt.Sprintf("ours %#o", perm), func(t *testing.T) {
			p := existing(t, perm)
			out := load(t, p)
			assert.Equal(t, os.FileMode(0o600), mode(t, p))
			assert.Contains(t, out, fmt.Sprintf("t: $REHYDRATE_LOG_FILE: %s had mode %#o: now 0600", p, perm))
			b, err := os.ReadFile(p)
			require.NoError(t, err)
			assert.Contains(t, string(b), "before\n", "appended to, not truncated")
			assert.Contains(t, string(b), "t: hello: node=n1")
		})
	}

	t.Run("ours 0600 already", func(t *testing.T) {
		p := existing(t, 0o600)
		out := load(t, p)
		assert.Equal(t, os.FileMode(0o600), mode(t, p))
		assert.NotContains(t, out, "REHYDRATE_LOG_FILE", "nothing to say")
	})

	t.Run("another user's", func(t *testing.T) {
		if os.Geteuid() != 0 {
			t.Skip("making a file of another user's takes root")
		}
		p := existing(t, 0o644)
		require.NoError(t, os.Chown(p, 65534, 65534)) // nobody
		out := load(t, p)
		assert.Equal(t, os.FileMode(0o644), mode(t, p), "not ours: left as it is")
		assert.Contains(t, out, fmt.Sprintf("t: $REHYDRATE_LOG_FILE: %s has mode 0644 and is not ours to change: other users may read the log lines", p))
		b, err := os.ReadFile(p)
		require.NoError(t, err)
		assert.Contains(t, string(b), "t: hello: node=n1", "logging goes on")
	})

	t.Run("not a regular file", func(t *testing.T) {
		before := mode(t, os.DevNull)
		out := load(t, os.DevNull)
		assert.Equal(t, before, mode(t, os.DevNull), "/dev/null is not ours to change")
		assert.NotContains(t, out, "REHYDRATE_LOG_FILE")
	})
}

func TestConsul_AClientThatCannotBeSetUpIsAConfigurationError(t *testing.T) {
	t.Parallel()
	// The file checks pass (the token file exists); the token in it is empty.
	empty := writeFile(t, "token", "\n")
	cfg := writeFile(t, "r.hcl", minimal+"consul {\n  token_file = \""+empty+"\"\n}\n")
	var out bytes.Buffer
	f := NewFlags("t", envOf(&out, nil))
	f.ConfigPath = cfg
	p, code := Load(f, config.JobRoll, FileRequired)
	require.Equal(t, ExitOK, code, out.String())
	defer p.Close()
	_, err := p.Consul()
	require.ErrorIs(t, err, ErrClient)
	assert.Contains(t, err.Error(), "token file "+empty+" is empty")
}

func TestExitCodes_AreDistinct(t *testing.T) {
	codes := []int{ExitOK, ExitError, ExitUsage, ExitConfig, ExitBadPayload, ExitConsul, ExitCloud,
		ExitLockLost, ExitRefused, ExitFailed, ExitBusy, ExitTimedOut}
	seen := map[int]bool{}
	for _, c := range codes {
		assert.False(t, seen[c], "exit code %d used twice", c)
		seen[c] = true
	}
}

func TestStart_ParsesTheCommonFlagsAndLoads(t *testing.T) {
	t.Parallel()
	cfg := writeFile(t, "r.hcl", minimal)
	var out bytes.Buffer
	p, code := Start("spindown", []string{"-config", cfg}, envOf(&out, nil), config.JobRoll)
	require.Equal(t, ExitOK, code, out.String())
	p.Close()
	assert.Equal(t, "spindown", p.Name)

	_, code = Start("spindown", []string{"-config", cfg, "-bogus"}, envOf(&out, nil), config.JobRoll)
	assert.Equal(t, ExitUsage, code)
	_, code = Start("spindown", nil, envOf(&out, nil), config.JobRoll)
	assert.Equal(t, ExitConfig, code)
}
