package config

import (
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// minimal is the smallest valid file; tests append blocks to it.
const minimal = `
cluster = "main"
servers = 3
provider "local" {
  state_dir = "state"
}
`

// parse parses src as if it were /etc/consul-rehydrate/config.hcl, with
// $CONSUL_HTTP_ADDR unset so that the machine's environment cannot leak in.
func parse(t *testing.T, src string) (*Config, error) {
	t.Helper()
	return Parse([]byte(src), "/etc/consul-rehydrate/config.hcl")
}

func TestParse_FillsEveryDefault(t *testing.T) {
	c, err := parse(t, minimal)
	require.NoError(t, err)

	want := Default()
	want.Cluster = "main"
	want.Servers = 3
	want.Provider = ProviderConfig{Type: ProviderLocal, Local: &LocalProvider{
		StateDir:     "/etc/consul-rehydrate/state",
		ConsulBinary: DefaultLocalConsulBinary,
		Addresses:    netip.MustParsePrefix(DefaultLocalAddresses),
	}}
	assert.Equal(t, want, c)
	assert.Equal(t, "127.0.0.1:8500", c.Consul.Address)
	assert.Equal(t, DefaultRollStabilization, c.Roll.Stabilization)
}

func TestParse_FillsAWSDefaults(t *testing.T) {
	c, err := parse(t, `
cluster = "main"
servers = 3
provider "aws" {
  autoscaling_group = "consul-servers"
  launch_template   = "consul-server"
  image {
    name_pattern = "consul-server-*"
  }
}
`)
	require.NoError(t, err)
	assert.Equal(t, ProviderConfig{Type: ProviderAWS, AWS: &AWSProvider{
		AutoscalingGroup: "consul-servers",
		LaunchTemplate:   "consul-server",
		MaxAttempts:      DefaultAWSMaxAttempts,
		LifecycleHook:    DefaultAWSLifecycleHook,
		GateMaxHold:      DefaultAWSGateMaxHold,
		Image:            ImageFilter{Owners: []string{DefaultAWSImageOwner}, NamePattern: "consul-server-*"},
	}}, c.Provider)
}

func TestParse_ExplicitValuesOverrideDefaultsEvenWhenZero(t *testing.T) {
	c, err := parse(t, minimal+`
lock {
  lock_delay = "0s"
}
roll {
  stabilization     = "0s"
  max_trailing_logs = 0
}
`)
	require.NoError(t, err)
	assert.Zero(t, c.Lock.LockDelay)
	assert.Zero(t, c.Roll.Stabilization)
	assert.Zero(t, c.Roll.MaxTrailingLogs)
	assert.Equal(t, DefaultLockSessionTTL, c.Lock.SessionTTL, "unset siblings keep their defaults")
}

func TestParse_AcceptsTheLimitsOfEveryRange(t *testing.T) {
	tests := []struct {
		servers              int
		sessionTTL, lockWait string
	}{
		{1, "10s", "0s"},
		{7, "24h", "60s"},
	}
	for _, tt := range tests {
		src := fmt.Sprintf(`
cluster = "a"
servers = %d
lock {
  session_ttl = %q
  lock_delay  = %q
}
provider "local" {
  state_dir = "state"
  addresses = "127.0.0.0/29"
}
`, tt.servers, tt.sessionTTL, tt.lockWait)
		_, err := parse(t, src)
		assert.NoError(t, err, src)
	}
}

func TestParse_UnsetLockWaitOutlastsACrashedHoldersSession(t *testing.T) {
	c, err := parse(t, `cluster = "a"
servers = 3
lock { session_ttl = "60s" }
provider "local" {
  state_dir = "state"
  addresses = "127.0.0.0/29"
}
`)
	require.NoError(t, err)
	assert.Equal(t, 2*60*time.Second+DefaultLockDelay+lockWaitSlack, c.Lock.Wait)
	d := Default()
	assert.Greater(t, d.Lock.Wait, 2*d.Lock.SessionTTL+d.Lock.LockDelay, "the defaults keep the rule")
}

func TestLoad_RejectsInvalidFilesWithPositionAndKey(t *testing.T) {
	tests := []struct {
		fixture string
		want    []string // each line of the error, by prefix
	}{
		{"unknown-key.hcl", []string{
			`unknown-key.hcl:5:3: unsupported argument: an argument named "adress" is not expected here`,
		}},
		{"unknown-block.hcl", []string{
			`unknown-block.hcl:4:1: unsupported block type: blocks of type "autopilot" are not expected here`,
		}},
		{"wrong-type.hcl", []string{
			`wrong-type.hcl:5:22: invalid value for roll.allow_downgrade: a bool is required`,
			`wrong-type.hcl:6:23: invalid value for roll.max_trailing_logs: number required`,
		}},
		{"unknown-provider.hcl", []string{
			`unknown-provider.hcl:4:1: unknown provider "gcp": want "local" or "aws"`,
		}},
		{"two-providers.hcl", []string{
			`two-providers.hcl:8:1: duplicate provider block: only one is allowed, the first is at testdata/two-providers.hcl:4:1`,
		}},
		{"no-provider.hcl", []string{
			`no-provider.hcl:1:1: missing provider block: want provider "local" { ... } or provider "aws" { ... }`,
		}},
		{"token-and-token-file.hcl", []string{
			`token-and-token-file.hcl:5:3: consul.token and consul.token_file are mutually exclusive`,
		}},
		{"missing-token-file.hcl", []string{
			`missing-token-file.hcl:5:3: consul.token_file: stat /`,
		}},
		{"addresses-outside-loopback.hcl", []string{
			`addresses-outside-loopback.hcl:6:3: provider.local.addresses 10.0.1.0/24 must be inside 127.0.0.0/8 (loopback only)`,
		}},
		{"lock-wait-too-short.hcl", []string{
			`lock-wait-too-short.hcl:5:3: lock.wait must be more than 2 × lock.session_ttl + lock.lock_delay (45s), got 30s`,
		}},
		{"even-servers.hcl", []string{
			`even-servers.hcl:2:1: servers must be an odd number from 1 to 7, got 4`,
		}},
		{"aws-incomplete.hcl", []string{
			`aws-incomplete.hcl:2:1: servers must be an odd number from 1 to 7, got 9`,
			`aws-incomplete.hcl:4:1: missing provider.aws.image block`,
			`aws-incomplete.hcl:4:1: provider.aws.autoscaling_group is required`,
			`aws-incomplete.hcl:4:1: provider.aws.launch_template is required`,
			`aws-incomplete.hcl:5:3: provider.aws.endpoint_url "localhost:4566" must be an http or https URL`,
			`aws-incomplete.hcl:6:3: provider.aws.max_attempts must be from 1 to 20, got 21`,
		}},
		{"bad.json", []string{
			`bad.json:3:3: servers must be an odd number from 1 to 7, got 2`,
			`bad.json:5:5: roll.poll_interval must be positive, got 0s`,
		}},
	}
	for _, tt := range tests {
		t.Run(tt.fixture, func(t *testing.T) {
			c, err := Load(filepath.Join("testdata", tt.fixture))
			assert.Nil(t, c)
			var cerr *Error
			require.ErrorAs(t, err, &cerr)
			assertLines(t, tt.want, err)
		})
	}
}

func TestLoad_ReportsEveryErrorWithFileAndLine(t *testing.T) {
	_, err := Load("testdata/many-errors.hcl")
	assertLines(t, []string{
		`testdata/many-errors.hcl:2:1: cluster "Main!" must be 1 to 63 characters of a-z, 0-9, - and _`,
		`testdata/many-errors.hcl:3:12: invalid value for servers: a number is required`,
		`testdata/many-errors.hcl:4:1: log_level "loud" must be one of trace, debug, info, warn, error`,
		`testdata/many-errors.hcl:7:3: lock.session_ttl must be from 10s to 24h, got 5s`,
		`testdata/many-errors.hcl:8:3: invalid duration "soon" for lock.wait: time: invalid duration "soon"`,
		`testdata/many-errors.hcl:12:3: invalid duration "10x" for roll.stabilization: time: unknown unit "x" in duration "10x"`,
		`testdata/many-errors.hcl:13:3: roll.max_trailing_logs must not be negative, got -1`,
		`testdata/many-errors.hcl:14:3: unsupported argument: an argument named "unknown" is not expected here`,
		`testdata/many-errors.hcl:19:3: invalid CIDR "127.0.1.0/33" for provider.local.addresses`,
	}, err)
}

func TestParse_RejectsUnusableLoopbackNetworks(t *testing.T) {
	tests := map[string]string{
		"::1/128":      "must be inside 127.0.0.0/8",
		"0.0.0.0/0":    "must be inside 127.0.0.0/8",
		"127.0.1.5/24": "has host bits set: did you mean 127.0.1.0/24?",
		"127.0.1.0/31": "is too small for 3 servers and a replacement",
		"127.0.1.0":    `invalid CIDR "127.0.1.0"`,
	}
	for addresses, want := range tests {
		t.Run(addresses, func(t *testing.T) {
			src := strings.Replace(minimal, `state_dir = "state"`, `state_dir = "state"
  addresses = "`+addresses+`"`, 1)
			_, err := parse(t, src)
			require.Error(t, err)
			assert.Contains(t, err.Error(), "/etc/consul-rehydrate/config.hcl:6:3: ")
			assert.Contains(t, err.Error(), want)
		})
	}
}

func TestParse_SyntaxErrorStopsBeforeDecoding(t *testing.T) {
	_, err := parse(t, "cluster = \"main\"\nservers = {\n")
	require.Error(t, err)
	assert.Equal(t, 1, strings.Count(err.Error(), "\n")+1, "one syntax error, no decode noise: %s", err)
	assert.Contains(t, err.Error(), "/etc/consul-rehydrate/config.hcl:3:1: ")
}

func TestLoad_MissingFileNamesThePath(t *testing.T) {
	path := filepath.Join(t.TempDir(), "absent.hcl")
	_, err := Load(path)
	require.ErrorIs(t, err, fs.ErrNotExist)
	assert.Contains(t, err.Error(), path)
}

func TestLoad_ResolvesRelativePathsAgainstTheConfigDirectory(t *testing.T) {
	dir := t.TempDir()
	for _, f := range []string{"secrets/consul.token", "tls/ca.pem", "tls/client.pem", "tls/client-key.pem"} {
		write(t, filepath.Join(dir, f), "placeholder\n")
	}
	path := filepath.Join(dir, "config.hcl")
	write(t, path, `
cluster = "main"
servers = 3
consul {
  scheme     = "https"
  token_file = "secrets/consul.token"
  tls {
    ca_file   = "tls/ca.pem"
    cert_file = "tls/client.pem"
    key_file  = "./tls/client-key.pem"
  }
}
provider "local" {
  state_dir     = "../state"
  consul_binary = "bin/consul"
}
`)
	// Loading from elsewhere must not change what the paths mean.
	t.Chdir(t.TempDir())
	c, err := Load(path)
	require.NoError(t, err)

	assert.Equal(t, filepath.Join(dir, "secrets/consul.token"), c.Consul.TokenFile)
	assert.Equal(t, filepath.Join(dir, "tls/ca.pem"), c.Consul.TLS.CAFile)
	assert.Equal(t, filepath.Join(dir, "tls/client.pem"), c.Consul.TLS.CertFile)
	assert.Equal(t, filepath.Join(dir, "tls/client-key.pem"), c.Consul.TLS.KeyFile)
	assert.Equal(t, filepath.Join(filepath.Dir(dir), "state"), c.Provider.Local.StateDir)
	assert.Equal(t, filepath.Join(dir, "bin/consul"), c.Provider.Local.ConsulBinary)
}

func TestParse_LeavesABareConsulBinaryForPATHLookup(t *testing.T) {
	c, err := parse(t, strings.Replace(minimal, `state_dir = "state"`,
		`state_dir = "/abs/state"
  consul_binary = "consul-1.22"`, 1))
	require.NoError(t, err)
	assert.Equal(t, "consul-1.22", c.Provider.Local.ConsulBinary)
	assert.Equal(t, "/abs/state", c.Provider.Local.StateDir)
}

func TestParse_ConsulAddressFromEnvironmentOnlyWhenTheFileOmitsIt(t *testing.T) {
	tests := []struct {
		name, block, env, want string
	}{
		{"default", "", "", DefaultConsulAddress},
		{"environment when absent", "", "10.0.0.5:8500", "10.0.0.5:8500"},
		{"file wins", "consul {\n  address = \"127.0.0.1:18500\"\n}", "10.0.0.5:8500", "127.0.0.1:18500"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := ParseFor([]byte(minimal+tt.block), "config.hcl", JobRoll, env(api.HTTPAddrEnvName, tt.env))
			require.NoError(t, err)
			assert.Equal(t, tt.want, c.Consul.Address)
		})
	}
}

func TestParse_NamesTheEnvironmentVariableOfABadAddress(t *testing.T) {
	_, err := ParseFor([]byte(minimal), "config.hcl", JobRoll, env(api.HTTPAddrEnvName, "not an address"))
	require.Error(t, err)
	assert.Contains(t, err.Error(), `config.hcl:1:1: invalid consul.address "not an address"`)
	assert.Contains(t, err.Error(), "(set by $CONSUL_HTTP_ADDR)")
}

func TestValidate_ReportsEveryProblemOfAConfigBuiltInCode(t *testing.T) {
	c := Default()
	c.Roll.PollInterval = 0
	assertLines(t, []string{
		"cluster is required",
		"servers is required: an odd number from 1 to 7",
		"roll.poll_interval must be positive, got 0s",
		"provider is required: exactly one of local and aws",
	}, c.Validate())

	c.Cluster, c.Servers, c.Roll.PollInterval = "main", 3, DefaultRollPollInterval
	c.Provider = ProviderConfig{Type: ProviderLocal, Local: defaultLocal()}
	c.Provider.Local.StateDir = "/var/lib/consul-rehydrate/local"
	assert.NoError(t, c.Validate())
}

func TestExamples_LoadWithTheValuesTheyShow(t *testing.T) {
	tests := []struct {
		file string
		jobs Jobs
		want func(dir string) *Config
	}{
		{"example.hcl", JobRoll, func(string) *Config {
			c := Default()
			c.Cluster, c.Servers = "main", 3
			c.Provider = ProviderConfig{Type: ProviderLocal, Local: &LocalProvider{
				StateDir:     "/var/lib/consul-rehydrate/local",
				ConsulBinary: "consul",
				Addresses:    netip.MustParsePrefix("127.0.1.0/24"),
			}}
			return c
		}},
		{"example-local.hcl", JobRoll, func(dir string) *Config {
			c := Default()
			c.Cluster, c.Servers = "demo", 3
			c.Provider = ProviderConfig{Type: ProviderLocal, Local: &LocalProvider{
				StateDir:     filepath.Join(dir, "state"),
				ConsulBinary: "consul",
				Addresses:    netip.MustParsePrefix("127.0.2.0/28"),
			}}
			return c
		}},
		{"example-deploy.hcl", JobDeploy, func(dir string) *Config {
			c := Default()
			c.Consul.TokenFile = filepath.Join(dir, "consul.token")
			c.Deploys = []*DeployConfig{{
				Service:         "web",
				Command:         []string{"/opt/web/bin/deploy", "--restart"},
				RollbackCommand: []string{"/opt/web/bin/deploy", "--restart", "--rollback"},
				Timeout:         5 * time.Minute,
				HealthTimeout:   2 * time.Minute,
				MinHealthyTime:  10 * time.Second,
				Artifacts:       []string{"https://releases.example.com/web/*"},
				RequireSHA256:   true,
				NodeFilter:      `NodeMeta.role == "web"`,
			}}
			return c
		}},
		{"example-reconfigure.hcl", JobReconfigure, func(dir string) *Config {
			c := Default()
			c.Reconfigures = []*ReconfigureConfig{{
				Name:    "monitoring",
				Service: "prometheus",
				Template: `# rendered by consul-rehydrate from the healthy instances of {{ .Service }}
{{- range .Instances }}
target {{ quote .Node }} {{ .Address }}:{{ .Port }}{{ if .Tags }} tags={{ quote (join .Tags ",") }}{{ end }}
{{- end }}
`,
				Destination:       "/etc/app/monitoring.conf",
				Mode:              0o640,
				ReloadCommand:     []string{"/bin/systemctl", "reload", "app"},
				ReloadTimeout:     30 * time.Second,
				ExpectReplacement: 10 * time.Minute,
				Probation:         5 * time.Minute,
				StateFile:         "/var/lib/consul-rehydrate/reconfigure/monitoring.json",
			}}
			return c
		}},
		{"example-aws.hcl", JobRoll, func(dir string) *Config {
			c := Default()
			c.Cluster, c.Servers, c.LogLevel = "prod-eu", 5, "warn"
			c.Consul.TokenFile = filepath.Join(dir, "consul.token")
			c.Roll.LaunchTimeout = 20 * 60e9
			c.Roll.StuckWarning = 10 * time.Minute // unset: half of launch_timeout
			c.Provider = ProviderConfig{Type: ProviderAWS, AWS: &AWSProvider{
				Region:           "eu-west-1",
				AutoscalingGroup: "consul-servers",
				LaunchTemplate:   "consul-server",
				MaxAttempts:      5,
				LifecycleHook:    "consul-rehydrate",
				GateMaxHold:      20 * time.Minute,
				Image: ImageFilter{
					Owners:      []string{"self"},
					NamePattern: "consul-server-*",
					Tags:        map[string]string{"role": "consul-server"},
				},
			}}
			return c
		}},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			// Load each example from a directory holding the placeholder
			// token file that example-aws.hcl names.
			dir := t.TempDir()
			src, err := os.ReadFile(tt.file)
			require.NoError(t, err)
			write(t, filepath.Join(dir, tt.file), string(src))
			write(t, filepath.Join(dir, "consul.token"), "placeholder\n")

			c, err := LoadFor(filepath.Join(dir, tt.file), tt.jobs, NoEnv)
			require.NoError(t, err)
			assert.Equal(t, tt.want(dir), c)
		})
	}
}

// roll.stuck_warning: unset, half of launch_timeout; set, it must come before it.
func TestParse_StuckWarning(t *testing.T) {
	tests := []struct {
		name, roll string
		want       time.Duration
		err        string
	}{
		{name: "unset: half the default launch_timeout", want: DefaultRollStuckWarning},
		{name: "unset: half of launch_timeout", roll: `launch_timeout = "3m"`, want: 90 * time.Second},
		{name: "set", roll: "launch_timeout = \"3m\"\nstuck_warning = \"1m\"", want: time.Minute},
		{name: "not before launch_timeout", roll: "launch_timeout = \"3m\"\nstuck_warning = \"3m\"",
			err: "config.hcl:9:1: roll.stuck_warning must be less than roll.launch_timeout (3m), got 3m"},
		{name: "zero", roll: `stuck_warning = "0s"`, err: "roll.stuck_warning must be positive, got 0s"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := minimal
			if tt.roll != "" {
				src += "roll {\n" + tt.roll + "\n}\n"
			}
			c, err := ParseFor([]byte(src), "config.hcl", JobRoll, NoEnv)
			if tt.err != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tt.err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, c.Roll.StuckWarning)
		})
	}
}

func TestParse_AcceptsHCLJSONSyntax(t *testing.T) {
	c, err := Load("testdata/example.hcl.json")
	require.NoError(t, err)
	assert.Equal(t, "json", c.Cluster)
	assert.Equal(t, 1, c.Servers)
	assert.Zero(t, c.Lock.LockDelay)
	assert.Equal(t, netip.MustParsePrefix("127.0.3.0/30"), c.Provider.Local.Addresses)
}

// TestKeys_MatchTheFileSchema keeps the Key constants and the file structs'
// hcl tags in step.
func TestKeys_MatchTheFileSchema(t *testing.T) {
	var schema []string
	var walk func(v any, prefix string)
	walk = func(v any, prefix string) {
		rt := reflect.TypeOf(v).Elem()
		for i := range rt.NumField() {
			name, kind, _ := strings.Cut(rt.Field(i).Tag.Get("hcl"), ",")
			switch kind {
			case "optional", "attr", "":
				schema = append(schema, prefix+name)
			case "block":
				schema = append(schema, prefix+name)
				if child := blockStruct(v, name); name != "provider" {
					walk(child, prefix+name+".")
				}
			}
		}
	}
	walk(&fileConfig{}, "")
	schema = append(schema, KeyLocal, KeyAWS)
	walk(&fileLocal{}, KeyLocal+".")
	walk(&fileAWS{}, KeyAWS+".")

	keys := []string{
		KeyCluster, KeyServers, KeyLogLevel,
		KeyConsul, KeyConsulAddress, KeyConsulScheme, KeyConsulDatacenter, KeyConsulToken, KeyConsulTokenFile,
		KeyConsulTLS, KeyConsulTLSCAFile, KeyConsulTLSCertFile, KeyConsulTLSKeyFile, KeyConsulTLSServerName,
		KeyConsulTLSInsecureSkipVerify,
		KeyLock, KeyLockSessionTTL, KeyLockLockDelay, KeyLockWait,
		KeyRoll, KeyRollEventName, KeyRollStabilization, KeyRollLaunchTimeout, KeyRollLeaveTimeout,
		KeyRollMaxTrailingLogs, KeyRollAllowDowngrade, KeyRollPollInterval, KeyRollStuckWarning,
		KeyProvider, KeyLocal, KeyLocalStateDir, KeyLocalConsulBinary, KeyLocalAddresses,
		KeyAWS, KeyAWSRegion, KeyAWSAutoscalingGroup, KeyAWSLaunchTemplate, KeyAWSEndpointURL, KeyAWSMaxAttempts,
		KeyAWSLifecycleHook, KeyAWSGateMaxHold, KeyAWSIMDSEndpoint,
		KeyAWSImage, KeyAWSImageOwners, KeyAWSImageNamePattern, KeyAWSImageTags,
		KeyDeploy, KeyReconfigure,
	}
	for _, attr := range []string{AttrReconfigureService, AttrReconfigureTemplate, AttrReconfigureTemplateFile,
		AttrReconfigureDestination, AttrReconfigureMode, AttrReconfigureReloadCommand, AttrReconfigureReloadTimeout,
		AttrReconfigureExpectReplacement, AttrReconfigureProbation, AttrReconfigureStateFile} {
		keys = append(keys, KeyReconfigure+"."+attr)
	}
	for _, attr := range []string{AttrDeployCommand, AttrDeployRollback, AttrDeployTimeout,
		AttrDeployHealthTimeout, AttrDeployMinHealthyTime, AttrDeployArtifacts, AttrDeployRequireSHA256,
		AttrDeployNodeFilter} {
		keys = append(keys, KeyDeploy+"."+attr)
	}
	slices.Sort(schema)
	slices.Sort(keys)
	assert.Equal(t, keys, schema)
}

// assertLines checks that err has exactly one line per want, each starting
// with (and usually equal to) its want.
func assertLines(t *testing.T, want []string, err error) {
	t.Helper()
	require.Error(t, err)
	lines := strings.Split(err.Error(), "\n")
	require.Len(t, lines, len(want), "error:\n%s", err)
	for i := range want {
		assert.Truef(t, strings.HasPrefix(lines[i], want[i]) ||
			strings.HasPrefix(lines[i], "testdata/"+want[i]), "line %d:\n got: %s\nwant: %s...", i+1, lines[i], want[i])
	}
}

func write(t *testing.T, path, content string) {
	t.Helper()
	require.NoError(t, os.MkdirAll(filepath.Dir(path), 0o755))
	require.NoError(t, os.WriteFile(path, []byte(content), 0o600))
}

func TestParse_GivesEveryProblemOfAFileAPosition(t *testing.T) {
	_, err := parse(t, `cluster = "main"`)
	var cerr *Error
	require.True(t, errors.As(err, &cerr))
	assert.NotEmpty(t, cerr.Diagnostics)
	for _, d := range cerr.Diagnostics {
		assert.NotNil(t, d.Subject, "every problem of a parsed file has a position: %s", d.Summary)
	}
}

// env is an environment of one variable.
func env(name, value string) Getenv {
	return func(k string) string {
		if k == name {
			return value
		}
		return ""
	}
}

func TestParseFor_ReadsTheEnvironmentOnlyThroughGetenv(t *testing.T) {
	// The process environment says one thing, the program's another: only the
	// program's counts.
	t.Setenv(api.HTTPAddrEnvName, "10.9.9.9:8500")
	t.Setenv(api.HTTPTokenEnvName, "process-token")
	c, err := ParseFor([]byte(minimal), "config.hcl", JobRoll, func(k string) string {
		return map[string]string{api.HTTPAddrEnvName: "127.0.0.7:8500", api.HTTPTokenEnvName: "program-token"}[k]
	})
	require.NoError(t, err)
	assert.Equal(t, "127.0.0.7:8500", c.Consul.Address)
	tok, err := c.Consul.Token()
	require.NoError(t, err)
	assert.Equal(t, "program-token", tok)
	assert.NotContains(t, fmt.Sprintf("%v %+v %#v", c, c, c), "program-token", "the token never prints")

	c, err = ParseFor([]byte(minimal), "config.hcl", JobRoll, nil)
	require.NoError(t, err)
	assert.Equal(t, DefaultConsulAddress, c.Consul.Address)
	tok, err = c.Consul.Token()
	require.NoError(t, err)
	assert.Empty(t, tok)
}

func TestFromEnv_IsTheDefaultsWithTheConsulCLIsVariables(t *testing.T) {
	c, err := FromEnv(env(api.HTTPAddrEnvName, "127.0.0.9:8500"))
	require.NoError(t, err)
	assert.Equal(t, "127.0.0.9:8500", c.Consul.Address)
	assert.Equal(t, DefaultLockSessionTTL, c.Lock.SessionTTL)

	_, err = FromEnv(env(api.HTTPAddrEnvName, "not an address"))
	require.ErrorContains(t, err, "(set by $CONSUL_HTTP_ADDR)")
}
