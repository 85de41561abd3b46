package config

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/hashicorp/hcl/v2/json"
)

// Getenv reads an environment variable; a program passes its own, so that loading a
// configuration never reads the process environment behind the caller's back.
type Getenv func(string) string

// NoEnv is an empty environment.
func NoEnv(string) string { return "" }

// Load reads and parses the configuration file at path for the roll, in an empty
// environment; see ParseFor.
func Load(path string) (*Config, error) { return LoadFor(path, JobRoll, NoEnv) }

// LoadFor reads and parses the configuration file at path for jobs; see ParseFor.
func LoadFor(path string, jobs Jobs, getenv Getenv) (*Config, error) {
	src, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	return ParseFor(src, path, jobs, getenv)
}

// FromEnv is the configuration of a program that runs without a file (e.g.
// `rehydrate deploy status`): the defaults, with the consul CLI's variables
// ($CONSUL_HTTP_ADDR, $CONSUL_HTTP_TOKEN, $CONSUL_HTTP_TOKEN_FILE, $CONSUL_CACERT,
// ...; see ConsulConfig) read through getenv, as the consul CLI reads them.
func FromEnv(getenv Getenv) (*Config, error) {
	return ParseFor(nil, "(environment)", 0, getenv)
}

// Parse parses a file for the roll in an empty environment: ParseFor(src,
// filename, JobRoll, NoEnv).
func Parse(src []byte, filename string) (*Config, error) {
	return ParseFor(src, filename, JobRoll, NoEnv)
}

// ParseFor parses src, the contents of the configuration file filename, for the
// jobs a program does, reading the environment only through getenv (nil: an empty
// one; it supplies the consul CLI's variables for what the file leaves unset, see
// ConsulConfig): HCL native syntax, or HCL's JSON syntax when filename ends
// in ".json". It starts from Default, overlays what the file sets and validates
// the result: every block the file has, and the settings jobs require.
// Relative paths in the file resolve against filename's directory. A file
// that does not parse, decode or validate gives an *Error listing every
// problem with its position.
func ParseFor(src []byte, filename string, jobs Jobs, getenv Getenv) (*Config, error) {
	if getenv == nil {
		getenv = NoEnv
	}
	var file *hcl.File
	var diags hcl.Diagnostics
	if strings.HasSuffix(filename, ".json") {
		file, diags = json.Parse(src, filename)
	} else {
		file, diags = hclsyntax.ParseConfig(src, filename, hcl.InitialPos)
	}
	if diags.HasErrors() {
		// Decoding a body that did not parse only adds noise.
		return nil, newError(diags)
	}
	dir, err := filepath.Abs(filepath.Dir(filename))
	if err != nil {
		return nil, fmt.Errorf("resolve directory of %s: %w", filename, err)
	}
	d := &decoder{
		jobs:    jobs,
		getenv:  getenv,
		dir:     dir,
		missing: file.Body.MissingItemRange(),
		pos:     map[string]hcl.Range{},
		bad:     map[string]bool{},
		fromEnv: map[string]string{},
	}
	c := d.config(file.Body)
	for _, p := range c.validate(jobs) {
		// A key that failed to decode has already been reported; its
		// value is the default, so any problem with it would mislead.
		if !d.reported(p.key) {
			msg := p.msg
			if env, ok := d.fromEnv[p.key]; ok {
				msg += " (set by $" + env + ")"
			}
			d.errorf(p.key, "%s", msg)
		}
	}
	if err := newError(d.diags); err != nil {
		return nil, err
	}
	return c, nil
}

// The file* types are the file's schema: every attribute is a pointer, nil
// when the file does not set it, so that only what is set overrides Default.
type fileConfig struct {
	Cluster   *string        `hcl:"cluster,optional"`
	Servers   *int           `hcl:"servers,optional"`
	LogLevel  *string        `hcl:"log_level,optional"`
	Consul    *fileConsul    `hcl:"consul,block"`
	Lock      *fileLock      `hcl:"lock,block"`
	Roll      *fileRoll      `hcl:"roll,block"`
	Providers []fileProvider `hcl:"provider,block"`
	Deploys   []fileDeploy   `hcl:"deploy,block"`
	Reconfigs []fileReconfig `hcl:"reconfigure,block"`
}

type fileReconfig struct {
	Name              string    `hcl:"name,label"`
	Service           *string   `hcl:"service,optional"`
	Template          *string   `hcl:"template,optional"`
	TemplateFile      *string   `hcl:"template_file,optional"`
	Destination       *string   `hcl:"destination,optional"`
	Mode              *string   `hcl:"mode,optional"`
	ReloadCommand     *[]string `hcl:"reload_command,optional"`
	ReloadTimeout     *string   `hcl:"reload_timeout,optional"`
	ExpectReplacement *string   `hcl:"expect_replacement,optional"`
	Probation         *string   `hcl:"probation,optional"`
	StateFile         *string   `hcl:"state_file,optional"`
	DefRange          hcl.Range `hcl:",def_range"`
}

type fileDeploy struct {
	Service         string    `hcl:"service,label"`
	Command         *[]string `hcl:"command,optional"`
	RollbackCommand *[]string `hcl:"rollback_command,optional"`
	Timeout         *string   `hcl:"timeout,optional"`
	HealthTimeout   *string   `hcl:"health_timeout,optional"`
	MinHealthyTime  *string   `hcl:"min_healthy_time,optional"`
	Artifacts       *[]string `hcl:"artifacts,optional"`
	RequireSHA256   *bool     `hcl:"require_sha256,optional"`
	NodeFilter      *string   `hcl:"node_filter,optional"`
	DefRange        hcl.Range `hcl:",def_range"`
}

type fileConsul struct {
	Address    *string  `hcl:"address,optional"`
	Scheme     *string  `hcl:"scheme,optional"`
	Datacenter *string  `hcl:"datacenter,optional"`
	Token      *Secret  `hcl:"token,optional"`
	TokenFile  *string  `hcl:"token_file,optional"`
	TLS        *fileTLS `hcl:"tls,block"`
}

type fileTLS struct {
	CAFile             *string `hcl:"ca_file,optional"`
	CertFile           *string `hcl:"cert_file,optional"`
	KeyFile            *string `hcl:"key_file,optional"`
	ServerName         *string `hcl:"server_name,optional"`
	InsecureSkipVerify *bool   `hcl:"insecure_skip_verify,optional"`
}

type fileLock struct {
	SessionTTL *string `hcl:"session_ttl,optional"`
	LockDelay  *string `hcl:"lock_delay,optional"`
	Wait       *string `hcl:"wait,optional"`
}

type fileRoll struct {
	EventName       *string `hcl:"event_name,optional"`
	Stabilization   *string `hcl:"stabilization,optional"`
	LaunchTimeout   *string `hcl:"launch_timeout,optional"`
	LeaveTimeout    *string `hcl:"leave_timeout,optional"`
	MaxTrailingLogs *int    `hcl:"max_trailing_logs,optional"`
	AllowDowngrade  *bool   `hcl:"allow_downgrade,optional"`
	PollInterval    *string `hcl:"poll_interval,optional"`
	StuckWarning    *string `hcl:"stuck_warning,optional"`
}

// fileProvider defers the body's decoding until the label names its schema.
type fileProvider struct {
	Type     string    `hcl:"type,label"`
	Body     hcl.Body  `hcl:",remain"`
	DefRange hcl.Range `hcl:",def_range"`
}

type fileLocal struct {
	StateDir     *string `hcl:"state_dir,optional"`
	ConsulBinary *string `hcl:"consul_binary,optional"`
	Addresses    *string `hcl:"addresses,optional"`
}

type fileAWS struct {
	Region           *string    `hcl:"region,optional"`
	AutoscalingGroup *string    `hcl:"autoscaling_group,optional"`
	LaunchTemplate   *string    `hcl:"launch_template,optional"`
	EndpointURL      *string    `hcl:"endpoint_url,optional"`
	MaxAttempts      *int       `hcl:"max_attempts,optional"`
	LifecycleHook    *string    `hcl:"lifecycle_hook,optional"`
	GateMaxHold      *string    `hcl:"gate_max_hold,optional"`
	IMDSEndpoint     *string    `hcl:"imds_endpoint,optional"`
	Image            *fileImage `hcl:"image,block"`
}

type fileImage struct {
	Owners      *[]string          `hcl:"owners,optional"`
	NamePattern *string            `hcl:"name_pattern,optional"`
	Tags        *map[string]string `hcl:"tags,optional"`
}

// decoder turns a parsed file into a Config, collecting every problem.
type decoder struct {
	jobs    Jobs                 // what the program does with the file
	getenv  Getenv               // the program's environment
	dir     string               // the config file's directory, absolute
	missing hcl.Range            // where to report a problem with no better place
	pos     map[string]hcl.Range // where each attribute and block is, by key
	bad     map[string]bool      // keys with a problem reported already
	fromEnv map[string]string    // keys set from an environment variable
	diags   hcl.Diagnostics
}

// lockWaitSlack is how much longer than a crashed holder's session an unset lock.wait
// lasts.
const lockWaitSlack = 15 * time.Second

func (d *decoder) config(body hcl.Body) *Config {
	var f fileConfig
	d.decode(body, &f, "")
	c := Default()
	set(&c.Cluster, f.Cluster)
	set(&c.Servers, f.Servers)
	set(&c.LogLevel, f.LogLevel)
	if f.Consul != nil {
		set(&c.Consul.Address, f.Consul.Address)
		set(&c.Consul.Scheme, f.Consul.Scheme)
		set(&c.Consul.Datacenter, f.Consul.Datacenter)
		set(&c.Consul.InlineToken, f.Consul.Token)
		d.path(&c.Consul.TokenFile, f.Consul.TokenFile)
		if t := f.Consul.TLS; t != nil {
			d.path(&c.Consul.TLS.CAFile, t.CAFile)
			d.path(&c.Consul.TLS.CertFile, t.CertFile)
			d.path(&c.Consul.TLS.KeyFile, t.KeyFile)
			set(&c.Consul.TLS.ServerName, t.ServerName)
			set(&c.Consul.TLS.InsecureSkipVerify, t.InsecureSkipVerify)
		}
	}
	d.consulEnv(&c.Consul)
	if f.Lock != nil {
		d.duration(&c.Lock.SessionTTL, f.Lock.SessionTTL, KeyLockSessionTTL)
		d.duration(&c.Lock.LockDelay, f.Lock.LockDelay, KeyLockLockDelay)
		d.duration(&c.Lock.Wait, f.Lock.Wait, KeyLockWait)
		if f.Lock.Wait == nil {
			// Unset, the wait follows the session it must outwait (see LockConfig.Wait).
			c.Lock.Wait = max(c.Lock.Wait, 2*c.Lock.SessionTTL+c.Lock.LockDelay+lockWaitSlack)
		}
	}
	if r := f.Roll; r != nil {
		set(&c.Roll.EventName, r.EventName)
		d.duration(&c.Roll.Stabilization, r.Stabilization, KeyRollStabilization)
		d.duration(&c.Roll.LaunchTimeout, r.LaunchTimeout, KeyRollLaunchTimeout)
		d.duration(&c.Roll.LeaveTimeout, r.LeaveTimeout, KeyRollLeaveTimeout)
		set(&c.Roll.MaxTrailingLogs, r.MaxTrailingLogs)
		set(&c.Roll.AllowDowngrade, r.AllowDowngrade)
		d.duration(&c.Roll.PollInterval, r.PollInterval, KeyRollPollInterval)
		d.duration(&c.Roll.StuckWarning, r.StuckWarning, KeyRollStuckWarning)
	}
	if f.Roll == nil || f.Roll.StuckWarning == nil {
		// Unset, the warning follows the launch_timeout it warns ahead of.
		c.Roll.StuckWarning = c.Roll.LaunchTimeout / 2
	}
	c.Provider = d.provider(f.Providers)
	c.Deploys = d.deploys(f.Deploys)
	c.Reconfigures = d.reconfigures(f.Reconfigs)
	return c
}

// consulEnv fills in what the file leaves unset of the consul block from the consul
// CLI's variables, read through the program's getenv, as api.DefaultConfig reads
// them (hashicorp/consul api/api.go): a watch handler that the agent starts with
// CONSUL_HTTP_ADDR=https://..., CONSUL_CACERT and CONSUL_HTTP_TOKEN_FILE talks
// HTTPS with that CA and token even when its file has no consul block. The file
// wins over each variable.
func (d *decoder) consulEnv(cc *ConsulConfig) {
	fromEnv := func(key, name string, dst *string, abs bool) {
		if _, inFile := d.pos[key]; inFile {
			return
		}
		v := d.getenv(name)
		if v == "" {
			return
		}
		if abs {
			// A path from the environment means what it means to the program: relative
			// to its working directory, not to the file's.
			if a, err := filepath.Abs(v); err == nil {
				v = a
			}
		}
		*dst, d.fromEnv[key] = v, name
	}
	fromEnv(KeyConsulAddress, api.HTTPAddrEnvName, &cc.Address, false)
	if _, inFile := d.pos[KeyConsulScheme]; !inFile {
		// consul CLI: an https:// address, or CONSUL_HTTP_SSL=true, means HTTPS
		// (api.NewClient and api.DefaultConfig).
		if strings.HasPrefix(cc.Address, "https://") {
			cc.Scheme = "https"
		} else if v := d.getenv(api.HTTPSSLEnvName); v != "" {
			on, err := strconv.ParseBool(v)
			switch {
			case err != nil:
				d.errorf(KeyConsulScheme, "$%s %q must be true or false", api.HTTPSSLEnvName, v)
			case on:
				cc.Scheme, d.fromEnv[KeyConsulScheme] = "https", api.HTTPSSLEnvName
			}
		}
	}
	// The token: the file's token or token_file, else $CONSUL_HTTP_TOKEN_FILE, else
	// $CONSUL_HTTP_TOKEN (see ConsulConfig.Token).
	_, inlineSet := d.pos[KeyConsulToken]
	if !inlineSet {
		fromEnv(KeyConsulTokenFile, api.HTTPTokenFileEnvName, &cc.TokenFile, true)
	}
	cc.EnvToken = Secret(d.getenv(api.HTTPTokenEnvName))
	fromEnv(KeyConsulTLSCAFile, api.HTTPCAFile, &cc.TLS.CAFile, true)
	fromEnv(KeyConsulTLSServerName, api.HTTPTLSServerName, &cc.TLS.ServerName, false)
	// A client certificate and its key come as a pair: the file's, or the
	// environment's, never one of each.
	_, certSet := d.pos[KeyConsulTLSCertFile]
	_, keySet := d.pos[KeyConsulTLSKeyFile]
	if !certSet && !keySet {
		fromEnv(KeyConsulTLSCertFile, api.HTTPClientCert, &cc.TLS.CertFile, true)
		fromEnv(KeyConsulTLSKeyFile, api.HTTPClientKey, &cc.TLS.KeyFile, true)
	}
}

func (d *decoder) reconfigures(blocks []fileReconfig) []*ReconfigureConfig {
	var out []*ReconfigureConfig
	first := map[string]hcl.Range{}
	for _, b := range blocks {
		if at, dup := first[b.Name]; dup {
			d.duplicate(fmt.Sprintf("duplicate reconfigure block %q: the first is at %s", b.Name, position(at)), b.DefRange)
			continue
		}
		first[b.Name] = b.DefRange
		key := KeyReconfigure + "." + b.Name + "."
		rc := &ReconfigureConfig{
			Name:              b.Name,
			Service:           b.Name,
			ReloadTimeout:     DefaultReconfigureReloadTimeout,
			ExpectReplacement: DefaultReconfigureExpectReplacement,
			Probation:         DefaultReconfigureProbation,
			StateFile:         filepath.Join(DefaultReconfigureStateDir, b.Name+".json"),
		}
		set(&rc.Service, b.Service)
		switch {
		case b.Template != nil && b.TemplateFile != nil:
			d.errorf(key+AttrReconfigureTemplateFile, "%s%s and %s are mutually exclusive", key, AttrReconfigureTemplate, AttrReconfigureTemplateFile)
		case b.Template != nil:
			rc.Template = *b.Template
		case b.TemplateFile != nil:
			d.path(&rc.TemplateFile, b.TemplateFile)
			src, err := os.ReadFile(rc.TemplateFile)
			if err != nil {
				d.errorf(key+AttrReconfigureTemplateFile, "%s%s: %v", key, AttrReconfigureTemplateFile, err)
			}
			rc.Template = string(src)
		default:
			d.errorf(strings.TrimSuffix(key, "."), "%s%s or %s is required: what to render", key, AttrReconfigureTemplate, AttrReconfigureTemplateFile)
		}
		d.path(&rc.Destination, b.Destination)
		if b.Mode != nil {
			m, err := strconv.ParseUint(*b.Mode, 8, 32)
			if err != nil || m > 0o777 {
				d.errorf(key+AttrReconfigureMode, "invalid %s%s %q: want an octal permission such as \"0644\"", key, AttrReconfigureMode, *b.Mode)
			} else {
				rc.Mode = os.FileMode(m)
			}
		}
		rc.ReloadCommand = d.command(b.ReloadCommand)
		d.duration(&rc.ReloadTimeout, b.ReloadTimeout, key+AttrReconfigureReloadTimeout)
		d.duration(&rc.ExpectReplacement, b.ExpectReplacement, key+AttrReconfigureExpectReplacement)
		d.duration(&rc.Probation, b.Probation, key+AttrReconfigureProbation)
		d.path(&rc.StateFile, b.StateFile)
		out = append(out, rc)
	}
	return out
}

func (d *decoder) deploys(blocks []fileDeploy) []*DeployConfig {
	var out []*DeployConfig
	first := map[string]hcl.Range{}
	for _, b := range blocks {
		if at, dup := first[b.Service]; dup {
			d.duplicate(fmt.Sprintf("duplicate deploy block for service %q: the first is at %s", b.Service, position(at)), b.DefRange)
			continue
		}
		first[b.Service] = b.DefRange
		key := KeyDeploy + "." + b.Service + "."
		dc := &DeployConfig{
			Service:        b.Service,
			Timeout:        DefaultDeployTimeout,
			HealthTimeout:  DefaultDeployHealthTimeout,
			MinHealthyTime: DefaultDeployMinHealthyTime,
		}
		dc.Command = d.command(b.Command)
		dc.RollbackCommand = d.command(b.RollbackCommand)
		if dc.RollbackCommand == nil {
			dc.RollbackCommand = dc.Command
		}
		d.duration(&dc.Timeout, b.Timeout, key+AttrDeployTimeout)
		d.duration(&dc.HealthTimeout, b.HealthTimeout, key+AttrDeployHealthTimeout)
		d.duration(&dc.MinHealthyTime, b.MinHealthyTime, key+AttrDeployMinHealthyTime)
		if b.Artifacts != nil {
			dc.Artifacts = slices.Clone(*b.Artifacts)
		}
		set(&dc.RequireSHA256, b.RequireSHA256)
		set(&dc.NodeFilter, b.NodeFilter)
		out = append(out, dc)
	}
	return out
}

// command copies an argv, resolving a relative program path (one with a
// separator; a bare name is looked up on PATH when run) against the file's
// directory.
func (d *decoder) command(src *[]string) []string {
	if src == nil {
		return nil
	}
	argv := slices.Clone(*src)
	if len(argv) > 0 && strings.ContainsRune(argv[0], filepath.Separator) {
		d.path(&argv[0], &argv[0])
	}
	return argv
}

func (d *decoder) provider(blocks []fileProvider) ProviderConfig {
	if len(blocks) == 0 {
		if d.jobs&JobRoll == 0 {
			return ProviderConfig{}
		}
		d.errorf(KeyProvider, "missing provider block: want provider %q { ... } or provider %q { ... }",
			ProviderLocal, ProviderAWS)
		return ProviderConfig{}
	}
	for _, b := range blocks[1:] {
		d.duplicate(fmt.Sprintf("duplicate provider block: only one is allowed, the first is at %s", position(blocks[0].DefRange)), b.DefRange)
	}
	b := blocks[0]
	key := KeyProvider + "." + b.Type
	switch b.Type {
	case ProviderLocal:
		var f fileLocal
		d.decode(b.Body, &f, key+".")
		p := defaultLocal()
		d.path(&p.StateDir, f.StateDir)
		if f.ConsulBinary != nil {
			// A bare name is looked up on PATH when used; only a path
			// is relative to the config file.
			p.ConsulBinary = *f.ConsulBinary
			if strings.ContainsRune(p.ConsulBinary, filepath.Separator) {
				d.path(&p.ConsulBinary, f.ConsulBinary)
			}
		}
		if f.Addresses != nil {
			prefix, err := netip.ParsePrefix(*f.Addresses)
			if err != nil {
				d.errorf(KeyLocalAddresses, "invalid CIDR %q for %s: %v", *f.Addresses, KeyLocalAddresses, err)
			}
			p.Addresses = prefix
		}
		return ProviderConfig{Type: ProviderLocal, Local: p}
	case ProviderAWS:
		var f fileAWS
		d.decode(b.Body, &f, key+".")
		p := defaultAWS()
		set(&p.Region, f.Region)
		set(&p.AutoscalingGroup, f.AutoscalingGroup)
		set(&p.LaunchTemplate, f.LaunchTemplate)
		set(&p.EndpointURL, f.EndpointURL)
		set(&p.MaxAttempts, f.MaxAttempts)
		set(&p.LifecycleHook, f.LifecycleHook)
		d.duration(&p.GateMaxHold, f.GateMaxHold, KeyAWSGateMaxHold)
		set(&p.IMDSEndpoint, f.IMDSEndpoint)
		if f.Image == nil {
			d.errorf(KeyAWSImage, "missing %s block: it selects the images servers may run", KeyAWSImage)
		} else {
			set(&p.Image.Owners, f.Image.Owners)
			set(&p.Image.NamePattern, f.Image.NamePattern)
			set(&p.Image.Tags, f.Image.Tags)
		}
		return ProviderConfig{Type: ProviderAWS, AWS: p}
	default:
		d.errorf(key, "unknown provider %q: want %q or %q", b.Type, ProviderLocal, ProviderAWS)
		d.bad[KeyProvider] = true
		return ProviderConfig{}
	}
}

// decode decodes body into v, a pointer to a file struct whose keys start
// with prefix, first recording where each of its attributes and blocks is.
func (d *decoder) decode(body hcl.Body, v any, prefix string) {
	d.locate(body, v, prefix)
	for _, diag := range gohcl.DecodeBody(body, nil, v) {
		// gohcl's messages (e.g. "a number is required") do not say which
		// attribute is wrong; name it when the position tells.
		if key := d.keyAt(diag.Subject); key != "" {
			d.bad[key] = true
			diag.Summary = fmt.Sprintf("invalid value for %s", key)
			diag.Detail = strings.TrimPrefix(diag.Detail, "Unsuitable value: ")
		}
		d.diags = append(d.diags, diag)
	}
}

// locate records in d.pos where body defines each attribute and block that
// the file struct v declares, recursing into blocks.
func (d *decoder) locate(body hcl.Body, v any, prefix string) {
	schema, _ := gohcl.ImpliedBodySchema(v)
	content, _, _ := body.PartialContent(schema)
	if content == nil {
		return
	}
	for name, attr := range content.Attributes {
		d.pos[prefix+name] = attr.Range
	}
	for _, b := range content.Blocks {
		key := prefix + strings.Join(append([]string{b.Type}, b.Labels...), ".")
		if _, dup := d.pos[key]; dup {
			continue // gohcl reports the duplicate
		}
		d.pos[key] = b.DefRange
		if child := blockStruct(v, b.Type); child != nil {
			d.locate(b.Body, child, key+".")
		}
	}
}

// blockStruct returns a new value of the struct that v's field tagged
// `hcl:"<name>,block"` decodes into, or nil if v has none.
func blockStruct(v any, name string) any {
	t := reflect.TypeOf(v).Elem()
	for i := range t.NumField() {
		if f := t.Field(i); f.Tag.Get("hcl") == name+",block" {
			ft := f.Type
			for ft.Kind() == reflect.Pointer || ft.Kind() == reflect.Slice {
				ft = ft.Elem()
			}
			return reflect.New(ft).Interface()
		}
	}
	return nil
}

// keyAt returns the key of the attribute that contains r, if any.
func (d *decoder) keyAt(r *hcl.Range) string {
	if r == nil {
		return ""
	}
	for key, at := range d.pos {
		if at.Filename == r.Filename && at.ContainsOffset(r.Start.Byte) {
			return key
		}
	}
	return ""
}

// at returns where the problem with key is: the key's own attribute or
// block, else its closest enclosing block, else the file's start.
func (d *decoder) at(key string) *hcl.Range {
	for k := key; ; {
		if r, ok := d.pos[k]; ok {
			return &r
		}
		i := strings.LastIndexByte(k, '.')
		if i < 0 {
			return d.missing.Ptr()
		}
		k = k[:i]
	}
}

// reported says whether a problem with key, or with a key inside it, has
// been reported already.
func (d *decoder) reported(key string) bool {
	for k := range d.bad {
		if k == key || strings.HasPrefix(k, key+".") {
			return true
		}
	}
	return false
}

// duplicate reports the block at at, which repeats an earlier one.
func (d *decoder) duplicate(summary string, at hcl.Range) {
	d.diags = append(d.diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: summary, Subject: at.Ptr()})
}

func (d *decoder) errorf(key, format string, args ...any) {
	d.bad[key] = true
	d.diags = append(d.diags, &hcl.Diagnostic{
		Severity: hcl.DiagError,
		Summary:  fmt.Sprintf(format, args...),
		Subject:  d.at(key),
	})
}

func (d *decoder) duration(dst *time.Duration, src *string, key string) {
	if src == nil {
		return
	}
	v, err := time.ParseDuration(*src)
	if err != nil {
		d.errorf(key, "invalid duration %q for %s: %v", *src, key, err)
		return
	}
	*dst = v
}

// path sets dst to src resolved against the config file's directory.
func (d *decoder) path(dst, src *string) {
	if src == nil {
		return
	}
	*dst = *src
	if *src != "" && !filepath.IsAbs(*src) {
		*dst = filepath.Join(d.dir, *src)
	}
}

// set overrides the default in dst when the file sets src.
func set[T any](dst, src *T) {
	if src != nil {
		*dst = *src
	}
}
