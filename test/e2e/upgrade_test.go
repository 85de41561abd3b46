package e2e

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/consul-rehydrate/consul-rehydrate/internal/app"
	"github.com/consul-rehydrate/consul-rehydrate/internal/coord"
	"github.com/consul-rehydrate/consul-rehydrate/internal/workload"
	"github.com/consul-rehydrate/consul-rehydrate/test/testcluster"
)

// envConsulOld names the older Consul that image A runs in an upgrade roll. The
// Makefile sets it to what `make consul-old` built, for the tests and the bench.
const envConsulOld = "REHYDRATE_CONSUL_OLD"

// TestUpgrade_RollsThreeServersFromAnOlderConsulToThePinnedOne rolls the commonest
// reason to rehydrate Consul servers: upgrading Consul itself. Image A runs the older
// Consul of `make consul-old`, image B the pinned one. The roll must go through with
// old and new voters in one raft configuration (seen at least once while it rolls),
// end with every server on the new version, never run more than N+1 servers, and
// fail or lose no write. The versions are the ones the agents gossip, not the ones
// the images claim.
func TestUpgrade_RollsThreeServersFromAnOlderConsulToThePinnedOne(t *testing.T) {
	t.Parallel()
	oldBin, oldV := consulOld(t)
	newBin, err := testcluster.ConsulBinary()
	require.NoError(t, err)
	newV, err := consulVersion(newBin)
	require.NoError(t, err)
	require.True(t, versionLess(oldV, newV), "%s is Consul %s, not older than the pinned %s (%s): run `make consul-old`",
		envConsulOld, oldV, newV, newBin)

	e := newEnvWith(t, envOptions{servers: 3, consulA: oldBin})
	start := e.serverVersions()
	require.Len(t, start.raft, 3, "%s", start)
	for _, s := range start.raft {
		require.Equal(t, oldV, start.version[s.Node], "image A's servers run the older Consul: %s", start)
	}

	// Data written before the roll must survive the upgrade.
	for i := range 50 {
		_, err := e.client.KV().Put(&api.KVPair{Key: fmt.Sprintf("seed/%d", i), Value: []byte("x")}, nil)
		require.NoError(t, err)
	}
	writer := workload.StartWriter(e.client, "writes/", 20, 3, 5*time.Second)
	samples := e.sample()
	versions := e.sampleVersions()

	out, code := e.run("local", "image", "register", "B") // the provider's default: the pinned Consul
	require.Equal(t, app.ExitOK, code, out)
	fired := time.Now()
	out, code = e.run("fire", "--image", "B")
	require.Equal(t, app.ExitOK, code, out)

	st := e.waitRolled("B", 6*time.Minute)
	mixed, mixedSamples, total := versions.Stop()
	maxLive, maxRaft := samples.Stop()
	res, err := writer.Stop(context.Background())
	require.NoError(t, err)

	e.checkRolled("B", maxLive, maxRaft)
	assert.Equal(t, coord.PhaseDone, st.Roll.Phase)
	assert.Zero(t, res.Failed, "failed writes")
	assert.Zero(t, res.Lost, "lost writes")
	assert.Greater(t, res.OK, 100)
	require.NotNil(t, mixed, "old and new voters in one raft configuration at least once (%d samples)", total)
	assert.ElementsMatch(t, []string{oldV, newV}, mixed.voterVersions(), "the mixed moment: %s", mixed)

	end := e.serverVersions()
	assert.Len(t, end.raft, 3, "%s", end)
	for _, s := range end.raft {
		assert.Equal(t, newV, end.version[s.Node], "every server runs the pinned Consul after the roll: %s", end)
	}
	seed, _, err := e.client.KV().List("seed/", &api.QueryOptions{RequireConsistent: true})
	require.NoError(t, err)
	assert.Len(t, seed, 50, "data written before the roll is all there")

	var steps []string
	for _, h := range st.Roll.History {
		steps = append(steps, fmt.Sprintf("+%.1fs %s %s", h.Time.Sub(st.Roll.Started).Seconds(), h.Step, h.Instance))
	}
	last := st.Roll.History[len(st.Roll.History)-1].Time
	t.Logf("upgrade %s -> %s: rolled in %.1fs; writes ok %d, failed %d, lost %d, max write %s; "+
		"mixed voters in %d of %d samples, first at +%.1fs after fire: %s; history %v",
		oldV, newV, last.Sub(st.Roll.Started).Seconds(), res.OK, res.Failed, res.Lost, res.Max,
		mixedSamples, total, mixed.at.Sub(fired).Seconds(), mixed, steps)
}

// consulOld returns the older Consul of $REHYDRATE_CONSUL_OLD and its version. Its
// absence is a failure, not a skip: `make test` always builds it, so a skip would
// hide a broken build and leave the upgrade untested.
func consulOld(t *testing.T) (path, version string) {
	t.Helper()
	p := os.Getenv(envConsulOld)
	if p == "" {
		t.Fatalf("%s is not set: it names the older Consul image A runs; run `make consul-old` to build it into "+
			"the cache, then set %s to $CACHE_DIR/consul-<version>/consul (`make test` does both)", envConsulOld, envConsulOld)
	}
	path, err := exec.LookPath(p)
	if err == nil && !strings.ContainsRune(p, os.PathSeparator) {
		err = errors.New("not a path")
	}
	if err == nil {
		version, err = consulVersion(path)
	}
	if err != nil {
		t.Fatalf("%s=%q is not a Consul binary (%v): run `make consul-old` to build the older Consul", envConsulOld, p, err)
	}
	return path, version
}

// consulVersion returns the version bin reports, e.g. "1.22.3" from "Consul v1.22.3".
func consulVersion(bin string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "version").Output()
	if err != nil {
		return "", fmt.Errorf("%s version: %w", bin, err)
	}
	first, _, _ := strings.Cut(string(out), "\n")
	v, ok := strings.CutPrefix(strings.TrimSpace(first), "Consul v")
	if !ok {
		return "", fmt.Errorf("%s version: %q", bin, first)
	}
	return v, nil
}

// versionLess reports whether release a precedes release b, both "major.minor.patch".
func versionLess(a, b string) bool {
	as, bs := strings.Split(a, "."), strings.Split(b, ".")
	for i := range min(len(as), len(bs)) {
		x, errX := strconv.Atoi(as[i])
		y, errY := strconv.Atoi(bs[i])
		if errX != nil || errY != nil {
			return false
		}
		if x != y {
			return x < y
		}
	}
	return len(as) < len(bs)
}

// serverView is the raft configuration at one moment, with the Consul version each
// of its servers gossips.
type serverView struct {
	at      time.Time
	raft    []*api.RaftServer
	version map[string]string // node name -> version
}

// voterVersions returns the distinct known versions of the raft voters, sorted (a
// server not alive among the members has none). A new server is a non-voter until
// autopilot promotes it: only voters of both versions make the quorum mixed.
func (v *serverView) voterVersions() []string {
	var out []string
	for _, s := range v.raft {
		if ver := v.version[s.Node]; s.Voter && ver != "" && !slices.Contains(out, ver) {
			out = append(out, ver)
		}
	}
	slices.Sort(out)
	return out
}

func (v *serverView) String() string {
	var parts []string
	for _, s := range v.raft {
		role := "voter"
		switch {
		case s.Leader:
			role = "leader"
		case !s.Voter:
			role = "non-voter"
		}
		parts = append(parts, fmt.Sprintf("%s %s %s", s.Node, cmp.Or(v.version[s.Node], "?"), role))
	}
	return "[" + strings.Join(parts, ", ") + "]"
}

// viewServers reads the raft configuration and, from the client agent's LAN
// members, the version each live server gossips (its "build" tag, "1.22.3:<rev>").
func (e *env) viewServers() (*serverView, error) {
	raft, err := e.client.Operator().RaftGetConfiguration(nil)
	if err != nil {
		return nil, err
	}
	members, err := e.client.Agent().Members(false)
	if err != nil {
		return nil, err
	}
	v := &serverView{at: time.Now(), raft: raft.Servers, version: map[string]string{}}
	for _, m := range members {
		if m.IsConsulServer() && m.Status == 1 { // serf's StatusAlive
			ver, _, _ := strings.Cut(m.Tags["build"], ":")
			v.version[m.Name] = ver
		}
	}
	return v, nil
}

// serverVersions is viewServers that fails the test on an error.
func (e *env) serverVersions() *serverView {
	e.t.Helper()
	v, err := e.viewServers()
	require.NoError(e.t, err)
	return v
}

// versionSampler looks at the raft servers' versions every 200ms and keeps the
// first moment when the voters run more than one version.
type versionSampler struct {
	mu           sync.Mutex
	first        *serverView
	mixed, total int
	stop, done   chan struct{}
}

func (e *env) sampleVersions() *versionSampler {
	s := &versionSampler{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		for range 6000 { // bounded: 20 minutes of samples at most
			select {
			case <-s.stop:
				return
			case <-time.After(200 * time.Millisecond):
			}
			v, err := e.viewServers()
			if err != nil {
				continue // a moment without a leader: the next sample looks again
			}
			s.mu.Lock()
			s.total++
			if len(v.voterVersions()) > 1 {
				s.mixed++
				if s.first == nil {
					s.first = v
				}
			}
			s.mu.Unlock()
		}
	}()
	return s
}

// Stop stops the sampler and returns the first mixed moment (nil if none), how many
// samples were mixed, and how many were taken.
func (s *versionSampler) Stop() (first *serverView, mixed, total int) {
	close(s.stop)
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.first, s.mixed, s.total
}
