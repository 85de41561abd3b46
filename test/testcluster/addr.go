package testcluster

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// Address blocks: every cluster gets a whole 127.0.<n>.0/24 of its own, so its agents
// can all use Consul's default ports on distinct addresses. Blocks are handed out
// through flock(2)ed files in a directory shared by every test process on the machine,
// because `go test ./...` runs packages as parallel processes that know nothing of each
// other. The kernel drops a flock when its holder dies, so a crashed test never leaks a
// block.
const (
	firstBlock = 100 // 127.0.100.0/24 ...
	lastBlock  = 199 // ... 127.0.199.0/24; the local provider's default range lies outside.
)

// Block is one loopback /24 reserved for the calling test until it ends.
type Block struct {
	n int
}

// Addr returns the i-th address of the block (1..254).
func (b Block) Addr(i int) string {
	if i < 1 || i > 254 {
		panic(fmt.Sprintf("testcluster: address index %d out of 1..254", i))
	}
	return fmt.Sprintf("127.0.%d.%d", b.n, i)
}

// Prefix returns the block's upper half, 127.0.<n>.128/25, which the harness never
// uses for its own agents; tests hand it to code that allocates addresses itself
// (e.g. the local provider).
func (b Block) Prefix() netip.Prefix {
	return netip.MustParsePrefix(fmt.Sprintf("127.0.%d.128/25", b.n))
}

// AllocateBlock reserves a free block for the rest of the test.
func AllocateBlock(t testing.TB) Block {
	t.Helper()
	dir := filepath.Join(os.TempDir(), "consul-rehydrate-test-blocks")
	if err := os.MkdirAll(dir, 0o777); err != nil {
		t.Fatalf("testcluster: create block dir: %v", err)
	}
	for n := firstBlock; n <= lastBlock; n++ {
		f, err := os.OpenFile(filepath.Join(dir, fmt.Sprintf("%d.lock", n)), os.O_CREATE|os.O_RDWR, 0o666)
		if err != nil {
			t.Fatalf("testcluster: open block lock: %v", err)
		}
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
			f.Close()
			continue
		}
		t.Cleanup(func() { f.Close() }) // closing drops the flock
		return Block{n: n}
	}
	t.Fatalf("testcluster: all %d loopback blocks are in use", lastBlock-firstBlock+1)
	return Block{}
}
