//go:build unix

package atomicfile

import (
	"io/fs"
	"os"
	"syscall"
)

// fileOwner is the uid and gid a replaced file keeps.
type fileOwner struct{ uid, gid int }

func ownerOf(fi fs.FileInfo) *fileOwner {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return nil
	}
	return &fileOwner{uid: int(st.Uid), gid: int(st.Gid)}
}

// apply gives f the owner, unless it has it already: a caller that may not chown
// (not root) can still replace a file of its own.
func (o *fileOwner) apply(f *os.File) error {
	if o == nil {
		return nil
	}
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if cur := ownerOf(fi); cur != nil && *cur == *o {
		return nil
	}
	return f.Chown(o.uid, o.gid)
}
