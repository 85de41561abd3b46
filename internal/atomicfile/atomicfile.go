// Package atomicfile replaces a file so that a reader, or a crash, sees the old
// content or the new, never a part: a temporary file in the same directory, written
// and synced, renamed over the file, then the directory synced. A file that exists
// keeps its owner and group (as consul-template's renderer does), because a file
// another daemon reads may be one it owns.
package atomicfile

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// DefaultMode is the mode of a new file written with mode 0.
const DefaultMode fs.FileMode = 0o644

// Write replaces path with data. A mode of 0 keeps the mode of the file there, or
// gives a new file DefaultMode; any other mode is set. An existing file keeps its
// owner and group, and Write fails, leaving the file alone, if it cannot keep them.
// Whatever fails, no temporary file is left behind.
func Write(path string, data []byte, mode fs.FileMode) error {
	var owner *fileOwner
	fi, err := os.Stat(path)
	switch {
	case err == nil:
		owner = ownerOf(fi)
		if mode == 0 {
			mode = fi.Mode().Perm()
		}
	case errors.Is(err, fs.ErrNotExist):
		if mode == 0 {
			mode = DefaultMode
		}
	default:
		return fmt.Errorf("write %s: %w", path, err)
	}

	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	renamed := false
	defer func() {
		if !renamed {
			f.Close() // a no-op error once closed
			os.Remove(tmp)
		}
	}()
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	// Before the rename, so the file never appears with the wrong mode or owner.
	if err := f.Chmod(mode); err != nil {
		return fmt.Errorf("chmod %s: %w", tmp, err)
	}
	if err := owner.apply(f); err != nil {
		return fmt.Errorf("keep the owner of %s: chown %s: %w", path, tmp, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("rename %s to %s: %w", tmp, path, err)
	}
	renamed = true
	// The rename is durable only once the directory is synced.
	if err := syncDir(dir); err != nil {
		return fmt.Errorf("sync directory of %s: %w", path, err)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	err = d.Sync()
	// Some file systems cannot sync a directory; the rename has happened.
	if errors.Is(err, syscall.EINVAL) || errors.Is(err, errors.ErrUnsupported) {
		return nil
	}
	return err
}
