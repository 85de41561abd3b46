package awsfake_test

import (
	"slices"
	"sort"
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

var threeAZs = []string{"us-east-1a", "us-east-1b", "us-east-1c"}

// seedAZGroup seeds the AMIs, template "consul" and group "consul" spread over
// threeAZs.
func seedAZGroup(srv *awsfake.Server, g awsfake.Group) {
	srv.AddImage(awsfake.Image{ID: amiOld})
	srv.AddImage(awsfake.Image{ID: amiNew})
	srv.AddLaunchTemplate("consul", amiOld)
	g.Name, g.LaunchTemplate, g.Version = "consul", "consul", "$Latest"
	if g.AZs == nil {
		g.AZs = threeAZs
	}
	srv.AddGroup(g)
}

// perAZ counts the group's live (Pending or InService) instances per AZ, as
// the snapshot shows them.
func perAZ(srv *awsfake.Server) map[string]int {
	out := map[string]int{}
	for _, i := range srv.Group("consul").Instances {
		if i.LifecycleState == "InService" || i.LifecycleState == "Pending" {
			out[i.AZ]++
		}
	}
	return out
}

// inServiceSnapshot waits until the group has n instances, all InService, and
// returns them.
func inServiceSnapshot(t *testing.T, srv *awsfake.Server, n int) []awsfake.Instance {
	t.Helper()
	var is []awsfake.Instance
	require.Eventually(t, func() bool {
		is = srv.Group("consul").Instances
		return len(is) == n && !slices.ContainsFunc(is, func(i awsfake.Instance) bool { return i.LifecycleState != "InService" })
	}, 10*time.Second, 10*time.Millisecond)
	return is
}

func setDesired(t *testing.T, a *autoscaling.Client, n int32) {
	t.Helper()
	_, err := a.SetDesiredCapacity(ctx(t), &autoscaling.SetDesiredCapacityInput{AutoScalingGroupName: aws.String("consul"), DesiredCapacity: aws.Int32(n)})
	require.NoError(t, err)
}

func terminate(t *testing.T, a *autoscaling.Client, id string, decrement bool) *astypes.Activity {
	t.Helper()
	out, err := a.TerminateInstanceInAutoScalingGroup(ctx(t), &autoscaling.TerminateInstanceInAutoScalingGroupInput{
		InstanceId: aws.String(id), ShouldDecrementDesiredCapacity: aws.Bool(decrement),
	})
	require.NoError(t, err)
	return out.Activity
}

// byOrigin returns the group's activities of kind made by origin.
func byOrigin(srv *awsfake.Server, kind, origin string) []awsfake.Activity {
	var out []awsfake.Activity
	for _, a := range srv.Activities("consul") {
		if a.Kind == kind && a.Origin == origin {
			out = append(out, a)
		}
	}
	return out
}

func TestGroup_LaunchesEachInstanceInTheAZWithTheFewest(t *testing.T) {
	srv, e, a := newFake(t, awsfake.Options{})
	seedAZGroup(srv, awsfake.Group{Min: 0, Max: 5, Desired: 5})
	inServiceSnapshot(t, srv, 5)
	assert.Equal(t, map[string]int{"us-east-1a": 2, "us-east-1b": 2, "us-east-1c": 1}, perAZ(srv), "ties go to the AZ listed first")

	g := describeGroup(t, a, "consul")
	assert.Equal(t, threeAZs, g.AvailabilityZones)
	snap := map[string]string{}
	for _, i := range srv.Group("consul").Instances {
		snap[i.ID] = i.AZ
	}
	for _, i := range g.Instances {
		id := aws.ToString(i.InstanceId)
		assert.Equal(t, snap[id], aws.ToString(i.AvailabilityZone))
		assert.Equal(t, snap[id], aws.ToString(describeInstance(t, e, id).Placement.AvailabilityZone))
	}

	// A group seeded without AZs has one: the region's "a".
	srv.AddLaunchTemplate("other", amiOld)
	srv.AddGroup(awsfake.Group{Name: "other", LaunchTemplate: "other", Min: 1, Max: 1, Desired: 1})
	g = waitInService(t, a, "other", 1)
	assert.Equal(t, []string{"us-east-1a"}, g.AvailabilityZones)
	assert.Equal(t, "us-east-1a", aws.ToString(g.Instances[0].AvailabilityZone))
}

func TestSuspendProcesses_AreShownAndResumeProcessesClearsThem(t *testing.T) {
	srv, _, a := newFake(t, awsfake.Options{})
	seedAZGroup(srv, awsfake.Group{Min: 0, Max: 3, Desired: 0, Suspended: []string{"ScheduledActions"}})
	_, err := a.SuspendProcesses(ctx(t), &autoscaling.SuspendProcessesInput{
		AutoScalingGroupName: aws.String("consul"), ScalingProcesses: []string{"AZRebalance", "AlarmNotification"},
	})
	require.NoError(t, err)
	assert.Equal(t, []string{"AZRebalance", "AlarmNotification", "ScheduledActions"}, srv.Group("consul").Suspended)
	var shown []string
	for _, p := range describeGroup(t, a, "consul").SuspendedProcesses {
		shown = append(shown, aws.ToString(p.ProcessName))
		assert.Regexp(t, `^User suspended at \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$`, aws.ToString(p.SuspensionReason))
	}
	assert.Equal(t, []string{"AZRebalance", "AlarmNotification", "ScheduledActions"}, shown)

	_, err = a.SuspendProcesses(ctx(t), &autoscaling.SuspendProcessesInput{
		AutoScalingGroupName: aws.String("consul"), ScalingProcesses: []string{"Launch", "Reboot"},
	})
	code, msg := apiCode(t, err)
	assert.Equal(t, "ValidationError", code)
	assert.Contains(t, msg, "Reboot")
	assert.Equal(t, []string{"AZRebalance", "AlarmNotification", "ScheduledActions"}, srv.Group("consul").Suspended, "a bad request changes nothing")

	_, err = a.ResumeProcesses(ctx(t), &autoscaling.ResumeProcessesInput{AutoScalingGroupName: aws.String("consul"), ScalingProcesses: []string{"AZRebalance"}})
	require.NoError(t, err)
	assert.Equal(t, []string{"AlarmNotification", "ScheduledActions"}, srv.Group("consul").Suspended)

	_, err = a.SuspendProcesses(ctx(t), &autoscaling.SuspendProcessesInput{AutoScalingGroupName: aws.String("consul")})
	require.NoError(t, err)
	assert.Len(t, srv.Group("consul").Suspended, 10, "no processes named: all of them")
	_, err = a.ResumeProcesses(ctx(t), &autoscaling.ResumeProcessesInput{AutoScalingGroupName: aws.String("consul")})
	require.NoError(t, err)
	assert.Empty(t, srv.Group("consul").Suspended)
	assert.Empty(t, describeGroup(t, a, "consul").SuspendedProcesses)
}

func TestSuspendProcesses_LaunchStopsLaunchesAndTerminateStopsScaleIn(t *testing.T) {
	srv, _, a := newFake(t, awsfake.Options{})
	seedAZGroup(srv, awsfake.Group{Min: 0, Max: 3, Desired: 1, Suspended: []string{"Launch"}})
	time.Sleep(200 * time.Millisecond)
	assert.Empty(t, srv.Group("consul").Instances, "Launch suspended: nothing launches")
	assert.Empty(t, srv.Activities("consul"))
	_, err := a.ResumeProcesses(ctx(t), &autoscaling.ResumeProcessesInput{AutoScalingGroupName: aws.String("consul"), ScalingProcesses: []string{"Launch"}})
	require.NoError(t, err)
	inServiceSnapshot(t, srv, 1)

	_, err = a.SuspendProcesses(ctx(t), &autoscaling.SuspendProcessesInput{AutoScalingGroupName: aws.String("consul"), ScalingProcesses: []string{"Terminate"}})
	require.NoError(t, err)
	setDesired(t, a, 0)
	time.Sleep(200 * time.Millisecond)
	assert.Len(t, srv.Group("consul").Instances, 1, "Terminate suspended: no scale-in")
	assert.Equal(t, 0, srv.Group("consul").Desired)
	_, err = a.ResumeProcesses(ctx(t), &autoscaling.ResumeProcessesInput{AutoScalingGroupName: aws.String("consul"), ScalingProcesses: []string{"Terminate"}})
	require.NoError(t, err)
	inServiceSnapshot(t, srv, 0)
	require.Len(t, byOrigin(srv, "terminate", "SetDesiredCapacity"), 1)
}

// The case: a surge doubles up one AZ, the retire of an old server in
// another leaves 2/0/1, and AZRebalance launches into the empty AZ — beyond
// MaxSize — and then terminates in the doubled one, without waiting for
// anything.
func TestAZRebalance_LaunchesInTheShortAZThenTerminatesInTheLongOneBeyondMaxSize(t *testing.T) {
	srv, _, a := newFake(t, awsfake.Options{RebalanceInterval: 50 * time.Millisecond, BootDelay: 100 * time.Millisecond})
	seedAZGroup(srv, awsfake.Group{Min: 3, Max: 4, Desired: 3})
	before := inServiceSnapshot(t, srv, 3)
	require.Equal(t, map[string]int{"us-east-1a": 1, "us-east-1b": 1, "us-east-1c": 1}, perAZ(srv))

	setDesired(t, a, 4) // the surge: into us-east-1a (ties: the first listed)
	inServiceSnapshot(t, srv, 4)
	require.Equal(t, 2, perAZ(srv)["us-east-1a"])
	var oldA, oldB string
	for _, i := range before {
		switch i.AZ {
		case "us-east-1a":
			oldA = i.ID
		case "us-east-1b":
			oldB = i.ID
		}
	}
	_, err := a.UpdateAutoScalingGroup(ctx(t), &autoscaling.UpdateAutoScalingGroupInput{AutoScalingGroupName: aws.String("consul"), MinSize: aws.Int32(2)})
	require.NoError(t, err)
	terminate(t, a, oldB, true) // the retire: 2/0/1
	_, err = a.UpdateAutoScalingGroup(ctx(t), &autoscaling.UpdateAutoScalingGroupInput{AutoScalingGroupName: aws.String("consul"), MaxSize: aws.Int32(3)})
	require.NoError(t, err)

	maxLive := 0
	require.Eventually(t, func() bool {
		n := 0
		for _, c := range perAZ(srv) {
			n += c
		}
		maxLive = max(maxLive, n)
		return len(byOrigin(srv, "terminate", "AZRebalance")) == 1
	}, 5*time.Second, 5*time.Millisecond)
	assert.Equal(t, 4, maxLive, "launched first, one beyond MaxSize 3")
	launches := byOrigin(srv, "launch", "AZRebalance")
	require.Len(t, launches, 1)
	assert.Contains(t, launches[0].Cause, "rebalance")
	terminated := byOrigin(srv, "terminate", "AZRebalance")[0]
	assert.Equal(t, oldA, terminated.InstanceID, "the long AZ's oldest instance, by the default termination policy")
	assert.Contains(t, terminated.Cause, "Availability Zone rebalancing")
	assert.False(t, terminated.Start.Before(launches[0].End), "terminated once its launch was in service")

	inServiceSnapshot(t, srv, 3)
	assert.Equal(t, map[string]int{"us-east-1a": 1, "us-east-1b": 1, "us-east-1c": 1}, perAZ(srv))
	g := describeGroup(t, a, "consul")
	assert.Equal(t, int32(3), aws.ToInt32(g.DesiredCapacity))
}

// unbalance leaves the three-AZ group at 2/0/1 with desired 3.
func unbalance(t *testing.T, srv *awsfake.Server, a *autoscaling.Client) {
	t.Helper()
	before := inServiceSnapshot(t, srv, 3)
	setDesired(t, a, 4)
	inServiceSnapshot(t, srv, 4)
	for _, i := range before {
		if i.AZ == "us-east-1b" {
			terminate(t, a, i.ID, true)
		}
	}
	require.Eventually(t, func() bool { return len(srv.Group("consul").Instances) == 3 }, 5*time.Second, 5*time.Millisecond)
}

func TestAZRebalance_DoesNothingWhenSuspended(t *testing.T) {
	srv, _, a := newFake(t, awsfake.Options{RebalanceInterval: 20 * time.Millisecond})
	seedAZGroup(srv, awsfake.Group{Min: 0, Max: 4, Desired: 3, Suspended: []string{"AZRebalance"}})
	unbalance(t, srv, a)
	time.Sleep(300 * time.Millisecond)
	assert.Equal(t, map[string]int{"us-east-1a": 2, "us-east-1c": 1}, perAZ(srv), "still 2/0/1")
	assert.Empty(t, byOrigin(srv, "launch", "AZRebalance"))

	_, err := a.ResumeProcesses(ctx(t), &autoscaling.ResumeProcessesInput{AutoScalingGroupName: aws.String("consul"), ScalingProcesses: []string{"AZRebalance"}})
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		return len(byOrigin(srv, "terminate", "AZRebalance")) == 1 && len(srv.Group("consul").Instances) == 3
	}, 5*time.Second, 10*time.Millisecond)
	assert.Equal(t, map[string]int{"us-east-1a": 1, "us-east-1b": 1, "us-east-1c": 1}, perAZ(srv))
}

func TestAZRebalance_NeverTerminatesAProtectedInstanceUnlessToldTo(t *testing.T) {
	for _, ignore := range []bool{false, true} {
		srv, _, a := newFake(t, awsfake.Options{RebalanceInterval: 20 * time.Millisecond, RebalanceIgnoresProtection: ignore})
		seedAZGroup(srv, awsfake.Group{Min: 0, Max: 4, Desired: 3, Suspended: []string{"AZRebalance"}, NewInstancesProtectedFromScaleIn: true})
		unbalance(t, srv, a)
		_, err := a.ResumeProcesses(ctx(t), &autoscaling.ResumeProcessesInput{AutoScalingGroupName: aws.String("consul")})
		require.NoError(t, err)
		if !ignore {
			time.Sleep(300 * time.Millisecond)
			assert.Empty(t, byOrigin(srv, "launch", "AZRebalance"), "the long AZ holds only protected instances")
			assert.Equal(t, map[string]int{"us-east-1a": 2, "us-east-1c": 1}, perAZ(srv))
			continue
		}
		require.Eventually(t, func() bool {
			return len(byOrigin(srv, "terminate", "AZRebalance")) == 1 && len(srv.Group("consul").Instances) == 3
		}, 5*time.Second, 10*time.Millisecond)
		assert.Equal(t, map[string]int{"us-east-1a": 1, "us-east-1b": 1, "us-east-1c": 1}, perAZ(srv))
	}
}

func TestAZRebalance_WithTerminateSuspendedLaunchesAndStaysAboveMax(t *testing.T) {
	srv, _, a := newFake(t, awsfake.Options{RebalanceInterval: 20 * time.Millisecond})
	seedAZGroup(srv, awsfake.Group{Min: 0, Max: 4, Desired: 3, Suspended: []string{"AZRebalance"}})
	unbalance(t, srv, a)
	_, err := a.UpdateAutoScalingGroup(ctx(t), &autoscaling.UpdateAutoScalingGroupInput{AutoScalingGroupName: aws.String("consul"), MaxSize: aws.Int32(3)})
	require.NoError(t, err)
	_, err = a.SuspendProcesses(ctx(t), &autoscaling.SuspendProcessesInput{AutoScalingGroupName: aws.String("consul"), ScalingProcesses: []string{"Terminate"}})
	require.NoError(t, err)
	_, err = a.ResumeProcesses(ctx(t), &autoscaling.ResumeProcessesInput{AutoScalingGroupName: aws.String("consul"), ScalingProcesses: []string{"AZRebalance"}})
	require.NoError(t, err)
	inServiceSnapshot(t, srv, 4)
	time.Sleep(200 * time.Millisecond)
	assert.Len(t, srv.Group("consul").Instances, 4, "above MaxSize 3 while Terminate is suspended")
	assert.Empty(t, byOrigin(srv, "terminate", "AZRebalance"))

	_, err = a.ResumeProcesses(ctx(t), &autoscaling.ResumeProcessesInput{AutoScalingGroupName: aws.String("consul"), ScalingProcesses: []string{"Terminate"}})
	require.NoError(t, err)
	inServiceSnapshot(t, srv, 3)
	assert.Equal(t, map[string]int{"us-east-1a": 1, "us-east-1b": 1, "us-east-1c": 1}, perAZ(srv))
}

// The default termination policy: the AZ with the most instances first, then
// the oldest launch template version, then the instance launched earliest.
func TestScaleIn_DefaultTerminationPolicy(t *testing.T) {
	srv, e, a := newFake(t, awsfake.Options{})
	seedAZGroup(srv, awsfake.Group{Min: 0, Max: 5, Desired: 1, AZs: []string{"us-east-1a", "us-east-1b"}})
	launch := func(n int32) string { // the instance the next launch makes
		t.Helper()
		known := map[string]bool{}
		for _, i := range srv.Group("consul").Instances {
			known[i.ID] = true
		}
		setDesired(t, a, n)
		for _, i := range inServiceSnapshot(t, srv, int(n)) {
			if !known[i.ID] {
				return i.ID
			}
		}
		t.Fatal("no new instance")
		return ""
	}
	a1 := inServiceSnapshot(t, srv, 1)[0].ID
	time.Sleep(5 * time.Millisecond) // distinct launch times
	b1 := launch(2)
	time.Sleep(5 * time.Millisecond)
	a2 := launch(3)
	_, err := e.CreateLaunchTemplateVersion(ctx(t), &ec2.CreateLaunchTemplateVersionInput{
		LaunchTemplateName: aws.String("consul"), SourceVersion: aws.String("1"),
		LaunchTemplateData: &ec2types.RequestLaunchTemplateData{ImageId: aws.String(amiNew)},
	})
	require.NoError(t, err)
	b2 := launch(4) // version 2
	a3 := launch(5) // version 2; a: a1 a2 a3, b: b1 b2

	setDesired(t, a, 4)
	inServiceSnapshot(t, srv, 4)
	scaledIn := byOrigin(srv, "terminate", "SetDesiredCapacity")
	require.Len(t, scaledIn, 1)
	assert.Equal(t, a1, scaledIn[0].InstanceID, "the AZ with most (a), its oldest version, launched earliest — not b1, older but in the short AZ")
	assert.Contains(t, scaledIn[0].Cause, "a user request explicitly set group desired capacity changing the desired capacity from 5 to 4")

	setDesired(t, a, 3) // a: a2 a3, b: b1 b2: balanced; version 1: a2, b1; earliest: b1
	inServiceSnapshot(t, srv, 3)
	scaledIn = byOrigin(srv, "terminate", "SetDesiredCapacity")
	require.Len(t, scaledIn, 2)
	assert.Equal(t, b1, scaledIn[1].InstanceID)

	_, err = a.UpdateAutoScalingGroup(ctx(t), &autoscaling.UpdateAutoScalingGroupInput{AutoScalingGroupName: aws.String("consul"), MaxSize: aws.Int32(2)})
	require.NoError(t, err)
	left := inServiceSnapshot(t, srv, 2)
	viaUpdate := byOrigin(srv, "terminate", "UpdateAutoScalingGroup")
	require.Len(t, viaUpdate, 1)
	assert.Equal(t, a2, viaUpdate[0].InstanceID, "a: a2 a3 against b: b2; the oldest version in a")
	assert.ElementsMatch(t, []string{a3, b2}, []string{left[0].ID, left[1].ID})
}

func TestScaleIn_NeverTerminatesProtectedInstances(t *testing.T) {
	srv, _, a := newFake(t, awsfake.Options{})
	seedAZGroup(srv, awsfake.Group{Min: 0, Max: 3, Desired: 3, NewInstancesProtectedFromScaleIn: true})
	is := inServiceSnapshot(t, srv, 3)
	for _, i := range is {
		assert.True(t, i.ProtectedFromScaleIn)
	}
	for _, i := range describeGroup(t, a, "consul").Instances {
		assert.True(t, aws.ToBool(i.ProtectedFromScaleIn))
	}
	assert.True(t, aws.ToBool(describeGroup(t, a, "consul").NewInstancesProtectedFromScaleIn))

	// All protected: the desired capacity drops, nothing is terminated.
	setDesired(t, a, 1)
	time.Sleep(200 * time.Millisecond)
	assert.Equal(t, 1, srv.Group("consul").Desired)
	assert.Len(t, srv.Group("consul").Instances, 3)
	assert.Empty(t, byOrigin(srv, "terminate", "SetDesiredCapacity"))

	// Unprotecting one lets the scale-in take it, and only it.
	_, err := a.SetInstanceProtection(ctx(t), &autoscaling.SetInstanceProtectionInput{
		AutoScalingGroupName: aws.String("consul"), InstanceIds: []string{is[1].ID}, ProtectedFromScaleIn: aws.Bool(false),
	})
	require.NoError(t, err)
	inServiceSnapshot(t, srv, 2)
	terminated := byOrigin(srv, "terminate", "SetDesiredCapacity")
	require.Len(t, terminated, 1)
	assert.Equal(t, is[1].ID, terminated[0].InstanceID)

	// An instance not in the group: an error, and nothing changes.
	_, err = a.SetInstanceProtection(ctx(t), &autoscaling.SetInstanceProtectionInput{
		AutoScalingGroupName: aws.String("consul"), InstanceIds: []string{is[0].ID, "i-0123456789abcdef0"}, ProtectedFromScaleIn: aws.Bool(false),
	})
	code, _ := apiCode(t, err)
	assert.Equal(t, "ValidationError", code)
	assert.True(t, srv.Group("consul").Instances[0].ProtectedFromScaleIn)

	// Turned off for the group, new instances launch unprotected.
	_, err = a.UpdateAutoScalingGroup(ctx(t), &autoscaling.UpdateAutoScalingGroupInput{
		AutoScalingGroupName: aws.String("consul"), NewInstancesProtectedFromScaleIn: aws.Bool(false), DesiredCapacity: aws.Int32(3),
	})
	require.NoError(t, err)
	is = inServiceSnapshot(t, srv, 3)
	assert.False(t, srv.Group("consul").NewInstancesProtectedFromScaleIn)
	assert.False(t, is[2].ProtectedFromScaleIn)
	assert.True(t, is[0].ProtectedFromScaleIn)
}

func TestProtection_DoesNotStopTerminateInstanceOrHealthReplacement(t *testing.T) {
	srv, _, a := newFake(t, awsfake.Options{})
	seedAZGroup(srv, awsfake.Group{Min: 0, Max: 3, Desired: 2, NewInstancesProtectedFromScaleIn: true})
	is := inServiceSnapshot(t, srv, 2)

	act := terminate(t, a, is[0].ID, false)
	assert.Contains(t, aws.ToString(act.Cause), "in response to a user request")
	_, err := a.SetInstanceHealth(ctx(t), &autoscaling.SetInstanceHealthInput{InstanceId: aws.String(is[1].ID), HealthStatus: aws.String("Unhealthy")})
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		g := srv.Group("consul")
		return len(g.Instances) == 2 && !slices.ContainsFunc(g.Instances, func(i awsfake.Instance) bool {
			return i.ID == is[0].ID || i.ID == is[1].ID || i.LifecycleState != "InService"
		})
	}, 5*time.Second, 10*time.Millisecond, "both replaced")
	require.Len(t, byOrigin(srv, "terminate", "TerminateInstanceInAutoScalingGroup"), 1)
	replaced := byOrigin(srv, "terminate", "ReplaceUnhealthy")
	require.Len(t, replaced, 1)
	assert.Equal(t, is[1].ID, replaced[0].InstanceID)
}

func TestHealth_UnhealthyIsReplacedUnlessSuspendedOrInTheGracePeriod(t *testing.T) {
	srv, _, a := newFake(t, awsfake.Options{})
	seedAZGroup(srv, awsfake.Group{Min: 0, Max: 3, Desired: 1, HealthCheckGracePeriod: 300 * time.Millisecond})
	g := describeGroup(t, a, "consul")
	assert.Equal(t, "EC2", aws.ToString(g.HealthCheckType))
	assert.Equal(t, int32(0), aws.ToInt32(g.HealthCheckGracePeriod), "300ms rounds down to 0 s on the wire")
	first := inServiceSnapshot(t, srv, 1)[0].ID
	setHealth := func(id string, respect bool) {
		_, err := a.SetInstanceHealth(ctx(t), &autoscaling.SetInstanceHealthInput{
			InstanceId: aws.String(id), HealthStatus: aws.String("Unhealthy"), ShouldRespectGracePeriod: aws.Bool(respect),
		})
		require.NoError(t, err)
	}

	// Within the grace period: ignored, by the API and by the health check.
	setHealth(first, true)
	assert.False(t, srv.SetInstanceHealth(first, "Unhealthy"))
	assert.Equal(t, "Healthy", srv.Group("consul").Instances[0].HealthStatus)

	// ReplaceUnhealthy suspended: marked, shown, not replaced.
	_, err := a.SuspendProcesses(ctx(t), &autoscaling.SuspendProcessesInput{AutoScalingGroupName: aws.String("consul"), ScalingProcesses: []string{"ReplaceUnhealthy"}})
	require.NoError(t, err)
	setHealth(first, false)
	time.Sleep(100 * time.Millisecond)
	require.Len(t, srv.Group("consul").Instances, 1)
	assert.Equal(t, "Unhealthy", srv.Group("consul").Instances[0].HealthStatus)
	assert.Equal(t, "Unhealthy", aws.ToString(describeGroup(t, a, "consul").Instances[0].HealthStatus))

	_, err = a.ResumeProcesses(ctx(t), &autoscaling.ResumeProcessesInput{AutoScalingGroupName: aws.String("consul")})
	require.NoError(t, err)
	second := ""
	require.Eventually(t, func() bool {
		is := srv.Group("consul").Instances
		if len(is) == 1 && is[0].ID != first && is[0].LifecycleState == "InService" {
			second = is[0].ID
			return true
		}
		return false
	}, 5*time.Second, 10*time.Millisecond)

	// The health check (the seed) is ignored while HealthCheck is suspended.
	time.Sleep(300 * time.Millisecond) // past the grace period
	_, err = a.SuspendProcesses(ctx(t), &autoscaling.SuspendProcessesInput{AutoScalingGroupName: aws.String("consul"), ScalingProcesses: []string{"HealthCheck"}})
	require.NoError(t, err)
	assert.False(t, srv.SetInstanceHealth(second, "Unhealthy"))
	_, err = a.ResumeProcesses(ctx(t), &autoscaling.ResumeProcessesInput{AutoScalingGroupName: aws.String("consul")})
	require.NoError(t, err)
	assert.True(t, srv.SetInstanceHealth(second, "Unhealthy"))
	require.Eventually(t, func() bool { return len(byOrigin(srv, "terminate", "ReplaceUnhealthy")) == 2 }, 5*time.Second, 10*time.Millisecond)
	inServiceSnapshot(t, srv, 1)

	_, err = a.SetInstanceHealth(ctx(t), &autoscaling.SetInstanceHealthInput{InstanceId: aws.String(second), HealthStatus: aws.String("Sick")})
	code, _ := apiCode(t, err)
	assert.Equal(t, "ValidationError", code)
}

func TestAlarmAndScheduledAction_ChangeCapacityUnlessSuspended(t *testing.T) {
	srv, _, _ := newFake(t, awsfake.Options{})
	seedAZGroup(srv, awsfake.Group{Min: 1, Max: 4, Desired: 3})
	srv.AddScalingPolicy("consul", "scale-in", -2)
	srv.AddScalingPolicy("consul", "scale-out", 5)
	is := inServiceSnapshot(t, srv, 3)

	assert.True(t, srv.Alarm("consul", "scale-out"))
	assert.Equal(t, 4, srv.Group("consul").Desired, "clamped to MaxSize")
	inServiceSnapshot(t, srv, 4)
	assert.True(t, srv.Alarm("consul", "scale-in"))
	inServiceSnapshot(t, srv, 2)
	byAlarm := byOrigin(srv, "terminate", "AlarmNotification")
	require.Len(t, byAlarm, 2)
	assert.Contains(t, byAlarm[0].Cause, "triggered policy scale-in changing the desired capacity from 4 to 2")
	var gone []string
	for _, act := range byAlarm {
		gone = append(gone, act.InstanceID)
	}
	sort.Strings(gone)
	assert.Subset(t, []string{is[0].ID, is[1].ID, is[2].ID}, gone, "the older instances went first")

	assert.True(t, srv.RunScheduledAction("consul", 3))
	inServiceSnapshot(t, srv, 3)
	assert.True(t, srv.RunScheduledAction("consul", 1))
	inServiceSnapshot(t, srv, 1)
	require.Len(t, byOrigin(srv, "terminate", "ScheduledActions"), 2)

	srv.Group("consul") // suspended: nothing changes
	a := autoscaling.NewFromConfig(srv.Config())
	_, err := a.SuspendProcesses(ctx(t), &autoscaling.SuspendProcessesInput{
		AutoScalingGroupName: aws.String("consul"), ScalingProcesses: []string{"AlarmNotification", "ScheduledActions"},
	})
	require.NoError(t, err)
	assert.False(t, srv.Alarm("consul", "scale-out"))
	assert.False(t, srv.RunScheduledAction("consul", 4))
	assert.Equal(t, 1, srv.Group("consul").Desired)
	assert.Panics(t, func() { srv.Alarm("consul", "nope") })
	assert.Panics(t, func() { srv.RunScheduledAction("consul", 9) })
}

func TestUpdateAutoScalingGroup_HealthCheckSettings(t *testing.T) {
	srv, _, a := newFake(t, awsfake.Options{})
	seedGroup(srv, 0, 1, 0)
	_, err := a.UpdateAutoScalingGroup(ctx(t), &autoscaling.UpdateAutoScalingGroupInput{
		AutoScalingGroupName: aws.String("consul"), HealthCheckType: aws.String("ELB"), HealthCheckGracePeriod: aws.Int32(600),
	})
	require.NoError(t, err)
	g := describeGroup(t, a, "consul")
	assert.Equal(t, "ELB", aws.ToString(g.HealthCheckType))
	assert.Equal(t, int32(600), aws.ToInt32(g.HealthCheckGracePeriod))
	assert.Equal(t, 10*time.Minute, srv.Group("consul").HealthCheckGracePeriod)

	_, err = a.UpdateAutoScalingGroup(ctx(t), &autoscaling.UpdateAutoScalingGroupInput{
		AutoScalingGroupName: aws.String("consul"), HealthCheckType: aws.String("PING"), MaxSize: aws.Int32(5),
	})
	code, _ := apiCode(t, err)
	assert.Equal(t, "ValidationError", code)
	assert.Equal(t, 1, srv.Group("consul").Max, "a bad request changes nothing")
	assert.Equal(t, "ELB", srv.Group("consul").HealthCheckType)
}
