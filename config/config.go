// Package config loads the HCL file every consul-rehydrate handler reads.
//
// Load (or Parse) starts from Default, overlays only the attributes the file
// sets, resolves relative paths against the file's directory and validates the
// result, reporting every problem at once with its file:line:column. After a
// successful Load every field is safe to use as is.
package config

import (
	"fmt"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
)

// Keys of the configuration file, written as the dotted paths that error
// messages use. Provider keys include the provider type as their second part.
const (
	KeyCluster  = "cluster"
	KeyServers  = "servers"
	KeyLogLevel = "log_level"

	KeyConsul                      = "consul"
	KeyConsulAddress               = "consul.address"
	KeyConsulScheme                = "consul.scheme"
	KeyConsulDatacenter            = "consul.datacenter"
	KeyConsulToken                 = "consul.token"
	KeyConsulTokenFile             = "consul.token_file"
	KeyConsulTLS                   = "consul.tls"
	KeyConsulTLSCAFile             = "consul.tls.ca_file"
	KeyConsulTLSCertFile           = "consul.tls.cert_file"
	KeyConsulTLSKeyFile            = "consul.tls.key_file"
	KeyConsulTLSServerName         = "consul.tls.server_name"
	KeyConsulTLSInsecureSkipVerify = "consul.tls.insecure_skip_verify"

	KeyLock                = "lock"
	KeyLockSessionTTL      = "lock.session_ttl"
	KeyLockLockDelay       = "lock.lock_delay"
	KeyLockWait            = "lock.wait"
	KeyRoll                = "roll"
	KeyRollEventName       = "roll.event_name"
	KeyRollStabilization   = "roll.stabilization"
	KeyRollLaunchTimeout   = "roll.launch_timeout"
	KeyRollLeaveTimeout    = "roll.leave_timeout"
	KeyRollMaxTrailingLogs = "roll.max_trailing_logs"
	KeyRollAllowDowngrade  = "roll.allow_downgrade"
	KeyRollPollInterval    = "roll.poll_interval"
	KeyRollStuckWarning    = "roll.stuck_warning"

	KeyProvider          = "provider"
	KeyLocal             = "provider.local"
	KeyLocalStateDir     = "provider.local.state_dir"
	KeyLocalConsulBinary = "provider.local.consul_binary"
	KeyLocalAddresses    = "provider.local.addresses"

	KeyAWS                 = "provider.aws"
	KeyAWSRegion           = "provider.aws.region"
	KeyAWSAutoscalingGroup = "provider.aws.autoscaling_group"
	KeyAWSLaunchTemplate   = "provider.aws.launch_template"
	KeyAWSEndpointURL      = "provider.aws.endpoint_url"
	KeyAWSMaxAttempts      = "provider.aws.max_attempts"
	KeyAWSLifecycleHook    = "provider.aws.lifecycle_hook"
	KeyAWSGateMaxHold      = "provider.aws.gate_max_hold"
	KeyAWSIMDSEndpoint     = "provider.aws.imds_endpoint"
	KeyAWSImage            = "provider.aws.image"
	KeyAWSImageOwners      = "provider.aws.image.owners"
	KeyAWSImageNamePattern = "provider.aws.image.name_pattern"
	KeyAWSImageTags        = "provider.aws.image.tags"

	// A deploy block's keys are deploy.<service>.<attribute>.
	KeyDeploy                = "deploy"
	AttrDeployCommand        = "command"
	AttrDeployRollback       = "rollback_command"
	AttrDeployTimeout        = "timeout"
	AttrDeployHealthTimeout  = "health_timeout"
	AttrDeployMinHealthyTime = "min_healthy_time"
	AttrDeployArtifacts      = "artifacts"
	AttrDeployRequireSHA256  = "require_sha256"
	AttrDeployNodeFilter     = "node_filter"

	// A reconfigure block's keys are reconfigure.<name>.<attribute>.
	KeyReconfigure                   = "reconfigure"
	AttrReconfigureService           = "service"
	AttrReconfigureTemplate          = "template"
	AttrReconfigureTemplateFile      = "template_file"
	AttrReconfigureDestination       = "destination"
	AttrReconfigureMode              = "mode"
	AttrReconfigureReloadCommand     = "reload_command"
	AttrReconfigureReloadTimeout     = "reload_timeout"
	AttrReconfigureExpectReplacement = "expect_replacement"
	AttrReconfigureProbation         = "probation"
	AttrReconfigureStateFile         = "state_file"
)

// Jobs say what a program does with the file, so that Load requires the settings
// each job needs and no others: a client agent that only deploys has no cluster to
// roll and no provider.
type Jobs uint8

// The jobs.
const (
	// JobRoll is the roll's (spinup, spindown, rehydrate): cluster, servers and a
	// provider are required.
	JobRoll Jobs = 1 << iota
	// JobDeploy is the deploy handler's: at least one deploy block is required.
	JobDeploy
	// JobReconfigure is the reconfigure handler's: at least one reconfigure block
	// is required.
	JobReconfigure
	// JobTrigger is the image-published Lambda's (internal/trigger), given with
	// JobRoll: JobRoll|JobTrigger. The Lambda reads the servers' own file, copied
	// into its zip, but its Consul token comes from elsewhere (an SSM parameter),
	// so consul.token_file (or $CONSUL_HTTP_TOKEN_FILE) names a file that is not
	// there: under JobTrigger the token file is neither required to exist nor
	// checked for its permissions. ConsulConfig.TokenFile keeps the path; the
	// trigger must supply its token itself (ConsulConfig.InlineToken, which
	// Token prefers) rather than call Token on the file's settings. Everything
	// else is validated as for the jobs given with it.
	JobTrigger
)

// Provider types: the label of the file's one provider block.
const (
	ProviderLocal = "local"
	ProviderAWS   = "aws"
)

// Defaults of every optional setting. Default (and its counterparts for the
// provider blocks, beside it) is the only place that applies them.
const (
	DefaultLogLevel          = "info"
	DefaultConsulAddress     = "127.0.0.1:8500"
	DefaultConsulScheme      = "http"
	DefaultLockSessionTTL    = 15 * time.Second
	DefaultLockDelay         = 5 * time.Second
	DefaultLockWait          = 45 * time.Second // > 2 × session_ttl + lock_delay
	DefaultRollEventName     = "consul-rehydrate"
	DefaultRollStabilization = 10 * time.Second // Consul autopilot's server_stabilization_time
	DefaultRollLaunchTimeout = 10 * time.Minute
	// DefaultRollStuckWarning is half of DefaultRollLaunchTimeout: unset, the
	// warning threshold follows roll.launch_timeout (see RollConfig.StuckWarning).
	DefaultRollStuckWarning = DefaultRollLaunchTimeout / 2
	// DefaultAWSLifecycleHook is the termination hook's name the README's
	// put-lifecycle-hook command creates.
	DefaultAWSLifecycleHook = "consul-rehydrate"
	// DefaultAWSGateMaxHold is how long the gate holds a termination at most while
	// quorum needs the server: a replacement's launch and stabilization, with room.
	DefaultAWSGateMaxHold      = 15 * time.Minute
	DefaultRollLeaveTimeout    = 2 * time.Minute
	DefaultRollMaxTrailingLogs = 250 // Consul autopilot's max_trailing_logs
	DefaultRollPollInterval    = time.Second
	DefaultLocalConsulBinary   = "consul"
	DefaultLocalAddresses      = "127.0.1.0/24"
	DefaultAWSMaxAttempts      = 5
	DefaultAWSImageOwner       = "self"
	DefaultDeployTimeout       = 5 * time.Minute
	DefaultDeployHealthTimeout = 2 * time.Minute
	// DefaultDeployMinHealthyTime is Nomad's min_healthy_time default, for the same
	// reason: a check that passed before the deploy may not have run since.
	DefaultDeployMinHealthyTime         = 10 * time.Second
	DefaultReconfigureReloadTimeout     = 30 * time.Second
	DefaultReconfigureExpectReplacement = 10 * time.Minute
	DefaultReconfigureProbation         = 5 * time.Minute
	// DefaultReconfigureStateDir holds each block's state file, <name>.json.
	DefaultReconfigureStateDir = "/var/lib/consul-rehydrate/reconfigure"
)

// Config is the whole configuration file, defaults filled in.
type Config struct {
	// Cluster names the cluster; its KV data lives under rehydrate/<Cluster>/.
	Cluster string
	// Servers is the desired number of Consul servers: odd, 1 to 7.
	Servers int
	// LogLevel is one of trace, debug, info, warn, error.
	LogLevel string
	// Consul says how handlers reach the local Consul agent.
	Consul ConsulConfig
	// Lock tunes the session lock that serialises roll steps.
	Lock LockConfig
	// Roll tunes the roll itself.
	Roll RollConfig
	// Provider is where servers are launched and terminated.
	Provider ProviderConfig
	// Deploys are the deploy blocks, one per service, in file order.
	Deploys []*DeployConfig
	// Reconfigures are the reconfigure blocks, in file order.
	Reconfigures []*ReconfigureConfig
}

// ReconfigureConfig is a reconfigure "<name>" block: a file rendered from a service's
// healthy instances, and what to do when it changes.
type ReconfigureConfig struct {
	// Name is the block's label; the handler's -name flag picks a block by it.
	Name string
	// Service is the Consul service whose healthy instances are rendered; unset, it
	// is Name.
	Service string
	// Template is the text/template source, from template or template_file.
	Template string
	// TemplateFile is template_file's absolute path; empty for an inline template.
	TemplateFile string
	// Destination is the absolute path of the rendered file.
	Destination string
	// Mode is the rendered file's mode; 0 keeps the existing file's mode, or 0644
	// for a new file.
	Mode os.FileMode
	// ReloadCommand runs after the file changed; empty, nothing runs.
	ReloadCommand []string
	// ReloadTimeout bounds the reload command.
	ReloadTimeout time.Duration
	// ExpectReplacement is how long after the last healthy instance goes a new one
	// is expected; after that the check is critical.
	ExpectReplacement time.Duration
	// Probation is how long a new instance is watched before it counts as settled;
	// an instance that leaves within it has flapped, and the check warns.
	Probation time.Duration
	// StateFile is where the handler records what it saw, for the check to judge.
	StateFile string
}

// TemplateName names the template in errors: its file, or its key in this file.
func (r *ReconfigureConfig) TemplateName() string {
	if r.TemplateFile != "" {
		return r.TemplateFile
	}
	return KeyReconfigure + "." + r.Name + "." + AttrReconfigureTemplate
}

// Reconfigure returns the reconfigure block named name, or nil.
func (c *Config) Reconfigure(name string) *ReconfigureConfig {
	for _, r := range c.Reconfigures {
		if r.Name == name {
			return r
		}
	}
	return nil
}

// DeployConfig is a deploy "<service>" block: how the deploy handler deploys a
// version of the service on this node.
type DeployConfig struct {
	// Service is the block's label: the Consul service deployed, and the
	// deploy/<service>/ part of the keys.
	Service string
	// Command is the deploy command's argv. It gets the version to deploy in
	// $REHYDRATE_DEPLOY_VERSION (and the id, artifact and previous version).
	Command []string
	// RollbackCommand is run, with the previous version, after a failed deploy.
	// Unset, it is Command.
	RollbackCommand []string
	// Timeout bounds each run of a command.
	Timeout time.Duration
	// HealthTimeout bounds the wait for the service's checks to pass after a run.
	HealthTimeout time.Duration
	// MinHealthyTime is how long the checks must pass without a break before the
	// node counts as healthy: at least one check interval, so that a check that
	// passed before the deploy has run again since.
	MinHealthyTime time.Duration
	// Artifacts, when set, is the allow-list of the artifacts a desired value may
	// name: patterns in path.Match syntax ("*" matches within one path segment),
	// e.g. "https://releases.example.com/web/*". A desired value must then name an
	// artifact that matches one of them. Empty: any artifact, as the desired key's
	// writer chooses.
	Artifacts []string
	// RequireSHA256 makes a desired value without a "sha256" (the artifact's SHA-256,
	// 64 hex digits) refused. The handler does not download the artifact: it hands
	// the digest to the command in $REHYDRATE_DEPLOY_SHA256, and the command must
	// check what it downloads against it.
	RequireSHA256 bool
	// NodeFilter, when set, is a Consul filter expression on the catalog's entries of
	// the service (the fields of /v1/catalog/service/:service, as `consul catalog
	// nodes -service <service> -filter` takes them), e.g. `Node matches "^web-"` or
	// `NodeMeta.pool == "blue"`: a rollout (`rehydrate deploy start`) deploys only to
	// the nodes it selects. The catalog is anyone's to write who may register a node
	// or service, so the filter says which nodes the operator means. A rollout's
	// --node-filter can only narrow it: both apply. Empty: every node of the service
	// (that passes the rollout's other checks). It is checked at load to parse as
	// Consul parses it; whether its fields exist, Consul says at the first rollout.
	NodeFilter string
}

// Deploy returns the deploy block of service, or nil.
func (c *Config) Deploy(service string) *DeployConfig {
	for _, d := range c.Deploys {
		if d.Service == service {
			return d
		}
	}
	return nil
}

// ConsulConfig says how to reach the Consul HTTP API. It prints without its
// token: InlineToken is a Secret.
type ConsulConfig struct {
	// Address is host:port (or scheme://host:port) of the agent's HTTP API.
	// The file's consul.address wins; CONSUL_HTTP_ADDR applies only when the
	// file does not set it; DefaultConsulAddress applies when neither does.
	Address string
	// Scheme is http or https. Unset in the file, it is https when Address starts
	// with https:// or $CONSUL_HTTP_SSL is true, as the consul CLI has it.
	Scheme string
	// Datacenter is empty for the agent's own datacenter.
	Datacenter string
	// InlineToken is consul.token, the ACL token written in the file itself.
	// Prefer TokenFile; use Token to get the effective token.
	InlineToken Secret
	// TokenFile is an absolute path to a file holding the ACL token:
	// consul.token_file, else $CONSUL_HTTP_TOKEN_FILE when the file sets neither
	// token nor token_file. The file must be readable and writable by its owner
	// only (mode 0600 or tighter): it holds a secret.
	TokenFile string
	// EnvToken is $CONSUL_HTTP_TOKEN as the program's environment had it when the
	// configuration was loaded: the token when the file names none.
	EnvToken Secret
	// TLS configures HTTPS; all paths are absolute. Each setting the file leaves
	// unset comes from the consul CLI's variable, when set: $CONSUL_CACERT,
	// $CONSUL_CLIENT_CERT with $CONSUL_CLIENT_KEY (only when the file sets neither
	// cert_file nor key_file), $CONSUL_TLS_SERVER_NAME.
	TLS TLSConfig
}

// TLSConfig configures TLS for the Consul HTTP API.
type TLSConfig struct {
	// CAFile verifies the agent's certificate.
	CAFile string
	// CertFile and KeyFile are the client certificate, both or neither.
	CertFile string
	// KeyFile is the client certificate's private key.
	KeyFile string
	// ServerName is the name expected in the agent's certificate (SNI).
	ServerName string
	// InsecureSkipVerify disables verification of the agent's certificate.
	InsecureSkipVerify bool
}

// LockConfig tunes the session lock at rehydrate/<cluster>/lock.
type LockConfig struct {
	// SessionTTL is the session's TTL, 10s to 24h (Consul's limits).
	SessionTTL time.Duration
	// LockDelay is the session's lock-delay, 0 to 60s.
	LockDelay time.Duration
	// Wait bounds how long a handler waits for the lock. It must outlast a crashed
	// holder's session, which Consul invalidates up to twice its TTL late and then
	// keeps locked for lock_delay: more than 2 × SessionTTL + LockDelay. Otherwise
	// the handlers woken with the crashed one may all give up before the lock is
	// free, and the roll waits for the next trigger.
	Wait time.Duration
}

// RollConfig tunes the roll.
type RollConfig struct {
	// EventName is the Consul user event that triggers a roll step.
	EventName string
	// Stabilization is how long a new server must be a healthy voter before an
	// old one is retired.
	Stabilization time.Duration
	// LaunchTimeout bounds how long a new server may take to become a healthy
	// voter before it is terminated and its image marked bad.
	LaunchTimeout time.Duration
	// LeaveTimeout bounds a retiring server's graceful leave.
	LeaveTimeout time.Duration
	// MaxTrailingLogs is how far behind the leader a new server may be.
	MaxTrailingLogs int
	// AllowDowngrade allows a target image older than the cluster runs.
	AllowDowngrade bool
	// PollInterval is how often bounded waits re-check.
	PollInterval time.Duration
	// StuckWarning is how long a roll in progress may go without progress (a step
	// taken) before `rehydrate check` warns; past LaunchTimeout it is critical.
	// Unset, it is half of LaunchTimeout: a launch that has used half its allowance
	// is slow, while a healthy one (boot, join, stabilization) stays well inside it.
	// It must be less than LaunchTimeout, or the warning would never come first.
	StuckWarning time.Duration
}

// ProviderConfig is the one provider block: Type says which of Local and AWS
// is set; the other is nil.
type ProviderConfig struct {
	// Type is ProviderLocal or ProviderAWS.
	Type string
	// Local is set when Type is ProviderLocal.
	Local *LocalProvider
	// AWS is set when Type is ProviderAWS.
	AWS *AWSProvider
}

// Format prints the provider that is set, rather than two pointers.
func (p ProviderConfig) Format(f fmt.State, verb rune) {
	var set any
	switch {
	case p.Local != nil:
		set = *p.Local
	case p.AWS != nil:
		set = *p.AWS
	}
	fmt.Fprintf(f, "%s:"+fmt.FormatString(f, verb), p.Type, set)
}

// LocalProvider runs servers as local processes on loopback addresses.
type LocalProvider struct {
	// StateDir is the absolute path of the provider's state directory.
	StateDir string
	// ConsulBinary is the consul executable: a bare name is looked up on PATH
	// when used, a relative path is resolved against the config's directory.
	ConsulBinary string
	// Addresses is the loopback network that servers take addresses from.
	Addresses netip.Prefix
}

// AWSProvider runs servers in an EC2 Auto Scaling group.
type AWSProvider struct {
	// Region is empty for the SDK's default chain.
	Region string
	// AutoscalingGroup is the name of the servers' Auto Scaling group.
	AutoscalingGroup string
	// LaunchTemplate is the name of the group's launch template.
	LaunchTemplate string
	// EndpointURL, when set, overrides every AWS client's endpoint (tests).
	EndpointURL string
	// MaxAttempts is the SDK retryer's attempts, 1 to 20.
	MaxAttempts int
	// LifecycleHook is the name of the group's termination lifecycle hook that
	// the termination gate (handlers/lifecycle) completes.
	LifecycleHook string
	// GateMaxHold bounds how long the gate holds a termination for quorum.
	GateMaxHold time.Duration
	// IMDSEndpoint, when set, is the instance metadata endpoint (tests).
	IMDSEndpoint string
	// Image selects the AMIs that servers may run.
	Image ImageFilter
}

// ImageFilter selects AMIs; an image must match every part that is set.
type ImageFilter struct {
	// Owners are AMI owners (account ids or aliases such as "self").
	Owners []string
	// NamePattern is an AMI name pattern with * and ? wildcards.
	NamePattern string
	// Tags are tags the AMI must carry.
	Tags map[string]string
}

// Default returns the configuration of a file that sets nothing: every
// optional setting at its default; Cluster, Servers and Provider are left
// empty because the file must set them.
func Default() *Config {
	return &Config{
		LogLevel: DefaultLogLevel,
		Consul: ConsulConfig{
			Address: DefaultConsulAddress,
			Scheme:  DefaultConsulScheme,
		},
		Lock: LockConfig{
			SessionTTL: DefaultLockSessionTTL,
			LockDelay:  DefaultLockDelay,
			Wait:       DefaultLockWait,
		},
		Roll: RollConfig{
			EventName:       DefaultRollEventName,
			Stabilization:   DefaultRollStabilization,
			LaunchTimeout:   DefaultRollLaunchTimeout,
			LeaveTimeout:    DefaultRollLeaveTimeout,
			MaxTrailingLogs: DefaultRollMaxTrailingLogs,
			PollInterval:    DefaultRollPollInterval,
			StuckWarning:    DefaultRollStuckWarning,
		},
	}
}

// defaultLocal and defaultAWS are Default's counterparts for provider blocks.
func defaultLocal() *LocalProvider {
	return &LocalProvider{
		ConsulBinary: DefaultLocalConsulBinary,
		Addresses:    netip.MustParsePrefix(DefaultLocalAddresses),
	}
}

func defaultAWS() *AWSProvider {
	return &AWSProvider{
		MaxAttempts:   DefaultAWSMaxAttempts,
		LifecycleHook: DefaultAWSLifecycleHook,
		GateMaxHold:   DefaultAWSGateMaxHold,
		Image:         ImageFilter{Owners: []string{DefaultAWSImageOwner}},
	}
}

// Token returns the ACL token to use: consul.token, else the trimmed contents
// of TokenFile (consul.token_file, else $CONSUL_HTTP_TOKEN_FILE), else EnvToken
// ($CONSUL_HTTP_TOKEN), else "" (anonymous): the consul CLI's order, in which a
// token file wins over a token in the environment.
func (c ConsulConfig) Token() (string, error) {
	if c.InlineToken != "" {
		return string(c.InlineToken), nil
	}
	if c.TokenFile != "" {
		b, err := os.ReadFile(c.TokenFile)
		if err != nil {
			return "", fmt.Errorf("read token file: %w", err)
		}
		tok := strings.TrimSpace(string(b))
		if tok == "" {
			return "", fmt.Errorf("token file %s is empty", c.TokenFile)
		}
		return tok, nil
	}
	return string(c.EnvToken), nil
}

// APIConfig returns a Consul API client configuration with the address,
// scheme, datacenter, token and TLS settings of c. api.NewClient still fills
// the fields c leaves empty from its own CONSUL_* environment variables.
func (c ConsulConfig) APIConfig() (*api.Config, error) {
	tok, err := c.Token()
	if err != nil {
		return nil, fmt.Errorf("consul token: %w", err)
	}
	return &api.Config{
		Address:    c.Address,
		Scheme:     c.Scheme,
		Datacenter: c.Datacenter,
		Token:      tok,
		TLSConfig: api.TLSConfig{
			Address:            c.TLS.ServerName,
			CAFile:             c.TLS.CAFile,
			CertFile:           c.TLS.CertFile,
			KeyFile:            c.TLS.KeyFile,
			InsecureSkipVerify: c.TLS.InsecureSkipVerify,
		},
	}, nil
}

// Secret is a string that never prints: every fmt verb, String, GoString and
// MarshalText render a non-empty Secret as "[redacted]". Convert it with
// string(s) only where the secret is used.
type Secret string

const redacted = "[redacted]"

func (s Secret) shown() string {
	if s == "" {
		return ""
	}
	return redacted
}

// String returns "[redacted]", or "" for an empty Secret.
func (s Secret) String() string { return s.shown() }

// GoString returns the quoted redaction, so %#v shows no secret either.
func (s Secret) GoString() string { return fmt.Sprintf("%q", s.shown()) }

// Format implements fmt.Formatter so that no verb (%x, %d, ...) leaks the secret.
func (s Secret) Format(f fmt.State, verb rune) {
	if verb == 'v' && f.Flag('#') {
		fmt.Fprint(f, s.GoString())
		return
	}
	fmt.Fprint(f, s.shown())
}

// MarshalText keeps the secret out of JSON and text encodings (e.g. logs).
func (s Secret) MarshalText() ([]byte, error) { return []byte(s.shown()), nil }
