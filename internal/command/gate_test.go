package command

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"
	astypes "github.com/aws/aws-sdk-go-v2/service/autoscaling/types"
	"github.com/hashicorp/go-hclog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	awsprovider "github.com/consul-rehydrate/consul-rehydrate/internal/cloud/aws"
	"github.com/consul-rehydrate/consul-rehydrate/test/testcluster"
)

// noHookYet is a group whose termination hook appears after `missing` looks.
type noHookYet struct {
	awsprovider.Lifecycle
	missing, calls int
}

func (f *noHookYet) DescribeLifecycleHooks(context.Context, *autoscaling.DescribeLifecycleHooksInput, ...func(*autoscaling.Options)) (*autoscaling.DescribeLifecycleHooksOutput, error) {
	f.calls++
	if f.calls <= f.missing {
		return &autoscaling.DescribeLifecycleHooksOutput{}, nil
	}
	return &autoscaling.DescribeLifecycleHooksOutput{LifecycleHooks: []astypes.LifecycleHook{{
		LifecycleHookName: aws.String("consul-rehydrate"), LifecycleTransition: aws.String("autoscaling:EC2_INSTANCE_TERMINATING"), HeartbeatTimeout: aws.Int32(300),
	}}}, nil
}

// TestWaitForHook_BacksOffToFiveMinutesAndWarnsOnce: a group without the hook (the
// image enables the gate everywhere, the hook is opt-in) is asked ever more rarely,
// up to once every 5 minutes, with one warning; the hook added later is found.
func TestWaitForHook_BacksOffToFiveMinutesAndWarnsOnce(t *testing.T) {
	fake := &noHookYet{missing: 12}
	action := &awsprovider.LifecycleAction{Client: fake, Group: "consul-servers", Hook: "consul-rehydrate", InstanceID: "i-1"}
	var out testcluster.SyncBuffer
	log := hclog.New(&hclog.LoggerOptions{Output: &out, Level: hclog.Debug})
	var slept []time.Duration
	sleep := func(_ context.Context, d time.Duration) error {
		slept = append(slept, d)
		return nil
	}
	timeout, err := waitForHook(context.Background(), action, log, sleep)
	require.NoError(t, err)
	assert.Equal(t, 300*time.Second, timeout)
	assert.Equal(t, 13, fake.calls)
	s := time.Second
	assert.Equal(t, []time.Duration{s, 2 * s, 4 * s, 8 * s, 16 * s, 32 * s, 64 * s, 128 * s, 256 * s, 300 * s, 300 * s, 300 * s}, slept)
	logs := out.String()
	assert.Equal(t, 1, strings.Count(logs, "[WARN]"), logs)
	assert.Equal(t, 11, strings.Count(logs, "[DEBUG]"), logs)
	assert.Contains(t, logs, "has no lifecycle hook")
	assert.Contains(t, logs, "found the termination hook")
}

// TestWaitForHook_StopsWithTheGate: the service stopping ends the wait.
func TestWaitForHook_StopsWithTheGate(t *testing.T) {
	fake := &noHookYet{missing: 1 << 30}
	action := &awsprovider.LifecycleAction{Client: fake, Group: "g", Hook: "h", InstanceID: "i-1"}
	stopped := errors.New("stopped")
	n := 0
	_, err := waitForHook(context.Background(), action, hclog.NewNullLogger(), func(context.Context, time.Duration) error {
		n++
		if n == 3 {
			return stopped
		}
		return nil
	})
	assert.ErrorIs(t, err, stopped)
	assert.Equal(t, 3, fake.calls)
}

func TestPeerAddress(t *testing.T) {
	for _, tc := range []struct{ own, raft, want string }{
		{"https://10.0.1.5:8501", "10.0.2.7:8300", "https://10.0.2.7:8501"},
		{"127.0.0.1:8500", "127.0.0.3:8300", "127.0.0.3:8500"},
		{"http://[fd00::1]:8500", "[fd00::2]:8300", "http://[fd00::2]:8500"},
	} {
		got, err := peerAddress(tc.own, tc.raft)
		require.NoError(t, err, tc.own)
		assert.Equal(t, tc.want, got)
	}
	_, err := peerAddress("unix:///run/consul.sock", "10.0.2.7:8300")
	assert.Error(t, err)
	_, err = peerAddress("10.0.1.5", "10.0.2.7:8300")
	assert.Error(t, err, "no port")
}
