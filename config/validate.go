package config

import (
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"
	"text/template"
	"time"

	"github.com/hashicorp/hcl/v2"

	"github.com/consul-rehydrate/consul-rehydrate/internal/reconfigure/tmplfunc"
)

// Limits that Validate enforces.
const (
	minServers        = 1
	maxServers        = 7
	minSessionTTL     = 10 * time.Second // Consul's limits
	maxSessionTTL     = 24 * time.Hour
	maxLockDelay      = 60 * time.Second
	maxAWSMaxAttempts = 20
)

var (
	// The names' grammars: see grammar.go.
	logLevels = []string{"trace", "debug", "info", "warn", "error"}
	schemes   = []string{"http", "https"}
	loopback  = netip.MustParsePrefix("127.0.0.0/8")
)

// problem is one thing wrong with a Config, named by the key it concerns.
type problem struct{ key, msg string }

// Validate reports every problem with c for the roll as an *Error; see
// ValidateFor.
func (c *Config) Validate() error { return c.ValidateFor(JobRoll) }

// ValidateFor reports every problem with c for jobs as an *Error. It needs no
// file: LoadFor and ParseFor call it on what they decode and add each problem's
// position. It checks that files named by c exist, but reads none of them.
func (c *Config) ValidateFor(jobs Jobs) error {
	var diags hcl.Diagnostics
	for _, p := range c.validate(jobs) {
		diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: p.msg})
	}
	return newError(diags)
}

func (c *Config) validate(jobs Jobs) []problem {
	var ps []problem
	add := func(key, format string, args ...any) {
		ps = append(ps, problem{key, fmt.Sprintf(format, args...)})
	}
	rolls := jobs&JobRoll != 0

	switch {
	case c.Cluster == "":
		if rolls {
			add(KeyCluster, "%s is required", KeyCluster)
		}
	case !clusterName.match(c.Cluster):
		add(KeyCluster, "%s %q must be 1 to 63 characters of a-z, 0-9, - and _", KeyCluster, c.Cluster)
	}
	switch {
	case c.Servers == 0:
		if rolls {
			add(KeyServers, "%s is required: an odd number from %d to %d", KeyServers, minServers, maxServers)
		}
	case c.Servers < minServers || c.Servers > maxServers || c.Servers%2 == 0:
		add(KeyServers, "%s must be an odd number from %d to %d, got %d", KeyServers, minServers, maxServers, c.Servers)
	}
	if !slices.Contains(logLevels, c.LogLevel) {
		add(KeyLogLevel, "%s %q must be one of %s", KeyLogLevel, c.LogLevel, strings.Join(logLevels, ", "))
	}

	cc := c.Consul
	if err := checkAddress(cc.Address); err != nil {
		add(KeyConsulAddress, "invalid %s %q: %v", KeyConsulAddress, cc.Address, err)
	}
	switch {
	case !slices.Contains(schemes, cc.Scheme):
		add(KeyConsulScheme, "%s %q must be http or https", KeyConsulScheme, cc.Scheme)
	case cc.Scheme == "http" && strings.HasPrefix(cc.Address, "https://"):
		// The client would talk HTTPS anyway (api.NewClient): say so rather than
		// leave the file saying one thing and the program doing another.
		add(KeyConsulScheme, "%s \"http\" contradicts the https:// of %s %q: drop one", KeyConsulScheme, KeyConsulAddress, cc.Address)
	}
	if cc.Datacenter != "" && !datacenterName.match(cc.Datacenter) {
		add(KeyConsulDatacenter, "%s %q must be characters of a-z, 0-9, - and _", KeyConsulDatacenter, cc.Datacenter)
	}
	if cc.InlineToken != "" && cc.TokenFile != "" {
		add(KeyConsulToken, "%s and %s are mutually exclusive: keep %s", KeyConsulToken, KeyConsulTokenFile, KeyConsulTokenFile)
	}
	// The trigger brings its own token (see JobTrigger): the file's token_file is
	// the servers', absent where the trigger runs.
	tokenFile := cc.TokenFile
	if jobs&JobTrigger != 0 {
		tokenFile = ""
	}
	if cc.InlineToken == "" {
		// (With both set, the one problem is that both are.)
		if err := checkSecretFile(tokenFile); err != nil {
			add(KeyConsulTokenFile, "%s: %v", KeyConsulTokenFile, err)
		}
	}
	for _, f := range []struct{ key, path string }{
		{KeyConsulTokenFile, tokenFile},
		{KeyConsulTLSCAFile, cc.TLS.CAFile},
		{KeyConsulTLSCertFile, cc.TLS.CertFile},
		{KeyConsulTLSKeyFile, cc.TLS.KeyFile},
	} {
		if err := checkFile(f.path); err != nil {
			add(f.key, "%s: %v", f.key, err)
		}
	}
	switch {
	case cc.TLS.CertFile != "" && cc.TLS.KeyFile == "":
		add(KeyConsulTLSCertFile, "%s needs %s", KeyConsulTLSCertFile, KeyConsulTLSKeyFile)
	case cc.TLS.KeyFile != "" && cc.TLS.CertFile == "":
		add(KeyConsulTLSKeyFile, "%s needs %s", KeyConsulTLSKeyFile, KeyConsulTLSCertFile)
	}

	durations := []struct {
		key      string
		d, lo    time.Duration
		hi       time.Duration // 0: no upper bound
		positive bool
	}{
		{key: KeyLockSessionTTL, d: c.Lock.SessionTTL, lo: minSessionTTL, hi: maxSessionTTL},
		{key: KeyLockLockDelay, d: c.Lock.LockDelay, hi: maxLockDelay},
		{key: KeyLockWait, d: c.Lock.Wait, positive: true},
		{key: KeyRollStabilization, d: c.Roll.Stabilization},
		{key: KeyRollLaunchTimeout, d: c.Roll.LaunchTimeout, positive: true},
		{key: KeyRollLeaveTimeout, d: c.Roll.LeaveTimeout, positive: true},
		{key: KeyRollPollInterval, d: c.Roll.PollInterval, positive: true},
		{key: KeyRollStuckWarning, d: c.Roll.StuckWarning, positive: true},
	}
	for _, r := range durations {
		switch {
		case r.hi != 0 && (r.d < r.lo || r.d > r.hi):
			add(r.key, "%s must be from %s to %s, got %s", r.key, short(r.lo), short(r.hi), short(r.d))
		case r.positive && r.d <= 0:
			add(r.key, "%s must be positive, got %s", r.key, short(r.d))
		case r.d < 0:
			add(r.key, "%s must not be negative, got %s", r.key, short(r.d))
		}
	}
	if floor := 2*c.Lock.SessionTTL + c.Lock.LockDelay; c.Lock.Wait > 0 && c.Lock.Wait <= floor {
		add(KeyLockWait, "%s must be more than 2 × %s + %s (%s), got %s: a handler must outwait a crashed holder's session",
			KeyLockWait, KeyLockSessionTTL, KeyLockLockDelay, short(floor), short(c.Lock.Wait))
	}
	if c.Roll.StuckWarning >= c.Roll.LaunchTimeout && c.Roll.StuckWarning > 0 && c.Roll.LaunchTimeout > 0 {
		add(KeyRollStuckWarning, "%s must be less than %s (%s), got %s: past %s a stuck roll is critical, so the warning must come first",
			KeyRollStuckWarning, KeyRollLaunchTimeout, short(c.Roll.LaunchTimeout), short(c.Roll.StuckWarning), KeyRollLaunchTimeout)
	}
	if c.Roll.EventName == "" || strings.ContainsAny(c.Roll.EventName, "/ \t\r\n") {
		add(KeyRollEventName, "%s %q must be non-empty, without spaces or /", KeyRollEventName, c.Roll.EventName)
	}
	if c.Roll.MaxTrailingLogs < 0 {
		add(KeyRollMaxTrailingLogs, "%s must not be negative, got %d", KeyRollMaxTrailingLogs, c.Roll.MaxTrailingLogs)
	}

	switch p := c.Provider; {
	case p.Type == "" && p.Local == nil && p.AWS == nil && !rolls:
		// No provider block, and none needed.
	case p.Type == ProviderLocal && p.Local != nil && p.AWS == nil:
		p.Local.validate(c.Servers, add)
	case p.Type == ProviderAWS && p.AWS != nil && p.Local == nil:
		p.AWS.validate(add)
	default:
		// Parse reports a missing or unknown provider block itself.
		add(KeyProvider, "%s is required: exactly one of %s and %s", KeyProvider, ProviderLocal, ProviderAWS)
	}

	if jobs&JobDeploy != 0 && len(c.Deploys) == 0 {
		add(KeyDeploy, "a deploy \"<service>\" block is required: it says how to deploy the service")
	}
	for _, d := range c.Deploys {
		d.validate(add)
	}
	if jobs&JobReconfigure != 0 && len(c.Reconfigures) == 0 {
		add(KeyReconfigure, "a reconfigure \"<name>\" block is required: it says what to render from which service")
	}
	for _, r := range c.Reconfigures {
		r.validate(add)
	}
	return ps
}

func (r *ReconfigureConfig) validate(add func(key, format string, args ...any)) {
	key := KeyReconfigure + "." + r.Name
	if !serviceName.match(r.Name) {
		add(key, "reconfigure name %q must be 1 to 63 characters of a-z, A-Z, 0-9, - and _, starting with a letter or digit", r.Name)
	}
	if !serviceName.match(r.Service) {
		add(key+"."+AttrReconfigureService, "%s.%s %q must be a service name: 1 to 63 characters of a-z, A-Z, 0-9, - and _", key, AttrReconfigureService, r.Service)
	}
	if _, err := template.New(r.TemplateName()).Funcs(TemplateFuncs).Parse(r.Template); err != nil {
		attr := AttrReconfigureTemplate
		if r.TemplateFile != "" {
			attr = AttrReconfigureTemplateFile
		}
		add(key+"."+attr, "%s.%s does not parse: %v", key, attr, err)
	}
	if r.Destination == "" {
		add(key+"."+AttrReconfigureDestination, "%s.%s is required: the file to render", key, AttrReconfigureDestination)
	}
	if r.ReloadCommand != nil && (len(r.ReloadCommand) == 0 || r.ReloadCommand[0] == "") {
		add(key+"."+AttrReconfigureReloadCommand, "%s.%s must name a program, or be left out", key, AttrReconfigureReloadCommand)
	}
	for _, d := range []struct {
		attr string
		d    time.Duration
	}{
		{AttrReconfigureReloadTimeout, r.ReloadTimeout},
		{AttrReconfigureExpectReplacement, r.ExpectReplacement},
		{AttrReconfigureProbation, r.Probation},
	} {
		if d.d <= 0 {
			add(key+"."+d.attr, "%s.%s must be positive, got %s", key, d.attr, short(d.d))
		}
	}
	if r.StateFile == "" {
		add(key+"."+AttrReconfigureStateFile, "%s.%s must not be empty", key, AttrReconfigureStateFile)
	}
}

// TemplateFuncs are the functions a reconfigure template may call besides
// text/template's own: the reconfigure handler's (join, quote, json, shellquote,
// hclquote; see tmplfunc), so that a template that loads here renders there.
var TemplateFuncs = tmplfunc.Funcs()

func (d *DeployConfig) validate(add func(key, format string, args ...any)) {
	key := KeyDeploy + "." + d.Service
	if !serviceName.match(d.Service) {
		add(key, "deploy service %q must be 1 to 63 characters of a-z, A-Z, 0-9, - and _, starting with a letter or digit", d.Service)
	}
	for _, cmd := range []struct {
		attr string
		argv []string
	}{{AttrDeployCommand, d.Command}, {AttrDeployRollback, d.RollbackCommand}} {
		if cmd.attr == AttrDeployRollback && slices.Equal(cmd.argv, d.Command) {
			continue // unset: it is the command, already checked
		}
		if len(cmd.argv) == 0 || cmd.argv[0] == "" {
			add(key+"."+cmd.attr, "%s.%s is required: the program and its arguments, e.g. [\"/opt/%s/deploy.sh\"]",
				key, cmd.attr, d.Service)
		}
	}
	for _, r := range []struct {
		attr string
		d    time.Duration
	}{
		{AttrDeployTimeout, d.Timeout},
		{AttrDeployHealthTimeout, d.HealthTimeout},
	} {
		if r.d <= 0 {
			add(key+"."+r.attr, "%s.%s must be positive, got %s", key, r.attr, short(r.d))
		}
	}
	for i, p := range d.Artifacts {
		if err := checkArtifactPattern(p); err != nil {
			add(key+"."+AttrDeployArtifacts, "%s.%s[%d] %q: %v", key, AttrDeployArtifacts, i, p, err)
		}
	}
	if d.NodeFilter != "" {
		if err := checkFilter(d.NodeFilter); err != nil {
			add(key+"."+AttrDeployNodeFilter, "%s.%s %q is not a Consul filter expression: %v", key, AttrDeployNodeFilter, d.NodeFilter, err)
		}
	}
	switch {
	case d.MinHealthyTime < 0:
		add(key+"."+AttrDeployMinHealthyTime, "%s.%s must not be negative, got %s", key, AttrDeployMinHealthyTime, short(d.MinHealthyTime))
	case d.MinHealthyTime >= d.HealthTimeout && d.HealthTimeout > 0:
		add(key+"."+AttrDeployMinHealthyTime, "%s.%s (%s) must be shorter than %s (%s)",
			key, AttrDeployMinHealthyTime, short(d.MinHealthyTime), AttrDeployHealthTimeout, short(d.HealthTimeout))
	}
}

// checkArtifactPattern reports a pattern of deploy.<service>.artifacts that does not
// parse, or whose scheme://host part has a wildcard: "https://*.example.com/*"
// would let "https://evil.test?.example.com/x" through, whose host is evil.test.
// The artifact's host must be spelled out.
func checkArtifactPattern(p string) error {
	if !artifactPatternChars.match(p) {
		return fmt.Errorf("want a URL or path pattern of A-Z, a-z, 0-9 and . _ ~ : / ? = & %% + - with path.Match wildcards * ? [ ]")
	}
	if _, err := path.Match(p, ""); err != nil {
		return fmt.Errorf("not a path.Match pattern: %w", err)
	}
	if scheme, rest, ok := strings.Cut(p, "://"); ok {
		host, _, _ := strings.Cut(rest, "/")
		switch {
		case scheme == "" || strings.ContainsAny(scheme, "*?[]"):
			return fmt.Errorf("the scheme must be spelled out")
		case (host == "" && scheme != "file") || strings.ContainsAny(host, "*?[]"):
			return fmt.Errorf("the host must be spelled out, without wildcards")
		case !strings.Contains(rest, "/"):
			return fmt.Errorf("the host must be followed by a path (%s/<path>)", p)
		}
	}
	if strings.Contains(p, "..") {
		return fmt.Errorf(`".." is not allowed`)
	}
	return nil
}

func (p *LocalProvider) validate(servers int, add func(key, format string, args ...any)) {
	if p.StateDir == "" {
		add(KeyLocalStateDir, "%s is required", KeyLocalStateDir)
	}
	if p.ConsulBinary == "" {
		add(KeyLocalConsulBinary, "%s must not be empty", KeyLocalConsulBinary)
	}
	a := p.Addresses
	switch {
	case !a.IsValid():
		add(KeyLocalAddresses, "%s is required", KeyLocalAddresses)
	case !a.Addr().Is4() || a.Bits() < loopback.Bits() || !loopback.Contains(a.Addr()):
		add(KeyLocalAddresses, "%s %s must be inside %s (loopback only)", KeyLocalAddresses, a, loopback)
	case a != a.Masked():
		add(KeyLocalAddresses, "%s %s has host bits set: did you mean %s?", KeyLocalAddresses, a, a.Masked())
	case 1<<(32-a.Bits()) < servers+1:
		add(KeyLocalAddresses, "%s %s is too small for %d servers and a replacement", KeyLocalAddresses, a, servers)
	}
}

func (p *AWSProvider) validate(add func(key, format string, args ...any)) {
	if p.AutoscalingGroup == "" {
		add(KeyAWSAutoscalingGroup, "%s is required", KeyAWSAutoscalingGroup)
	}
	if p.LaunchTemplate == "" {
		add(KeyAWSLaunchTemplate, "%s is required", KeyAWSLaunchTemplate)
	}
	if p.EndpointURL != "" {
		if u, err := url.Parse(p.EndpointURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			add(KeyAWSEndpointURL, "%s %q must be an http or https URL", KeyAWSEndpointURL, p.EndpointURL)
		}
	}
	if p.IMDSEndpoint != "" {
		if u, err := url.Parse(p.IMDSEndpoint); err != nil || u.Scheme != "http" || u.Host == "" {
			add(KeyAWSIMDSEndpoint, "%s %q must be an http URL", KeyAWSIMDSEndpoint, p.IMDSEndpoint)
		}
	}
	// LifecycleHookName in the Auto Scaling API model: 1 to 255 of [A-Za-z0-9\-_\/].
	if !hookName.match(p.LifecycleHook) {
		add(KeyAWSLifecycleHook, "%s %q must be 1 to 255 letters, digits, '-', '_' or '/'", KeyAWSLifecycleHook, p.LifecycleHook)
	}
	if p.GateMaxHold <= 0 {
		add(KeyAWSGateMaxHold, "%s must be positive, got %s", KeyAWSGateMaxHold, p.GateMaxHold)
	}
	if p.MaxAttempts < 1 || p.MaxAttempts > maxAWSMaxAttempts {
		add(KeyAWSMaxAttempts, "%s must be from 1 to %d, got %d", KeyAWSMaxAttempts, maxAWSMaxAttempts, p.MaxAttempts)
	}
	img := p.Image
	if len(img.Owners) == 0 || slices.Contains(img.Owners, "") {
		add(KeyAWSImageOwners, "%s must list at least one owner, none empty", KeyAWSImageOwners)
	}
	if img.NamePattern == "" && len(img.Tags) == 0 {
		// Without either, any image the owners have would do.
		add(KeyAWSImage, "%s needs name_pattern or tags", KeyAWSImage)
	}
	if _, ok := img.Tags[""]; ok {
		add(KeyAWSImageTags, "%s must not have an empty key", KeyAWSImageTags)
	}
}

// checkAddress accepts host:port, optionally after http:// or https://, and
// unix://<path>: what the Consul API client accepts.
func checkAddress(addr string) error {
	if scheme, rest, ok := strings.Cut(addr, "://"); ok {
		switch scheme {
		case "unix":
			if rest == "" {
				return fmt.Errorf("missing socket path")
			}
			return nil
		case "http", "https":
			addr = rest
		default:
			return fmt.Errorf("unknown scheme %q", scheme)
		}
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	if host == "" {
		return fmt.Errorf("missing host")
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("invalid port %q", port)
	}
	return nil
}

// checkSecretFile reports a token file that others than its owner may read or
// write: whoever can read it acts with the token, and whoever can write it picks
// the token the handlers act with. Like ssh with a private key, the file is
// refused rather than used. A missing file is checkFile's to report.
func checkSecretFile(path string) error {
	if path == "" {
		return nil
	}
	fi, err := os.Stat(path)
	if err != nil || !fi.Mode().IsRegular() {
		return nil
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Errorf("%s is readable or writable by group or others (mode %#o): it holds an ACL token; chmod 600 %s", path, perm, path)
	}
	return nil
}

// checkFile reports an optional file that is set but not a regular file.
func checkFile(path string) error {
	if path == "" {
		return nil
	}
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", path)
	}
	return nil
}

// short renders d without the trailing zero units of time.Duration.String:
// "24h" rather than "24h0m0s".
func short(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = s[:len(s)-2]
	}
	if strings.HasSuffix(s, "h0m") {
		s = s[:len(s)-2]
	}
	return s
}
