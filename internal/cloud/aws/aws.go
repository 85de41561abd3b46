// Package aws is the provider for Consul servers in an EC2 Auto Scaling group built
// from a launch template: images are AMIs chosen by owner, name pattern and tags;
// a launch is a new launch template version on the target AMI made the group's
// version, then the desired capacity set to the absolute N+1; a retire terminates the
// instance in the group, with a decrement while the group is above N.
package aws

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"
	astypes "github.com/aws/aws-sdk-go-v2/service/autoscaling/types"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/hashicorp/go-hclog"

	"github.com/consul-rehydrate/consul-rehydrate/internal/cloud"
	"github.com/consul-rehydrate/consul-rehydrate/internal/poll"
)

// EC2 is the part of the EC2 API the provider uses.
type EC2 interface {
	DescribeImages(context.Context, *ec2.DescribeImagesInput, ...func(*ec2.Options)) (*ec2.DescribeImagesOutput, error)
	DescribeInstances(context.Context, *ec2.DescribeInstancesInput, ...func(*ec2.Options)) (*ec2.DescribeInstancesOutput, error)
	CreateLaunchTemplateVersion(context.Context, *ec2.CreateLaunchTemplateVersionInput, ...func(*ec2.Options)) (*ec2.CreateLaunchTemplateVersionOutput, error)
	DescribeLaunchTemplateVersions(context.Context, *ec2.DescribeLaunchTemplateVersionsInput, ...func(*ec2.Options)) (*ec2.DescribeLaunchTemplateVersionsOutput, error)
}

// AutoScaling is the part of the Auto Scaling API the provider uses.
type AutoScaling interface {
	DescribeAutoScalingGroups(context.Context, *autoscaling.DescribeAutoScalingGroupsInput, ...func(*autoscaling.Options)) (*autoscaling.DescribeAutoScalingGroupsOutput, error)
	UpdateAutoScalingGroup(context.Context, *autoscaling.UpdateAutoScalingGroupInput, ...func(*autoscaling.Options)) (*autoscaling.UpdateAutoScalingGroupOutput, error)
	SetDesiredCapacity(context.Context, *autoscaling.SetDesiredCapacityInput, ...func(*autoscaling.Options)) (*autoscaling.SetDesiredCapacityOutput, error)
	TerminateInstanceInAutoScalingGroup(context.Context, *autoscaling.TerminateInstanceInAutoScalingGroupInput, ...func(*autoscaling.Options)) (*autoscaling.TerminateInstanceInAutoScalingGroupOutput, error)
	SuspendProcesses(context.Context, *autoscaling.SuspendProcessesInput, ...func(*autoscaling.Options)) (*autoscaling.SuspendProcessesOutput, error)
	ResumeProcesses(context.Context, *autoscaling.ResumeProcessesInput, ...func(*autoscaling.Options)) (*autoscaling.ResumeProcessesOutput, error)
	SetInstanceProtection(context.Context, *autoscaling.SetInstanceProtectionInput, ...func(*autoscaling.Options)) (*autoscaling.SetInstanceProtectionOutput, error)
	DescribeScalingActivities(context.Context, *autoscaling.DescribeScalingActivitiesInput, ...func(*autoscaling.Options)) (*autoscaling.DescribeScalingActivitiesOutput, error)
	DescribeInstanceRefreshes(context.Context, *autoscaling.DescribeInstanceRefreshesInput, ...func(*autoscaling.Options)) (*autoscaling.DescribeInstanceRefreshesOutput, error)
}

var (
	_ EC2         = (*ec2.Client)(nil)
	_ AutoScaling = (*autoscaling.Client)(nil)
)

// Config says which group, template and images the provider works with.
type Config struct {
	Group          string
	LaunchTemplate string
	// Servers is N, the group's size outside a roll; a launch sets N+1.
	Servers int
	// Image filter: owners, a name pattern (* and ?) and tags an AMI must all match.
	Owners      []string
	NamePattern string
	Tags        map[string]string
	// LaunchWait bounds how long Launch waits for the group to name the new instance.
	LaunchWait time.Duration
	// LaunchTimeout is the roll's launch_timeout: a group with ELB health checks
	// needs a grace period at least this long (Survey). Zero: not checked.
	LaunchTimeout time.Duration
	Logger        hclog.Logger
	Now           func() time.Time
}

// Provider implements the roll's provider on EC2 and Auto Scaling.
type Provider struct {
	ec2 EC2
	asg AutoScaling
	cfg Config
}

// New returns a provider over the given clients.
func New(e EC2, a AutoScaling, cfg Config) *Provider {
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.LaunchWait <= 0 {
		cfg.LaunchWait = 30 * time.Second
	}
	return &Provider{ec2: e, asg: a, cfg: cfg}
}

// Images returns the available, non-deprecated AMIs the filter allows.
func (p *Provider) Images(ctx context.Context) ([]cloud.Image, error) {
	in := &ec2.DescribeImagesInput{
		Owners:  p.cfg.Owners,
		Filters: []ec2types.Filter{{Name: aws.String("state"), Values: []string{"available"}}},
	}
	if p.cfg.NamePattern != "" {
		in.Filters = append(in.Filters, ec2types.Filter{Name: aws.String("name"), Values: []string{p.cfg.NamePattern}})
	}
	keys := make([]string, 0, len(p.cfg.Tags))
	for k := range p.cfg.Tags {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		in.Filters = append(in.Filters, ec2types.Filter{Name: aws.String("tag:" + k), Values: []string{p.cfg.Tags[k]}})
	}
	out, err := p.ec2.DescribeImages(ctx, in)
	if err != nil {
		return nil, fmt.Errorf("describe images: %w", err)
	}
	now := p.cfg.Now()
	var imgs []cloud.Image
	for _, img := range out.Images {
		if dep := parseTime(aws.ToString(img.DeprecationTime)); !dep.IsZero() && !dep.After(now) {
			continue
		}
		created := parseTime(aws.ToString(img.CreationDate))
		if created.IsZero() {
			p.cfg.Logger.Warn("skipping image without a creation date", "image_id", aws.ToString(img.ImageId))
			continue
		}
		imgs = append(imgs, cloud.Image{ID: aws.ToString(img.ImageId), Name: aws.ToString(img.Name), Created: created})
	}
	return imgs, nil
}

// Instances returns the group's instances that are not terminated, with their AMI,
// private IP and launch time.
func (p *Provider) Instances(ctx context.Context) ([]cloud.Instance, error) {
	g, err := p.group(ctx)
	if err != nil {
		return nil, err
	}
	return p.instancesOf(ctx, g)
}

// instancesOf describes the instances of g that are not terminated.
func (p *Provider) instancesOf(ctx context.Context, g *astypes.AutoScalingGroup) ([]cloud.Instance, error) {
	var ids []string
	lifecycle := map[string]astypes.LifecycleState{}
	zone := map[string]string{}
	for _, i := range g.Instances {
		if i.LifecycleState == astypes.LifecycleStateTerminated {
			continue
		}
		ids = append(ids, aws.ToString(i.InstanceId))
		lifecycle[aws.ToString(i.InstanceId)] = i.LifecycleState
		zone[aws.ToString(i.InstanceId)] = aws.ToString(i.AvailabilityZone)
	}
	if len(ids) == 0 {
		return nil, nil
	}
	// By the instance-id filter, not InstanceIds: an id the group launched a moment
	// ago may be unknown to EC2 yet (eventual consistency), and InstanceIds then
	// fails the whole call with InvalidInstanceID.NotFound; the filter just leaves
	// it out (EC2 API reference, DescribeInstances; EC2 developer guide, "Eventual
	// consistency"). At most 200 values per filter; a group of servers is far below.
	out, err := p.ec2.DescribeInstances(ctx, &ec2.DescribeInstancesInput{
		Filters: []ec2types.Filter{{Name: aws.String("instance-id"), Values: ids}},
	})
	if err != nil {
		return nil, fmt.Errorf("describe instances of group %q: %w", p.cfg.Group, err)
	}
	seen := map[string]bool{}
	var insts []cloud.Instance
	for _, r := range out.Reservations {
		for _, i := range r.Instances {
			id := aws.ToString(i.InstanceId)
			seen[id] = true
			st := cloud.StatePending
			if i.State != nil {
				st = string(i.State.Name)
			}
			if strings.HasPrefix(string(lifecycle[id]), "Terminating") && st != cloud.StateTerminated {
				st = cloud.StateShuttingDown
			}
			if st == cloud.StateTerminated {
				continue
			}
			insts = append(insts, cloud.Instance{
				ID: id, ImageID: aws.ToString(i.ImageId), Address: aws.ToString(i.PrivateIpAddress),
				State: st, Launched: aws.ToTime(i.LaunchTime), AZ: zone[id],
			})
		}
	}
	// The group may name an instance EC2 does not describe yet (eventual
	// consistency): it is on its way up.
	for _, id := range ids {
		if !seen[id] {
			insts = append(insts, cloud.Instance{ID: id, State: cloud.StatePending, Launched: p.cfg.Now(), AZ: zone[id]})
		}
	}
	sort.Slice(insts, func(i, j int) bool { return insts[i].Launched.Before(insts[j].Launched) })
	return insts, nil
}

// Launch surges the group to N+1 on imageID: a new launch template version (its
// description is the action ID, and the action ID is its client token, so a repeat
// creates nothing new), made the group's version, then the absolute desired capacity
// N+1, which is idempotent by nature. The new version is sourced from the version
// the group used when the roll started (g.TemplateVersion, a number), so it keeps
// every other setting the group launched with, whatever $Default says.
func (p *Provider) Launch(ctx context.Context, imageID, actionID string, gs *cloud.GroupState) (cloud.Instance, error) {
	g, err := p.group(ctx)
	if err != nil {
		return cloud.Instance{}, err
	}
	before := map[string]bool{}
	for _, i := range g.Instances {
		before[aws.ToString(i.InstanceId)] = true
	}
	want := int32(p.cfg.Servers + 1)
	if aws.ToInt32(g.DesiredCapacity) < want {
		// Every parameter must be the same on a repeat, or EC2 refuses the reused
		// client token (IdempotentParameterMismatch): so the new version starts from
		// the number recorded when the roll started, not from the group's version,
		// which the roll changes. Not from $Default either: Terraform moves $Default
		// only with update_default_version = true, so a group on $Latest would launch
		// stale settings (../shared/AWS.md).
		source := ""
		if gs != nil {
			source = gs.TemplateVersion
		}
		if source == "" {
			if source, err = p.resolveVersion(ctx, g); err != nil {
				return cloud.Instance{}, err
			}
		}
		v, err := p.ec2.CreateLaunchTemplateVersion(ctx, &ec2.CreateLaunchTemplateVersionInput{
			LaunchTemplateName: aws.String(p.cfg.LaunchTemplate),
			SourceVersion:      aws.String(source),
			VersionDescription: aws.String(actionID),
			ClientToken:        aws.String(clientToken(actionID)),
			LaunchTemplateData: &ec2types.RequestLaunchTemplateData{ImageId: aws.String(imageID)},
		})
		if err != nil {
			return cloud.Instance{}, fmt.Errorf("create launch template version of %q on %s: %w", p.cfg.LaunchTemplate, imageID, err)
		}
		if v.LaunchTemplateVersion == nil || v.LaunchTemplateVersion.VersionNumber == nil {
			return cloud.Instance{}, fmt.Errorf("create launch template version of %q: no version number in the answer", p.cfg.LaunchTemplate)
		}
		version := strconv.FormatInt(*v.LaunchTemplateVersion.VersionNumber, 10)
		_, err = p.asg.UpdateAutoScalingGroup(ctx, &autoscaling.UpdateAutoScalingGroupInput{
			AutoScalingGroupName: aws.String(p.cfg.Group),
			LaunchTemplate:       &astypes.LaunchTemplateSpecification{LaunchTemplateName: aws.String(p.cfg.LaunchTemplate), Version: aws.String(version)},
			MaxSize:              aws.Int32(max(aws.ToInt32(g.MaxSize), want)),
		})
		if err != nil {
			return cloud.Instance{}, fmt.Errorf("use launch template version %s in group %q: %w", version, p.cfg.Group, err)
		}
		_, err = p.asg.SetDesiredCapacity(ctx, &autoscaling.SetDesiredCapacityInput{
			AutoScalingGroupName: aws.String(p.cfg.Group), DesiredCapacity: aws.Int32(want), HonorCooldown: aws.Bool(false),
		})
		if err != nil {
			return cloud.Instance{}, fmt.Errorf("set desired capacity of group %q to %d: %w", p.cfg.Group, want, err)
		}
		p.cfg.Logger.Info("surged group", "group", p.cfg.Group, "desired", want, "launch_template_version", version, "image_id", imageID, "action_id", actionID)
	}
	return p.awaitNew(ctx, before, imageID)
}

// launchPoll is how often Launch looks for the new instance.
const launchPoll = time.Second

// awaitNew waits (bounded by LaunchWait) for the group to name an instance not in
// before, so the roll can record which instance it launched. Past the bound it
// returns a pending instance: the launch itself is done.
func (p *Provider) awaitNew(ctx context.Context, before map[string]bool, imageID string) (cloud.Instance, error) {
	var found cloud.Instance
	err := poll.Until(ctx, launchPoll, p.cfg.LaunchWait, func(ctx context.Context) (bool, error) {
		insts, err := p.Instances(ctx)
		if err != nil {
			return false, err
		}
		for _, i := range insts {
			if !before[i.ID] && i.Live() {
				found = i
				return true, nil
			}
		}
		// A repeated launch finds its instance among those already there.
		for i := len(insts) - 1; i >= 0; i-- {
			if len(insts) > p.cfg.Servers && insts[i].ImageID == imageID && insts[i].Live() {
				found = insts[i]
				return true, nil
			}
		}
		return false, nil
	})
	if errors.Is(err, poll.ErrTimeout) {
		return cloud.Instance{ID: "(pending)", ImageID: imageID, State: cloud.StatePending}, nil
	}
	if err != nil {
		return cloud.Instance{}, err
	}
	return found, nil
}

// Terminate terminates the instance in the group, decrementing the desired capacity
// while it is above N. The instance's shutdown stops Consul, which leaves gracefully
// (leave_on_terminate). An instance already terminating or gone is left alone.
//
// At N or below it terminates without the decrement: a scale-in during the surge (a
// person's SetDesiredCapacity, which the roll does not suspend) lowers the desired
// capacity to N yet terminates nothing, every server being protected; a decrement
// would then go below MinSize = N, a ValidationError on every trigger for ever. Without
// it, "Amazon EC2 Auto Scaling launches instances to replace the ones that are
// terminated" (TerminateInstanceInAutoScalingGroup, docs-2.json) only to bring the
// group back to its desired capacity, N, which the retire itself reaches.
func (p *Provider) Terminate(ctx context.Context, instanceID, actionID string) error {
	g, err := p.group(ctx)
	if err != nil {
		return err
	}
	for _, i := range g.Instances {
		if aws.ToString(i.InstanceId) != instanceID {
			continue
		}
		if strings.HasPrefix(string(i.LifecycleState), "Terminat") {
			return nil
		}
		decrement := int(aws.ToInt32(g.DesiredCapacity)) > p.cfg.Servers
		_, err := p.asg.TerminateInstanceInAutoScalingGroup(ctx, &autoscaling.TerminateInstanceInAutoScalingGroupInput{
			InstanceId: aws.String(instanceID), ShouldDecrementDesiredCapacity: aws.Bool(decrement),
		})
		if err != nil {
			return fmt.Errorf("terminate %s in group %q: %w", instanceID, p.cfg.Group, err)
		}
		p.cfg.Logger.Info("terminated instance", "instance_id", instanceID, "group", p.cfg.Group, "desired", aws.ToInt32(g.DesiredCapacity), "action_id", actionID)
		return nil
	}
	return nil // not (or no longer) in the group
}

func (p *Provider) group(ctx context.Context) (*astypes.AutoScalingGroup, error) {
	out, err := p.asg.DescribeAutoScalingGroups(ctx, &autoscaling.DescribeAutoScalingGroupsInput{AutoScalingGroupNames: []string{p.cfg.Group}})
	if err != nil {
		return nil, fmt.Errorf("describe group %q: %w", p.cfg.Group, err)
	}
	for i := range out.AutoScalingGroups {
		if aws.ToString(out.AutoScalingGroups[i].AutoScalingGroupName) == p.cfg.Group {
			return &out.AutoScalingGroups[i], nil
		}
	}
	return nil, fmt.Errorf("describe group %q: %w", p.cfg.Group, ErrNoGroup)
}

// ErrNoGroup means the configured Auto Scaling group does not exist.
var ErrNoGroup = errors.New("no such auto scaling group")

// clientToken fits an action ID into EC2's client token (at most 64 ASCII characters).
func clientToken(actionID string) string {
	t := strings.Map(func(r rune) rune {
		if r > 0x20 && r < 0x7f {
			return r
		}
		return '-'
	}, actionID)
	if len(t) > 64 {
		t = t[len(t)-64:]
	}
	return t
}

func parseTime(s string) time.Time {
	for _, layout := range []string{"2006-01-02T15:04:05.000Z", time.RFC3339Nano, time.RFC3339} {
		if t, err := time.Parse(layout, s); err == nil {
			return t
		}
	}
	return time.Time{}
}
