package awsfake_test

import (
	"slices"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"
	astypes "github.com/aws/aws-sdk-go-v2/service/autoscaling/types"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/consul-rehydrate/consul-rehydrate/test/awsfake"
)

const terminating = "autoscaling:EC2_INSTANCE_TERMINATING"

func lifecycleOf(srv *awsfake.Server, id string) string {
	for _, i := range srv.Instances() {
		if i.ID == id {
			return i.LifecycleState
		}
	}
	return "gone"
}

func TestTerminationHook_HoldsTheInstanceInTerminatingWaitUntilCompleted(t *testing.T) {
	m := &machines{}
	srv, e, a := newFake(t, awsfake.Options{Machines: m})
	seedGroup(srv, 1, 3, 2)
	srv.AddLifecycleHook("consul", awsfake.LifecycleHook{Name: "drain", Transition: terminating})
	is := inServiceSnapshot(t, srv, 2)
	victim := is[0].ID

	act := terminate(t, a, victim, true)
	assert.Equal(t, astypes.ScalingActivityStatusCodeMidLifecycleAction, act.StatusCode)
	time.Sleep(100 * time.Millisecond)
	assert.Equal(t, []string{victim}, srv.WaitingForHook("consul"))
	assert.Equal(t, astypes.LifecycleStateTerminatingWait, lifecycles(describeGroup(t, a, "consul"))[victim])
	assert.Equal(t, ec2types.InstanceStateNameRunning, describeInstance(t, e, victim).State.Name, "EC2 still runs it")
	_, shutdowns := m.counts()
	assert.Zero(t, shutdowns, "its machine is not shut down yet")

	// A second terminate (a retry after the first ran) does not terminate it
	// twice; the decrement it asks for again is stopped here by MinSize (1), as
	// TestTerminateInstanceInAutoScalingGroup_ARetriedDecrementIsMadeAgainDownToMinSize
	// shows above it.
	again := terminate(t, a, victim, false)
	assert.Equal(t, aws.ToString(act.ActivityId), aws.ToString(again.ActivityId))
	assert.Equal(t, 1, srv.Group("consul").Desired)
	_, err := a.TerminateInstanceInAutoScalingGroup(ctx(t), &autoscaling.TerminateInstanceInAutoScalingGroupInput{
		InstanceId: aws.String(victim), ShouldDecrementDesiredCapacity: aws.Bool(true),
	})
	code, msg := apiCode(t, err)
	assert.Equal(t, "ValidationError", code)
	assert.Contains(t, msg, "desiredSize equals minSize (1)")
	assert.Equal(t, 1, srv.Group("consul").Desired)
	assert.Equal(t, []string{victim}, srv.WaitingForHook("consul"))

	_, err = a.RecordLifecycleActionHeartbeat(ctx(t), &autoscaling.RecordLifecycleActionHeartbeatInput{
		AutoScalingGroupName: aws.String("consul"), LifecycleHookName: aws.String("drain"), InstanceId: aws.String(victim),
	})
	require.NoError(t, err)
	_, err = a.CompleteLifecycleAction(ctx(t), &autoscaling.CompleteLifecycleActionInput{
		AutoScalingGroupName: aws.String("consul"), LifecycleHookName: aws.String("drain"),
		InstanceId: aws.String(victim), LifecycleActionResult: aws.String("CONTINUE"),
	})
	require.NoError(t, err)
	require.Eventually(t, func() bool { return lifecycleOf(srv, victim) == "" }, 5*time.Second, 10*time.Millisecond)
	assert.Equal(t, ec2types.InstanceStateNameTerminated, describeInstance(t, e, victim).State.Name)
	assert.Empty(t, srv.WaitingForHook("consul"))
	m.mu.Lock()
	assert.Equal(t, []string{victim}, m.shutdowns)
	m.mu.Unlock()
	done := byOrigin(srv, "terminate", "TerminateInstanceInAutoScalingGroup")
	require.Len(t, done, 1)
	assert.Equal(t, "Successful", done[0].Status)

	// Nothing waits any more: completing again is an error.
	_, err = a.CompleteLifecycleAction(ctx(t), &autoscaling.CompleteLifecycleActionInput{
		AutoScalingGroupName: aws.String("consul"), LifecycleHookName: aws.String("drain"),
		InstanceId: aws.String(victim), LifecycleActionResult: aws.String("CONTINUE"),
	})
	code, msg = apiCode(t, err)
	assert.Equal(t, "ValidationError", code)
	assert.Equal(t, "No active Lifecycle Action found with instance ID "+victim, msg)
}

func TestTerminationHook_TimesOutToItsDefaultResultAndHeartbeatsExtendIt(t *testing.T) {
	srv, _, a := newFake(t, awsfake.Options{})
	seedGroup(srv, 0, 3, 2)
	srv.AddLifecycleHook("consul", awsfake.LifecycleHook{Name: "drain", Transition: terminating, HeartbeatTimeout: 300 * time.Millisecond})
	is := inServiceSnapshot(t, srv, 2)

	start := time.Now()
	terminate(t, a, is[0].ID, false)
	require.Eventually(t, func() bool { return lifecycleOf(srv, is[0].ID) == "" }, 5*time.Second, 5*time.Millisecond)
	assert.GreaterOrEqual(t, time.Since(start), 300*time.Millisecond, "held for the heartbeat timeout")

	// With a heartbeat at 200ms the action lives until about 500ms.
	start = time.Now()
	terminate(t, a, is[1].ID, false)
	time.Sleep(200 * time.Millisecond)
	token := ""
	for _, i := range srv.Group("consul").Instances {
		if i.ID == is[1].ID {
			token = i.LifecycleActionToken
		}
	}
	require.NotEmpty(t, token)
	_, err := a.RecordLifecycleActionHeartbeat(ctx(t), &autoscaling.RecordLifecycleActionHeartbeatInput{
		AutoScalingGroupName: aws.String("consul"), LifecycleHookName: aws.String("drain"), LifecycleActionToken: aws.String(token),
	})
	require.NoError(t, err)
	time.Sleep(200 * time.Millisecond)
	assert.Equal(t, "Terminating:Wait", lifecycleOf(srv, is[1].ID), "the heartbeat restarted the timeout")
	require.Eventually(t, func() bool { return lifecycleOf(srv, is[1].ID) == "" }, 5*time.Second, 5*time.Millisecond)
	assert.GreaterOrEqual(t, time.Since(start), 500*time.Millisecond)
}

func TestLifecycleHooks_PutDescribeAndValidate(t *testing.T) {
	srv, _, a := newFake(t, awsfake.Options{})
	seedGroup(srv, 0, 1, 0)
	_, err := a.PutLifecycleHook(ctx(t), &autoscaling.PutLifecycleHookInput{
		AutoScalingGroupName: aws.String("consul"), LifecycleHookName: aws.String("drain"),
		LifecycleTransition: aws.String(terminating),
	})
	require.NoError(t, err)
	for _, bad := range []autoscaling.PutLifecycleHookInput{
		{LifecycleHookName: aws.String("x"), LifecycleTransition: aws.String("autoscaling:EC2_INSTANCE_REBOOTING")},
		{LifecycleHookName: aws.String("x"), LifecycleTransition: aws.String(terminating), HeartbeatTimeout: aws.Int32(10)},
		{LifecycleHookName: aws.String("x"), LifecycleTransition: aws.String(terminating), DefaultResult: aws.String("RETRY")},
		{LifecycleHookName: aws.String("x")},
	} {
		bad.AutoScalingGroupName = aws.String("consul")
		_, err := a.PutLifecycleHook(ctx(t), &bad)
		code, _ := apiCode(t, err)
		assert.Equal(t, "ValidationError", code)
	}
	// Updating keeps what the request does not name.
	_, err = a.PutLifecycleHook(ctx(t), &autoscaling.PutLifecycleHookInput{
		AutoScalingGroupName: aws.String("consul"), LifecycleHookName: aws.String("drain"), HeartbeatTimeout: aws.Int32(60),
	})
	require.NoError(t, err)
	srv.AddLifecycleHook("consul", awsfake.LifecycleHook{Name: "warm", Transition: "autoscaling:EC2_INSTANCE_LAUNCHING", DefaultResult: "CONTINUE"})

	out, err := a.DescribeLifecycleHooks(ctx(t), &autoscaling.DescribeLifecycleHooksInput{AutoScalingGroupName: aws.String("consul")})
	require.NoError(t, err)
	require.Len(t, out.LifecycleHooks, 2)
	h := out.LifecycleHooks[0]
	assert.Equal(t, "drain", aws.ToString(h.LifecycleHookName))
	assert.Equal(t, terminating, aws.ToString(h.LifecycleTransition))
	assert.Equal(t, int32(60), aws.ToInt32(h.HeartbeatTimeout))
	assert.Equal(t, int32(6000), aws.ToInt32(h.GlobalTimeout), "100 times the heartbeat timeout")
	assert.Equal(t, "ABANDON", aws.ToString(h.DefaultResult), "the default")
	h = out.LifecycleHooks[1]
	assert.Equal(t, int32(3600), aws.ToInt32(h.HeartbeatTimeout), "the default")
	assert.Equal(t, int32(172800), aws.ToInt32(h.GlobalTimeout), "48 hours")
	assert.Equal(t, "CONTINUE", aws.ToString(h.DefaultResult))

	out, err = a.DescribeLifecycleHooks(ctx(t), &autoscaling.DescribeLifecycleHooksInput{AutoScalingGroupName: aws.String("consul"), LifecycleHookNames: []string{"warm"}})
	require.NoError(t, err)
	require.Len(t, out.LifecycleHooks, 1)

	_, err = a.CompleteLifecycleAction(ctx(t), &autoscaling.CompleteLifecycleActionInput{
		AutoScalingGroupName: aws.String("consul"), LifecycleHookName: aws.String("drain"),
		LifecycleActionToken: aws.String("b7ab1f1d-0000-0000-0000-000000000000"), LifecycleActionResult: aws.String("CONTINUE"),
	})
	code, msg := apiCode(t, err)
	assert.Equal(t, "ValidationError", code)
	assert.Contains(t, msg, "No active Lifecycle Action found with token")
	assert.Panics(t, func() { srv.AddLifecycleHook("consul", awsfake.LifecycleHook{Name: "x", Transition: "reboot"}) })
}

func TestLaunchHook_HoldsInPendingWaitThenContinueOrAbandon(t *testing.T) {
	srv, _, a := newFake(t, awsfake.Options{LaunchRetryBase: 10 * time.Millisecond})
	seedGroup(srv, 0, 2, 0)
	srv.AddLifecycleHook("consul", awsfake.LifecycleHook{Name: "warm", Transition: "autoscaling:EC2_INSTANCE_LAUNCHING"})
	setDesired(t, a, 1)
	var id string
	require.Eventually(t, func() bool {
		is := srv.Group("consul").Instances
		if len(is) == 1 && is[0].LifecycleState == "Pending:Wait" {
			id = is[0].ID
			return true
		}
		return false
	}, 5*time.Second, 5*time.Millisecond)
	complete := func(id, result string) {
		_, err := a.CompleteLifecycleAction(ctx(t), &autoscaling.CompleteLifecycleActionInput{
			AutoScalingGroupName: aws.String("consul"), LifecycleHookName: aws.String("warm"),
			InstanceId: aws.String(id), LifecycleActionResult: aws.String(result),
		})
		require.NoError(t, err)
	}
	complete(id, "ABANDON")
	var next string
	require.Eventually(t, func() bool {
		for _, i := range srv.Group("consul").Instances {
			if i.ID != id && i.LifecycleState == "Pending:Wait" {
				next = i.ID
				return true
			}
		}
		return false
	}, 5*time.Second, 5*time.Millisecond, "abandoned: a failed launch, and the group tries again")
	assert.Equal(t, "Failed", srv.Activities("consul")[0].Status)
	assert.Contains(t, srv.Activities("consul")[0].StatusMessage, "ABANDON")
	complete(next, "CONTINUE")
	assert.Equal(t, next, inServiceSnapshot(t, srv, 1)[0].ID)
}

func TestDescribeScalingActivities_NewestFirstInProgressFirstPaged(t *testing.T) {
	srv, _, a := newFake(t, awsfake.Options{})
	seedGroup(srv, 0, 3, 2)
	srv.AddLifecycleHook("consul", awsfake.LifecycleHook{Name: "drain", Transition: terminating})
	is := inServiceSnapshot(t, srv, 2)
	terminate(t, a, is[1].ID, true) // held in Terminating:Wait: in progress
	time.Sleep(5 * time.Millisecond)
	setDesired(t, a, 2)
	require.Eventually(t, func() bool {
		n := 0
		for _, i := range srv.Group("consul").Instances {
			if i.LifecycleState == "InService" {
				n++
			}
		}
		return n == 2
	}, 5*time.Second, 5*time.Millisecond)

	out, err := a.DescribeScalingActivities(ctx(t), &autoscaling.DescribeScalingActivitiesInput{AutoScalingGroupName: aws.String("consul")})
	require.NoError(t, err)
	require.Len(t, out.Activities, 4)
	first := out.Activities[0]
	assert.Equal(t, astypes.ScalingActivityStatusCodeMidLifecycleAction, first.StatusCode, "in progress first")
	assert.Equal(t, "Terminating EC2 instance: "+is[1].ID, aws.ToString(first.Description))
	assert.Nil(t, first.EndTime)
	for _, act := range out.Activities[1:] {
		assert.Equal(t, astypes.ScalingActivityStatusCodeSuccessful, act.StatusCode)
		assert.Equal(t, int32(100), aws.ToInt32(act.Progress))
		assert.NotNil(t, act.EndTime)
		assert.Contains(t, aws.ToString(act.Description), "Launching a new EC2 instance: i-")
		assert.Contains(t, aws.ToString(act.Cause), "in response to a difference between desired and actual capacity")
		assert.JSONEq(t, `{"Availability Zone":"us-east-1a"}`, aws.ToString(act.Details))
	}
	assert.False(t, aws.ToTime(out.Activities[1].StartTime).Before(aws.ToTime(out.Activities[2].StartTime)), "newest first")

	var pages [][]string
	in := &autoscaling.DescribeScalingActivitiesInput{AutoScalingGroupName: aws.String("consul"), MaxRecords: aws.Int32(3)}
	for range 3 {
		out, err := a.DescribeScalingActivities(ctx(t), in)
		require.NoError(t, err)
		var ids []string
		for _, act := range out.Activities {
			ids = append(ids, aws.ToString(act.ActivityId))
		}
		pages = append(pages, ids)
		if out.NextToken == nil {
			break
		}
		in.NextToken = out.NextToken
	}
	require.Len(t, pages, 2)
	assert.Len(t, pages[0], 3)
	assert.Len(t, pages[1], 1)

	_, err = a.DescribeScalingActivities(ctx(t), &autoscaling.DescribeScalingActivitiesInput{NextToken: aws.String("x")})
	code, _ := apiCode(t, err)
	assert.Equal(t, "InvalidNextToken", code)
	none, err := a.DescribeScalingActivities(ctx(t), &autoscaling.DescribeScalingActivitiesInput{AutoScalingGroupName: aws.String("nomad")})
	require.NoError(t, err)
	assert.Empty(t, none.Activities)
}

// Failed launches, whatever the cause, are Failed activities with AWS's status
// message, retried for ever, never stopping after a number of tries.
func TestFailedLaunches_AreRetriedForEverAndShowAsFailedActivities(t *testing.T) {
	for _, tc := range []struct {
		name  string
		seed  func(srv *awsfake.Server)
		fix   func(srv *awsfake.Server)
		match string
	}{
		{"capacity", func(srv *awsfake.Server) { srv.FailLaunches("consul", "", 0) },
			func(srv *awsfake.Server) { srv.ResumeLaunches("consul") }, "We currently do not have sufficient t3.micro capacity"},
		{"capacity, cleared", func(srv *awsfake.Server) { srv.FailLaunches("consul", "InsufficientInstanceCapacity", 0) },
			func(srv *awsfake.Server) { srv.Clear() }, "InsufficientInstanceCapacity"},
		{"an image that launches fail on", func(srv *awsfake.Server) {
			srv.AddImage(awsfake.Image{ID: "ami-0ccccccccccccccc3", LaunchError: "Client.InternalError: Client error on launch."})
			srv.AddLaunchTemplateVersion("consul", awsfake.LaunchTemplateData{ImageID: "ami-0ccccccccccccccc3"}, false)
		}, func(srv *awsfake.Server) {
			srv.AddLaunchTemplateVersion("consul", awsfake.LaunchTemplateData{ImageID: amiNew}, false)
		}, "Client.InternalError: Client error on launch."},
		{"an image that is not available", func(srv *awsfake.Server) {
			srv.AddImage(awsfake.Image{ID: "ami-0ddddddddddddddd4", State: "pending"})
			srv.AddLaunchTemplateVersion("consul", awsfake.LaunchTemplateData{ImageID: "ami-0ddddddddddddddd4"}, false)
		}, func(srv *awsfake.Server) {
			srv.AddLaunchTemplateVersion("consul", awsfake.LaunchTemplateData{ImageID: amiNew}, false)
		}, "The image id '[ami-0ddddddddddddddd4]' does not exist. Launching EC2 instance failed."},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv, _, a := newFake(t, awsfake.Options{LaunchRetryBase: 5 * time.Millisecond, LaunchRetryMax: 20 * time.Millisecond})
			srv.AddImage(awsfake.Image{ID: amiOld})
			srv.AddImage(awsfake.Image{ID: amiNew})
			srv.AddLaunchTemplate("consul", amiOld)
			srv.AddGroup(awsfake.Group{Name: "consul", LaunchTemplate: "consul", Version: "$Latest", Min: 0, Max: 1, Desired: 0})
			tc.seed(srv)
			setDesired(t, a, 1)
			require.Eventually(t, func() bool { return len(srv.Activities("consul")) >= 6 }, 5*time.Second, 5*time.Millisecond, "far more than three tries")
			assert.ErrorContains(t, srv.Group("consul").LaunchErr, tc.match)
			out, err := a.DescribeScalingActivities(ctx(t), &autoscaling.DescribeScalingActivitiesInput{AutoScalingGroupName: aws.String("consul")})
			require.NoError(t, err)
			failed := out.Activities[len(out.Activities)-1]
			assert.Equal(t, astypes.ScalingActivityStatusCodeFailed, failed.StatusCode)
			assert.Contains(t, aws.ToString(failed.StatusMessage), tc.match)
			assert.Contains(t, aws.ToString(failed.Description), "Launching a new EC2 instance")
			assert.Contains(t, aws.ToString(failed.Description), "Status Reason: ")
			assert.Empty(t, srv.Group("consul").Instances)

			tc.fix(srv)
			inServiceSnapshot(t, srv, 1)
			assert.NoError(t, srv.Group("consul").LaunchErr)
			acts := srv.Activities("consul")
			assert.Equal(t, "Successful", acts[len(acts)-1].Status)
		})
	}
}

func TestFailLaunches_TimesFailThatManyLaunches(t *testing.T) {
	srv, _, _ := newFake(t, awsfake.Options{LaunchRetryBase: 5 * time.Millisecond})
	srv.AddImage(awsfake.Image{ID: amiOld})
	srv.AddLaunchTemplate("consul", amiOld)
	srv.AddGroup(awsfake.Group{Name: "consul", LaunchTemplate: "consul", Min: 0, Max: 1, Desired: 0, Suspended: []string{"Launch"}})
	srv.FailLaunches("consul", "no room", 2)
	a := autoscaling.NewFromConfig(srv.Config())
	setDesired(t, a, 1)
	_, err := a.ResumeProcesses(ctx(t), &autoscaling.ResumeProcessesInput{AutoScalingGroupName: aws.String("consul")})
	require.NoError(t, err)
	inServiceSnapshot(t, srv, 1)
	var statuses []string
	for _, act := range srv.Activities("consul") {
		statuses = append(statuses, act.Status)
	}
	assert.Equal(t, []string{"Failed", "Failed", "Successful"}, statuses)
	assert.False(t, slices.ContainsFunc(srv.Activities("consul"), func(a awsfake.Activity) bool { return a.Kind != "launch" }))
}
