package reconfigure

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/consul-rehydrate/consul-rehydrate/internal/app"
)

// fixture is a reconfigure block in a temporary directory: the rendered file in
// out/, the state in state/, and the reload command appending the count of healthy
// instances to reloads.
type fixture struct {
	dir, cfg, dest, state, reloads string
}

const lbTemplate = "{{ range .Instances }}server {{ .Node }} {{ .Address }}:{{ .Port }}\n{{ end }}"

// newFixture writes a configuration with one reconfigure "lb" block for service web;
// extra is added to the block, reload is its reload command's shell script.
func newFixture(t *testing.T, tmpl, extra string) *fixture {
	t.Helper()
	dir := t.TempDir()
	f := &fixture{
		dir:     dir,
		cfg:     filepath.Join(dir, "rehydrate.hcl"),
		dest:    filepath.Join(dir, "out", "lb.conf"),
		state:   filepath.Join(dir, "state", "lb.json"),
		reloads: filepath.Join(dir, "reloads"),
	}
	require.NoError(t, os.Mkdir(filepath.Join(dir, "out"), 0o755))
	f.writeConfig(t, fmt.Sprintf(`reconfigure "lb" {
  service            = "web"
  template           = %q
  destination        = %q
  state_file         = %q
  reload_command     = ["/bin/sh", "-c", "echo $REHYDRATE_RECONFIGURE_INSTANCES >> %s"]
  expect_replacement = "10m"
  probation          = "5m"
%s
}
`, tmpl, f.dest, f.state, f.reloads, extra))
	return f
}

func (f *fixture) writeConfig(t *testing.T, src string) {
	t.Helper()
	require.NoError(t, os.WriteFile(f.cfg, []byte(src), 0o644))
}

// writeReloadConfig writes an "lb" block over web with lbTemplate whose reload
// command is `/bin/sh -c script`.
func (f *fixture) writeReloadConfig(t *testing.T, script string) {
	t.Helper()
	f.writeConfig(t, fmt.Sprintf(`reconfigure "lb" {
  service        = "web"
  template       = %q
  destination    = %q
  state_file     = %q
  reload_command = ["/bin/sh", "-c", %q]
}
`, lbTemplate, f.dest, f.state, script))
}

// run runs the handler (or, with -check, the check) at now with stdin.
func (f *fixture) run(t *testing.T, now time.Time, stdin []byte, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	env := app.Env{
		Stdin: bytes.NewReader(stdin), Stdout: &out, Stderr: &errb,
		Getenv: func(string) string { return "" },
	}
	code = main(append([]string{"-config", f.cfg}, args...), env, func() time.Time { return now })
	return code, out.String(), errb.String()
}

// handle runs the handler and requires its exit code.
func (f *fixture) handle(t *testing.T, now time.Time, stdin []byte, want int) string {
	t.Helper()
	code, stdout, stderr := f.run(t, now, stdin)
	require.Equal(t, want, code, "stdout: %s\nstderr: %s", stdout, stderr)
	return stderr
}

// check runs the check and returns its exit code and note.
func (f *fixture) check(t *testing.T, now time.Time, args ...string) (int, string) {
	t.Helper()
	code, stdout, _ := f.run(t, now, nil, append([]string{"-check"}, args...)...)
	return code, stdout
}

func (f *fixture) content(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(f.dest)
	require.NoError(t, err)
	return string(b)
}

func (f *fixture) mode(t *testing.T) os.FileMode {
	t.Helper()
	fi, err := os.Stat(f.dest)
	require.NoError(t, err)
	return fi.Mode().Perm()
}

// reloadCounts are the counts the reload command was run with, one per run.
func (f *fixture) reloadCounts(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile(f.reloads)
	if os.IsNotExist(err) {
		return nil
	}
	require.NoError(t, err)
	return strings.Fields(string(b))
}

func (f *fixture) loadState(t *testing.T) State {
	t.Helper()
	_, err := os.Stat(f.state)
	require.NoError(t, err, "the state file")
	s, err := loadState(f.state)
	require.NoError(t, err)
	return s
}

// noLeftovers requires that the destination's and the state's directories hold
// nothing but their files: no temporary file was left behind.
func (f *fixture) noLeftovers(t *testing.T) {
	t.Helper()
	for _, d := range []string{filepath.Dir(f.dest), filepath.Dir(f.state)} {
		entries, err := os.ReadDir(d)
		if os.IsNotExist(err) {
			continue
		}
		require.NoError(t, err)
		for _, e := range entries {
			if n := e.Name(); n != filepath.Base(f.dest) && n != filepath.Base(f.state) {
				t.Errorf("left over in %s: %s", d, n)
			}
		}
	}
}

func entry(node, addr, id string, port int, status string) *api.ServiceEntry {
	return &api.ServiceEntry{
		Node: &api.Node{ID: "id-" + node, Node: node, Address: addr, Datacenter: "dc1", Meta: map[string]string{"rack": "r1"}},
		Service: &api.AgentService{ID: id, Service: "web", Port: port, Tags: []string{"v1"},
			Meta: map[string]string{"version": "1"}},
		Checks: api.HealthChecks{
			{Node: node, CheckID: "serfHealth", Name: "Serf Health Status", Status: api.HealthPassing},
			{Node: node, CheckID: "service:" + id, Name: "Service 'web' check", Status: status, ServiceID: id, ServiceName: "web"},
		},
	}
}

func payloadOf(t *testing.T, entries ...*api.ServiceEntry) []byte {
	t.Helper()
	if entries == nil {
		entries = []*api.ServiceEntry{}
	}
	b, err := json.Marshal(entries)
	require.NoError(t, err)
	return append(b, '\n') // as the agent writes it
}

// threeInstances: n1 and n3 healthy (n3 with a service address of its own), n2's
// check critical.
func threeInstances(t *testing.T) []byte {
	n3 := entry("n3", "10.0.0.3", "web-3", 9090, api.HealthPassing)
	n3.Service.Address = "10.0.1.3"
	return payloadOf(t,
		entry("n2", "10.0.0.2", "web-2", 8080, api.HealthCritical),
		n3,
		entry("n1", "10.0.0.1", "web-1", 8080, api.HealthPassing),
	)
}

const threeRendered = "server n1 10.0.0.1:8080\nserver n3 10.0.1.3:9090\n"

func TestHandler_RendersTheHealthyInstancesAndReloadsOnce(t *testing.T) {
	f := newFixture(t, lbTemplate, "")
	f.handle(t, t0, threeInstances(t), app.ExitOK)

	assert.Equal(t, threeRendered, f.content(t), "the healthy instances, sorted; n2's check is critical")
	assert.Equal(t, os.FileMode(0o644), f.mode(t), "a new file's mode")
	assert.Equal(t, []string{"2"}, f.reloadCounts(t), "one reload, told the count of healthy instances")
	s := f.loadState(t)
	assert.Equal(t, State{Service: "web", Healthy: map[string]time.Time{"n1/web-1": t0, "n3/web-3": t0}, Seen: t0}, s)
	fi, err := os.Stat(f.state)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o644), fi.Mode().Perm(), "the state file's mode")
	f.noLeftovers(t)
}

func TestHandler_TheReloadCommandIsToldTheFileAndTheCount(t *testing.T) {
	f := newFixture(t, lbTemplate, "")
	got := filepath.Join(f.dir, "env")
	f.writeReloadConfig(t, fmt.Sprintf(`echo "$REHYDRATE_RECONFIGURE_FILE $REHYDRATE_RECONFIGURE_INSTANCES" > %s`, got))
	f.handle(t, t0, threeInstances(t), app.ExitOK)
	b, err := os.ReadFile(got)
	require.NoError(t, err)
	assert.Equal(t, f.dest+" 2\n", string(b))
}

func TestHandler_WithoutAReloadCommandOnlyRenders(t *testing.T) {
	f := newFixture(t, lbTemplate, "")
	f.writeConfig(t, fmt.Sprintf(`reconfigure "web" {
  template    = %q
  destination = %q
  state_file  = %q
}
`, lbTemplate, f.dest, f.state))
	f.handle(t, t0, threeInstances(t), app.ExitOK)
	assert.Equal(t, threeRendered, f.content(t))
	assert.Nil(t, f.reloadCounts(t))
}

func TestHandler_TheSameInstancesAgainChangeNothingAndDoNotReload(t *testing.T) {
	f := newFixture(t, lbTemplate, "")
	in := threeInstances(t)
	f.handle(t, t0, in, app.ExitOK)
	require.Equal(t, []string{"2"}, f.reloadCounts(t))
	// Back-date the file, so that a rewrite would show in its mtime.
	old := t0.Add(-24 * time.Hour)
	require.NoError(t, os.Chtimes(f.dest, old, old))

	f.handle(t, t0.Add(time.Minute), in, app.ExitOK)
	assert.Equal(t, threeRendered, f.content(t))
	assert.Equal(t, []string{"2"}, f.reloadCounts(t), "no reload when nothing changed")
	fi, err := os.Stat(f.dest)
	require.NoError(t, err)
	assert.True(t, fi.ModTime().Equal(old), "the file was not rewritten: mtime %s", fi.ModTime())
	s := f.loadState(t)
	assert.Equal(t, t0.Add(time.Minute), s.Seen, "the state records the run")
	assert.Equal(t, map[string]time.Time{"n1/web-1": t0, "n3/web-3": t0}, s.Healthy, "the instances keep their since")

	// A change renders and reloads again.
	f.handle(t, t0.Add(2*time.Minute), payloadOf(t,
		entry("n1", "10.0.0.1", "web-1", 8080, api.HealthPassing),
		entry("n2", "10.0.0.2", "web-2", 8080, api.HealthPassing),
	), app.ExitOK)
	assert.Equal(t, "server n1 10.0.0.1:8080\nserver n2 10.0.0.2:8080\n", f.content(t))
	assert.Equal(t, []string{"2", "2"}, f.reloadCounts(t))
	s = f.loadState(t)
	assert.Equal(t, []Flap{{Instance: "n3/web-3", Appeared: t0, Left: t0.Add(2 * time.Minute)}}, s.Flaps)
	f.noLeftovers(t)
}

func TestHandler_KeepsAnExistingFilesModeUnlessModeIsSet(t *testing.T) {
	t.Run("mode unset: an existing file keeps its mode", func(t *testing.T) {
		f := newFixture(t, lbTemplate, "")
		require.NoError(t, os.WriteFile(f.dest, []byte("old\n"), 0o600))
		require.NoError(t, os.Chmod(f.dest, 0o600))
		f.handle(t, t0, threeInstances(t), app.ExitOK)
		assert.Equal(t, threeRendered, f.content(t))
		assert.Equal(t, os.FileMode(0o600), f.mode(t))
	})
	t.Run("mode set: applied to an existing file", func(t *testing.T) {
		f := newFixture(t, lbTemplate, `  mode = "0640"`)
		require.NoError(t, os.WriteFile(f.dest, []byte("old\n"), 0o600))
		require.NoError(t, os.Chmod(f.dest, 0o600))
		f.handle(t, t0, threeInstances(t), app.ExitOK)
		assert.Equal(t, threeRendered, f.content(t))
		assert.Equal(t, os.FileMode(0o640), f.mode(t))
	})
	t.Run("mode set: applied to a new file", func(t *testing.T) {
		f := newFixture(t, lbTemplate, `  mode = "0640"`)
		f.handle(t, t0, threeInstances(t), app.ExitOK)
		assert.Equal(t, os.FileMode(0o640), f.mode(t))
	})
}

func TestHandler_WritesAtomicallyLeavingNoTemporaryFiles(t *testing.T) {
	f := newFixture(t, lbTemplate, "")
	require.NoError(t, os.WriteFile(f.dest, []byte("old\n"), 0o644))
	// Hold the old file open: an atomic replace leaves what a reader opened intact.
	r, err := os.Open(f.dest)
	require.NoError(t, err)
	defer r.Close()

	f.handle(t, t0, threeInstances(t), app.ExitOK)
	f.handle(t, t0.Add(time.Minute), threeInstances(t), app.ExitOK)
	f.handle(t, t0.Add(2*time.Minute), payloadOf(t), app.ExitOK)
	assert.Equal(t, "", f.content(t))
	assert.Equal(t, []string{"2", "0"}, f.reloadCounts(t))

	b := make([]byte, 16)
	n, _ := r.Read(b)
	assert.Equal(t, "old\n", string(b[:n]), "the old file was replaced, not written over")
	f.noLeftovers(t)
}

// failingReload makes the fixture's reload command record its count and fail.
func failingReload(t *testing.T, f *fixture, extra string) {
	t.Helper()
	f.writeConfig(t, fmt.Sprintf(`reconfigure "lb" {
  service        = "web"
  template       = %q
  destination    = %q
  state_file     = %q
  reload_command = ["/bin/sh", "-c", "echo $REHYDRATE_RECONFIGURE_INSTANCES >> %s; echo config test failed >&2; exit 1"]
%s
}
`, lbTemplate, f.dest, f.state, f.reloads, extra))
}

func TestHandler_AFailedReloadPutsThePreviousFileBack(t *testing.T) {
	f := newFixture(t, lbTemplate, "")
	failingReload(t, f, "")
	require.NoError(t, os.WriteFile(f.dest, []byte("old\n"), 0o644))
	require.NoError(t, os.Chmod(f.dest, 0o640))

	stderr := f.handle(t, t0, threeInstances(t), app.ExitFailed)
	assert.Contains(t, stderr, "reload failed")
	assert.Contains(t, stderr, "reload command /bin/sh: exit status 1")
	assert.Contains(t, stderr, "the previous file is back in place")
	assert.Contains(t, stderr, "config test failed", "the command's output")
	assert.Equal(t, "old\n", f.content(t), "the previous file is back")
	assert.Equal(t, os.FileMode(0o640), f.mode(t), "with its mode")
	assert.Equal(t, []string{"2"}, f.reloadCounts(t))
	f.noLeftovers(t)

	// The next run with the same payload tries again.
	f.handle(t, t0.Add(time.Minute), threeInstances(t), app.ExitFailed)
	assert.Equal(t, "old\n", f.content(t))
	assert.Equal(t, []string{"2", "2"}, f.reloadCounts(t))

	// Once the reload works, the new file stays.
	f.writeConfig(t, strings.Replace(mustRead(t, f.cfg), "; echo config test failed >&2; exit 1", "", 1))
	f.handle(t, t0.Add(2*time.Minute), threeInstances(t), app.ExitOK)
	assert.Equal(t, threeRendered, f.content(t))
	assert.Equal(t, os.FileMode(0o640), f.mode(t))
	assert.Equal(t, []string{"2", "2", "2"}, f.reloadCounts(t))
	f.noLeftovers(t)
}

func TestHandler_AFailedReloadOfANewFileLeavesNoFile(t *testing.T) {
	f := newFixture(t, lbTemplate, "")
	failingReload(t, f, "")

	stderr := f.handle(t, t0, threeInstances(t), app.ExitFailed)
	assert.Contains(t, stderr, "reload failed")
	assert.NoFileExists(t, f.dest)
	assert.Equal(t, []string{"2"}, f.reloadCounts(t))

	f.handle(t, t0.Add(time.Minute), threeInstances(t), app.ExitFailed)
	assert.NoFileExists(t, f.dest)
	assert.Equal(t, []string{"2", "2"}, f.reloadCounts(t), "the next run tries again")
	f.noLeftovers(t)
}

// With mode set, the previous file is put back as it was: its mode as well as its
// content.
func TestHandler_AFailedReloadPutsThePreviousFileBackWithItsMode(t *testing.T) {
	f := newFixture(t, lbTemplate, "")
	failingReload(t, f, `  mode = "0644"`)
	require.NoError(t, os.WriteFile(f.dest, []byte("old\n"), 0o600))
	require.NoError(t, os.Chmod(f.dest, 0o600))

	f.handle(t, t0, threeInstances(t), app.ExitFailed)
	assert.Equal(t, "old\n", f.content(t))
	assert.Equal(t, os.FileMode(0o600), f.mode(t),
		"the previous content comes back with its own mode, not the configured one")
}

func mustRead(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	return string(b)
}

// A render that fails keeps the previous file, and the check is critical, naming
// the failure, until a render succeeds: a passing check must not hide a stale file.
func TestHandler_ATemplateThatFailsKeepsThePreviousFile(t *testing.T) {
	f := newFixture(t, "{{ (index .Instances 0).Address }}\n", "")
	f.handle(t, t0, payloadOf(t, entry("n1", "10.0.0.1", "web-1", 8080, api.HealthPassing)), app.ExitOK)
	require.Equal(t, "10.0.0.1\n", f.content(t))
	require.Equal(t, []string{"1"}, f.reloadCounts(t))

	// n1 goes: the template indexes an empty list.
	stderr := f.handle(t, t0.Add(time.Hour), payloadOf(t, entry("n1", "10.0.0.1", "web-1", 8080, api.HealthCritical)), app.ExitConfig)
	assert.Contains(t, stderr, "keeping the previous file")
	assert.Contains(t, stderr, "index out of range")
	assert.Equal(t, "10.0.0.1\n", f.content(t), "the previous file is unchanged")
	assert.Equal(t, []string{"1"}, f.reloadCounts(t), "no reload")
	f.noLeftovers(t)

	s := f.loadState(t)
	require.NotNil(t, s.GoneSince, "the state records that none is healthy even though rendering failed")
	assert.Equal(t, t0.Add(time.Hour), *s.GoneSince)
	assert.Empty(t, s.Healthy)
	require.NotNil(t, s.Failure, "the state records the failed render")
	assert.Equal(t, StepRender, s.Failure.Step)
	code, note := f.check(t, t0.Add(time.Hour+time.Minute))
	assert.Equal(t, 2, code, note)
	assert.Contains(t, note, "the file is not up to date: the render has failed since 2026-11-23T11:00:00Z: ")
	assert.Contains(t, note, "index out of range", "the failure")
	assert.Contains(t, note, "no healthy instance of web since 2026-11-23T11:00:00Z", "and how the service stands")

	// Failing again keeps the first failure's time; the check stays critical.
	f.handle(t, t0.Add(2*time.Hour), payloadOf(t), app.ExitConfig)
	code, note = f.check(t, t0.Add(2*time.Hour))
	assert.Equal(t, 2, code, note)
	assert.Contains(t, note, "the render has failed since 2026-11-23T11:00:00Z")

	// A render that succeeds clears it.
	f.handle(t, t0.Add(3*time.Hour), payloadOf(t, entry("n2", "10.0.0.2", "web-2", 8080, api.HealthPassing)), app.ExitOK)
	assert.Equal(t, "10.0.0.2\n", f.content(t))
	assert.Nil(t, f.loadState(t).Failure)
	code, note = f.check(t, t0.Add(3*time.Hour))
	assert.Equal(t, 0, code, note)
}

// A failed reload (or write) leaves the running configuration behind the
// instances, as a failed render does: the check is critical until a run succeeds.
func TestHandler_AFailedReloadTurnsTheCheckCriticalUntilOneSucceeds(t *testing.T) {
	f := newFixture(t, lbTemplate, "")
	failingReload(t, f, "")
	f.handle(t, t0, threeInstances(t), app.ExitFailed)
	code, note := f.check(t, t0.Add(time.Minute))
	assert.Equal(t, 2, code, note)
	assert.Contains(t, note, "the file is not up to date: the reload has failed since 2026-11-23T10:00:00Z: reload command /bin/sh: exit status 1")

	f.writeConfig(t, strings.Replace(mustRead(t, f.cfg), "; echo config test failed >&2; exit 1", "", 1))
	f.handle(t, t0.Add(2*time.Minute), threeInstances(t), app.ExitOK)
	code, note = f.check(t, t0.Add(2*time.Minute))
	assert.Equal(t, 0, code, note)

	t.Run("write", func(t *testing.T) {
		f := newFixture(t, lbTemplate, "")
		require.NoError(t, os.Remove(filepath.Dir(f.dest)))
		f.handle(t, t0, threeInstances(t), app.ExitError)
		code, note := f.check(t, t0)
		assert.Equal(t, 2, code, note)
		assert.Contains(t, note, "the write has failed since 2026-11-23T10:00:00Z: write the file")
	})
}

// An instance without a meta key renders "" where the template uses it, whether
// through the field syntax or index: it does not fail the render of the others.
func TestHandler_AMissingMetaKeyRendersEmpty(t *testing.T) {
	f := newFixture(t, `{{ range .Instances }}{{ .Node }} w={{ .Meta.weight }} i={{ index .Meta "weight" }} r={{ .NodeMeta.rack }}{{ with .Meta.weight }} weight {{ . }}{{ end }}
{{ end }}`, "")
	weighted := entry("n1", "10.0.0.1", "web-1", 8080, api.HealthPassing)
	weighted.Service.Meta["weight"] = "5"
	without := entry("n2", "10.0.0.2", "web-2", 8080, api.HealthPassing)
	noMeta := entry("n3", "10.0.0.3", "web-3", 8080, api.HealthPassing)
	noMeta.Service.Meta, noMeta.Node.Meta = nil, nil
	f.handle(t, t0, payloadOf(t, weighted, without, noMeta), app.ExitOK)
	assert.Equal(t, "n1 w=5 i=5 r=r1 weight 5\nn2 w= i= r=r1\nn3 w= i= r=\n", f.content(t))
	code, note := f.check(t, t0)
	assert.Equal(t, 0, code, note)
}

// A field a template may reach that holds a control character, or an address that
// is not one, refuses that instance: it is left out of the file and named, with
// the field, in the log and the check's note. The others are rendered.
func TestHandler_RefusesAnInstanceWithAHostileFieldAndRendersTheOthers(t *testing.T) {
	tmpl := `{{ range .Instances }}target {{ .Node }} {{ .Address }}:{{ .Port }} {{ join .Tags "," }}{{ range $k, $v := .Meta }} {{ $k }}={{ $v }}{{ end }}
{{ end }}`
	good := entry("n1", "10.0.0.1", "web-1", 8080, api.HealthPassing)
	tag := entry("n2", "10.0.0.2", "web-2", 8080, api.HealthPassing)
	tag.Service.Tags = []string{"v1", "x\ntarget evil 203.0.113.66:9090\n# "}
	meta := entry("n3", "10.0.0.3", "web-3", 8080, api.HealthPassing)
	meta.Service.Meta["version"] = "1\r\ntarget evil 203.0.113.66:9090"
	addr := entry("n4", "1.2.3.4\n", "web-4", 8080, api.HealthPassing)
	svcAddr := entry("n5", "10.0.0.5", "web-5", 8080, api.HealthPassing)
	svcAddr.Service.Address = "$(curl evil)"
	node := entry("n6\ntarget evil 203.0.113.66:9090", "10.0.0.6", "web-6", 8080, api.HealthPassing)
	nodeMeta := entry("n7", "10.0.0.7", "web-7", 8080, api.HealthPassing)
	nodeMeta.Node.Meta["rack"] = "r1\u2028x"
	sick := entry("n8", "a b", "web-8", 8080, api.HealthCritical) // not healthy: not rendered, not named

	f := newFixture(t, tmpl, "")
	stderr := f.handle(t, t0, payloadOf(t, good, tag, meta, addr, svcAddr, node, nodeMeta, sick), app.ExitOK)
	assert.Equal(t, "target n1 10.0.0.1:8080 v1 version=1\n", f.content(t), "only the instance with plain fields")
	assert.NotContains(t, f.content(t), "evil")
	assert.Equal(t, []string{"1"}, f.reloadCounts(t))

	wantRefused := []Refusal{
		{Instance: "n2/web-2", Field: "Tags[1]", Problem: `"x\ntarget evil 203.0.113.66:9090\n# " holds the control character U+000A at byte 1`},
		{Instance: "n3/web-3", Field: `Meta["version"]`, Problem: `"1\r\ntarget evil 203.0.113.66:9090" holds the control character U+000D at byte 1`},
		{Instance: "n4/web-4", Field: "Address", Problem: `"1.2.3.4\n" holds the control character U+000A at byte 7`},
		{Instance: "n5/web-5", Field: "Address", Problem: `"$(curl evil)" is neither an IP address nor a hostname`},
		{Instance: `"n6\ntarget evil 203.0.113.66:9090/web-6"`, Field: "Node", Problem: `"n6\ntarget evil 203.0.113.66:9090" holds the control character U+000A at byte 2`},
		{Instance: "n7/web-7", Field: `NodeMeta["rack"]`, Problem: `"r1\u2028x" holds the control character U+2028 at byte 2`},
	}
	s := f.loadState(t)
	assert.Equal(t, wantRefused, s.Refused)
	assert.Equal(t, map[string]time.Time{"n1/web-1": t0}, s.Healthy, "refused instances are not counted healthy")
	for _, r := range wantRefused {
		// hclog escapes the quotes of a value it quotes: compare up to the first.
		assert.Contains(t, stderr, strings.SplitN(r.Field, `"`, 2)[0], "the log names the field")
		assert.Contains(t, stderr, strings.Trim(strings.SplitN(r.Instance, `\n`, 2)[0], `"`), "and the instance")
	}
	assert.Contains(t, stderr, "refusing an instance: it is left out of the file")
	assert.NotContains(t, stderr, "\ntarget evil", "the log holds no raw line break from a field")

	code, note := f.check(t, t0.Add(time.Hour))
	assert.Equal(t, 1, code, "a refused instance is a warning: %s", note)
	assert.Equal(t, "1 healthy instance(s) of web: n1/web-1; 6 healthy instance(s) refused, left out of the file: "+
		`n2/web-2 (Tags[1] "x\ntarget evil 203.0.113.66:9090\n# " holds the control character U+000A at byte 1), `+
		`n3/web-3 (Meta["version"] "1\r\ntarget evil 203.0.113.66:9090" holds the control character U+000D at byte 1), `+
		`n4/web-4 (Address "1.2.3.4\n" holds the control character U+000A at byte 7), `+
		`n5/web-5 (Address "$(curl evil)" is neither an IP address nor a hostname), `+
		`"n6\ntarget evil 203.0.113.66:9090/web-6" (Node "n6\ntarget evil 203.0.113.66:9090" holds the control character U+000A at byte 2), `+
		"and 1 more\n", note)
	assert.Equal(t, 1, strings.Count(note, "\n"), "one line")

	// Once their fields are plain, they are rendered and the check passes.
	tag.Service.Tags = []string{"v1", "v2"}
	f.handle(t, t0.Add(2*time.Hour), payloadOf(t, good, tag), app.ExitOK)
	assert.Equal(t, "target n1 10.0.0.1:8080 v1 version=1\ntarget n2 10.0.0.2:8080 v1,v2 version=1\n", f.content(t))
	code, note = f.check(t, t0.Add(3*time.Hour))
	assert.Equal(t, 0, code, note)
}

// The reload command runs with the allow-listed environment and the variables the
// handler gives it: not the handler's Consul token.
func TestHandler_TheReloadCommandDoesNotSeeTheHandlersToken(t *testing.T) {
	t.Setenv("CONSUL_HTTP_TOKEN", "handler-secret")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "aws-secret")
	f := newFixture(t, lbTemplate, "")
	got := filepath.Join(f.dir, "env")
	f.writeReloadConfig(t, fmt.Sprintf(`env > %s`, got))
	f.handle(t, t0, threeInstances(t), app.ExitOK)
	env := mustRead(t, got)
	assert.NotContains(t, env, "secret")
	assert.NotContains(t, env, "CONSUL_HTTP_TOKEN")
	assert.Contains(t, env, "REHYDRATE_RECONFIGURE_INSTANCES=2\n")
	assert.Contains(t, env, "PATH="+os.Getenv("PATH")+"\n")
}

func TestHandler_RefusesBadPayloadsWritingNothing(t *testing.T) {
	other := entry("n1", "10.0.0.1", "api-1", 8080, api.HealthPassing)
	other.Service.Service = "api"
	tests := []struct {
		name, stdin string
	}{
		{"empty", ""},
		{"not JSON", "{not json"},
		{"null", "null\n"},
		{"an object", `{"Node": {}}`},
		{"a null entry", "[null]"},
		{"an entry without its service", `[{"Node": {"Node": "n1", "Address": "10.0.0.1"}, "Checks": []}]`},
		{"entries of another service", string(payloadOf(t, entry("n2", "10.0.0.2", "web-2", 8080, api.HealthPassing), other))},
		{"two values", "[]\n[]\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, lbTemplate, "")
			stderr := f.handle(t, t0, []byte(tc.stdin), app.ExitBadPayload)
			assert.Contains(t, stderr, "refusing service payload")
			assert.NoFileExists(t, f.dest)
			assert.NoFileExists(t, f.state)
			assert.Nil(t, f.reloadCounts(t))
		})
	}

	t.Run("after a good one, nothing changes", func(t *testing.T) {
		f := newFixture(t, lbTemplate, "")
		f.handle(t, t0, threeInstances(t), app.ExitOK)
		before := mustRead(t, f.state)
		f.handle(t, t0.Add(time.Minute), []byte("null"), app.ExitBadPayload)
		assert.Equal(t, threeRendered, f.content(t))
		assert.Equal(t, before, mustRead(t, f.state))
		assert.Equal(t, []string{"2"}, f.reloadCounts(t))
	})
}

func TestHandler_AnUnreadableStateStartsOver(t *testing.T) {
	f := newFixture(t, lbTemplate, "")
	require.NoError(t, os.MkdirAll(filepath.Dir(f.state), 0o755))
	require.NoError(t, os.WriteFile(f.state, []byte("{not json"), 0o644))

	code, note := f.check(t, t0)
	assert.Equal(t, 2, code, "the check cannot judge")
	assert.Contains(t, note, "cannot judge web")

	stderr := f.handle(t, t0, threeInstances(t), app.ExitOK)
	assert.Contains(t, stderr, "starting from an empty state")
	assert.Equal(t, threeRendered, f.content(t))
	assert.Equal(t, map[string]time.Time{"n1/web-1": t0, "n3/web-3": t0}, f.loadState(t).Healthy)
	code, _ = f.check(t, t0)
	assert.Equal(t, 0, code)
}

func TestHandler_CheckJudgesTheRecordedStateByTheClock(t *testing.T) {
	f := newFixture(t, lbTemplate, "")

	code, note := f.check(t, t0)
	assert.Equal(t, 0, code, "no state file yet")
	assert.Equal(t, "no change of the service seen yet\n", note)
	assert.NoFileExists(t, f.state, "the check writes nothing")

	// None healthy at t0: the file is rendered with none, and a replacement is expected.
	stderr := f.handle(t, t0, payloadOf(t), app.ExitOK)
	assert.Contains(t, stderr, "a replacement is expected by 2026-11-23T10:10:00Z", "the handler logs the warning")
	assert.Equal(t, "", f.content(t))
	assert.Equal(t, []string{"0"}, f.reloadCounts(t))

	code, note = f.check(t, t0.Add(time.Minute))
	assert.Equal(t, 1, code, note)
	assert.Equal(t, "no healthy instance of web since 2026-11-23T10:00:00Z: a replacement is expected by 2026-11-23T10:10:00Z\n", note)

	code, note = f.check(t, t0.Add(10*time.Minute))
	assert.Equal(t, 2, code, note)
	assert.Equal(t, "no healthy instance of web since 2026-11-23T10:00:00Z: a replacement was expected by 2026-11-23T10:10:00Z "+
		"(expect_replacement 10m0s) and none came\n", note)

	// A replacement comes: passing, in probation.
	f.handle(t, t0.Add(11*time.Minute), payloadOf(t, entry("n4", "10.0.0.4", "web-4", 8080, api.HealthPassing)), app.ExitOK)
	code, note = f.check(t, t0.Add(11*time.Minute))
	assert.Equal(t, 0, code, note)
	assert.Equal(t, "1 healthy instance(s) of web: n4/web-4; in probation: n4/web-4 until 2026-11-23T10:16:00Z\n", note)

	// A second comes and fails within its probation: warning until a probation later.
	f.handle(t, t0.Add(20*time.Minute), payloadOf(t,
		entry("n4", "10.0.0.4", "web-4", 8080, api.HealthPassing),
		entry("n5", "10.0.0.5", "web-5", 8080, api.HealthPassing)), app.ExitOK)
	f.handle(t, t0.Add(21*time.Minute), payloadOf(t,
		entry("n4", "10.0.0.4", "web-4", 8080, api.HealthPassing),
		entry("n5", "10.0.0.5", "web-5", 8080, api.HealthCritical)), app.ExitOK)
	code, note = f.check(t, t0.Add(22*time.Minute))
	assert.Equal(t, 1, code, note)
	assert.Contains(t, note, "web flapped during probation (n5/web-5 left 1m0s after it appeared")
	code, note = f.check(t, t0.Add(26*time.Minute))
	assert.Equal(t, 0, code, note)
	assert.Equal(t, "1 healthy instance(s) of web: n4/web-4\n", note)
	assert.Equal(t, []string{"0", "1", "2", "1"}, f.reloadCounts(t))
}

// twoBlocks writes a configuration with blocks lb (service web) and mon (service
// prometheus).
func twoBlocks(t *testing.T, f *fixture) string {
	t.Helper()
	mon := filepath.Join(f.dir, "out", "mon.conf")
	f.writeConfig(t, fmt.Sprintf(`reconfigure "lb" {
  service     = "web"
  template    = %q
  destination = %q
  state_file  = %q
}

reconfigure "mon" {
  service     = "prometheus"
  template    = "{{ range .Instances }}target {{ .Address }}:{{ .Port }}\n{{ end }}"
  destination = %q
  state_file  = %q
}
`, lbTemplate, f.dest, f.state, mon, filepath.Join(f.dir, "state", "mon.json")))
	return mon
}

func TestHandler_NamePicksTheBlock(t *testing.T) {
	f := newFixture(t, lbTemplate, "")
	mon := twoBlocks(t, f)
	prom := entry("n1", "10.0.0.1", "prometheus-1", 9090, api.HealthPassing)
	prom.Service.Service = "prometheus"

	code, _, stderr := f.run(t, t0, threeInstances(t))
	assert.Equal(t, app.ExitUsage, code, "two blocks and no -name")
	assert.Contains(t, stderr, "the configuration has 2 reconfigure blocks: pass -name to pick one")
	code, _ = f.check(t, t0)
	assert.Equal(t, 2, code, "the check without -name is critical")

	code, _, stderr = f.run(t, t0, threeInstances(t), "-name", "nope")
	assert.Equal(t, app.ExitUsage, code)
	assert.Contains(t, stderr, `no reconfigure block "nope" in the configuration`)
	code, _ = f.check(t, t0, "-name", "nope")
	assert.Equal(t, 2, code)
	assert.NoFileExists(t, f.dest)
	assert.NoFileExists(t, mon)

	code, _, stderr = f.run(t, t0, payloadOf(t, prom), "-name", "mon")
	require.Equal(t, app.ExitOK, code, stderr)
	assert.Equal(t, "target 10.0.0.1:9090\n", mustRead(t, mon))
	assert.NoFileExists(t, f.dest, "only the picked block")
	code, note := f.check(t, t0, "-name", "mon")
	assert.Equal(t, 0, code)
	assert.Contains(t, note, "1 healthy instance(s) of prometheus: n1/prometheus-1")
	code, note = f.check(t, t0, "-name", "lb")
	assert.Equal(t, 0, code)
	assert.Equal(t, "no change of the service seen yet\n", note)

	// The web payload is refused by the prometheus block.
	code, _, _ = f.run(t, t0, threeInstances(t), "-name", "mon")
	assert.Equal(t, app.ExitBadPayload, code)

	code, _, stderr = f.run(t, t0, threeInstances(t), "-name", "lb")
	require.Equal(t, app.ExitOK, code, stderr)
	assert.Equal(t, threeRendered, f.content(t))

	// With one block, -name may name it.
	g := newFixture(t, lbTemplate, "")
	code, _, stderr = g.run(t, t0, threeInstances(t), "-name", "lb")
	require.Equal(t, app.ExitOK, code, stderr)
	code, _, _ = g.run(t, t0, threeInstances(t), "-name", "mon")
	assert.Equal(t, app.ExitUsage, code)
}

func TestHandler_ConfigAndUsageErrors(t *testing.T) {
	t.Run("missing destination", func(t *testing.T) {
		f := newFixture(t, lbTemplate, "")
		f.writeConfig(t, fmt.Sprintf(`reconfigure "lb" {
  service    = "web"
  template   = %q
  state_file = %q
}
`, lbTemplate, f.state))
		code, _, stderr := f.run(t, t0, threeInstances(t))
		assert.Equal(t, app.ExitConfig, code)
		assert.Contains(t, stderr, "reconfigure.lb.destination is required")
		assert.NoFileExists(t, f.state)
		code, _ = f.check(t, t0)
		assert.Equal(t, 2, code, "the check is critical")
	})
	t.Run("no reconfigure block", func(t *testing.T) {
		f := newFixture(t, lbTemplate, "")
		f.writeConfig(t, `log_level = "info"`+"\n")
		code, _, stderr := f.run(t, t0, threeInstances(t))
		assert.Equal(t, app.ExitConfig, code)
		assert.Contains(t, stderr, `a reconfigure "<name>" block is required`)
		code, _ = f.check(t, t0)
		assert.Equal(t, 2, code)
	})
	t.Run("missing configuration file", func(t *testing.T) {
		f := newFixture(t, lbTemplate, "")
		require.NoError(t, os.Remove(f.cfg))
		code, _, _ := f.run(t, t0, threeInstances(t))
		assert.Equal(t, app.ExitConfig, code)
		code, _ = f.check(t, t0)
		assert.Equal(t, 2, code)
	})
	t.Run("no -config and no $REHYDRATE_CONFIG", func(t *testing.T) {
		var out, errb bytes.Buffer
		code := main(nil, app.Env{Stdin: bytes.NewReader(nil), Stdout: &out, Stderr: &errb,
			Getenv: func(string) string { return "" }}, func() time.Time { return t0 })
		assert.Equal(t, app.ExitConfig, code)
		assert.Contains(t, errb.String(), "no configuration")
	})
	t.Run("REHYDRATE_CONFIG names the file", func(t *testing.T) {
		f := newFixture(t, lbTemplate, "")
		var out, errb bytes.Buffer
		code := main(nil, app.Env{Stdin: bytes.NewReader(threeInstances(t)), Stdout: &out, Stderr: &errb,
			Getenv: func(k string) string {
				if k == app.EnvConfig {
					return f.cfg
				}
				return ""
			}}, func() time.Time { return t0 })
		require.Equal(t, app.ExitOK, code, errb.String())
		assert.Equal(t, threeRendered, f.content(t))
	})
	t.Run("unknown flag", func(t *testing.T) {
		f := newFixture(t, lbTemplate, "")
		code, _, _ := f.run(t, t0, threeInstances(t), "-nope")
		assert.Equal(t, app.ExitUsage, code)
	})
	t.Run("unexpected argument", func(t *testing.T) {
		f := newFixture(t, lbTemplate, "")
		code, _, stderr := f.run(t, t0, threeInstances(t), "extra")
		assert.Equal(t, app.ExitUsage, code)
		assert.Contains(t, stderr, `unexpected argument "extra"`)
		assert.NoFileExists(t, f.dest)
	})
	t.Run("destination directory missing", func(t *testing.T) {
		f := newFixture(t, lbTemplate, "")
		require.NoError(t, os.Remove(filepath.Dir(f.dest)))
		code, _, stderr := f.run(t, t0, threeInstances(t))
		assert.Equal(t, app.ExitError, code)
		assert.Contains(t, stderr, "write the file")
		assert.Nil(t, f.reloadCounts(t))
	})
}

func TestHealthy(t *testing.T) {
	warn := entry("n2", "10.0.0.2", "web-2", 8080, api.HealthWarning)
	maint := entry("n3", "10.0.0.3", "web-3", 8080, api.HealthPassing)
	maint.Checks = append(maint.Checks, &api.HealthCheck{Node: "n3", CheckID: api.NodeMaint, Status: api.HealthCritical})
	nodeDown := entry("n4", "10.0.0.4", "web-4", 8080, api.HealthPassing)
	nodeDown.Checks[0].Status = api.HealthCritical
	noNode := entry("n5", "10.0.0.5", "web-5", 8080, api.HealthPassing)
	noNode.Node = nil
	noChecks := entry("n6", "10.0.0.6", "web-6", 8080, api.HealthPassing)
	noChecks.Checks = nil
	ok := entry("n1", "10.0.0.1", "web-1", 8080, api.HealthPassing)

	got := Healthy([]*api.ServiceEntry{warn, maint, nodeDown, noNode, noChecks, ok})
	assert.Equal(t, []Instance{
		{Node: "n1", Address: "10.0.0.1", Port: 8080, ID: "web-1", Tags: []string{"v1"}, Meta: map[string]string{"version": "1"},
			NodeMeta: map[string]string{"rack": "r1"}, Datacenter: "dc1"},
		{Node: "n6", Address: "10.0.0.6", Port: 8080, ID: "web-6", Tags: []string{"v1"}, Meta: map[string]string{"version": "1"},
			NodeMeta: map[string]string{"rack": "r1"}, Datacenter: "dc1"},
	}, got, "a warning, maintenance, a failing node and a missing node are not healthy; no checks is")
	assert.Equal(t, "n1/web-1", got[0].Key())
}

// Instances are documented as sorted by node, then ID (render.go, Data.Instances;
// the example configuration says so to template authors).
func TestHealthy_SortsByNodeThenID(t *testing.T) {
	got := Healthy([]*api.ServiceEntry{
		entry("web-2", "10.0.0.3", "b", 8080, api.HealthPassing),
		entry("web", "10.0.0.2", "b", 8080, api.HealthPassing),
		entry("web", "10.0.0.1", "a", 8080, api.HealthPassing),
	})
	var order []string
	for _, in := range got {
		order = append(order, in.Node+" "+in.ID)
	}
	assert.Equal(t, []string{"web a", "web b", "web-2 b"}, order,
		"by node, then ID: \"web\" before \"web-2\" although '-' < '/'")
}
