//go:build !linux

package local

import (
	"net/netip"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestNew_RefusesAnySystemButLinux(t *testing.T) {
	_, err := New(Config{StateDir: t.TempDir(), Addresses: netip.MustParsePrefix("127.0.1.0/24")})
	require.ErrorContains(t, err, "the local provider needs Linux (/proc)")
}
