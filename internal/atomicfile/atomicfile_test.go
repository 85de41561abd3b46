package atomicfile

import (
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"
)

// nobody is the uid and gid of nobody/nogroup on Linux.
const nobody = 65534

func owner(t *testing.T, path string) (uid, gid uint32) {
	t.Helper()
	fi, err := os.Stat(path)
	require.NoError(t, err)
	st, ok := fi.Sys().(*syscall.Stat_t)
	require.True(t, ok)
	return st.Uid, st.Gid
}

func mode(t *testing.T, path string) fs.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	require.NoError(t, err)
	return fi.Mode().Perm()
}

// onlyFiles fails t unless dir holds exactly names: no temporary file is left.
func onlyFiles(t *testing.T, dir string, names ...string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	var got []string
	for _, e := range entries {
		got = append(got, e.Name())
	}
	require.ElementsMatch(t, names, got)
}

func TestWrite_AnExistingFileKeepsItsOwnerAndGroup(t *testing.T) {
	// Not a skip: a test that does not run proves nothing. make test runs as root
	// (CI does), as giving a file to another owner needs.
	require.Zero(t, os.Geteuid(), "this test gives a file to another owner, which needs root: run it as root")
	for _, m := range []fs.FileMode{0, 0o600} {
		dir := t.TempDir()
		path := filepath.Join(dir, "haproxy.cfg")
		require.NoError(t, os.WriteFile(path, []byte("old"), 0o640))
		require.NoError(t, os.Chown(path, nobody, nobody))

		require.NoError(t, Write(path, []byte("new"), m), "mode %v", m)

		uid, gid := owner(t, path)
		require.Equal(t, uint32(nobody), uid, "owner kept (mode %v)", m)
		require.Equal(t, uint32(nobody), gid, "group kept (mode %v)", m)
		got, err := os.ReadFile(path)
		require.NoError(t, err)
		require.Equal(t, "new", string(got))
		onlyFiles(t, dir, "haproxy.cfg")
	}
}

func TestWrite_ModeZeroKeepsTheModeAndAnyOtherSetsIt(t *testing.T) {
	tests := []struct {
		name     string
		existing fs.FileMode // 0: no file
		mode     fs.FileMode
		want     fs.FileMode
	}{
		{"existing file, mode 0: kept", 0o640, 0, 0o640},
		{"existing file, mode given: set", 0o640, 0o600, 0o600},
		{"new file, mode 0: default", 0, 0, DefaultMode},
		{"new file, mode given: set", 0, 0o600, 0o600},
		{"new file, mode given wider than the umask allows: set", 0, 0o666, 0o666},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "f")
			if tt.existing != 0 {
				require.NoError(t, os.WriteFile(path, []byte("old"), 0o600))
				require.NoError(t, os.Chmod(path, tt.existing))
			}
			require.NoError(t, Write(path, []byte("new"), tt.mode))
			require.Equal(t, tt.want, mode(t, path))
			got, err := os.ReadFile(path)
			require.NoError(t, err)
			require.Equal(t, "new", string(got))
			onlyFiles(t, dir, "f")
		})
	}
}

func TestWrite_LeavesNoTemporaryFileWhenItFails(t *testing.T) {
	dir := t.TempDir()
	// A non-empty directory where the file should be: the rename fails.
	target := filepath.Join(dir, "f")
	require.NoError(t, os.MkdirAll(filepath.Join(target, "sub"), 0o755))

	err := Write(target, []byte("new"), 0)
	require.ErrorContains(t, err, "rename")
	onlyFiles(t, dir, "f")
	onlyFiles(t, target, "sub")
}

func TestWrite_FailsOnAMissingDirectory(t *testing.T) {
	err := Write(filepath.Join(t.TempDir(), "missing", "f"), []byte("x"), 0)
	require.ErrorIs(t, err, fs.ErrNotExist)
}
