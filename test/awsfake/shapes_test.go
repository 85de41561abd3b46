package awsfake_test

import (
	"encoding/base64"
	"net/http"
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

func TestDescribeInstances_DescribeLagFailsByIDAndHidesFromFilters(t *testing.T) {
	srv, e, _ := newFake(t, awsfake.Options{DescribeLag: 500 * time.Millisecond})
	seedGroup(srv, 0, 1, 1)
	var id string
	require.Eventually(t, func() bool {
		is := srv.Group("consul").Instances
		if len(is) == 1 {
			id = is[0].ID
			return true
		}
		return false
	}, 5*time.Second, time.Millisecond)

	_, err := e.DescribeInstances(ctx(t), &ec2.DescribeInstancesInput{InstanceIds: []string{id}})
	code, msg := apiCode(t, err)
	assert.Equal(t, "InvalidInstanceID.NotFound", code, "the group knows it, EC2 does not yet")
	assert.Equal(t, "The instance ID '"+id+"' does not exist", msg)
	assert.Equal(t, []int{http.StatusBadRequest}, statuses(srv, "DescribeInstances"), "not retried by the SDK")

	out, err := e.DescribeInstances(ctx(t), &ec2.DescribeInstancesInput{Filters: []ec2types.Filter{filter("instance-id", id)}})
	require.NoError(t, err)
	assert.Empty(t, out.Reservations, "the filter just does not match it")
	assert.Equal(t, 2, srv.Lagged(), "both calls met the lag")
	_, err = e.DescribeInstances(ctx(t), &ec2.DescribeInstancesInput{Filters: []ec2types.Filter{filter("instance-id", "i-0123456789abcdef0")}})
	require.NoError(t, err)
	assert.Equal(t, 2, srv.Lagged(), "a call that did not ask for it did not")

	require.Eventually(t, func() bool {
		out, err := e.DescribeInstances(ctx(t), &ec2.DescribeInstancesInput{InstanceIds: []string{id}})
		return err == nil && len(out.Reservations) == 1
	}, 5*time.Second, 20*time.Millisecond)
}

func TestCreateLaunchTemplateVersion_CopiesEveryFieldOfItsSourceAndReplacesWholeMembers(t *testing.T) {
	srv, e, _ := newFake(t, awsfake.Options{})
	srv.AddImage(awsfake.Image{ID: amiOld})
	srv.AddImage(awsfake.Image{ID: amiNew})
	srv.AddLaunchTemplate("consul", amiOld)
	ud := base64.StdEncoding.EncodeToString([]byte("#!/bin/sh\necho v2\n"))
	v2 := srv.AddLaunchTemplateVersion("consul", awsfake.LaunchTemplateData{
		ImageID: amiOld, InstanceType: "m5.large", UserData: ud, IamInstanceProfileName: "consul-server",
		SecurityGroupIDs: []string{"sg-0000000000000001a", "sg-0000000000000002b"},
	}, false)
	require.Equal(t, int64(2), v2)

	out, err := e.CreateLaunchTemplateVersion(ctx(t), &ec2.CreateLaunchTemplateVersionInput{
		LaunchTemplateName: aws.String("consul"), SourceVersion: aws.String("$Latest"),
		LaunchTemplateData: &ec2types.RequestLaunchTemplateData{
			ImageId:          aws.String(amiNew),
			SecurityGroupIds: []string{"sg-0000000000000009z"},
			TagSpecifications: []ec2types.LaunchTemplateTagSpecificationRequest{{
				ResourceType: ec2types.ResourceTypeInstance, Tags: []ec2types.Tag{{Key: aws.String("role"), Value: aws.String("consul-server")}},
			}},
		},
	})
	require.NoError(t, err)
	d := out.LaunchTemplateVersion.LaunchTemplateData
	assert.Equal(t, amiNew, aws.ToString(d.ImageId), "overridden")
	assert.Equal(t, []string{"sg-0000000000000009z"}, d.SecurityGroupIds, "the whole member replaced")
	assert.Equal(t, ec2types.InstanceType("m5.large"), d.InstanceType, "copied")
	assert.Equal(t, ud, aws.ToString(d.UserData), "copied")
	require.NotNil(t, d.IamInstanceProfile)
	assert.Equal(t, "consul-server", aws.ToString(d.IamInstanceProfile.Name), "copied")

	// A version made from that one copies what the API added too.
	_, err = e.CreateLaunchTemplateVersion(ctx(t), &ec2.CreateLaunchTemplateVersionInput{
		LaunchTemplateName: aws.String("consul"), SourceVersion: aws.String("3"),
		LaunchTemplateData: &ec2types.RequestLaunchTemplateData{ImageId: aws.String(amiOld)},
	})
	require.NoError(t, err)
	vs, err := e.DescribeLaunchTemplateVersions(ctx(t), &ec2.DescribeLaunchTemplateVersionsInput{
		LaunchTemplateName: aws.String("consul"), Versions: []string{"4"},
	})
	require.NoError(t, err)
	require.Len(t, vs.LaunchTemplateVersions, 1)
	d = vs.LaunchTemplateVersions[0].LaunchTemplateData
	assert.Equal(t, amiOld, aws.ToString(d.ImageId))
	assert.Equal(t, ud, aws.ToString(d.UserData))
	assert.Equal(t, []string{"sg-0000000000000009z"}, d.SecurityGroupIds)
	require.Len(t, d.TagSpecifications, 1)
	assert.Equal(t, ec2types.ResourceTypeInstance, d.TagSpecifications[0].ResourceType)
	assert.Equal(t, []ec2types.Tag{{Key: aws.String("role"), Value: aws.String("consul-server")}}, d.TagSpecifications[0].Tags)

	_, err = e.CreateLaunchTemplateVersion(ctx(t), &ec2.CreateLaunchTemplateVersionInput{
		LaunchTemplateName: aws.String("consul"), LaunchTemplateData: &ec2types.RequestLaunchTemplateData{UserData: aws.String("not base64!")},
	})
	code, _ := apiCode(t, err)
	assert.Equal(t, "InvalidUserData.Malformed", code)
}

func TestCreateLaunchTemplateVersion_AClientTokenComparesTheWholeRequest(t *testing.T) {
	srv, e, _ := newFake(t, awsfake.Options{})
	srv.AddImage(awsfake.Image{ID: amiNew})
	srv.AddLaunchTemplate("consul", amiNew)
	create := func(desc string) error {
		_, err := e.CreateLaunchTemplateVersion(ctx(t), &ec2.CreateLaunchTemplateVersionInput{
			LaunchTemplateName: aws.String("consul"), SourceVersion: aws.String("1"), ClientToken: aws.String("roll-7"),
			VersionDescription: aws.String(desc), LaunchTemplateData: &ec2types.RequestLaunchTemplateData{ImageId: aws.String(amiNew)},
		})
		return err
	}
	require.NoError(t, create("a"))
	require.NoError(t, create("a"))
	code, _ := apiCode(t, create("b"))
	assert.Equal(t, "IdempotentParameterMismatch", code, "only the description differs")
}

// A Terraform-managed group on $Latest whose $Default is stale launches from
// $Latest, user data included.
func TestGroup_OnLatestLaunchesTheLatestSettingsWhileDefaultIsStale(t *testing.T) {
	srv, e, a := newFake(t, awsfake.Options{})
	srv.AddImage(awsfake.Image{ID: amiOld})
	srv.AddImage(awsfake.Image{ID: amiNew})
	srv.AddLaunchTemplate("consul", amiOld)
	ud := base64.StdEncoding.EncodeToString([]byte("#!/bin/sh\necho latest\n"))
	srv.AddLaunchTemplateVersion("consul", awsfake.LaunchTemplateData{ImageID: amiNew, InstanceType: "t3.small", UserData: ud}, false)
	srv.AddGroup(awsfake.Group{Name: "consul", LaunchTemplate: "consul", Version: "$Latest", Min: 0, Max: 2, Desired: 1})

	def, err := e.DescribeLaunchTemplateVersions(ctx(t), &ec2.DescribeLaunchTemplateVersionsInput{LaunchTemplateName: aws.String("consul"), Versions: []string{"$Default"}})
	require.NoError(t, err)
	assert.Equal(t, int64(1), aws.ToInt64(def.LaunchTemplateVersions[0].VersionNumber))
	assert.Empty(t, aws.ToString(def.LaunchTemplateVersions[0].LaunchTemplateData.UserData))

	i := inServiceSnapshot(t, srv, 1)[0]
	assert.Equal(t, "2", i.LaunchTemplateVersion)
	assert.Equal(t, ud, i.UserData)
	assert.Equal(t, amiNew, i.ImageID)
	g := describeGroup(t, a, "consul")
	assert.Equal(t, "2", aws.ToString(g.Instances[0].LaunchTemplate.Version))
	assert.Equal(t, "t3.small", aws.ToString(g.Instances[0].InstanceType))

	// Made the default by the seed, $Default follows.
	srv.AddLaunchTemplateVersion("consul", awsfake.LaunchTemplateData{ImageID: amiOld}, true)
	def, err = e.DescribeLaunchTemplateVersions(ctx(t), &ec2.DescribeLaunchTemplateVersionsInput{LaunchTemplateName: aws.String("consul"), Versions: []string{"$Default"}})
	require.NoError(t, err)
	assert.Equal(t, int64(3), aws.ToInt64(def.LaunchTemplateVersions[0].VersionNumber))
}

func TestActivityInProgress_IsA400TheSDKDoesNotRetry(t *testing.T) {
	srv, _, a := newFake(t, awsfake.Options{})
	seedGroup(srv, 0, 2, 0)
	srv.ActivityInProgress("SetDesiredCapacity", 1)
	_, err := a.SetDesiredCapacity(ctx(t), &autoscaling.SetDesiredCapacityInput{AutoScalingGroupName: aws.String("consul"), DesiredCapacity: aws.Int32(1)})
	code, msg := apiCode(t, err)
	assert.Equal(t, "ScalingActivityInProgress", code)
	assert.Equal(t, "The operation can't be performed because there are scaling activities in progress.", msg)
	var sae *astypes.ScalingActivityInProgressFault
	require.ErrorAs(t, err, &sae, "the SDK decodes it as its modelled fault")
	assert.Equal(t, []int{http.StatusBadRequest}, statuses(srv, "SetDesiredCapacity"))
	assert.Equal(t, 0, srv.Group("consul").Desired, "nothing changed")
	setDesired(t, a, 1)
}

func TestDescribeAutoScalingGroups_ShowsMixedInstancesWarmPoolAndMaxInstanceLifetime(t *testing.T) {
	srv, _, a := newFake(t, awsfake.Options{})
	srv.AddImage(awsfake.Image{ID: amiOld})
	srv.AddLaunchTemplate("consul", amiOld)
	srv.AddGroup(awsfake.Group{
		Name: "consul", LaunchTemplate: "consul", Version: "1", Min: 1, Max: 1, Desired: 1,
		MixedInstances: true, WarmPool: true, MaxInstanceLifetime: 24 * time.Hour,
	})
	srv.AddGroup(awsfake.Group{Name: "plain", LaunchTemplate: "consul", Version: "1", Min: 0, Max: 1, Desired: 0})

	g := waitInService(t, a, "consul", 1)
	assert.Nil(t, g.LaunchTemplate, "no top-level template")
	require.NotNil(t, g.MixedInstancesPolicy)
	spec := g.MixedInstancesPolicy.LaunchTemplate.LaunchTemplateSpecification
	assert.Equal(t, "consul", aws.ToString(spec.LaunchTemplateName))
	assert.Equal(t, "1", aws.ToString(spec.Version))
	require.NotNil(t, g.WarmPoolConfiguration)
	assert.Equal(t, astypes.WarmPoolStateStopped, g.WarmPoolConfiguration.PoolState)
	assert.Equal(t, int32(86400), aws.ToInt32(g.MaxInstanceLifetime))

	plain := describeGroup(t, a, "plain")
	assert.NotNil(t, plain.LaunchTemplate)
	assert.Nil(t, plain.MixedInstancesPolicy)
	assert.Nil(t, plain.WarmPoolConfiguration)
	assert.Nil(t, plain.MaxInstanceLifetime)

	wp, err := a.DescribeWarmPool(ctx(t), &autoscaling.DescribeWarmPoolInput{AutoScalingGroupName: aws.String("consul")})
	require.NoError(t, err)
	require.NotNil(t, wp.WarmPoolConfiguration)
	wp, err = a.DescribeWarmPool(ctx(t), &autoscaling.DescribeWarmPoolInput{AutoScalingGroupName: aws.String("plain")})
	require.NoError(t, err)
	assert.Nil(t, wp.WarmPoolConfiguration)

	_, err = a.UpdateAutoScalingGroup(ctx(t), &autoscaling.UpdateAutoScalingGroupInput{AutoScalingGroupName: aws.String("consul"), MaxInstanceLifetime: aws.Int32(3600)})
	code, _ := apiCode(t, err)
	assert.Equal(t, "ValidationError", code, "between 0 and a day")
	_, err = a.UpdateAutoScalingGroup(ctx(t), &autoscaling.UpdateAutoScalingGroupInput{AutoScalingGroupName: aws.String("consul"), MaxInstanceLifetime: aws.Int32(0)})
	require.NoError(t, err)
	assert.Nil(t, describeGroup(t, a, "consul").MaxInstanceLifetime, "0 clears it")

	// Nor can a group be seeded with a lifetime AWS refuses.
	assert.Panics(t, func() {
		srv.AddGroup(awsfake.Group{Name: "short", LaunchTemplate: "consul", Version: "1", MaxInstanceLifetime: 30 * time.Minute})
	})
}

func TestSetLaunchTime_IsWhatDescribeInstancesReports(t *testing.T) {
	srv, e, a := newFake(t, awsfake.Options{})
	seedGroup(srv, 1, 1, 1)
	g := waitInService(t, a, "consul", 1)
	id := aws.ToString(g.Instances[0].InstanceId)
	long := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	require.True(t, srv.SetLaunchTime(id, long))
	assert.Equal(t, long, aws.ToTime(describeInstance(t, e, id).LaunchTime))
	assert.False(t, srv.SetLaunchTime("i-0123456789abcdef0", long), "no such instance")
}

func TestInstanceRefreshes_StartDescribeCancel(t *testing.T) {
	srv, _, a := newFake(t, awsfake.Options{})
	seedGroup(srv, 0, 1, 0)
	old := srv.AddInstanceRefresh("consul", "Successful")

	started, err := a.StartInstanceRefresh(ctx(t), &autoscaling.StartInstanceRefreshInput{AutoScalingGroupName: aws.String("consul")})
	require.NoError(t, err)
	id := aws.ToString(started.InstanceRefreshId)
	require.NotEmpty(t, id)
	describe := func() []astypes.InstanceRefresh {
		out, err := a.DescribeInstanceRefreshes(ctx(t), &autoscaling.DescribeInstanceRefreshesInput{AutoScalingGroupName: aws.String("consul")})
		require.NoError(t, err)
		return out.InstanceRefreshes
	}
	rs := describe()
	require.Len(t, rs, 2)
	assert.Equal(t, id, aws.ToString(rs[0].InstanceRefreshId), "newest first")
	assert.Contains(t, []astypes.InstanceRefreshStatus{astypes.InstanceRefreshStatusPending, astypes.InstanceRefreshStatusInProgress}, rs[0].Status)
	assert.Equal(t, old, aws.ToString(rs[1].InstanceRefreshId))
	assert.Equal(t, astypes.InstanceRefreshStatusSuccessful, rs[1].Status)
	require.Eventually(t, func() bool { return describe()[0].Status == astypes.InstanceRefreshStatusInProgress }, 5*time.Second, 10*time.Millisecond)

	_, err = a.StartInstanceRefresh(ctx(t), &autoscaling.StartInstanceRefreshInput{AutoScalingGroupName: aws.String("consul")})
	code, _ := apiCode(t, err)
	assert.Equal(t, "InstanceRefreshInProgress", code)

	cancelled, err := a.CancelInstanceRefresh(ctx(t), &autoscaling.CancelInstanceRefreshInput{AutoScalingGroupName: aws.String("consul")})
	require.NoError(t, err)
	assert.Equal(t, id, aws.ToString(cancelled.InstanceRefreshId))
	require.Eventually(t, func() bool { return describe()[0].Status == astypes.InstanceRefreshStatusCancelled }, 5*time.Second, 10*time.Millisecond)
	_, err = a.CancelInstanceRefresh(ctx(t), &autoscaling.CancelInstanceRefreshInput{AutoScalingGroupName: aws.String("consul")})
	code, _ = apiCode(t, err)
	assert.Equal(t, "ActiveInstanceRefreshNotFound", code)

	// A seeded refresh in progress is what a provider must refuse to roll beside.
	srv.AddInstanceRefresh("consul", "InProgress")
	assert.Equal(t, astypes.InstanceRefreshStatusInProgress, describe()[0].Status)
	assert.Panics(t, func() { srv.AddInstanceRefresh("consul", "Running") })
}
