// Package awsfake is an in-process fake of the slice of EC2 and Auto Scaling that the
// aws provider uses. It speaks both services' Query protocols on the wire (a
// form-encoded POST with Action and Version; XML answers with the real element
// names, namespaces, error shapes, codes and HTTP statuses), so the real
// aws-sdk-go-v2 clients work against it unchanged:
//
//	srv := awsfake.New(awsfake.Options{})
//	defer srv.Close()
//	e := ec2.NewFromConfig(srv.Config())
//	a := autoscaling.NewFromConfig(srv.Config())
//
// Both services share one httptest server on 127.0.0.1 and are told apart by the
// Version parameter (EC2 2016-11-15, Auto Scaling 2011-01-01). Behind the API sits a
// small stateful model: images, launch templates with versions (every field kept),
// and Auto Scaling groups that reconcile their instances towards the desired
// capacity, booting and shutting down each instance through pluggable Machines.
//
// The groups model AWS's documented behaviour, not what a caller would like:
// Availability Zones with balanced placement and AZRebalance, suspendable
// processes, the default termination policy and instance scale-in protection,
// lifecycle hooks, health replacement, scaling activities, failed launches retried
// for ever with backoff, scaling policies and scheduled actions, instance
// refreshes, warm pools and mixed instances policies as group shapes, and EC2's
// eventual consistency. Each rule cites its source beside the code (the Auto
// Scaling and EC2 API models, docs-2.json and api-2.json in aws-sdk-go's module,
// the SDK's doc comments, the user guides); what no source states is marked
// "invented:" with the reason it is safe. Error codes and HTTP statuses are
// AWS's; error messages AWS does not document are the fake's own wording.
//
// Faults (errors, throttling, latency) can be injected per action, and every call
// is recorded.
//
// Each instance also has its own IMDSv2 endpoint (Server.IMDS), serving its
// identity and its Auto Scaling target lifecycle state as the group moves it.
package awsfake

import (
	"bytes"
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/aws-sdk-go-v2/credentials"
)

const (
	ec2Version   = "2016-11-15"
	asgVersion   = "2011-01-01"
	ec2Namespace = "http://ec2.amazonaws.com/doc/2016-11-15/"
	asgNamespace = "http://autoscaling.amazonaws.com/doc/2011-01-01/"
)

// Options configure a Server. The zero value is usable.
type Options struct {
	// Machines boot and shut down the instances the groups launch and terminate.
	// Nil means built-in fake machines: IDs "i-" and 17 hex digits, private IPs from
	// 192.0.2.0/24 (a documentation range, never contacted).
	Machines Machines
	// BootDelay is how long a built-in machine stays pending before it runs.
	BootDelay time.Duration
	// ShutdownDelay is how long a built-in machine takes to shut down (the
	// instance is shutting-down / Terminating meanwhile).
	ShutdownDelay time.Duration
	// TerminatedTTL is how long a terminated instance stays visible in
	// DescribeInstances (EC2 keeps them about an hour). Zero means one hour.
	TerminatedTTL time.Duration
	// AccountID owns the fake's resources and is what Owner "self" means.
	// Empty means 123456789012.
	AccountID string
	// Region appears in ARNs and availability zones. Empty means us-east-1.
	Region string
	// RebalanceInterval is how often AZRebalance looks at each group. Zero means
	// 2s. invented: AWS documents no period; 2s makes a rebalance observable by a
	// test within seconds.
	RebalanceInterval time.Duration
	// RebalanceIgnoresProtection makes AZRebalance terminate instances protected
	// from scale-in too (the pessimistic reading of the user guide; see
	// startRebalance). By default it never chooses a protected instance.
	RebalanceIgnoresProtection bool
	// LaunchRetryBase and LaunchRetryMax are the backoff after failed launches:
	// LaunchRetryBase after the first, doubling to at most LaunchRetryMax. Zero
	// means 1s and 10s. invented: AWS retries failed launches but documents no
	// schedule.
	LaunchRetryBase, LaunchRetryMax time.Duration
	// DescribeLag models EC2's eventual consistency: for this long after an
	// instance is created DescribeInstances does not know it — asked for by
	// InstanceId the whole call fails with InvalidInstanceID.NotFound, and
	// otherwise (the instance-id filter included) it is left out (EC2 developer
	// guide, "Eventual consistency in the Amazon EC2 API"). Zero: none.
	DescribeLag time.Duration
}

// Server is the fake EC2 and Auto Scaling endpoint. All its methods are safe for
// concurrent use.
type Server struct {
	// URL is the endpoint (http://127.0.0.1:port) both SDK clients take as BaseEndpoint.
	URL string

	opts     Options
	machines Machines
	http     *httptest.Server
	ctx      context.Context // cancelled by Close; Boot and Ready run under it
	cancel   context.CancelFunc
	wg       sync.WaitGroup // the reconcile loop, Boot, Ready and Shutdown goroutines

	mu        sync.Mutex
	closed    bool
	images    []*Image
	templates map[string]*launchTemplate // by name
	tokens    map[string]tokenUse        // CreateLaunchTemplateVersion client tokens
	groups    map[string]*group
	instances map[string]*instance
	faults    map[string][]*activeFault
	params    map[string]Parameter // SSM Parameter Store
	calls     []Call
	imds      map[string]*imdsServer // by instance ID; see IMDS
	lagged    int                    // see Lagged
}

// Lagged counts the instances DescribeInstances did not know yet (DescribeLag)
// although a request asked for them, by InstanceId (the call failed) or by a
// filter they match (they were left out): the proof that a test met the lag.
func (s *Server) Lagged() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lagged
}

// New starts a fake on a fresh 127.0.0.1 port. Close it when done.
func New(opts Options) *Server {
	if opts.AccountID == "" {
		opts.AccountID = "123456789012"
	}
	if opts.Region == "" {
		opts.Region = "us-east-1"
	}
	if opts.TerminatedTTL == 0 {
		opts.TerminatedTTL = time.Hour
	}
	if opts.RebalanceInterval <= 0 {
		opts.RebalanceInterval = 2 * time.Second
	}
	if opts.LaunchRetryBase <= 0 {
		opts.LaunchRetryBase = time.Second
	}
	if opts.LaunchRetryMax <= 0 {
		opts.LaunchRetryMax = 10 * time.Second
	}
	s := &Server{
		opts:      opts,
		machines:  opts.Machines,
		templates: map[string]*launchTemplate{},
		tokens:    map[string]tokenUse{},
		groups:    map[string]*group{},
		instances: map[string]*instance{},
		faults:    map[string][]*activeFault{},
		imds:      map[string]*imdsServer{},
	}
	if s.machines == nil {
		s.machines = &builtinMachines{boot: opts.BootDelay, shutdown: opts.ShutdownDelay}
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.http = httptest.NewServer(http.HandlerFunc(s.serveHTTP))
	s.URL = s.http.URL
	s.wg.Add(1)
	go s.run()
	return s
}

// Close stops the server and every instance's metadata service (IMDS), cancels
// the context of Boot and Ready calls in flight, and waits for every machine
// goroutine (including Shutdowns) to finish. Groups launch nothing after Close.
// It is safe to call more than once.
func (s *Server) Close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	s.mu.Unlock()
	s.cancel()
	s.http.Close()
	s.closeIMDS()
	s.wg.Wait()
}

// Config returns an aws.Config for SDK clients of this fake: region, static
// credentials, BaseEndpoint set to URL, and the SDK's standard retryer with at most
// 3 attempts and a 10ms maximum backoff (so retry tests are fast).
func (s *Server) Config() aws.Config {
	return aws.Config{
		Region:       s.opts.Region,
		Credentials:  credentials.NewStaticCredentialsProvider("AKIDFAKE", "secret", ""),
		BaseEndpoint: aws.String(s.URL),
		Retryer: func() aws.Retryer {
			return retry.NewStandard(func(o *retry.StandardOptions) {
				o.MaxAttempts = 3
				o.MaxBackoff = 10 * time.Millisecond
			})
		},
	}
}

// Call is one request the fake received.
type Call struct {
	Action string
	// Params are all the request's form parameters, Action and Version included.
	Params url.Values
	Time   time.Time
	// Status is the HTTP status the fake answered with.
	Status int
}

// Calls returns the requests received so far, oldest first. A call is recorded
// before its answer is written, so it is there by the time the SDK returns.
func (s *Server) Calls() []Call {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Call, len(s.calls))
	for i, c := range s.calls {
		c.Params = cloneValues(c.Params)
		out[i] = c
	}
	return out
}

// Fault is an injected misbehaviour of one action.
type Fault struct {
	// Code, Status and Message make the request fail with that API error before it
	// is executed. Status defaults to 400 when Code is set; with neither, the fault
	// only adds latency.
	Code    string
	Status  int
	Message string
	// Times is how many requests the fault applies to; 0 means all of them.
	Times int
	// Latency delays the answer (the request is executed, or fails, after it).
	Latency time.Duration

	kind faultKind
}

type faultKind int

const (
	customFault faultKind = iota
	throttleFault
	serverFault
)

type activeFault struct {
	Fault
	left int // -1: forever
}

// Inject adds a fault to action ("*" for every action). Faults apply in the order
// they were injected; one request takes at most one fault (the action's own before
// the "*" ones).
func (s *Server) Inject(action string, f Fault) {
	left := f.Times
	if left <= 0 {
		left = -1
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults[action] = append(s.faults[action], &activeFault{Fault: f, left: left})
}

// Throttle makes the next times requests of action (0: all) fail the way the
// service throttles: EC2 with RequestLimitExceeded and HTTP 503, Auto Scaling with
// Throttling and HTTP 400. The SDK's standard retryer retries both.
func (s *Server) Throttle(action string, times int) {
	s.Inject(action, Fault{Times: times, kind: throttleFault})
}

// ServerError makes the next times requests of action (0: all) fail with HTTP 500:
// InternalError on EC2, InternalFailure on Auto Scaling.
func (s *Server) ServerError(action string, times int) {
	s.Inject(action, Fault{Times: times, kind: serverFault})
}

// Slow delays every answer to action by d.
func (s *Server) Slow(action string, d time.Duration) {
	s.Inject(action, Fault{Latency: d})
}

// Clear removes all injected faults: those of the API and every group's
// FailLaunches rules.
func (s *Server) Clear() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = map[string][]*activeFault{}
	for _, g := range s.groups {
		g.failRules = nil
	}
}

func (s *Server) takeFault(action string) Fault {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, key := range []string{action, "*"} {
		for _, f := range s.faults[key] {
			if f.left == 0 {
				continue
			}
			if f.left > 0 {
				f.left--
			}
			return f.Fault
		}
	}
	return Fault{}
}

// apiError is an error answer: HTTP status, error code and message.
type apiError struct {
	status        int
	code, message string
}

func (e *apiError) Error() string { return e.code + ": " + e.message }

func apiErr(status int, code, format string, args ...any) error {
	return &apiError{status: status, code: code, message: fmt.Sprintf(format, args...)}
}

// validationError is Auto Scaling's answer to about every bad request.
func validationError(format string, args ...any) error {
	return apiErr(http.StatusBadRequest, "ValidationError", format, args...)
}

type handler func(s *Server, p url.Values) (any, error)

// service is one of the two APIs: its actions and its wire formats.
type service struct {
	handlers           map[string]handler
	throttle, internal apiError
	unauthenticated    apiError
	encode             func(action, requestID string, out any) ([]byte, error)
	encodeError        func(e *apiError, requestID string) []byte
}

var services = map[string]*service{
	ec2Version: {
		handlers: map[string]handler{
			"DescribeImages":                 (*Server).describeImages,
			"DescribeInstances":              (*Server).describeInstances,
			"CreateLaunchTemplateVersion":    (*Server).createLaunchTemplateVersion,
			"DescribeLaunchTemplateVersions": (*Server).describeLaunchTemplateVersions,
		},
		throttle:        apiError{http.StatusServiceUnavailable, "RequestLimitExceeded", "Request limit exceeded."},
		internal:        apiError{http.StatusInternalServerError, "InternalError", "An internal error has occurred."},
		unauthenticated: apiError{http.StatusUnauthorized, "AuthFailure", "AWS was not able to validate the provided access credentials"},
		encode:          encodeEC2,
		encodeError:     encodeEC2Error,
	},
	asgVersion: {
		handlers: map[string]handler{
			"DescribeAutoScalingGroups":           (*Server).describeAutoScalingGroups,
			"UpdateAutoScalingGroup":              (*Server).updateAutoScalingGroup,
			"SetDesiredCapacity":                  (*Server).setDesiredCapacity,
			"TerminateInstanceInAutoScalingGroup": (*Server).terminateInstanceInAutoScalingGroup,
			"SuspendProcesses":                    (*Server).suspendProcesses,
			"ResumeProcesses":                     (*Server).resumeProcesses,
			"SetInstanceProtection":               (*Server).setInstanceProtection,
			"SetInstanceHealth":                   (*Server).setInstanceHealth,
			"PutLifecycleHook":                    (*Server).putLifecycleHook,
			"DescribeLifecycleHooks":              (*Server).describeLifecycleHooks,
			"CompleteLifecycleAction":             (*Server).completeLifecycleAction,
			"RecordLifecycleActionHeartbeat":      (*Server).recordLifecycleActionHeartbeat,
			"DescribeScalingActivities":           (*Server).describeScalingActivities,
			"StartInstanceRefresh":                (*Server).startInstanceRefresh,
			"DescribeInstanceRefreshes":           (*Server).describeInstanceRefreshes,
			"CancelInstanceRefresh":               (*Server).cancelInstanceRefresh,
			"DescribeWarmPool":                    (*Server).describeWarmPool,
		},
		throttle:        apiError{http.StatusBadRequest, "Throttling", "Rate exceeded"},
		internal:        apiError{http.StatusInternalServerError, "InternalFailure", "The request processing has failed because of an unknown error, exception or failure."},
		unauthenticated: apiError{http.StatusForbidden, "MissingAuthenticationToken", "Request is missing Authentication Token"},
		encode:          encodeAutoScaling,
		encodeError:     encodeAutoScalingError,
	},
}

func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	at := time.Now()
	if target := r.Header.Get("X-Amz-Target"); strings.HasPrefix(target, "AmazonSSM.") {
		s.serveSSM(w, r, target, at)
		return
	}
	_ = r.ParseForm() // a bad body leaves the form empty: InvalidAction
	p := r.Form
	action, rid := p.Get("Action"), requestID()
	status, body := s.dispatch(r, p, action, rid)

	s.mu.Lock()
	s.calls = append(s.calls, Call{Action: action, Params: cloneValues(p), Time: at, Status: status})
	s.mu.Unlock()

	w.Header().Set("Content-Type", "text/xml;charset=UTF-8")
	w.Header().Set("X-Amzn-Requestid", rid)
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

func (s *Server) dispatch(r *http.Request, p url.Values, action, rid string) (int, []byte) {
	svc, ok := services[p.Get("Version")]
	if !ok {
		svc = services[ec2Version]
		return fail(svc, apiErr(http.StatusBadRequest, "NoSuchVersion", "The requested version (%s) of service does not exist.", p.Get("Version")), rid)
	}
	if !strings.HasPrefix(r.Header.Get("Authorization"), "AWS4-HMAC-SHA256 ") {
		return fail(svc, &svc.unauthenticated, rid)
	}
	f := s.takeFault(action)
	if f.Latency > 0 {
		t := time.NewTimer(f.Latency)
		select {
		case <-t.C:
		case <-r.Context().Done():
		case <-s.ctx.Done():
		}
		t.Stop()
	}
	switch {
	case f.kind == throttleFault:
		return fail(svc, &svc.throttle, rid)
	case f.kind == serverFault:
		return fail(svc, &svc.internal, rid)
	case f.Code != "" || f.Status != 0:
		e := apiError{status: f.Status, code: f.Code, message: f.Message}
		if e.status == 0 {
			e.status = http.StatusBadRequest
		}
		if e.code == "" {
			e.code = svc.internal.code
		}
		if e.message == "" {
			e.message = e.code
		}
		return fail(svc, &e, rid)
	}
	h, ok := svc.handlers[action]
	if !ok {
		return fail(svc, apiErr(http.StatusBadRequest, "InvalidAction", "The action %s is not valid for this web service.", action), rid)
	}
	if p.Get("DryRun") == "true" {
		return fail(svc, apiErr(http.StatusPreconditionFailed, "DryRunOperation", "Request would have succeeded, but DryRun flag is set."), rid)
	}
	s.mu.Lock()
	out, err := h(s, p)
	s.mu.Unlock()
	if err != nil {
		return fail(svc, err, rid)
	}
	body, err := svc.encode(action, rid, out)
	if err != nil {
		return fail(svc, &svc.internal, rid)
	}
	return http.StatusOK, body
}

func fail(svc *service, err error, rid string) (int, []byte) {
	var e *apiError
	if !errors.As(err, &e) {
		e = &svc.internal
	}
	return e.status, svc.encodeError(e, rid)
}

// ec2Meta is embedded in every EC2 answer.
type ec2Meta struct {
	RequestID string `xml:"requestId"`
}

func (m *ec2Meta) setRequestID(id string) { m.RequestID = id }

// encodeEC2 writes <ActionResponse xmlns=…><requestId/>…fields of out…</ActionResponse>.
func encodeEC2(action, rid string, out any) ([]byte, error) {
	if m, ok := out.(interface{ setRequestID(string) }); ok {
		m.setRequestID(rid)
	}
	var b bytes.Buffer
	b.WriteString(xml.Header)
	err := xml.NewEncoder(&b).EncodeElement(out, xml.StartElement{Name: xml.Name{Space: ec2Namespace, Local: action + "Response"}})
	return b.Bytes(), err
}

// encodeEC2Error writes EC2's error shape: Response/Errors/Error{Code,Message}, RequestID.
func encodeEC2Error(e *apiError, rid string) []byte {
	type ec2Error struct{ Code, Message string }
	body, _ := xml.Marshal(struct {
		XMLName   xml.Name   `xml:"Response"`
		Errors    []ec2Error `xml:"Errors>Error"`
		RequestID string     `xml:"RequestID"`
	}{Errors: []ec2Error{{e.code, e.message}}, RequestID: rid})
	return append([]byte(xml.Header), body...)
}

// encodeAutoScaling writes <ActionResponse xmlns=…><ActionResult>…out…</ActionResult>
// <ResponseMetadata><RequestId/></ResponseMetadata></ActionResponse>; a nil out
// (actions without output) has no Result element.
func encodeAutoScaling(action, rid string, out any) ([]byte, error) {
	var b bytes.Buffer
	b.WriteString(xml.Header)
	enc := xml.NewEncoder(&b)
	root := xml.StartElement{Name: xml.Name{Space: asgNamespace, Local: action + "Response"}}
	if err := enc.EncodeToken(root); err != nil {
		return nil, err
	}
	if out != nil {
		if err := enc.EncodeElement(out, xml.StartElement{Name: xml.Name{Local: action + "Result"}}); err != nil {
			return nil, err
		}
	}
	meta := struct {
		RequestID string `xml:"RequestId"`
	}{rid}
	if err := enc.EncodeElement(meta, xml.StartElement{Name: xml.Name{Local: "ResponseMetadata"}}); err != nil {
		return nil, err
	}
	if err := enc.EncodeToken(root.End()); err != nil {
		return nil, err
	}
	err := enc.Flush()
	return b.Bytes(), err
}

// encodeAutoScalingError writes the Query protocol's error shape:
// ErrorResponse/Error{Type,Code,Message}, RequestId.
func encodeAutoScalingError(e *apiError, rid string) []byte {
	typ := "Sender"
	if e.status >= 500 {
		typ = "Receiver"
	}
	type asgError struct{ Type, Code, Message string }
	body, _ := xml.Marshal(struct {
		XMLName   xml.Name `xml:"http://autoscaling.amazonaws.com/doc/2011-01-01/ ErrorResponse"`
		Error     asgError
		RequestID string `xml:"RequestId"`
	}{Error: asgError{typ, e.code, e.message}, RequestID: rid})
	return append([]byte(xml.Header), body...)
}

// list reads a Query list: prefix.1, prefix.2, … up to the first gap. (EC2 lists are
// "Owner.1"; Auto Scaling's are "AutoScalingGroupNames.member.1".)
func list(p url.Values, prefix string) []string {
	var out []string
	for i := 1; ; i++ {
		v := p[prefix+"."+strconv.Itoa(i)]
		if len(v) == 0 {
			return out
		}
		out = append(out, v[0])
	}
}

// filter is one EC2 Filter.N: a name and the values any of which must match.
type filter struct {
	name   string
	values []string
}

func parseFilters(p url.Values) []filter {
	var fs []filter
	for i := 1; ; i++ {
		k := "Filter." + strconv.Itoa(i)
		if !p.Has(k + ".Name") {
			return fs
		}
		fs = append(fs, filter{name: p.Get(k + ".Name"), values: list(p, k+".Value")})
	}
}

// checkFilters rejects filter names the resource does not know, like EC2 does;
// tag:<key> is always allowed.
func checkFilters(fs []filter, names ...string) error {
	for _, f := range fs {
		if strings.HasPrefix(f.name, "tag:") && len(f.name) > len("tag:") || slices.Contains(names, f.name) {
			continue
		}
		return apiErr(http.StatusBadRequest, "InvalidParameterValue", "The filter '%s' is invalid", f.name)
	}
	return nil
}

// matchFilters reports whether every filter has a value matching one of the
// resource's values for that filter name (attr), wildcards allowed.
func matchFilters(fs []filter, attr func(name string) []string) bool {
	for _, f := range fs {
		have := attr(f.name)
		if !slices.ContainsFunc(f.values, func(pat string) bool {
			return slices.ContainsFunc(have, func(v string) bool { return wildcard(pat, v) })
		}) {
			return false
		}
	}
	return true
}

// tagAttr answers the tag filters: tag:<key> (the key's value) and tag-key.
func tagAttr(tags map[string]string, name string) []string {
	if name == "tag-key" {
		keys := make([]string, 0, len(tags))
		for k := range tags {
			keys = append(keys, k)
		}
		return keys
	}
	if k, ok := strings.CutPrefix(name, "tag:"); ok {
		if v, ok := tags[k]; ok {
			return []string{v}
		}
	}
	return nil
}

// wildcard matches s against an EC2 filter value: * is any run of characters, ? is
// exactly one, and a backslash escapes the next character.
func wildcard(pattern, s string) bool {
	var b strings.Builder
	b.WriteString(`(?s)^`)
	for i := 0; i < len(pattern); i++ {
		switch c := pattern[i]; c {
		case '*':
			b.WriteString(`.*`)
		case '?':
			b.WriteString(`.`)
		case '\\':
			if i+1 < len(pattern) {
				i++
			}
			b.WriteString(regexp.QuoteMeta(pattern[i : i+1]))
		default:
			b.WriteString(regexp.QuoteMeta(pattern[i : i+1]))
		}
	}
	b.WriteString(`$`)
	ok, err := regexp.MatchString(b.String(), s)
	return err == nil && ok
}

func cloneValues(v url.Values) url.Values {
	out := make(url.Values, len(v))
	for k, vs := range v {
		out[k] = slices.Clone(vs)
	}
	return out
}

func hexID(prefix string, n int) string {
	const digits = "0123456789abcdef"
	b := make([]byte, n)
	for i := range b {
		b[i] = digits[rand.IntN(len(digits))]
	}
	return prefix + string(b)
}

func requestID() string {
	h := hexID("", 32)
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// isoTime is how both services write timestamps.
func isoTime(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05.000Z") }
