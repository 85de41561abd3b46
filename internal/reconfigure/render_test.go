package reconfigure

import (
	"maps"
	"os"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/consul-rehydrate/consul-rehydrate/config"
	"github.com/consul-rehydrate/consul-rehydrate/internal/app"
	"github.com/consul-rehydrate/consul-rehydrate/internal/reconfigure/tmplfunc"
)

// nobody is the uid and gid of nobody/nogroup on Linux.
const nobody = 65534

func (f *fixture) owner(t *testing.T) (uid, gid uint32) {
	t.Helper()
	fi, err := os.Stat(f.dest)
	require.NoError(t, err)
	st, ok := fi.Sys().(*syscall.Stat_t)
	require.True(t, ok)
	return st.Uid, st.Gid
}

// The rendered file may belong to the daemon that reads it: rendering it, and
// putting it back after a failed reload, keep its owner and group.
func TestHandler_ARenderedFileKeepsItsOwnerAndGroup(t *testing.T) {
	// Not a skip: a test that does not run proves nothing. make test runs as root
	// (CI does), as giving a file to another owner needs.
	require.Zero(t, os.Geteuid(), "this test gives a file to another owner, which needs root: run it as root")
	t.Run("rendered", func(t *testing.T) {
		f := newFixture(t, lbTemplate, `  mode = "0640"`)
		require.NoError(t, os.WriteFile(f.dest, []byte("old\n"), 0o600))
		require.NoError(t, os.Chown(f.dest, nobody, nobody))
		f.handle(t, t0, threeInstances(t), app.ExitOK)
		assert.Equal(t, threeRendered, f.content(t))
		uid, gid := f.owner(t)
		assert.Equal(t, [2]uint32{nobody, nobody}, [2]uint32{uid, gid}, "owner and group kept")
		assert.Equal(t, os.FileMode(0o640), f.mode(t))
		f.noLeftovers(t)
	})
	t.Run("put back after a failed reload", func(t *testing.T) {
		f := newFixture(t, lbTemplate, "")
		failingReload(t, f, "")
		require.NoError(t, os.WriteFile(f.dest, []byte("old\n"), 0o600))
		require.NoError(t, os.Chown(f.dest, nobody, nobody))
		f.handle(t, t0, threeInstances(t), app.ExitFailed)
		assert.Equal(t, "old\n", f.content(t))
		uid, gid := f.owner(t)
		assert.Equal(t, [2]uint32{nobody, nobody}, [2]uint32{uid, gid}, "owner and group kept")
		assert.Equal(t, os.FileMode(0o600), f.mode(t))
		f.noLeftovers(t)
	})
}

// The handler's own state file keeps a mode an operator gave it.
func TestHandler_TheStateFileKeepsItsMode(t *testing.T) {
	f := newFixture(t, lbTemplate, "")
	f.handle(t, t0, threeInstances(t), app.ExitOK)
	fi, err := os.Stat(f.state)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o644), fi.Mode().Perm(), "a new state file")
	require.NoError(t, os.Chmod(f.state, 0o600))
	f.handle(t, t0.Add(time.Minute), payloadOf(t), app.ExitOK)
	fi, err = os.Stat(f.state)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
}

// The configuration parses a template with config.TemplateFuncs to validate it, and
// Render executes it with tmplfunc.Funcs: they must be the same functions, or a
// template would load and then fail at every render (or the reverse).
func TestRender_UsesTheFunctionsTheConfigurationValidatesWith(t *testing.T) {
	assert.ElementsMatch(t, slices.Collect(maps.Keys(tmplfunc.Funcs())), slices.Collect(maps.Keys(config.TemplateFuncs)),
		"config.TemplateFuncs must be tmplfunc.Funcs()")
}
