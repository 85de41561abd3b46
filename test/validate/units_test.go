package validate

import (
	"bufio"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/consul-rehydrate/consul-rehydrate/config"
	"github.com/consul-rehydrate/consul-rehydrate/internal/app"
)

// unit is a systemd unit file's directives, in order, by name (no sections: the names
// the tests read are unique to one section).
type unit map[string][]string

func readUnit(t *testing.T, path string) unit {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	u := unit{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		if l == "" || strings.HasPrefix(l, "#") || strings.HasPrefix(l, "[") {
			continue
		}
		k, v, ok := strings.Cut(l, "=")
		require.True(t, ok, "%s: not a directive: %q", path, l)
		u[k] = append(u[k], v)
	}
	require.NoError(t, sc.Err())
	return u
}

// one returns the single value of directive k.
func (u unit) one(t *testing.T, k string) string {
	t.Helper()
	require.Len(t, u[k], 1, "exactly one %s", k)
	return u[k][0]
}

var unitVar = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)\}`)

// command splits the command line of directive k into words, drops its "-" prefix
// (reported by ignoreFailure) and expands each ${VAR} from env, as systemd expands it
// from the unit's Environment=. It fails t on quoting (which this split does not
// handle) and on a variable env does not map.
func (u unit) command(t *testing.T, k string, env map[string]string) (argv []string, ignoreFailure bool) {
	t.Helper()
	line := u.one(t, k)
	require.NotContains(t, line, `"`, "%s: quoted words", k)
	require.NotContains(t, line, `'`, "%s: quoted words", k)
	line, ignoreFailure = strings.CutPrefix(line, "-")
	for _, w := range strings.Fields(line) {
		argv = append(argv, unitVar.ReplaceAllStringFunc(w, func(m string) string {
			v, ok := env[m[2:len(m)-1]]
			require.True(t, ok, "%s uses %s, which the test does not map", k, m)
			return v
		}))
	}
	return argv, ignoreFailure
}

// installImage lays out what the image's provisioners install, into a new ROOT: Consul
// (install-consul.sh, from a fake release signed by a throwaway key) and the handlers
// built from handlers/ as `make build` builds them (install-handlers.sh).
func installImage(t *testing.T) (root string) {
	t.Helper()
	tool(t, "systemctl") // install-handlers.sh enables the gate's unit with it
	release1 := newGnuPG(t, "release key <release@example.invalid>")
	keyFile := filepath.Join(t.TempDir(), "release.asc")
	require.NoError(t, os.WriteFile(keyFile, release1.publicKey(), 0o644))
	good := fakeZip(t, "Consul v"+fakeVersion)
	s := sums(map[string][]byte{"consul_" + fakeVersion + "_linux_amd64.zip": good})
	root, out, err := installConsul(t, serve(t, release{good, s, release1.sign(s)}), "HASHICORP_KEY="+keyFile)
	require.NoError(t, err, out)

	src := t.TempDir()
	scripts, err := filepath.Abs("../../scripts")
	require.NoError(t, err)
	require.NoError(t, os.Symlink(scripts, filepath.Join(src, "scripts")))
	b, err := exec.Command("go", "build", "-o", filepath.Join(src, "bin")+"/", "../../handlers/...").CombinedOutput()
	require.NoError(t, err, string(b))
	out, err = installHandlers(t, src, root)
	require.NoError(t, err, out)
	return root
}

func installHandlers(t *testing.T, src, root string) (string, error) {
	t.Helper()
	cmd := exec.Command("bash", "../../scripts/install-handlers.sh")
	cmd.Env = append(os.Environ(), "SRC="+src, "ROOT="+root, "SKIP_SYSTEM=1")
	b, err := cmd.CombinedOutput()
	return string(b), err
}

// verifyUnits runs systemd-analyze verify on units as installed under root, with the
// base system's units and /bin/kill (consul.service's ExecReload) copied in from this
// machine, as Debian provides them on the image. It returns the output and whether
// it passed: exit status 0 and nothing said, since verify only warns, with status
// 0, about an unknown directive.
func verifyUnits(t *testing.T, root string, units ...string) (string, bool) {
	t.Helper()
	sa := tool(t, "systemd-analyze")
	base := "/usr/lib/systemd/system"
	if _, err := os.Stat(filepath.Join(root, base, "multi-user.target")); errors.Is(err, os.ErrNotExist) {
		require.NoError(t, os.MkdirAll(filepath.Join(root, "usr/lib/systemd"), 0o755))
		b, err := exec.Command("cp", "-a", base, filepath.Join(root, "usr/lib/systemd/")).CombinedOutput()
		require.NoError(t, err, string(b))
		require.NoError(t, os.MkdirAll(filepath.Join(root, "bin"), 0o755))
		b, err = exec.Command("cp", "/bin/kill", filepath.Join(root, "bin/kill")).CombinedOutput()
		require.NoError(t, err, string(b))
	}
	out, err := run(t, sa, append([]string{"verify", "--root=" + root}, units...)...)
	return out, err == nil && strings.TrimSpace(out) == ""
}

// TestUnits_TheImageInstallsEnablesAndSystemdVerifiesThem: the provisioners install
// consul.service and rehydrate-lifecycle.service with every executable they run, and
// enable the gate as wanted by consul.service; systemd-analyze verify finds nothing
// wrong with either as installed, and does find a unit that runs an executable the
// image lacks and a misspelt directive. The command lines the units run parse with
// the executables `make build` makes: `rehydrate -config … -http-addr … leave` and
// `lifecycle -config … -http-addr …` get as far as reading the configuration. And the
// stop path holds together: its failure does not fail the stop, and its timeout
// outlasts the leave.
func TestUnits_TheImageInstallsEnablesAndSystemdVerifiesThem(t *testing.T) {
	root := installImage(t)
	etc := filepath.Join(root, "etc/systemd/system")

	t.Run("installed and enabled", func(t *testing.T) {
		for _, f := range []string{"spinup", "spindown", "rehydrate", "lifecycle"} {
			fi, err := os.Stat(filepath.Join(root, "opt/consul-rehydrate/bin", f))
			if assert.NoError(t, err, f) {
				assert.Equal(t, os.FileMode(0o755), fi.Mode(), f)
			}
		}
		fi, err := os.Stat(filepath.Join(root, "etc/consul-rehydrate"))
		require.NoError(t, err)
		assert.Equal(t, os.ModeDir|0o750, fi.Mode())
		for _, u := range []string{"consul.service", "rehydrate-lifecycle.service"} {
			want, err := os.ReadFile(filepath.Join("../../scripts", u))
			require.NoError(t, err)
			got, err := os.ReadFile(filepath.Join(etc, u))
			require.NoError(t, err)
			assert.Equal(t, string(want), string(got), u)
		}
		// Enabled (WantedBy=consul.service): it starts whenever Consul does.
		link, err := os.Readlink(filepath.Join(etc, "consul.service.wants/rehydrate-lifecycle.service"))
		require.NoError(t, err, "the gate is enabled")
		assert.Equal(t, "/etc/systemd/system/rehydrate-lifecycle.service", link)
	})

	t.Run("systemd-analyze verify", func(t *testing.T) {
		out, ok := verifyUnits(t, root, "consul.service", "rehydrate-lifecycle.service")
		assert.True(t, ok, "systemd-analyze verify: %s", out)

		shipped, err := os.ReadFile(filepath.Join(etc, "rehydrate-lifecycle.service"))
		require.NoError(t, err)
		for _, tc := range []struct{ name, old, new, want string }{
			{"an executable the image lacks", "/bin/lifecycle ", "/bin/lifecycled ", "lifecycled is not executable"},
			{"a misspelt directive", "Restart=on-failure", "Restrat=on-failure", "Unknown key 'Restrat'"},
		} {
			broken := strings.Replace(string(shipped), tc.old, tc.new, 1)
			require.NotEqual(t, string(shipped), broken, "%s: the unit has no %q", tc.name, tc.old)
			require.NoError(t, os.WriteFile(filepath.Join(etc, "broken.service"), []byte(broken), 0o644))
			out, ok := verifyUnits(t, root, "broken.service")
			assert.False(t, ok, "%s must not verify", tc.name)
			assert.Contains(t, out, tc.want, tc.name)
		}
		require.NoError(t, os.Remove(filepath.Join(etc, "broken.service")))
	})

	consul := readUnit(t, filepath.Join(etc, "consul.service"))
	gate := readUnit(t, filepath.Join(etc, "rehydrate-lifecycle.service"))
	env := map[string]string{"CONSUL_HTTP_ADDR": "https://127.0.0.1:1"}

	t.Run("commands parse", func(t *testing.T) {
		stop, _ := consul.command(t, "ExecStop", env)
		start, _ := gate.command(t, "ExecStart", env)
		for _, tc := range []struct {
			name string
			argv []string
		}{{"consul.service ExecStop", stop}, {"rehydrate-lifecycle.service ExecStart", start}} {
			require.True(t, strings.HasPrefix(tc.argv[0], "/opt/consul-rehydrate/bin/"), tc.name)
			bin := filepath.Join(root, tc.argv[0])
			// The unit's configuration path, made one that does not exist here: a
			// command and flags that parse get as far as reading it, and say so.
			missing := filepath.Join(t.TempDir(), "config.hcl")
			args := append([]string(nil), tc.argv[1:]...)
			n := 0
			for i, a := range args {
				if a == "/etc/consul-rehydrate/config.hcl" {
					args[i], n = missing, n+1
				}
			}
			require.Equal(t, 1, n, "%s names the handlers' configuration once: %v", tc.name, tc.argv)
			out, code := exitCode(t, bin, args...)
			assert.Equal(t, app.ExitConfig, code, "%s: %s", tc.name, out)
			assert.Contains(t, out, "read config: open "+missing, tc.name)

			// The check can fail: a misspelt flag is a usage error, before any config.
			bad := append([]string(nil), args...)
			for i, a := range bad {
				bad[i] = strings.Replace(a, "-http-addr", "-http-adr", 1)
			}
			out, code = exitCode(t, bin, bad...)
			assert.Equal(t, app.ExitUsage, code, "%s with -http-adr: %s", tc.name, out)
			assert.Contains(t, out, "flag provided but not defined: -http-adr", tc.name)
		}
		// And a command rehydrate does not have.
		out, code := exitCode(t, filepath.Join(root, stop[0]), "-config", "x", "leav")
		assert.Equal(t, app.ExitUsage, code, out)
		assert.Contains(t, out, `unknown command "leav"`)
	})

	t.Run("the stop path", func(t *testing.T) {
		// A failed leave (the agent already gone: a crash, or the gate's own leave) must
		// not fail the stop: KillSignal and leave_on_terminate take over.
		_, ignoreFailure := consul.command(t, "ExecStop", env)
		assert.True(t, ignoreFailure, "consul.service's ExecStop starts with -")
		assert.Equal(t, "SIGTERM", consul.one(t, "KillSignal"))
		server, err := os.ReadFile("../../consul.d/server.hcl")
		require.NoError(t, err)
		assert.Regexp(t, `(?m)^leave_on_terminate\s*=\s*true`, string(server), "the fallback")

		// TimeoutStopSec bounds ExecStop: `rehydrate leave` waits for the hand-off at
		// most roll.leave_timeout, then for the leave's answer at most roll.leave_timeout
		// + 10s (internal/gate.Leave).
		secs, err := strconv.Atoi(consul.one(t, "TimeoutStopSec"))
		require.NoError(t, err, "TimeoutStopSec in seconds")
		assert.Greater(t, time.Duration(secs)*time.Second, 2*config.DefaultRollLeaveTimeout+10*time.Second+20*time.Second)

		// The gate talks to the same agent with the same token, and is ordered after
		// Consul (stopped before it at shutdown) without being stopped by its exit.
		assert.Equal(t, consul["Environment"], gate["Environment"], "the same Consul environment")
		assert.Contains(t, gate.one(t, "After"), "consul.service")
		assert.Contains(t, gate.one(t, "Wants"), "consul.service")
		for _, k := range []string{"Requires", "BindsTo", "PartOf"} {
			assert.Empty(t, gate[k], "the gate outlives the agent it made leave: no %s", k)
		}
		assert.Equal(t, "consul.service", gate.one(t, "WantedBy"))
		assert.Equal(t, "consul", gate.one(t, "User"))
		assert.Equal(t, "on-failure", gate.one(t, "Restart"))
	})
}

// exitCode runs bin with args and returns its output and exit status.
func exitCode(t *testing.T, bin string, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir()}
	b, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return string(b), ee.ExitCode()
	}
	require.NoError(t, err, string(b))
	return string(b), 0
}

// TestInstallHandlers_RefusesAMissingExecutableAndInstallsNothing: an upload without
// one of the executables (make build not run, or an older bin/ without lifecycle) is
// refused with an error naming it, before anything is installed.
func TestInstallHandlers_RefusesAMissingExecutableAndInstallsNothing(t *testing.T) {
	tool(t, "systemctl")
	for _, missing := range []string{"spinup", "spindown", "rehydrate", "lifecycle"} {
		src, root := t.TempDir(), t.TempDir()
		scripts, err := filepath.Abs("../../scripts")
		require.NoError(t, err)
		require.NoError(t, os.Symlink(scripts, filepath.Join(src, "scripts")))
		require.NoError(t, os.MkdirAll(filepath.Join(src, "bin"), 0o755))
		for _, f := range []string{"spinup", "spindown", "rehydrate", "lifecycle"} {
			if f != missing {
				require.NoError(t, os.WriteFile(filepath.Join(src, "bin", f), []byte("#!/bin/sh\n"), 0o755))
			}
		}
		out, err := installHandlers(t, src, root)
		require.Error(t, err, "without %s: %s", missing, out)
		assert.Contains(t, out, "install-handlers: "+filepath.Join(src, "bin", missing)+" missing: run 'make build'")
		assert.Empty(t, files(t, root), "nothing installed without %s", missing)
	}
	// With all four, it installs: the refusal above is about the missing one.
	src, root := t.TempDir(), t.TempDir()
	scripts, err := filepath.Abs("../../scripts")
	require.NoError(t, err)
	require.NoError(t, os.Symlink(scripts, filepath.Join(src, "scripts")))
	require.NoError(t, os.MkdirAll(filepath.Join(src, "bin"), 0o755))
	for _, f := range []string{"spinup", "spindown", "rehydrate", "lifecycle"} {
		require.NoError(t, os.WriteFile(filepath.Join(src, "bin", f), []byte("#!/bin/sh\n"), 0o755))
	}
	out, err := installHandlers(t, src, root)
	require.NoError(t, err, out)
	assert.Contains(t, files(t, root), "opt/consul-rehydrate/bin/lifecycle")
}
