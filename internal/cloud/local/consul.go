package local

import (
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
)

// PinnedConsulVersion is the Consul `make consul` builds into the cache (the
// Makefile's CONSUL_VERSION). With the default ConsulBinary and no consul on PATH,
// images run that build.
const PinnedConsulVersion = "1.22.3"

// consulBinary resolves an image's Consul binary to an absolute path: a path as it
// is, a name on PATH. The default name, found nowhere on PATH, falls back to the
// pinned Consul in the cache, so `rehydrate local demo` run by hand after `make demo`
// finds what make built.
func (p *Provider) consulBinary(name string) (string, error) {
	path, err := p.lookPath(name)
	switch {
	case err == nil:
		return path, nil
	case name != DefaultConsulBinary || !errors.Is(err, exec.ErrNotFound):
		return "", fmt.Errorf("consul binary: %w", err)
	}
	pinned, cerr := pinnedConsulPath(p.cfg.Getenv)
	if cerr != nil {
		return "", fmt.Errorf("consul binary: %q is not on PATH, and %w: run `make consul`, or set consul_binary", name, cerr)
	}
	if path, perr := exec.LookPath(pinned); perr == nil {
		p.log.Info("no consul on PATH: using the pinned Consul from the cache", "consul_binary", path, "consul_version", PinnedConsulVersion)
		return path, nil
	}
	return "", fmt.Errorf("consul binary: %q is not on PATH, and the pinned Consul %s is not at %s: run `make consul` to build it there, or set consul_binary",
		name, PinnedConsulVersion, pinned)
}

// lookPath is exec.LookPath with PATH read through Config.Getenv. As exec.LookPath
// does by default, it never returns a binary found through a relative PATH entry.
func (p *Provider) lookPath(name string) (string, error) {
	if strings.Contains(name, string(filepath.Separator)) {
		path, err := exec.LookPath(name) // tried as it is: must be an executable file
		if err != nil {
			return "", err
		}
		return filepath.Abs(path)
	}
	for _, dir := range filepath.SplitList(p.cfg.Getenv("PATH")) {
		if !filepath.IsAbs(dir) {
			continue
		}
		if path, err := exec.LookPath(filepath.Join(dir, name)); err == nil {
			return path, nil
		}
	}
	return "", &exec.Error{Name: name, Err: exec.ErrNotFound}
}

// pinnedConsulPath is where `make consul` puts the pinned Consul: the Makefile's
// CONSUL_BIN, $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/consul-rehydrate/consul-$(CONSUL_VERSION)/consul.
func pinnedConsulPath(getenv func(string) string) (string, error) {
	cache := getenv("XDG_CACHE_HOME")
	if cache == "" {
		home := getenv("HOME")
		if home == "" {
			return "", errors.New("the cache of the pinned Consul is unknown: neither XDG_CACHE_HOME nor HOME is set")
		}
		cache = filepath.Join(home, ".cache")
	}
	return filepath.Join(cache, "consul-rehydrate", "consul-"+PinnedConsulVersion, "consul"), nil
}
