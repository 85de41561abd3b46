package local

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/consul-rehydrate/consul-rehydrate/internal/atomicfile"
	"github.com/consul-rehydrate/consul-rehydrate/internal/cloud"
)

// state is everything the provider knows, shared by every process on the machine through
// <StateDir>/state.json.
type state struct {
	// BootstrapExpect is the server count Up was given; every server gets it.
	BootstrapExpect int `json:"bootstrap_expect,omitempty"`
	// Cursor is the slot of the next never-used server address (slot 0 is the client's).
	Cursor    int               `json:"cursor,omitempty"`
	Images    []imageRecord     `json:"images"`
	Client    *agentRecord      `json:"client,omitempty"`
	Instances []*instanceRecord `json:"instances"`
}

type imageRecord struct {
	Name         string    `json:"name"`
	ConsulBinary string    `json:"consul_binary"`
	ExtraHCL     string    `json:"extra_hcl,omitempty"`
	Created      time.Time `json:"created"`
}

type agentRecord struct {
	Address string `json:"address"`
	PID     int    `json:"pid"`
}

type instanceRecord struct {
	ID       string    `json:"id"`
	ImageID  string    `json:"image_id"`
	Address  string    `json:"address"`
	State    string    `json:"state"`
	ActionID string    `json:"action_id,omitempty"`
	Launched time.Time `json:"launched"`
	PID      int       `json:"pid"`
}

func (s *state) image(name string) *imageRecord {
	for i := range s.Images {
		if s.Images[i].Name == name {
			return &s.Images[i]
		}
	}
	return nil
}

func (s *state) instance(id string) *instanceRecord {
	for _, in := range s.Instances {
		if in.ID == id {
			return in
		}
	}
	return nil
}

// withState runs fn on the state under an exclusive flock(2) of <StateDir>/state.lock
// and writes the state back if fn says it changed it. Every provider in every process
// goes through here, so the lock must never be held across a long wait.
func (p *Provider) withState(fn func(s *state) (changed bool, err error)) error {
	if err := os.MkdirAll(p.cfg.StateDir, 0o755); err != nil {
		return fmt.Errorf("create state dir %q: %w", p.cfg.StateDir, err)
	}
	// os.OpenFile sets O_CLOEXEC, so the agents started under the lock never inherit
	// (and never hold) it.
	lock, err := os.OpenFile(filepath.Join(p.cfg.StateDir, "state.lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return fmt.Errorf("open state lock: %w", err)
	}
	defer lock.Close() // closing drops the flock
	if err := flock(lock); err != nil {
		return fmt.Errorf("lock state: %w", err)
	}

	var s state
	path := filepath.Join(p.cfg.StateDir, "state.json")
	data, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return fmt.Errorf("read state %q: %w", path, err)
	default:
		if err := json.Unmarshal(data, &s); err != nil {
			return fmt.Errorf("decode state %q: %w", path, err)
		}
	}
	changed, err := fn(&s)
	if !changed {
		return err
	}
	if werr := writeState(path, &s); werr != nil {
		return errors.Join(err, werr)
	}
	return err
}

func flock(f *os.File) error {
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX)
		if !errors.Is(err, syscall.EINTR) {
			return err
		}
	}
}

// writeState replaces the state file atomically, so a reader that does not take the
// lock (or a crash mid-write) never sees half a file. It is 0600: it names every
// agent's PID and address, not for every local user. It keeps its owner and group.
func writeState(path string, s *state) error {
	data, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return fmt.Errorf("encode state: %w", err)
	}
	if err := atomicfile.Write(path, append(data, '\n'), 0o600); err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	return nil
}

// addrRange is the usable IPv4 addresses of a prefix: all but the network and
// broadcast addresses (for prefixes with room for them).
type addrRange struct {
	first uint32
	count int
}

func newAddrRange(p netip.Prefix) (addrRange, error) {
	if !p.IsValid() || !p.Addr().Is4() {
		return addrRange{}, fmt.Errorf("address range %q: not an IPv4 prefix", p)
	}
	p = p.Masked()
	a4 := p.Addr().As4()
	first := binary.BigEndian.Uint32(a4[:])
	count := 1 << (32 - p.Bits())
	if p.Bits() <= 30 {
		first, count = first+1, count-2
	}
	return addrRange{first: first, count: count}, nil
}

func (r addrRange) at(i int) string {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], r.first+uint32(i))
	return netip.AddrFrom4(b).String()
}

// allocate returns a server address no live instance uses. It prefers addresses never
// handed out (from the cursor on), so a new server does not inherit a recently departed
// one's address while the rest of the cluster may still remember it, and wraps around
// only when the range is exhausted.
func (s *state) allocate(r addrRange) (string, error) {
	used := map[string]bool{}
	for _, in := range s.Instances {
		if in.State != cloud.StateTerminated {
			used[in.Address] = true
		}
	}
	slots := r.count - 1 // slot 0 is the client agent's
	start := max(s.Cursor, 1)
	for k := range slots {
		i := 1 + (start-1+k)%slots
		if a := r.at(i); !used[a] {
			s.Cursor = i + 1
			return a, nil
		}
	}
	return "", fmt.Errorf("allocate address: all %d server addresses are in use", max(slots, 0))
}

// newInstanceID returns an EC2-style ID ("i-" + 17 hex digits) not yet in the state.
func (s *state) newInstanceID() (string, error) {
	for {
		var b [9]byte
		if _, err := rand.Read(b[:]); err != nil {
			return "", fmt.Errorf("generate instance ID: %w", err)
		}
		id := "i-" + hex.EncodeToString(b[:])[:17]
		if s.instance(id) == nil {
			return id, nil
		}
	}
}
