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
	// Required: the configuration file is the servers' own, whose token_file is
	// not packaged with the function (config.JobTrigger).
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
	// The servers' file, validated as the roll's, except that its token file
	// (consul.token_file: the servers' token, not packaged) need not be there.
	cfg, err := config.LoadFor(path, config.JobRoll|config.JobTrigger, getenv)
	if err != nil {
		return nil, err
	}
	name := getenv(EnvTokenParameter)
	if name == "" {
		return nil, fmt.Errorf("%s is not set: the trigger reads its Consul token from that SSM parameter", EnvTokenParameter)
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
	params := ssm.NewFromConfig(ac)
	token := func(ctx context.Context) (string, error) {
		out, err := params.GetParameter(ctx, &ssm.GetParameterInput{Name: aws.String(name), WithDecryption: aws.Bool(true)})
		if err != nil {
			return "", fmt.Errorf("read the Consul token from SSM parameter %s: %w", name, err)
		}
		if out.Parameter == nil || aws.ToString(out.Parameter.Value) == "" {
			return "", fmt.Errorf("SSM parameter %s holds no Consul token", name)
		}
		return aws.ToString(out.Parameter.Value), nil
	}
	tok, err := token(ctx)
	if err != nil {
		return nil, err
	}
	// Never the file's token_file (see config.JobTrigger): the parameter's token.
	cfg.Consul.InlineToken = config.Secret(tok)
	apiCfg, err := cfg.Consul.APIConfig()
	if err != nil {
		return nil, err
	}
	c, err := api.NewClient(apiCfg)
	if err != nil {
		return nil, fmt.Errorf("consul client: %w", err)
	}
	ec2c := ec2.NewFromConfig(ac)
	images := awsprovider.New(ec2c, nil, awsprovider.Config{
		Owners: pc.Image.Owners, NamePattern: pc.Image.NamePattern, Tags: pc.Image.Tags, Logger: log,
	})
	t := &Trigger{
		Images: images, Consul: c, EventName: cfg.Roll.EventName, TagWait: wait, Log: log,
		Token: token, Explain: Explainer(ec2c, pc.Image, time.Now),
	}
	t.SetToken(tok)
	return t, nil
}
