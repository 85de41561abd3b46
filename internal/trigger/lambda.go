package trigger

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ssm"
	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/consul-rehydrate/consul-rehydrate/config"
	awsprovider "github.com/consul-rehydrate/consul-rehydrate/internal/cloud/aws"
)

// The Lambda's environment.
const (
	// EnvConfig is the handlers' configuration file, packaged with the function
	// (default config.hcl in $LAMBDA_TASK_ROOT): the same file the servers run
	// with, so the image filter, cluster and event name cannot drift apart.
	EnvConfig = "REHYDRATE_CONFIG"
	// EnvTokenParameter names the SSM SecureString parameter holding the Consul
	// token (event write for the roll's event, service "consul" and node read).
	// A parameter rather than an environment variable: anyone who may read the
	// function's configuration (lambda:GetFunctionConfiguration) reads its
	// environment in clear, while the parameter has its own IAM and KMS policy, and
	// rotating the token needs no redeploy.
	EnvTokenParameter = "REHYDRATE_TOKEN_PARAMETER"
	// EnvTagWait bounds how long an image not matching the filter yet is looked at
	// again (a Go duration; default DefaultTagWait, at most MaxTagWait).
	EnvTagWait = "REHYDRATE_TAG_WAIT"
)

// DefaultTagWait is well inside the function's 15-minute limit; MaxTagWait leaves
// it room to fire.
const (
	DefaultTagWait = 5 * time.Minute
	MaxTagWait     = 12 * time.Minute
)

// FromEnv builds the Trigger at the function's cold start: the configuration, the
// Consul client with the token from SSM, the image filter.
func FromEnv(ctx context.Context, getenv func(string) string, log hclog.Logger) (*Trigger, error) {
	path := getenv(EnvConfig)
	if path == "" {
		path = filepath.Join(getenv("LAMBDA_TASK_ROOT"), "config.hcl")
	}
	cfg, err := config.LoadFor(path, config.JobRoll, getenv)
	if err != nil {
		return nil, err
	}
	pc := cfg.Provider.AWS
	if pc == nil {
		return nil, fmt.Errorf("%s: the trigger needs provider \"aws\"", path)
	}
	wait := DefaultTagWait
	if s := getenv(EnvTagWait); s != "" {
		if wait, err = time.ParseDuration(s); err != nil || wait <= 0 || wait > MaxTagWait {
			return nil, fmt.Errorf("%s %q: want a duration from 1s to %s", EnvTagWait, s, MaxTagWait)
		}
	}
	opts := []func(*awsconfig.LoadOptions) error{awsconfig.WithRetryMaxAttempts(max(pc.MaxAttempts, 1))}
	if pc.Region != "" {
		opts = append(opts, awsconfig.WithRegion(pc.Region))
	}
	ac, err := awsconfig.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("load aws configuration: %w", err)
	}
	if pc.EndpointURL != "" {
		ac.BaseEndpoint = aws.String(pc.EndpointURL)
	}
	if name := getenv(EnvTokenParameter); name != "" {
		out, err := ssm.NewFromConfig(ac).GetParameter(ctx, &ssm.GetParameterInput{Name: aws.String(name), WithDecryption: aws.Bool(true)})
		if err != nil {
			return nil, fmt.Errorf("read the Consul token from SSM parameter %s: %w", name, err)
		}
		cfg.Consul.InlineToken = config.Secret(aws.ToString(out.Parameter.Value))
	}
	apiCfg, err := cfg.Consul.APIConfig()
	if err != nil {
		return nil, err
	}
	c, err := api.NewClient(apiCfg)
	if err != nil {
		return nil, fmt.Errorf("consul client: %w", err)
	}
	images := awsprovider.New(ec2.NewFromConfig(ac), nil, awsprovider.Config{
		Owners: pc.Image.Owners, NamePattern: pc.Image.NamePattern, Tags: pc.Image.Tags, Logger: log,
	})
	return &Trigger{Images: images, Consul: c, EventName: cfg.Roll.EventName, TagWait: wait, Log: log}, nil
}
