package aws

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"
)

// Lifecycle is the part of the Auto Scaling API the termination gate uses.
type Lifecycle interface {
	DescribeLifecycleHooks(context.Context, *autoscaling.DescribeLifecycleHooksInput, ...func(*autoscaling.Options)) (*autoscaling.DescribeLifecycleHooksOutput, error)
	RecordLifecycleActionHeartbeat(context.Context, *autoscaling.RecordLifecycleActionHeartbeatInput, ...func(*autoscaling.Options)) (*autoscaling.RecordLifecycleActionHeartbeatOutput, error)
	CompleteLifecycleAction(context.Context, *autoscaling.CompleteLifecycleActionInput, ...func(*autoscaling.Options)) (*autoscaling.CompleteLifecycleActionOutput, error)
}

var _ Lifecycle = (*autoscaling.Client)(nil)

// LifecycleAction is an instance's lifecycle action on the group's termination
// hook, named by the instance ID (no token needed: CompleteLifecycleAction and
// RecordLifecycleActionHeartbeat take InstanceId or LifecycleActionToken, API model).
type LifecycleAction struct {
	Client     Lifecycle
	Group      string
	Hook       string
	InstanceID string
}

// HeartbeatTimeout reads the hook's heartbeat timeout, so the gate heartbeats well
// inside it.
func (a *LifecycleAction) HeartbeatTimeout(ctx context.Context) (time.Duration, error) {
	out, err := a.Client.DescribeLifecycleHooks(ctx, &autoscaling.DescribeLifecycleHooksInput{
		AutoScalingGroupName: aws.String(a.Group), LifecycleHookNames: []string{a.Hook},
	})
	if err != nil {
		return 0, fmt.Errorf("describe lifecycle hook %q of group %q: %w", a.Hook, a.Group, err)
	}
	for _, h := range out.LifecycleHooks {
		if aws.ToString(h.LifecycleHookName) == a.Hook {
			if aws.ToString(h.LifecycleTransition) != "autoscaling:EC2_INSTANCE_TERMINATING" {
				return 0, fmt.Errorf("lifecycle hook %q of group %q is for %s, not termination", a.Hook, a.Group, aws.ToString(h.LifecycleTransition))
			}
			return time.Duration(aws.ToInt32(h.HeartbeatTimeout)) * time.Second, nil
		}
	}
	return 0, fmt.Errorf("group %q has no lifecycle hook %q: create it (README, \"The termination gate\")", a.Group, a.Hook)
}

// Heartbeat restarts the hook's heartbeat timeout for this instance.
func (a *LifecycleAction) Heartbeat(ctx context.Context) error {
	_, err := a.Client.RecordLifecycleActionHeartbeat(ctx, &autoscaling.RecordLifecycleActionHeartbeatInput{
		AutoScalingGroupName: aws.String(a.Group), LifecycleHookName: aws.String(a.Hook), InstanceId: aws.String(a.InstanceID),
	})
	if err != nil {
		return fmt.Errorf("heartbeat lifecycle action of %s on hook %q: %w", a.InstanceID, a.Hook, err)
	}
	return nil
}

// Complete lets the termination go on.
func (a *LifecycleAction) Complete(ctx context.Context) error {
	_, err := a.Client.CompleteLifecycleAction(ctx, &autoscaling.CompleteLifecycleActionInput{
		AutoScalingGroupName: aws.String(a.Group), LifecycleHookName: aws.String(a.Hook), InstanceId: aws.String(a.InstanceID),
		LifecycleActionResult: aws.String("CONTINUE"),
	})
	if err != nil {
		return fmt.Errorf("complete lifecycle action of %s on hook %q: %w", a.InstanceID, a.Hook, err)
	}
	return nil
}

// Metadata reads the instance's own metadata over IMDSv2.
type Metadata struct{ Client *imds.Client }

// TargetLifecycleState reads autoscaling/target-lifecycle-state: InService, then
// Terminated once the group has decided to terminate the instance (EC2 Auto
// Scaling user guide, "Retrieve the target lifecycle state through instance
// metadata").
func (m Metadata) TargetLifecycleState(ctx context.Context) (string, error) {
	out, err := m.Client.GetMetadata(ctx, &imds.GetMetadataInput{Path: "autoscaling/target-lifecycle-state"})
	if err != nil {
		return "", fmt.Errorf("read target lifecycle state: %w", err)
	}
	defer out.Content.Close()
	b, err := io.ReadAll(io.LimitReader(out.Content, 256))
	if err != nil {
		return "", fmt.Errorf("read target lifecycle state: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}
