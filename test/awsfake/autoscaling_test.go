package awsfake_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"
	astypes "github.com/aws/aws-sdk-go-v2/service/autoscaling/types"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/consul-rehydrate/consul-rehydrate/test/awsfake"
)

func TestDescribeAutoScalingGroups_DecodesGroupTemplateAndInstances(t *testing.T) {
	srv, _, a := newFake(t, awsfake.Options{})
	seedGroup(srv, 1, 5, 3)
	g := waitInService(t, a, "consul", 3)

	assert.Equal(t, "consul", aws.ToString(g.AutoScalingGroupName))
	assert.Regexp(t, `^arn:aws:autoscaling:us-east-1:123456789012:autoScalingGroup:.*:autoScalingGroupName/consul$`, aws.ToString(g.AutoScalingGroupARN))
	assert.Equal(t, int32(1), aws.ToInt32(g.MinSize))
	assert.Equal(t, int32(5), aws.ToInt32(g.MaxSize))
	assert.Equal(t, int32(3), aws.ToInt32(g.DesiredCapacity))
	require.NotNil(t, g.LaunchTemplate)
	assert.Equal(t, "consul", aws.ToString(g.LaunchTemplate.LaunchTemplateName))
	assert.Equal(t, "1", aws.ToString(g.LaunchTemplate.Version))
	assert.WithinDuration(t, time.Now(), aws.ToTime(g.CreatedTime), time.Minute)
	for _, i := range g.Instances {
		assert.Regexp(t, `^i-[0-9a-f]{17}$`, aws.ToString(i.InstanceId))
		assert.Equal(t, "Healthy", aws.ToString(i.HealthStatus))
		assert.Equal(t, amiOld, aws.ToString(i.ImageId))
		require.NotNil(t, i.LaunchTemplate)
		assert.Equal(t, "1", aws.ToString(i.LaunchTemplate.Version))
	}
	assert.Len(t, srv.Group("consul").Instances, 3)

	out, err := a.DescribeAutoScalingGroups(ctx(t), &autoscaling.DescribeAutoScalingGroupsInput{
		AutoScalingGroupNames: []string{"consul"}, IncludeInstances: aws.Bool(false),
	})
	require.NoError(t, err)
	require.Len(t, out.AutoScalingGroups, 1)
	assert.Empty(t, out.AutoScalingGroups[0].Instances)
}

func TestDescribeAutoScalingGroups_LeavesUnknownNamesOut(t *testing.T) {
	srv, _, a := newFake(t, awsfake.Options{})
	seedGroup(srv, 0, 1, 0)
	out, err := a.DescribeAutoScalingGroups(ctx(t), &autoscaling.DescribeAutoScalingGroupsInput{AutoScalingGroupNames: []string{"nomad"}})
	require.NoError(t, err)
	assert.Empty(t, out.AutoScalingGroups)

	out, err = a.DescribeAutoScalingGroups(ctx(t), &autoscaling.DescribeAutoScalingGroupsInput{})
	require.NoError(t, err)
	assert.Len(t, out.AutoScalingGroups, 1, "no names: every group")
}

func TestUpdateAutoScalingGroup_ValidatesLikeAWS(t *testing.T) {
	srv, _, a := newFake(t, awsfake.Options{})
	seedGroup(srv, 1, 3, 2)
	for _, tc := range []struct {
		name string
		in   autoscaling.UpdateAutoScalingGroupInput
		msg  string
	}{
		{"min above max", autoscaling.UpdateAutoScalingGroupInput{MinSize: aws.Int32(4)},
			"Max bound, 3, must be greater than or equal to min bound, 4"},
		{"desired above max", autoscaling.UpdateAutoScalingGroupInput{DesiredCapacity: aws.Int32(4)},
			"Desired capacity:4 must be between the specified min size:1 and max size:3"},
		{"desired below min", autoscaling.UpdateAutoScalingGroupInput{MinSize: aws.Int32(2), DesiredCapacity: aws.Int32(1)},
			"Desired capacity:1 must be between the specified min size:2 and max size:3"},
		{"unknown launch template", autoscaling.UpdateAutoScalingGroupInput{
			LaunchTemplate: &astypes.LaunchTemplateSpecification{LaunchTemplateName: aws.String("nomad"), Version: aws.String("1")}},
			"You must use a valid fully-formed launch template. The specified launch template, with template name nomad, does not exist."},
		{"unknown version", autoscaling.UpdateAutoScalingGroupInput{
			LaunchTemplate: &astypes.LaunchTemplateSpecification{LaunchTemplateName: aws.String("consul"), Version: aws.String("9")}}, ""},
		{"unknown group", autoscaling.UpdateAutoScalingGroupInput{AutoScalingGroupName: aws.String("nomad"), MaxSize: aws.Int32(4)}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := tc.in
			if in.AutoScalingGroupName == nil {
				in.AutoScalingGroupName = aws.String("consul")
			}
			_, err := a.UpdateAutoScalingGroup(ctx(t), &in)
			code, msg := apiCode(t, err)
			assert.Equal(t, "ValidationError", code)
			if tc.msg != "" {
				assert.Equal(t, tc.msg, msg)
			}
		})
	}
	g := srv.Group("consul")
	assert.Equal(t, []int{1, 3, 2}, []int{g.Min, g.Max, g.Desired}, "failed updates change nothing")
}

func TestUpdateAutoScalingGroup_MovesDesiredWithANewMaxOrMinLikeAWS(t *testing.T) {
	srv, _, a := newFake(t, awsfake.Options{})
	seedGroup(srv, 1, 4, 3)
	_, err := a.UpdateAutoScalingGroup(ctx(t), &autoscaling.UpdateAutoScalingGroupInput{AutoScalingGroupName: aws.String("consul"), MaxSize: aws.Int32(2)})
	require.NoError(t, err)
	g := describeGroup(t, a, "consul")
	assert.Equal(t, int32(2), aws.ToInt32(g.DesiredCapacity), "a max below the desired capacity lowers it")

	_, err = a.UpdateAutoScalingGroup(ctx(t), &autoscaling.UpdateAutoScalingGroupInput{AutoScalingGroupName: aws.String("consul"), MaxSize: aws.Int32(5), MinSize: aws.Int32(4)})
	require.NoError(t, err)
	g = describeGroup(t, a, "consul")
	assert.Equal(t, int32(4), aws.ToInt32(g.DesiredCapacity), "a min above the desired capacity raises it")
	waitInService(t, a, "consul", 4)
}

func TestSetDesiredCapacity_OutsideMinAndMaxIsValidationError(t *testing.T) {
	srv, _, a := newFake(t, awsfake.Options{})
	seedGroup(srv, 2, 3, 3)
	set := func(n int32) error {
		_, err := a.SetDesiredCapacity(ctx(t), &autoscaling.SetDesiredCapacityInput{
			AutoScalingGroupName: aws.String("consul"), DesiredCapacity: aws.Int32(n), HonorCooldown: aws.Bool(false),
		})
		return err
	}
	code, msg := apiCode(t, set(4))
	assert.Equal(t, "ValidationError", code)
	assert.Equal(t, "New SetDesiredCapacity value 4 is above max value 3 for the AutoScalingGroup.", msg)
	code, msg = apiCode(t, set(1))
	assert.Equal(t, "ValidationError", code)
	assert.Equal(t, "New SetDesiredCapacity value 1 is below min value 2 for the AutoScalingGroup.", msg)

	require.NoError(t, set(2))
	assert.Equal(t, 2, srv.Group("consul").Desired)
}

func TestTerminateInstanceInAutoScalingGroup_UnknownInstanceIsValidationError(t *testing.T) {
	srv, _, a := newFake(t, awsfake.Options{})
	seedGroup(srv, 0, 1, 0)
	_, err := a.TerminateInstanceInAutoScalingGroup(ctx(t), &autoscaling.TerminateInstanceInAutoScalingGroupInput{
		InstanceId: aws.String("i-0123456789abcdef0"), ShouldDecrementDesiredCapacity: aws.Bool(true),
	})
	code, msg := apiCode(t, err)
	assert.Equal(t, "ValidationError", code)
	assert.Equal(t, "Instance Id not found - No managed instance found for instance ID: i-0123456789abcdef0", msg)
}

func TestTerminateInstanceInAutoScalingGroup_DecrementBelowMinIsValidationError(t *testing.T) {
	srv, _, a := newFake(t, awsfake.Options{})
	seedGroup(srv, 3, 4, 3)
	g := waitInService(t, a, "consul", 3)
	_, err := a.TerminateInstanceInAutoScalingGroup(ctx(t), &autoscaling.TerminateInstanceInAutoScalingGroupInput{
		InstanceId: g.Instances[0].InstanceId, ShouldDecrementDesiredCapacity: aws.Bool(true),
	})
	code, msg := apiCode(t, err)
	assert.Equal(t, "ValidationError", code)
	assert.Contains(t, msg, "Terminating instance without replacement will violate group's min size constraint.")
	assert.Equal(t, astypes.LifecycleStateInService, lifecycles(describeGroup(t, a, "consul"))[aws.ToString(g.Instances[0].InstanceId)])
}

// TestTerminateInstanceInAutoScalingGroup_ARetriedDecrementIsMadeAgainDownToMinSize:
// the fake's reading of a terminate repeated on an instance already terminating
// (invented, the worse case for a caller): not terminated twice, but decremented
// again, and the group scales in to match; only MinSize stops it.
func TestTerminateInstanceInAutoScalingGroup_ARetriedDecrementIsMadeAgainDownToMinSize(t *testing.T) {
	srv, _, a := newFake(t, awsfake.Options{})
	seedGroup(srv, 1, 3, 3)
	srv.AddLifecycleHook("consul", awsfake.LifecycleHook{Name: "drain", Transition: "autoscaling:EC2_INSTANCE_TERMINATING"})
	g := waitInService(t, a, "consul", 3)
	victim := g.Instances[0].InstanceId
	for range 2 {
		_, err := a.TerminateInstanceInAutoScalingGroup(ctx(t), &autoscaling.TerminateInstanceInAutoScalingGroupInput{
			InstanceId: victim, ShouldDecrementDesiredCapacity: aws.Bool(true),
		})
		require.NoError(t, err)
	}
	assert.Equal(t, 1, srv.Group("consul").Desired, "decremented twice")
	waiting := srv.WaitingForHook("consul")
	assert.Len(t, waiting, 2, "the second decrement scaled another instance in")
	assert.Contains(t, waiting, aws.ToString(victim))
	_, err := a.TerminateInstanceInAutoScalingGroup(ctx(t), &autoscaling.TerminateInstanceInAutoScalingGroupInput{
		InstanceId: victim, ShouldDecrementDesiredCapacity: aws.Bool(true),
	})
	code, _ := apiCode(t, err)
	assert.Equal(t, "ValidationError", code, "MinSize stops a third")
	assert.Equal(t, 1, srv.Group("consul").Desired)
}

func TestTerminateInstanceInAutoScalingGroup_WithoutDecrementTheGroupReplacesIt(t *testing.T) {
	srv, _, a := newFake(t, awsfake.Options{ShutdownDelay: 200 * time.Millisecond})
	seedGroup(srv, 2, 2, 2)
	g := waitInService(t, a, "consul", 2)
	victim := aws.ToString(g.Instances[0].InstanceId)

	_, err := a.TerminateInstanceInAutoScalingGroup(ctx(t), &autoscaling.TerminateInstanceInAutoScalingGroupInput{
		InstanceId: aws.String(victim), ShouldDecrementDesiredCapacity: aws.Bool(false),
	})
	require.NoError(t, err)
	g = waitInService(t, a, "consul", 2)
	assert.Equal(t, int32(2), aws.ToInt32(g.DesiredCapacity))
	assert.NotContains(t, lifecycles(g), victim)
}

// The provider's launch and retire, step by step, with the built-in machines.
func TestGroupLifecycle_SurgeOnANewVersionThenRetireAnOldInstance(t *testing.T) {
	srv, e, a := newFake(t, awsfake.Options{BootDelay: time.Second, ShutdownDelay: time.Second})
	seedGroup(srv, 3, 3, 3)
	before := lifecycles(waitInService(t, a, "consul", 3))

	// Launch: a new template version on the new AMI, made the group's, then N+1.
	v, err := e.CreateLaunchTemplateVersion(ctx(t), &ec2.CreateLaunchTemplateVersionInput{
		LaunchTemplateName: aws.String("consul"), SourceVersion: aws.String("1"), VersionDescription: aws.String("roll-1"),
		ClientToken: aws.String("roll-1"), LaunchTemplateData: &ec2types.RequestLaunchTemplateData{ImageId: aws.String(amiNew)},
	})
	require.NoError(t, err)
	version := fmt.Sprint(aws.ToInt64(v.LaunchTemplateVersion.VersionNumber))
	_, err = a.UpdateAutoScalingGroup(ctx(t), &autoscaling.UpdateAutoScalingGroupInput{
		AutoScalingGroupName: aws.String("consul"), MaxSize: aws.Int32(4),
		LaunchTemplate: &astypes.LaunchTemplateSpecification{LaunchTemplateName: aws.String("consul"), Version: aws.String(version)},
	})
	require.NoError(t, err)
	_, err = a.SetDesiredCapacity(ctx(t), &autoscaling.SetDesiredCapacityInput{
		AutoScalingGroupName: aws.String("consul"), DesiredCapacity: aws.Int32(4), HonorCooldown: aws.Bool(false),
	})
	require.NoError(t, err)

	// The new instance shows up pending, on the new AMI and version…
	var fresh astypes.Instance
	require.Eventually(t, func() bool {
		for _, i := range describeGroup(t, a, "consul").Instances {
			if _, old := before[aws.ToString(i.InstanceId)]; !old {
				fresh = i
				return true
			}
		}
		return false
	}, 5*time.Second, 10*time.Millisecond)
	id := aws.ToString(fresh.InstanceId)
	assert.Equal(t, astypes.LifecycleStatePending, fresh.LifecycleState)
	assert.Equal(t, version, aws.ToString(fresh.LaunchTemplate.Version))
	inst := describeInstance(t, e, id)
	assert.Equal(t, ec2types.InstanceStateNamePending, inst.State.Name)
	assert.Equal(t, int32(0), aws.ToInt32(inst.State.Code))
	assert.Equal(t, amiNew, aws.ToString(inst.ImageId))
	assert.NotEmpty(t, aws.ToString(inst.PrivateIpAddress))

	// …and is in service once its machine has booted.
	g := waitInService(t, a, "consul", 4)
	assert.Equal(t, version, aws.ToString(g.LaunchTemplate.Version))
	assert.Equal(t, ec2types.InstanceStateNameRunning, describeInstance(t, e, id).State.Name)

	// Retire: terminate an old instance with a decrement.
	var victim string
	for old := range before {
		victim = old
		break
	}
	out, err := a.TerminateInstanceInAutoScalingGroup(ctx(t), &autoscaling.TerminateInstanceInAutoScalingGroupInput{
		InstanceId: aws.String(victim), ShouldDecrementDesiredCapacity: aws.Bool(true),
	})
	require.NoError(t, err)
	require.NotNil(t, out.Activity)
	assert.Equal(t, "consul", aws.ToString(out.Activity.AutoScalingGroupName))
	assert.Equal(t, "Terminating EC2 instance: "+victim, aws.ToString(out.Activity.Description))
	assert.Equal(t, astypes.ScalingActivityStatusCodeInProgress, out.Activity.StatusCode)
	assert.Contains(t, aws.ToString(out.Activity.Cause), "shrinking the capacity from 4 to 3")

	g = describeGroup(t, a, "consul")
	assert.Equal(t, int32(3), aws.ToInt32(g.DesiredCapacity))
	assert.Equal(t, astypes.LifecycleStateTerminating, lifecycles(g)[victim])
	gone := describeInstance(t, e, victim)
	assert.Equal(t, ec2types.InstanceStateNameShuttingDown, gone.State.Name)
	assert.Equal(t, int32(32), aws.ToInt32(gone.State.Code))

	g = waitInService(t, a, "consul", 3)
	assert.NotContains(t, lifecycles(g), victim)
	assert.Contains(t, lifecycles(g), id)
	gone = describeInstance(t, e, victim)
	assert.Equal(t, ec2types.InstanceStateNameTerminated, gone.State.Name, "EC2 still describes it, terminated")
	assert.Equal(t, int32(48), aws.ToInt32(gone.State.Code))
	assert.Nil(t, gone.PrivateIpAddress)

	_, err = a.TerminateInstanceInAutoScalingGroup(ctx(t), &autoscaling.TerminateInstanceInAutoScalingGroupInput{
		InstanceId: aws.String(victim), ShouldDecrementDesiredCapacity: aws.Bool(true),
	})
	code, _ := apiCode(t, err)
	assert.Equal(t, "ValidationError", code, "a terminated instance is no longer in the group")
}

func TestGroup_LatestIsResolvedAtEachLaunch(t *testing.T) {
	srv, e, a := newFake(t, awsfake.Options{})
	srv.AddImage(awsfake.Image{ID: amiOld})
	srv.AddImage(awsfake.Image{ID: amiNew})
	srv.AddLaunchTemplate("consul", amiOld)
	srv.AddGroup(awsfake.Group{Name: "consul", LaunchTemplate: "consul", Version: "$Latest", Min: 0, Max: 2, Desired: 1})
	waitInService(t, a, "consul", 1)

	_, err := e.CreateLaunchTemplateVersion(ctx(t), &ec2.CreateLaunchTemplateVersionInput{
		LaunchTemplateName: aws.String("consul"), SourceVersion: aws.String("$Latest"),
		LaunchTemplateData: &ec2types.RequestLaunchTemplateData{ImageId: aws.String(amiNew)},
	})
	require.NoError(t, err)
	_, err = a.SetDesiredCapacity(ctx(t), &autoscaling.SetDesiredCapacityInput{AutoScalingGroupName: aws.String("consul"), DesiredCapacity: aws.Int32(2)})
	require.NoError(t, err)
	g := waitInService(t, a, "consul", 2)
	var amis []string
	for _, i := range g.Instances {
		amis = append(amis, aws.ToString(i.ImageId))
	}
	assert.ElementsMatch(t, []string{amiOld, amiNew}, amis)
	assert.Equal(t, "$Latest", aws.ToString(g.LaunchTemplate.Version))
}

// machines is a Machines (and Readier) whose boots can fail and whose readiness
// the test releases.
type machines struct {
	mu          sync.Mutex
	failBoots   int // the first failBoots Boots fail
	failReadies int // the first failReadies Readies fail
	boots       []string
	shutdowns   []string
	release     chan struct{}
}

func (m *machines) Boot(_ context.Context, ami string) (string, string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.boots = append(m.boots, ami)
	n := len(m.boots)
	if n <= m.failBoots {
		return "", "", errors.New("no capacity")
	}
	return fmt.Sprintf("i-%017x", n), fmt.Sprintf("10.0.0.%d", n), nil
}

func (m *machines) Ready(ctx context.Context, _ string) error {
	m.mu.Lock()
	fail := m.failReadies > 0
	m.failReadies--
	m.mu.Unlock()
	if fail {
		return errors.New("consul did not start")
	}
	if m.release == nil {
		return nil
	}
	select {
	case <-m.release:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (m *machines) Shutdown(_ context.Context, id string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.shutdowns = append(m.shutdowns, id)
	return nil
}

func (m *machines) counts() (boots, shutdowns int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.boots), len(m.shutdowns)
}

func TestGroup_PluggableMachinesNameTheInstancesAndShutThemDown(t *testing.T) {
	m := &machines{release: make(chan struct{})}
	srv, e, a := newFake(t, awsfake.Options{Machines: m})
	seedGroup(srv, 0, 2, 1)

	const first = "i-00000000000000001"
	require.Eventually(t, func() bool { return len(describeGroup(t, a, "consul").Instances) == 1 }, 5*time.Second, 10*time.Millisecond)
	assert.Equal(t, astypes.LifecycleStatePending, lifecycles(describeGroup(t, a, "consul"))[first], "pending until Ready returns")
	inst := describeInstance(t, e, first)
	assert.Equal(t, "10.0.0.1", aws.ToString(inst.PrivateIpAddress))
	assert.Equal(t, ec2types.InstanceStateNamePending, inst.State.Name)

	close(m.release)
	waitInService(t, a, "consul", 1)
	_, err := a.TerminateInstanceInAutoScalingGroup(ctx(t), &autoscaling.TerminateInstanceInAutoScalingGroupInput{
		InstanceId: aws.String(first), ShouldDecrementDesiredCapacity: aws.Bool(false),
	})
	require.NoError(t, err)
	g := waitInService(t, a, "consul", 1)
	assert.Contains(t, lifecycles(g), "i-00000000000000002", "replaced")
	m.mu.Lock()
	assert.Equal(t, []string{first}, m.shutdowns)
	assert.Equal(t, []string{amiOld, amiOld}, m.boots)
	m.mu.Unlock()
}

// AWS has no "stop after N failures" rule: a group retries failed launches for
// ever, with backoff, and each failure is a Failed activity.
func TestGroup_FailedLaunchesAreRetriedWithBackoffUntilOneSucceeds(t *testing.T) {
	m := &machines{failBoots: 4, failReadies: 1}
	srv, _, a := newFake(t, awsfake.Options{Machines: m, LaunchRetryBase: 40 * time.Millisecond, LaunchRetryMax: 160 * time.Millisecond})
	start := time.Now()
	seedGroup(srv, 0, 2, 1)
	waitInService(t, a, "consul", 1)
	elapsed := time.Since(start)
	assert.NoError(t, srv.Group("consul").LaunchErr, "cleared by the launch that succeeded")
	boots, _ := m.counts()
	assert.Equal(t, 6, boots, "four boots failed, the fifth never became ready, the sixth is in service")
	// Backoffs after failures 1..5: 40, 80, 160, 160, 160 ms.
	assert.GreaterOrEqual(t, elapsed, 600*time.Millisecond, "the retries backed off")

	var failed []string
	for _, act := range srv.Activities("consul") {
		require.Equal(t, "launch", act.Kind)
		require.Equal(t, "Launch", act.Origin)
		if act.Status == "Failed" {
			failed = append(failed, act.StatusMessage)
		}
	}
	require.Len(t, failed, 5)
	assert.Contains(t, failed[0], "no capacity")
	assert.Contains(t, failed[4], "did not become ready: consul did not start")

	// Boot 5 made an instance that never became ready: terminated, like EC2.
	var states []string
	for _, i := range srv.Instances() {
		states = append(states, i.ID+"="+i.State)
	}
	assert.Equal(t, []string{"i-00000000000000005=terminated", "i-00000000000000006=running"}, states)
}

func TestGroup_ScaleInTerminatesInstancesOnOlderVersionsFirst(t *testing.T) {
	srv, e, a := newFake(t, awsfake.Options{})
	seedGroup(srv, 0, 3, 2)
	waitInService(t, a, "consul", 2)
	_, err := e.CreateLaunchTemplateVersion(ctx(t), &ec2.CreateLaunchTemplateVersionInput{
		LaunchTemplateName: aws.String("consul"), LaunchTemplateData: &ec2types.RequestLaunchTemplateData{ImageId: aws.String(amiNew)},
	})
	require.NoError(t, err)
	_, err = a.UpdateAutoScalingGroup(ctx(t), &autoscaling.UpdateAutoScalingGroupInput{
		AutoScalingGroupName: aws.String("consul"), DesiredCapacity: aws.Int32(3),
		LaunchTemplate: &astypes.LaunchTemplateSpecification{LaunchTemplateName: aws.String("consul"), Version: aws.String("$Latest")},
	})
	require.NoError(t, err)
	waitInService(t, a, "consul", 3)

	_, err = a.SetDesiredCapacity(ctx(t), &autoscaling.SetDesiredCapacityInput{AutoScalingGroupName: aws.String("consul"), DesiredCapacity: aws.Int32(1)})
	require.NoError(t, err)
	g := waitInService(t, a, "consul", 1)
	assert.Equal(t, amiNew, aws.ToString(g.Instances[0].ImageId))
	assert.True(t, slices.ContainsFunc(srv.Instances(), func(i awsfake.Instance) bool { return i.State == "terminated" }))
}
