package aws

import (
	"context"
	"fmt"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
)

// ClientOptions say how to reach AWS.
type ClientOptions struct {
	// Region is empty for the default chain (environment, shared config, IMDS).
	Region string
	// EndpointURL, when set, is the endpoint of every client (tests point it at a fake).
	EndpointURL string
	// MaxAttempts is the standard retryer's attempt count (throttling and 5xx are retried).
	MaxAttempts int
}

// NewClients builds the EC2 and Auto Scaling clients with credentials from the
// default chain and the standard retryer.
func NewClients(ctx context.Context, o ClientOptions) (*ec2.Client, *autoscaling.Client, error) {
	opts := []func(*awsconfig.LoadOptions) error{awsconfig.WithRetryMaxAttempts(max(o.MaxAttempts, 1))}
	if o.Region != "" {
		opts = append(opts, awsconfig.WithRegion(o.Region))
	}
	cfg, err := awsconfig.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, nil, fmt.Errorf("load aws configuration: %w", err)
	}
	if cfg.Region == "" {
		return nil, nil, fmt.Errorf("load aws configuration: no region: set provider \"aws\" region or AWS_REGION")
	}
	e := ec2.NewFromConfig(cfg, func(opt *ec2.Options) {
		if o.EndpointURL != "" {
			opt.BaseEndpoint = aws.String(o.EndpointURL)
		}
	})
	a := autoscaling.NewFromConfig(cfg, func(opt *autoscaling.Options) {
		if o.EndpointURL != "" {
			opt.BaseEndpoint = aws.String(o.EndpointURL)
		}
		opt.Retryer = RetryActivityInProgress(opt.Retryer)
	})
	return e, a, nil
}

// RetryActivityInProgress makes r also retry ScalingActivityInProgress: Auto
// Scaling answers it (HTTP 400) to SetDesiredCapacity, UpdateAutoScalingGroup and
// TerminateInstanceInAutoScalingGroup while a scaling activity runs, and the SDK's
// standard retryer does not retry a 400 (../shared/AWS.md; the error is in the
// operations' error lists in the Auto Scaling API model). It is retried with the
// retryer's own backoff and attempt count.
func RetryActivityInProgress(r aws.Retryer) aws.Retryer {
	if r == nil {
		r = retry.NewStandard()
	}
	return retry.AddWithErrorCodes(r, "ScalingActivityInProgress")
}

// Identity is what an instance knows of itself.
type Identity struct {
	InstanceID string
	Region     string
	ImageID    string
	PrivateIP  string
}

// IMDS is the part of the instance metadata client Identity uses.
type IMDS interface {
	GetInstanceIdentityDocument(context.Context, *imds.GetInstanceIdentityDocumentInput, ...func(*imds.Options)) (*imds.GetInstanceIdentityDocumentOutput, error)
}

// NewIMDS returns an IMDSv2 client; endpoint "" means the instance's own service.
// It is enabled whatever AWS_EC2_METADATA_DISABLED says: that variable keeps the
// SDK's credential chain off the metadata service, and the callers of NewIMDS
// exist to read it.
func NewIMDS(endpoint string) *imds.Client {
	return imds.New(imds.Options{Endpoint: endpoint, EnableFallback: aws.FalseTernary, ClientEnableState: imds.ClientEnabled})
}

// SelfIdentity reads the instance's ID, region, AMI and private IP from the instance
// identity document (IMDSv2: the client fetches a session token first).
func SelfIdentity(ctx context.Context, c IMDS) (Identity, error) {
	out, err := c.GetInstanceIdentityDocument(ctx, &imds.GetInstanceIdentityDocumentInput{})
	if err != nil {
		return Identity{}, fmt.Errorf("read instance identity document: %w", err)
	}
	return Identity{InstanceID: out.InstanceID, Region: out.Region, ImageID: out.ImageID, PrivateIP: out.PrivateIP}, nil
}
