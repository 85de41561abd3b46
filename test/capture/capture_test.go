// Package capture records what real Consul watches write on a handler's stdin and
// proves the payload decoders read exactly that. With -update it refreshes the
// captured goldens in internal/payload/testdata/golden, which the decoders' unit tests
// and fuzz seeds use.
package capture

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/consul-rehydrate/consul-rehydrate/internal/payload"
	"github.com/consul-rehydrate/consul-rehydrate/test/testcluster"
)

var update = flag.Bool("update", false, "copy the captured payloads into internal/payload/testdata/golden")

// watchHCL registers one watch of each type; each runs a capture program that writes
// its stdin to a new file in a directory per watch type.
func watchHCL(dir string) string {
	w := func(kind, spec string) string {
		d := filepath.Join(dir, kind)
		if err := os.MkdirAll(d, 0o755); err != nil {
			panic(err)
		}
		// The capture program: stdin to <dir>/<nanoseconds>.json, nothing else.
		return fmt.Sprintf(`{ %s, args = ["sh", "-c", "cat > \"$0/$(date +%%s%%N).json\"", %q] }`, spec, d)
	}
	return "watches = [\n  " + strings.Join([]string{
		w("event", `type = "event", name = "consul-rehydrate"`),
		w("service", `type = "service", service = "web"`),
		w("checks", `type = "checks", service = "web"`),
		w("key", `type = "key", key = "golden/key"`),
		w("keyprefix", `type = "keyprefix", prefix = "golden/prefix/"`),
		w("consul", `type = "service", service = "consul"`), // what spindown reads
	}, ",\n  ") + "\n]\n"
}

func TestCapture_DecodersReadWhatConsulWatchesWrite(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	c := testcluster.Start(t, testcluster.Options{
		Servers: 3,
		Clients: 1,
		ExtraHCL: func(a *testcluster.Agent) string {
			if a.Name != "client-1" {
				return ""
			}
			return watchHCL(dir)
		},
	})
	cl := c.Clients[0].Client()

	// Each watch fires once when the agent starts, with the state as it is then.
	for _, kind := range []string{"event", "service", "checks", "key", "keyprefix"} {
		waitCaptures(t, dir, kind, 1)
	}
	initial := map[string][]byte{}
	for _, kind := range []string{"event", "service", "checks", "key", "keyprefix"} {
		initial[kind] = captures(t, dir, kind)[0]
	}
	ev, err := payload.Events(bytes.NewReader(initial["event"]))
	require.NoError(t, err, "initial event payload: %s", initial["event"])
	assert.Empty(t, ev)
	kv, err := payload.Key(bytes.NewReader(initial["key"]))
	require.NoError(t, err, "a key watch on a missing key: %s", initial["key"])
	assert.Nil(t, kv)
	kvs, err := payload.KeyPrefix(bytes.NewReader(initial["keyprefix"]))
	require.NoError(t, err, "a keyprefix watch on an empty prefix: %s", initial["keyprefix"])
	assert.Empty(t, kvs)
	svc, err := payload.Services(bytes.NewReader(initial["service"]))
	require.NoError(t, err, "a service watch on an unknown service: %s", initial["service"])
	assert.Empty(t, svc)
	chk, err := payload.Checks(bytes.NewReader(initial["checks"]))
	require.NoError(t, err, "a checks watch on an unknown service: %s", initial["checks"])
	assert.Empty(t, chk)

	// An event with our payload, then one without.
	req, err := payload.NewRequestPayload("ami-0123456789abcdef0")
	require.NoError(t, err)
	_, _, err = cl.Event().Fire(&api.UserEvent{Name: "consul-rehydrate", Payload: req}, nil)
	require.NoError(t, err)
	last := waitDecoded(t, dir, "event", func(b []byte) (bool, error) {
		evs, err := payload.Events(bytes.NewReader(b))
		return len(evs) == 1, err
	})
	evs, err := payload.Events(bytes.NewReader(last))
	require.NoError(t, err)
	r, err := payload.ParseRequest(evs[0], "consul-rehydrate")
	require.NoError(t, err)
	assert.Equal(t, "ami-0123456789abcdef0", r.ImageID)
	withImage := last

	_, _, err = cl.Event().Fire(&api.UserEvent{Name: "consul-rehydrate"}, nil)
	require.NoError(t, err)
	// The watch hands over only events newer than the last it delivered (the whole
	// buffer only on its first run, e.g. after an agent restart).
	last = waitDecoded(t, dir, "event", func(b []byte) (bool, error) {
		evs, err := payload.Events(bytes.NewReader(b))
		return len(evs) == 1 && evs[0].Payload == nil, err
	})
	evs, err = payload.Events(bytes.NewReader(last))
	require.NoError(t, err)
	r, err = payload.ParseRequest(evs[0], "consul-rehydrate")
	require.NoError(t, err)
	assert.Empty(t, r.ImageID, "an event without payload asks for the newest allowed image")

	// A service with a TTL check: registered (critical until the first pass), passing,
	// then failed.
	require.NoError(t, cl.Agent().ServiceRegister(&api.AgentServiceRegistration{
		Name: "web", ID: "web-1", Port: 8080, Tags: []string{"v1"}, Meta: map[string]string{"version": "1"},
		Check: &api.AgentServiceCheck{CheckID: "web-ttl", TTL: "10m"},
	}))
	require.NoError(t, cl.Agent().UpdateTTL("web-ttl", "ok", api.HealthPassing))
	passingSvc := waitDecoded(t, dir, "service", func(b []byte) (bool, error) {
		entries, err := payload.Services(bytes.NewReader(b))
		return len(entries) == 1 && entries[0].Checks.AggregatedStatus() == api.HealthPassing, err
	})
	require.NoError(t, cl.Agent().UpdateTTL("web-ttl", "down", api.HealthCritical))
	failedSvc := waitDecoded(t, dir, "service", func(b []byte) (bool, error) {
		entries, err := payload.Services(bytes.NewReader(b))
		return len(entries) == 1 && entries[0].Checks.AggregatedStatus() == api.HealthCritical, err
	})
	entries, err := payload.Services(bytes.NewReader(failedSvc))
	require.NoError(t, err)
	assert.Equal(t, "web", entries[0].Service.Service)
	assert.Equal(t, 8080, entries[0].Service.Port)
	assert.Equal(t, "client-1", entries[0].Node.Node)
	failedChecks := waitDecoded(t, dir, "checks", func(b []byte) (bool, error) {
		checks, err := payload.Checks(bytes.NewReader(b))
		return len(checks) == 1 && checks[0].Status == api.HealthCritical, err
	})

	// A key written, then deleted: a key watch sees the pair, then null again.
	_, err = cl.KV().Put(&api.KVPair{Key: "golden/key", Value: []byte(`{"id":"d1","version":"2"}`), Flags: 7}, nil)
	require.NoError(t, err)
	keySet := waitDecoded(t, dir, "key", func(b []byte) (bool, error) {
		kv, err := payload.Key(bytes.NewReader(b))
		return kv != nil, err
	})
	kv, err = payload.Key(bytes.NewReader(keySet))
	require.NoError(t, err)
	assert.Equal(t, `{"id":"d1","version":"2"}`, string(kv.Value))
	assert.Equal(t, uint64(7), kv.Flags)
	_, err = cl.KV().Delete("golden/key", nil)
	require.NoError(t, err)
	keyDeleted := waitDecoded(t, dir, "key", func(b []byte) (bool, error) {
		kv, err := payload.Key(bytes.NewReader(b))
		return kv == nil, err
	})

	for _, k := range []string{"a", "b"} {
		_, err = cl.KV().Put(&api.KVPair{Key: "golden/prefix/" + k, Value: []byte(k)}, nil)
		require.NoError(t, err)
	}
	prefixSet := waitDecoded(t, dir, "keyprefix", func(b []byte) (bool, error) {
		kvs, err := payload.KeyPrefix(bytes.NewReader(b))
		return len(kvs) == 2, err
	})

	// The servers' own service, as spindown sees it: one entry per server.
	consulSvc := waitDecoded(t, dir, "consul", func(b []byte) (bool, error) {
		entries, err := payload.Services(bytes.NewReader(b))
		return len(entries) == 3, err
	})

	// Every capture of every watch decodes.
	for _, kind := range []string{"event", "service", "checks", "key", "keyprefix", "consul"} {
		for i, b := range captures(t, dir, kind) {
			assert.NoError(t, decode(kind, b), "%s capture %d: %s", kind, i, b)
		}
	}

	if *update {
		golden := map[string][]byte{
			"event/captured-initial":     initial["event"],
			"event/captured-image":       withImage,
			"event/captured-no-payload":  last,
			"service/captured-initial":   initial["service"],
			"service/captured-passing":   passingSvc,
			"service/captured-critical":  failedSvc,
			"service/captured-consul":    consulSvc,
			"checks/captured-initial":    initial["checks"],
			"checks/captured-critical":   failedChecks,
			"key/captured-missing":       initial["key"],
			"key/captured-set":           keySet,
			"key/captured-deleted":       keyDeleted,
			"keyprefix/captured-initial": initial["keyprefix"],
			"keyprefix/captured-two":     prefixSet,
		}
		for name, b := range golden {
			path := filepath.Join("..", "..", "internal", "payload", "testdata", "golden", name+".json")
			require.NoError(t, os.MkdirAll(filepath.Dir(path), 0o755))
			require.NoError(t, os.WriteFile(path, b, 0o644))
		}
	}
}

func decode(kind string, b []byte) error {
	var err error
	r := bytes.NewReader(b)
	switch kind {
	case "event":
		_, err = payload.Events(r)
	case "service", "consul":
		_, err = payload.Services(r)
	case "checks":
		_, err = payload.Checks(r)
	case "key":
		_, err = payload.Key(r)
	case "keyprefix":
		_, err = payload.KeyPrefix(r)
	default:
		err = fmt.Errorf("unknown watch type %q", kind)
	}
	return err
}

// captures returns the payloads a watch has written so far, oldest first.
func captures(t *testing.T, dir, kind string) [][]byte {
	t.Helper()
	names, err := filepath.Glob(filepath.Join(dir, kind, "*.json"))
	require.NoError(t, err)
	sort.Strings(names) // nanosecond timestamps of equal length sort in time order
	var out [][]byte
	for _, n := range names {
		b, err := os.ReadFile(n)
		require.NoError(t, err)
		if len(b) > 0 && b[len(b)-1] == '\n' { // written completely (Consul ends with a newline)
			out = append(out, b)
		}
	}
	return out
}

func waitCaptures(t *testing.T, dir, kind string, n int) {
	t.Helper()
	testcluster.WaitFor(t, 30*time.Second, fmt.Sprintf("%d %s captures", n, kind), func() (bool, string) {
		got := len(captures(t, dir, kind))
		return got >= n, fmt.Sprintf("%d captures", got)
	})
}

// waitDecoded waits for a capture that satisfies ok and returns it.
func waitDecoded(t *testing.T, dir, kind string, ok func([]byte) (bool, error)) []byte {
	t.Helper()
	var found []byte
	testcluster.WaitFor(t, 30*time.Second, "a matching "+kind+" capture", func() (bool, string) {
		all := captures(t, dir, kind)
		for i := len(all) - 1; i >= 0; i-- {
			match, err := ok(all[i])
			if err != nil {
				return false, err.Error()
			}
			if match {
				found = all[i]
				return true, ""
			}
		}
		last := ""
		if len(all) > 0 {
			last = string(all[len(all)-1])
		}
		return false, fmt.Sprintf("%d captures, none matching; newest: %.600s", len(all), last)
	})
	return found
}
