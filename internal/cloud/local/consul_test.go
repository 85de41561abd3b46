//go:build linux

package local

import (
	"bytes"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"testing"

	"github.com/hashicorp/go-hclog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestPinnedConsulVersion_IsTheMakefilesConsulVersion(t *testing.T) {
	b, err := os.ReadFile("../../../Makefile")
	require.NoError(t, err)
	m := regexp.MustCompile(`(?m)^CONSUL_VERSION\s*:?=\s*(\S+)\s*$`).FindSubmatch(b)
	require.NotNil(t, m, "CONSUL_VERSION in the Makefile")
	assert.Equal(t, string(m[1]), PinnedConsulVersion)
	// pinnedConsulPath mirrors where the Makefile builds it.
	assert.Regexp(t, `(?m)^CACHE_DIR\s*\?=\s*\$\(or \$\(XDG_CACHE_HOME\),\$\(HOME\)/\.cache\)/consul-rehydrate\s*$`, string(b))
	assert.Regexp(t, `(?m)^CONSUL_DIR\s*:=\s*\$\(CACHE_DIR\)/consul-\$\(CONSUL_VERSION\)\s*$`, string(b))
	assert.Regexp(t, `(?m)^CONSUL_BIN\s*:=\s*\$\(CONSUL_DIR\)/consul\s*$`, string(b))
}

// executable writes an empty executable at path.
func executable(t *testing.T, path string) string {
	t.Helper()
	require.NoError(t, os.MkdirAll(filepath.Dir(path), 0o755))
	require.NoError(t, os.WriteFile(path, []byte("#!/bin/sh\n"), 0o755))
	return path
}

func TestRegisterImage_FallsBackToThePinnedConsulInTheCache(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	onPath := executable(t, filepath.Join(dir, "bin", "consul"))
	xdgPinned := executable(t, filepath.Join(dir, "xdg", "consul-rehydrate", "consul-"+PinnedConsulVersion, "consul"))
	homePinned := executable(t, filepath.Join(dir, "home", ".cache", "consul-rehydrate", "consul-"+PinnedConsulVersion, "consul"))
	notExec := filepath.Join(dir, "noexec", "consul-rehydrate", "consul-"+PinnedConsulVersion, "consul")
	require.NoError(t, os.MkdirAll(filepath.Dir(notExec), 0o755))
	require.NoError(t, os.WriteFile(notExec, []byte("#!/bin/sh\n"), 0o644))
	emptyPath := filepath.Join(dir, "empty")
	require.NoError(t, os.Mkdir(emptyPath, 0o755))

	tests := []struct {
		name    string
		binary  string // Config.ConsulBinary
		env     map[string]string
		want    string // the binary, or "" for an error
		log     string // in the log, or in the error
		noCache bool   // the error must not name a cache path
	}{
		{name: "on PATH", env: map[string]string{"PATH": emptyPath + ":" + filepath.Dir(onPath), "XDG_CACHE_HOME": filepath.Join(dir, "xdg")},
			want: onPath},
		{name: "not on PATH: the pinned one in XDG_CACHE_HOME",
			env:  map[string]string{"PATH": emptyPath, "XDG_CACHE_HOME": filepath.Join(dir, "xdg"), "HOME": filepath.Join(dir, "home")},
			want: xdgPinned, log: "using the pinned Consul from the cache: consul_binary=" + xdgPinned},
		{name: "not on PATH: the pinned one in HOME/.cache",
			env:  map[string]string{"PATH": emptyPath, "HOME": filepath.Join(dir, "home")},
			want: homePinned, log: "consul_binary=" + homePinned},
		{name: "a relative PATH entry is not searched",
			env: map[string]string{"PATH": "bin", "HOME": filepath.Join(dir, "nohome")},
			log: "run `make consul` to build it there"},
		{name: "nowhere: the error names make consul and the cache path",
			env: map[string]string{"PATH": emptyPath, "HOME": filepath.Join(dir, "nohome")},
			log: `"consul" is not on PATH, and the pinned Consul ` + PinnedConsulVersion + " is not at " +
				filepath.Join(dir, "nohome", ".cache", "consul-rehydrate", "consul-"+PinnedConsulVersion, "consul") + ": run `make consul`"},
		{name: "a pinned file that is not executable is not used",
			env: map[string]string{"PATH": emptyPath, "XDG_CACHE_HOME": filepath.Join(dir, "noexec")},
			log: "is not at " + notExec},
		{name: "no HOME either", env: map[string]string{"PATH": emptyPath},
			log: "neither XDG_CACHE_HOME nor HOME is set: run `make consul`"},
		{name: "another name: no fallback", binary: "consul-1.21",
			env: map[string]string{"PATH": emptyPath, "XDG_CACHE_HOME": filepath.Join(dir, "xdg")},
			log: `exec: "consul-1.21": executable file not found in $PATH`, noCache: true},
		{name: "a path is taken as it is", binary: onPath, env: map[string]string{"PATH": emptyPath}, want: onPath},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var logs bytes.Buffer
			p, err := New(Config{
				StateDir: t.TempDir(), Addresses: netip.MustParsePrefix("127.0.1.0/24"), ConsulBinary: tt.binary,
				Logger: hclog.New(&hclog.LoggerOptions{Output: &logs}),
				Getenv: func(k string) string { return tt.env[k] },
			})
			require.NoError(t, err)
			_, err = p.RegisterImage(t.Context(), "image-a", ImageOptions{})
			if tt.want == "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tt.log)
				if tt.noCache {
					assert.NotContains(t, err.Error(), "make consul")
				}
				return
			}
			require.NoError(t, err)
			st := readState(t, p.cfg.StateDir)
			require.Len(t, st.Images, 1)
			assert.Equal(t, tt.want, st.Images[0].ConsulBinary)
			assert.Contains(t, logs.String(), tt.log)
		})
	}
}
