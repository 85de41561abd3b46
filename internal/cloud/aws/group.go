package aws

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"
	astypes "github.com/aws/aws-sdk-go-v2/service/autoscaling/types"
	"github.com/aws/aws-sdk-go-v2/service/ec2"

	"github.com/consul-rehydrate/consul-rehydrate/internal/cloud"
)

// RollSuspends are the group's processes that could change its capacity or move
// its servers under a roll, suspended while it runs (../shared/AWS.md):
// AZRebalance launches beyond MaxSize and terminates in the crowded zone, the
// leader perhaps, as soon as a retire leaves the zones unbalanced; AlarmNotification
// and ScheduledActions run scaling policies and scheduled actions that may scale in
// during the surge. Launch, Terminate, HealthCheck and ReplaceUnhealthy stay on: the
// roll needs the first two, and a failed server must still be replaced.
var RollSuspends = []string{"AZRebalance", "AlarmNotification", "ScheduledActions"}

// activeRefresh lists the instance refresh statuses in which a refresh may still
// replace instances or rewrite the group's template version (InstanceRefreshStatus
// in the Auto Scaling API model).
var activeRefresh = []astypes.InstanceRefreshStatus{
	astypes.InstanceRefreshStatusPending, astypes.InstanceRefreshStatusInProgress, astypes.InstanceRefreshStatusCancelling,
	astypes.InstanceRefreshStatusRollbackInProgress, astypes.InstanceRefreshStatusBaking,
}

// Survey reports why the group is not fit for a roll, its failed launches since
// since (when since is not zero), and its zones.
func (p *Provider) Survey(ctx context.Context, since time.Time, rollFor time.Duration) (cloud.Survey, error) {
	g, err := p.group(ctx)
	if err != nil {
		return cloud.Survey{}, err
	}
	insts, err := p.instancesOf(ctx, g)
	if err != nil {
		return cloud.Survey{}, err
	}
	sv := cloud.Survey{Problems: p.problems(g, insts, rollFor), Zones: slices.Sorted(slices.Values(g.AvailabilityZones))}
	refreshes, err := p.asg.DescribeInstanceRefreshes(ctx, &autoscaling.DescribeInstanceRefreshesInput{AutoScalingGroupName: aws.String(p.cfg.Group)})
	if err != nil {
		return cloud.Survey{}, fmt.Errorf("describe instance refreshes of group %q: %w", p.cfg.Group, err)
	}
	for _, r := range refreshes.InstanceRefreshes {
		if slices.Contains(activeRefresh, r.Status) {
			sv.Problems = append(sv.Problems, fmt.Sprintf("instance refresh %s is %s: it replaces instances itself and may rewrite the group's launch template version; wait for it or cancel it",
				aws.ToString(r.InstanceRefreshId), r.Status))
		}
	}
	if since.IsZero() {
		return sv, nil
	}
	acts, err := p.asg.DescribeScalingActivities(ctx, &autoscaling.DescribeScalingActivitiesInput{AutoScalingGroupName: aws.String(p.cfg.Group), MaxRecords: aws.Int32(100)})
	if err != nil {
		return cloud.Survey{}, fmt.Errorf("describe scaling activities of group %q: %w", p.cfg.Group, err)
	}
	// Newest first, as the API returns them; the survey lists them oldest first.
	for _, a := range slices.Backward(acts.Activities) {
		if a.StatusCode != astypes.ScalingActivityStatusCodeFailed || aws.ToTime(a.StartTime).Before(since) ||
			!strings.HasPrefix(aws.ToString(a.Description), "Launching") {
			continue
		}
		msg := aws.ToString(a.StatusMessage)
		sv.LaunchFailures = append(sv.LaunchFailures, cloud.LaunchFailure{Time: aws.ToTime(a.StartTime), Message: msg, Image: imageFault(msg)})
	}
	return sv, nil
}

// imageFault says whether a failed launch's status message blames the image (not
// found, not shared, not available, its encryption key), which no retry fixes;
// capacity and everything else the group may get past.
func imageFault(msg string) bool {
	m := strings.ToLower(msg)
	for _, s := range []string{"invalidamiid", "ami-", "image", "kms", "encrypted"} {
		if strings.Contains(m, s) {
			return true
		}
	}
	return false
}

// problems says what about the group itself keeps a roll from being safe; insts are
// its instances, whose launch times the max instance lifetime counts from.
func (p *Provider) problems(g *astypes.AutoScalingGroup, insts []cloud.Instance, rollFor time.Duration) []string {
	var out []string
	if g.MixedInstancesPolicy != nil {
		out = append(out, "the group has a MixedInstancesPolicy: its launch template sits inside the policy, and the roll points the group's own LaunchTemplate at each new version")
	} else if lt := g.LaunchTemplate; lt == nil || aws.ToString(lt.LaunchTemplateName) != p.cfg.LaunchTemplate {
		out = append(out, fmt.Sprintf("the group does not launch from launch template %q (provider \"aws\" launch_template)", p.cfg.LaunchTemplate))
	}
	if g.WarmPoolConfiguration != nil {
		out = append(out, "the group has a warm pool: its instances were made from the old template version and are not refreshed by a new one")
	}
	// AWS accepts no lifetime under a day ("the value must be either 0 or a number
	// equal to or greater than 86,400 seconds (1 day)",
	// UpdateAutoScalingGroupType$MaxInstanceLifetime, docs-2.json of the Auto
	// Scaling API model in github.com/aws/aws-sdk-go@v1.55.7), longer than any
	// roll: so the lifetime itself is no problem, an instance that reaches it
	// before a roll could end is. The group then replaces it on its own (user
	// guide, "Replace Auto Scaling instances based on maximum instance lifetime"),
	// terminating first ("Instance maintenance policy for Auto Scaling group",
	// default behaviors), with no leadership transfer.
	if l := time.Duration(aws.ToInt32(g.MaxInstanceLifetime)) * time.Second; l > 0 {
		end := p.cfg.Now().Add(rollFor)
		for _, i := range insts {
			if !i.Live() {
				continue
			}
			if due := i.Launched.Add(l); due.Before(end) {
				out = append(out, fmt.Sprintf("the group's max instance lifetime (%s) replaces %s at %s, before a roll started now could end (%s): the group would replace a server on its own under the roll; wait until it has",
					l, i.ID, due.UTC().Format(time.RFC3339), rollFor))
				break
			}
		}
	}
	if n := int(aws.ToInt32(g.MinSize)); n != p.cfg.Servers {
		out = append(out, fmt.Sprintf("the group's MinSize is %d, not servers = %d: only MinSize stops a retried terminate from shrinking the group twice", n, p.cfg.Servers))
	}
	// The grace period is "the amount of time, in seconds, that Amazon EC2 Auto
	// Scaling waits before checking the health status of an EC2 instance that has
	// come into service and marking it unhealthy due to a failed health check"
	// (UpdateAutoScalingGroupType$HealthCheckGracePeriod, docs-2.json): with ELB
	// checks a server still catching up could be marked unhealthy and replaced
	// (ReplaceUnhealthy, which the roll leaves on). EC2 status checks pass for a
	// running machine whatever Consul does, so they need no grace.
	if g.HealthCheckType != nil && aws.ToString(g.HealthCheckType) != "EC2" && p.cfg.LaunchTimeout > 0 {
		if grace := time.Duration(aws.ToInt32(g.HealthCheckGracePeriod)) * time.Second; grace < p.cfg.LaunchTimeout {
			out = append(out, fmt.Sprintf("the group's health check type is %s with a grace period of %s, shorter than launch_timeout (%s): a new server still catching up could be marked unhealthy and replaced",
				aws.ToString(g.HealthCheckType), grace, p.cfg.LaunchTimeout))
		}
	}
	// One zone per server, up to three: with fewer zones two servers share one,
	// and losing that zone loses quorum sooner than it need.
	if want := min(p.cfg.Servers, 3); len(g.AvailabilityZones) < want {
		out = append(out, fmt.Sprintf("the group spans %d availability zone(s), fewer than %d: %d servers need one zone each, up to three, so that losing a zone cannot lose quorum",
			len(g.AvailabilityZones), want, p.cfg.Servers))
	}
	return out
}

// Prepare reads what the roll will change and must restore: the processes it
// suspends (those not suspended already: an operator's stay theirs), MaxSize, and
// the group's launch template version as a number.
func (p *Provider) Prepare(ctx context.Context) (*cloud.GroupState, error) {
	g, err := p.group(ctx)
	if err != nil {
		return nil, err
	}
	v, err := p.resolveVersion(ctx, g)
	if err != nil {
		return nil, err
	}
	st := &cloud.GroupState{MaxSize: int(aws.ToInt32(g.MaxSize)), TemplateVersion: v, GroupVersion: groupVersion(g)}
	for _, name := range RollSuspends {
		if !slices.ContainsFunc(g.SuspendedProcesses, func(s astypes.SuspendedProcess) bool { return aws.ToString(s.ProcessName) == name }) {
			st.Suspended = append(st.Suspended, name)
		}
	}
	return st, nil
}

// Begin suspends the processes st names and protects every server from scale-in,
// the group's new instances included. Both calls are idempotent.
func (p *Provider) Begin(ctx context.Context, st *cloud.GroupState) error {
	if len(st.Suspended) > 0 {
		if _, err := p.asg.SuspendProcesses(ctx, &autoscaling.SuspendProcessesInput{
			AutoScalingGroupName: aws.String(p.cfg.Group), ScalingProcesses: st.Suspended,
		}); err != nil {
			return fmt.Errorf("suspend %s in group %q: %w", strings.Join(st.Suspended, ", "), p.cfg.Group, err)
		}
	}
	g, err := p.group(ctx)
	if err != nil {
		return err
	}
	if !aws.ToBool(g.NewInstancesProtectedFromScaleIn) {
		if _, err := p.asg.UpdateAutoScalingGroup(ctx, &autoscaling.UpdateAutoScalingGroupInput{
			AutoScalingGroupName: aws.String(p.cfg.Group), NewInstancesProtectedFromScaleIn: aws.Bool(true),
		}); err != nil {
			return fmt.Errorf("protect new instances of group %q from scale-in: %w", p.cfg.Group, err)
		}
	}
	var bare []string
	for _, i := range g.Instances {
		if !aws.ToBool(i.ProtectedFromScaleIn) && (i.LifecycleState == astypes.LifecycleStateInService || i.LifecycleState == astypes.LifecycleStatePending) {
			bare = append(bare, aws.ToString(i.InstanceId))
		}
	}
	// At most 50 instance IDs per call (SetInstanceProtection in the API model).
	for chunk := range slices.Chunk(bare, 50) {
		if _, err := p.asg.SetInstanceProtection(ctx, &autoscaling.SetInstanceProtectionInput{
			AutoScalingGroupName: aws.String(p.cfg.Group), InstanceIds: chunk, ProtectedFromScaleIn: aws.Bool(true),
		}); err != nil {
			return fmt.Errorf("protect %s from scale-in: %w", strings.Join(chunk, ", "), err)
		}
	}
	p.cfg.Logger.Info("prepared the group for the roll", "group", p.cfg.Group, "suspended", st.Suspended, "protected", bare)
	return nil
}

// End resumes the processes Begin suspended and restores MaxSize; for a failed
// roll it also points the group back at the version it had and undoes a surge the
// group never delivered, so no replacement launches the failed image.
func (p *Provider) End(ctx context.Context, st *cloud.GroupState, failed bool) error {
	if len(st.Suspended) > 0 {
		if _, err := p.asg.ResumeProcesses(ctx, &autoscaling.ResumeProcessesInput{
			AutoScalingGroupName: aws.String(p.cfg.Group), ScalingProcesses: st.Suspended,
		}); err != nil {
			return fmt.Errorf("resume %s in group %q: %w", strings.Join(st.Suspended, ", "), p.cfg.Group, err)
		}
	}
	g, err := p.group(ctx)
	if err != nil {
		return err
	}
	in := &autoscaling.UpdateAutoScalingGroupInput{AutoScalingGroupName: aws.String(p.cfg.Group)}
	change := false
	desired := int(aws.ToInt32(g.DesiredCapacity))
	if failed {
		if desired > p.cfg.Servers {
			desired = p.cfg.Servers
			in.DesiredCapacity, change = aws.Int32(int32(desired)), true
		}
		// Back on the version as the group named it: a group on $Latest follows
		// $Latest again, not the number it resolved to when the roll started.
		back := st.GroupVersion
		if back == "" {
			back = st.TemplateVersion
		}
		if back != "" && (g.LaunchTemplate == nil || groupVersion(g) != back) {
			in.LaunchTemplate = &astypes.LaunchTemplateSpecification{LaunchTemplateName: aws.String(p.cfg.LaunchTemplate), Version: aws.String(back)}
			change = true
		}
	}
	if st.MaxSize > 0 && int(aws.ToInt32(g.MaxSize)) != st.MaxSize && desired <= st.MaxSize {
		in.MaxSize, change = aws.Int32(int32(st.MaxSize)), true
	}
	if change {
		if _, err := p.asg.UpdateAutoScalingGroup(ctx, in); err != nil {
			return fmt.Errorf("restore group %q after the roll: %w", p.cfg.Group, err)
		}
	}
	return nil
}

// groupVersion is the group's launch template version as the group names it: a
// number, "$Latest" or "$Default" ("" without a launch template of its own).
func groupVersion(g *astypes.AutoScalingGroup) string {
	if g.LaunchTemplate == nil {
		return ""
	}
	if v := aws.ToString(g.LaunchTemplate.Version); v != "" {
		return v
	}
	return "$Default" // "The default value is $Default" (LaunchTemplateSpecification$Version, docs-2.json)
}

// resolveVersion returns the group's launch template version as a number:
// "$Latest" and "$Default" are looked up.
func (p *Provider) resolveVersion(ctx context.Context, g *astypes.AutoScalingGroup) (string, error) {
	if g.LaunchTemplate == nil {
		return "", fmt.Errorf("group %q has no launch template of its own (a MixedInstancesPolicy?)", p.cfg.Group)
	}
	v := groupVersion(g)
	if _, err := strconv.ParseInt(v, 10, 64); err == nil {
		return v, nil
	}
	out, err := p.ec2.DescribeLaunchTemplateVersions(ctx, &ec2.DescribeLaunchTemplateVersionsInput{
		LaunchTemplateName: aws.String(p.cfg.LaunchTemplate), Versions: []string{v},
	})
	if err != nil {
		return "", fmt.Errorf("resolve version %s of launch template %q: %w", v, p.cfg.LaunchTemplate, err)
	}
	if len(out.LaunchTemplateVersions) != 1 || out.LaunchTemplateVersions[0].VersionNumber == nil {
		return "", fmt.Errorf("resolve version %s of launch template %q: %d versions in the answer", v, p.cfg.LaunchTemplate, len(out.LaunchTemplateVersions))
	}
	return strconv.FormatInt(*out.LaunchTemplateVersions[0].VersionNumber, 10), nil
}
