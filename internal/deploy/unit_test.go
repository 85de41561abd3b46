package deploy

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/consul-rehydrate/consul-rehydrate/internal/coord"

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
		{`{"id":"x","version":"v 2"}`, "without spaces"},
		{`{"id":"x","version":"v2\n"}`, "printable"},
		{`{"id":"x","version":"` + strings.Repeat("9", 129) + `"}`, "up to 128"},
		{`{"id":"x","version":"v2","artifact":"a\u0000b"}`, "artifact"},
		{`{"id":"x","version":"v2","artifact":"` + strings.Repeat("a", 70<<10) + `"}`, "the limit"},
	}
	for _, b := range bad {
		_, err := ParseDesired([]byte(b.value))
		require.ErrorIs(t, err, ErrBadDesired, b.value)
		assert.Contains(t, err.Error(), b.want, b.value)
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
