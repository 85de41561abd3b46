package aws

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"
	astypes "github.com/aws/aws-sdk-go-v2/service/autoscaling/types"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/consul-rehydrate/consul-rehydrate/internal/cloud"
)

var now = time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)

// fakeEC2 and fakeASG embed the interfaces and override only what a test needs; an
// unexpected call panics on the nil interface.
type fakeEC2 struct {
	EC2
	images    func(*ec2.DescribeImagesInput) (*ec2.DescribeImagesOutput, error)
	instances func(*ec2.DescribeInstancesInput) (*ec2.DescribeInstancesOutput, error)
	versions  []*ec2.CreateLaunchTemplateVersionInput
}

func (f *fakeEC2) DescribeImages(_ context.Context, in *ec2.DescribeImagesInput, _ ...func(*ec2.Options)) (*ec2.DescribeImagesOutput, error) {
	return f.images(in)
}

func (f *fakeEC2) DescribeInstances(_ context.Context, in *ec2.DescribeInstancesInput, _ ...func(*ec2.Options)) (*ec2.DescribeInstancesOutput, error) {
	return f.instances(in)
}

func (f *fakeEC2) CreateLaunchTemplateVersion(_ context.Context, in *ec2.CreateLaunchTemplateVersionInput, _ ...func(*ec2.Options)) (*ec2.CreateLaunchTemplateVersionOutput, error) {
	f.versions = append(f.versions, in)
	return &ec2.CreateLaunchTemplateVersionOutput{LaunchTemplateVersion: &ec2types.LaunchTemplateVersion{VersionNumber: aws.Int64(7)}}, nil
}

type fakeASG struct {
	AutoScaling
	group      astypes.AutoScalingGroup
	updates    []*autoscaling.UpdateAutoScalingGroupInput
	desired    []int32
	terminated []*autoscaling.TerminateInstanceInAutoScalingGroupInput
	// onDesired, if set, runs when the desired capacity is set (the group launching).
	onDesired func(*fakeASG)
	err       error
}

func (f *fakeASG) DescribeAutoScalingGroups(context.Context, *autoscaling.DescribeAutoScalingGroupsInput, ...func(*autoscaling.Options)) (*autoscaling.DescribeAutoScalingGroupsOutput, error) {
	if f.err != nil {
		return nil, f.err
	}
	return &autoscaling.DescribeAutoScalingGroupsOutput{AutoScalingGroups: []astypes.AutoScalingGroup{f.group}}, nil
}

func (f *fakeASG) UpdateAutoScalingGroup(_ context.Context, in *autoscaling.UpdateAutoScalingGroupInput, _ ...func(*autoscaling.Options)) (*autoscaling.UpdateAutoScalingGroupOutput, error) {
	f.updates = append(f.updates, in)
	return &autoscaling.UpdateAutoScalingGroupOutput{}, nil
}

func (f *fakeASG) SetDesiredCapacity(_ context.Context, in *autoscaling.SetDesiredCapacityInput, _ ...func(*autoscaling.Options)) (*autoscaling.SetDesiredCapacityOutput, error) {
	f.desired = append(f.desired, *in.DesiredCapacity)
	f.group.DesiredCapacity = in.DesiredCapacity
	if f.onDesired != nil {
		f.onDesired(f)
	}
	return &autoscaling.SetDesiredCapacityOutput{}, nil
}

func (f *fakeASG) TerminateInstanceInAutoScalingGroup(_ context.Context, in *autoscaling.TerminateInstanceInAutoScalingGroupInput, _ ...func(*autoscaling.Options)) (*autoscaling.TerminateInstanceInAutoScalingGroupOutput, error) {
	f.terminated = append(f.terminated, in)
	return &autoscaling.TerminateInstanceInAutoScalingGroupOutput{}, nil
}

func group(ids ...string) astypes.AutoScalingGroup {
	g := astypes.AutoScalingGroup{
		AutoScalingGroupName: aws.String("consul"), DesiredCapacity: aws.Int32(int32(len(ids))), MaxSize: aws.Int32(int32(len(ids))),
		LaunchTemplate: &astypes.LaunchTemplateSpecification{LaunchTemplateName: aws.String("consul-server"), Version: aws.String("3")},
	}
	for _, id := range ids {
		g.Instances = append(g.Instances, astypes.Instance{InstanceId: aws.String(id), LifecycleState: astypes.LifecycleStateInService})
	}
	return g
}

// describe answers DescribeInstances for the given instance->AMI map.
func describe(amis map[string]string) func(*ec2.DescribeInstancesInput) (*ec2.DescribeInstancesOutput, error) {
	return func(in *ec2.DescribeInstancesInput) (*ec2.DescribeInstancesOutput, error) {
		var r ec2types.Reservation
		if len(in.InstanceIds) > 0 {
			return nil, errors.New("described by InstanceIds, which fails on an id EC2 does not know yet")
		}
		var ids []string
		for _, f := range in.Filters {
			if aws.ToString(f.Name) == "instance-id" {
				ids = append(ids, f.Values...)
			}
		}
		for i, id := range ids {
			ami, ok := amis[id]
			if !ok {
				continue
			}
			r.Instances = append(r.Instances, ec2types.Instance{
				InstanceId: aws.String(id), ImageId: aws.String(ami), PrivateIpAddress: aws.String("192.0.2.1"),
				LaunchTime: aws.Time(now.Add(time.Duration(i) * time.Minute)), State: &ec2types.InstanceState{Name: ec2types.InstanceStateNameRunning},
			})
		}
		return &ec2.DescribeInstancesOutput{Reservations: []ec2types.Reservation{r}}, nil
	}
}

func newProvider(e *fakeEC2, a *fakeASG) *Provider {
	return New(e, a, Config{
		Group: "consul", LaunchTemplate: "consul-server", Servers: 3,
		Owners: []string{"self"}, NamePattern: "consul-server-*", Tags: map[string]string{"role": "consul-server", "env": "prod"},
		LaunchWait: 2 * time.Second, Now: func() time.Time { return now },
	})
}

func TestImages_FiltersByOwnerNameTagsAndSkipsDeprecated(t *testing.T) {
	e := &fakeEC2{images: func(in *ec2.DescribeImagesInput) (*ec2.DescribeImagesOutput, error) {
		assert.Equal(t, []string{"self"}, in.Owners)
		var names []string
		for _, f := range in.Filters {
			names = append(names, *f.Name+"="+f.Values[0])
		}
		assert.Equal(t, []string{"state=available", "name=consul-server-*", "tag:env=prod", "tag:role=consul-server"}, names)
		return &ec2.DescribeImagesOutput{Images: []ec2types.Image{
			{ImageId: aws.String("ami-a"), Name: aws.String("consul-server-1"), CreationDate: aws.String("2026-11-01T10:00:00.000Z")},
			{ImageId: aws.String("ami-old"), CreationDate: aws.String("2026-10-01T10:00:00.000Z"), DeprecationTime: aws.String("2026-11-20T00:00:00.000Z")},
			{ImageId: aws.String("ami-later"), CreationDate: aws.String("2026-11-02T10:00:00.000Z"), DeprecationTime: aws.String("2027-01-01T00:00:00.000Z")},
			{ImageId: aws.String("ami-nodate")},
		}}, nil
	}}
	imgs, err := newProvider(e, &fakeASG{}).Images(context.Background())
	require.NoError(t, err)
	require.Len(t, imgs, 2)
	assert.Equal(t, "ami-a", imgs[0].ID)
	assert.Equal(t, time.Date(2026, 11, 1, 10, 0, 0, 0, time.UTC), imgs[0].Created)
	assert.Equal(t, "ami-later", imgs[1].ID, "deprecated only in the future still counts")
}

func TestInstances_MapsLifecycleAndFillsTheNotYetDescribed(t *testing.T) {
	a := &fakeASG{group: group("i-1", "i-2", "i-3", "i-4")}
	a.group.Instances[1].LifecycleState = astypes.LifecycleStateTerminatingWait
	a.group.Instances[2].LifecycleState = astypes.LifecycleStateTerminated
	e := &fakeEC2{instances: describe(map[string]string{"i-1": "ami-a", "i-2": "ami-a", "i-3": "ami-a"})}
	insts, err := newProvider(e, a).Instances(context.Background())
	require.NoError(t, err)
	byID := map[string]cloud.Instance{}
	for _, i := range insts {
		byID[i.ID] = i
	}
	assert.Len(t, insts, 3, "terminated instances are not listed")
	assert.Equal(t, cloud.StateRunning, byID["i-1"].State)
	assert.Equal(t, "ami-a", byID["i-1"].ImageID)
	assert.Equal(t, "192.0.2.1", byID["i-1"].Address)
	assert.Equal(t, cloud.StateShuttingDown, byID["i-2"].State)
	assert.Equal(t, cloud.StatePending, byID["i-4"].State, "named by the group, not yet by EC2")
}

func TestLaunch_NewTemplateVersionThenAbsoluteDesiredCapacity(t *testing.T) {
	amis := map[string]string{"i-1": "ami-a", "i-2": "ami-a", "i-3": "ami-a"}
	a := &fakeASG{group: group("i-1", "i-2", "i-3")}
	a.onDesired = func(f *fakeASG) {
		f.group.Instances = append(f.group.Instances, astypes.Instance{InstanceId: aws.String("i-new"), LifecycleState: astypes.LifecycleStatePending})
		amis["i-new"] = "ami-b"
	}
	e := &fakeEC2{instances: describe(amis)}
	p := newProvider(e, a)

	// The roll recorded the group's version (a number) when it started.
	gs := &cloud.GroupState{TemplateVersion: "3"}
	inst, err := p.Launch(context.Background(), "ami-b", "launch/ami-b/3-outdated", gs)
	require.NoError(t, err)
	assert.Equal(t, "i-new", inst.ID)
	require.Len(t, e.versions, 1)
	v := e.versions[0]
	assert.Equal(t, "ami-b", *v.LaunchTemplateData.ImageId)
	assert.Equal(t, "3", *v.SourceVersion, "the recorded version: the same on every repeat, whatever the group's version now")
	assert.Equal(t, "launch/ami-b/3-outdated", *v.VersionDescription)
	assert.Equal(t, "launch/ami-b/3-outdated", *v.ClientToken)
	require.Len(t, a.updates, 1)
	assert.Equal(t, "7", *a.updates[0].LaunchTemplate.Version)
	assert.Equal(t, int32(4), *a.updates[0].MaxSize, "max raised to allow the surge")
	assert.Equal(t, []int32{4}, a.desired)

	// Repeated (a handler killed before its receipt): nothing new is created.
	inst, err = p.Launch(context.Background(), "ami-b", "launch/ami-b/3-outdated", gs)
	require.NoError(t, err)
	assert.Equal(t, "i-new", inst.ID)
	assert.Len(t, e.versions, 1)
	assert.Equal(t, []int32{4}, a.desired)
}

func TestLaunch_NoNewInstanceWithinLaunchWaitIsPendingAfterTheBound(t *testing.T) {
	// The group never names the new instance; Now is frozen, so only a wait bounded
	// by the wall clock ends.
	a := &fakeASG{group: group("i-1", "i-2", "i-3")}
	e := &fakeEC2{instances: describe(map[string]string{"i-1": "ami-a", "i-2": "ami-a", "i-3": "ami-a"})}
	p := newProvider(e, a)
	p.cfg.LaunchWait = 100 * time.Millisecond
	start := time.Now()
	inst, err := p.Launch(context.Background(), "ami-b", "launch/ami-b/3-outdated", nil)
	require.NoError(t, err, "the launch happened; only its instance is not named yet")
	assert.Equal(t, cloud.Instance{ID: "(pending)", ImageID: "ami-b", State: cloud.StatePending}, inst)
	assert.GreaterOrEqual(t, time.Since(start), 100*time.Millisecond)
	assert.Less(t, time.Since(start), 5*time.Second)
	assert.Equal(t, []int32{4}, a.desired)
}

func TestLaunch_WaitEndsWithItsContextsCause(t *testing.T) {
	a := &fakeASG{group: group("i-1", "i-2", "i-3")}
	e := &fakeEC2{instances: describe(map[string]string{"i-1": "ami-a", "i-2": "ami-a", "i-3": "ami-a"})}
	p := newProvider(e, a)
	p.cfg.LaunchWait = time.Minute
	lost := errors.New("lock lost")
	ctx, cancel := context.WithCancelCause(context.Background())
	a.onDesired = func(*fakeASG) { cancel(lost) } // the lock is lost as the surge is made
	start := time.Now()
	_, err := p.Launch(ctx, "ami-b", "launch/ami-b/3-outdated", nil)
	require.ErrorIs(t, err, lost)
	assert.Less(t, time.Since(start), 5*time.Second, "the wait ended with the context, not LaunchWait")
}

func TestTerminate_DecrementsAndIsIdempotent(t *testing.T) {
	a := &fakeASG{group: group("i-1", "i-2", "i-3", "i-4")}
	a.group.Instances[1].LifecycleState = astypes.LifecycleStateTerminating
	p := newProvider(&fakeEC2{}, a)
	ctx := context.Background()

	require.NoError(t, p.Terminate(ctx, "i-1", "retire/i-1"))
	require.Len(t, a.terminated, 1)
	assert.Equal(t, "i-1", *a.terminated[0].InstanceId)
	assert.True(t, *a.terminated[0].ShouldDecrementDesiredCapacity)

	require.NoError(t, p.Terminate(ctx, "i-2", "retire/i-2"), "already terminating")
	require.NoError(t, p.Terminate(ctx, "i-gone", "retire/i-gone"), "no longer in the group")
	assert.Len(t, a.terminated, 1)

	// Desired already at N (a scale-in during the surge took the surge back):
	// no decrement, which would go below MinSize = N.
	a.group.DesiredCapacity = aws.Int32(3)
	require.NoError(t, p.Terminate(ctx, "i-3", "retire/i-3"))
	require.Len(t, a.terminated, 2)
	assert.False(t, *a.terminated[1].ShouldDecrementDesiredCapacity)
}

func TestErrors_NameWhatFailed(t *testing.T) {
	boom := errors.New("boom")
	p := newProvider(&fakeEC2{}, &fakeASG{err: boom})
	_, err := p.Instances(context.Background())
	require.ErrorIs(t, err, boom)
	assert.Contains(t, err.Error(), `describe group "consul"`)

	p = newProvider(&fakeEC2{}, &fakeASG{group: astypes.AutoScalingGroup{AutoScalingGroupName: aws.String("other")}})
	_, err = p.Instances(context.Background())
	require.ErrorIs(t, err, ErrNoGroup)
}

func TestClientToken_FitsEC2Limits(t *testing.T) {
	assert.Equal(t, "launch/ami-1/3-outdated", clientToken("launch/ami-1/3-outdated"))
	long := clientToken("launch/" + string(make([]byte, 100)))
	assert.Len(t, long, 64)
}
