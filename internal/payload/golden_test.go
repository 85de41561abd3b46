package payload

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// goldenFiles returns the paths of testdata/golden/<typ>/*.json. Files named
// *-handwritten.json are written by hand; captured payloads from a real agent
// sit beside them.
func goldenFiles(t testing.TB, typ string) []string {
	t.Helper()
	paths, err := filepath.Glob(filepath.Join("testdata", "golden", typ, "*.json"))
	require.NoError(t, err)
	require.NotEmpty(t, paths, "no golden payloads for watch type %s", typ)
	return paths
}

func TestGolden_EveryWatchTypeHasPayloads(t *testing.T) {
	dirs, err := os.ReadDir(filepath.Join("testdata", "golden"))
	require.NoError(t, err)
	var names []string
	for _, d := range dirs {
		names = append(names, d.Name())
	}
	assert.ElementsMatch(t, watchTypes, names, "testdata/golden holds one directory per watch type")
}

func TestGolden_Decode(t *testing.T) {
	for _, typ := range watchTypes {
		for _, path := range goldenFiles(t, typ) {
			t.Run(filepath.ToSlash(path), func(t *testing.T) {
				data, err := os.ReadFile(path)
				require.NoError(t, err)
				v, err := decodeAs(Decoder{}, typ, bytes.NewReader(data))
				require.NoError(t, err)
				checkGolden(t, v)
			})
		}
	}
}

// checkGolden asserts that the fields this project reads are present.
func checkGolden(t *testing.T, v any) {
	switch v := v.(type) {
	case []*api.UserEvent:
		for i, ev := range v {
			assert.NotEmpty(t, ev.ID, "event %d", i)
			assert.NotEmpty(t, ev.Name, "event %d", i)
			assert.NotZero(t, ev.LTime, "event %d", i)
			if len(ev.Payload) > 0 {
				_, err := ParseRequest(ev, ev.Name)
				assert.NoError(t, err, "event %d", i)
			}
		}
	case []*api.ServiceEntry:
		for i, e := range v {
			require.NotNil(t, e.Node, "entry %d", i)
			require.NotNil(t, e.Service, "entry %d", i)
			assert.NotEmpty(t, e.Node.Node, "entry %d", i)
			assert.NotEmpty(t, e.Node.Address, "entry %d", i)
			assert.NotEmpty(t, e.Service.ID, "entry %d", i)
			assert.NotEmpty(t, e.Service.Service, "entry %d", i)
			assert.NotEmpty(t, e.Checks, "entry %d: every node has at least serfHealth", i)
		}
	case []*api.HealthCheck:
		for i, c := range v {
			assert.NotEmpty(t, c.Node, "check %d", i)
			assert.NotEmpty(t, c.CheckID, "check %d", i)
			assert.Contains(t, []string{api.HealthPassing, api.HealthWarning, api.HealthCritical, api.HealthMaint}, c.Status, "check %d", i)
		}
	case *api.KVPair:
		if v != nil { // nil: the key does not exist
			assert.NotEmpty(t, v.Key)
			assert.NotZero(t, v.ModifyIndex)
		}
	case api.KVPairs:
		for i, p := range v {
			assert.NotEmpty(t, p.Key, "pair %d", i)
			assert.NotZero(t, p.ModifyIndex, "pair %d", i)
		}
	default:
		t.Fatalf("unexpected decoded type %T", v)
	}
}
