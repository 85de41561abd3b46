package awsfake

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"time"
)

// The instance metadata service (IMDS) each fake instance would see at
// 169.254.169.254, as its own httptest server on 127.0.0.1: the aws-sdk-go-v2
// feature/ec2/imds client sets the whole URL path of every request itself
// (request_middleware.go: serializeRequest overwrites URL.Path with
// "/latest/api/token", "/latest/meta-data/<path>", …; resolveEndpoint takes only
// the scheme and host of Options.Endpoint), so instances can only be told apart
// by host and port, not by a path prefix.
//
// Only IMDSv2 is served: "required – IMDSv2 is required, which means that IMDSv1
// is disabled, and you must use IMDSv2" (InstanceMetadataOptionsRequest$HttpTokens,
// EC2 docs-2.json), which is how the image runs.

const (
	// imdsTokenTTLHeader and imdsTokenHeader are IMDSv2's headers (EC2 user guide,
	// "How Instance Metadata Service Version 2 works": `curl -X PUT
	// "http://169.254.169.254/latest/api/token" -H
	// "X-aws-ec2-metadata-token-ttl-seconds: 21600"`, then `curl -H
	// "X-aws-ec2-metadata-token: $TOKEN" …`).
	imdsTokenTTLHeader = "X-aws-ec2-metadata-token-ttl-seconds"
	imdsTokenHeader    = "X-aws-ec2-metadata-token"
	// imdsMaxTTL: a session token's duration "can be a minimum of one second and a
	// maximum of six hours" (same page).
	imdsMaxTTL = 21600
)

// imdsServer is one instance's metadata service.
type imdsServer struct {
	id   string
	http *httptest.Server
	// tokens are the session tokens this instance's IMDS issued, with their
	// expiry. Guarded by Server.mu. invented: a token is valid only at the
	// endpoint that issued it (each real instance reaches only its own IMDS, so
	// AWS never sees another's token; refusing one catches a test that mixes
	// instances' endpoints up).
	tokens map[string]time.Time
}

// IMDS returns the base URL (http://127.0.0.1:port, no path) of the IMDSv2
// endpoint of the instance with this ID, started on first use and closed by
// Close; every call for the same ID returns the same URL. Point the SDK's
// client at it with imds.New(imds.Options{Endpoint: url}).
//
// The endpoint answers for the instance the fake knows by this ID. Before
// Machines.Boot has returned the ID (a Machines implementation may start its
// instance's software, and so ask for this URL, inside Boot) and after
// Options.TerminatedTTL has dropped a terminated instance, every metadata
// path is 404 Not Found, what IMDS answers for an item that does not exist;
// tokens are issued all the same. After Close it returns the URL of a server
// that is already closed (connections are refused), never a non-loopback
// address. It panics on an ID that does not start with "i-" (a test bug).
//
// It serves, as text/plain (the identity document as JSON):
//
//	PUT /latest/api/token                               a session token (IMDSv2)
//	GET /latest/meta-data/instance-id
//	GET /latest/meta-data/ami-id
//	GET /latest/meta-data/instance-type
//	GET /latest/meta-data/local-ipv4
//	GET /latest/meta-data/placement/availability-zone
//	GET /latest/meta-data/placement/region
//	GET /latest/meta-data/autoscaling/target-lifecycle-state
//	GET /latest/dynamic/instance-identity/document
//
// See targetLifecycleState for what the lifecycle item says when.
func (s *Server) IMDS(instanceID string) string {
	if !validID(instanceID, "i-") {
		panic(fmt.Sprintf("awsfake: IMDS(%q): an instance ID starts with i-", instanceID))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if m := s.imds[instanceID]; m != nil {
		return m.http.URL
	}
	m := &imdsServer{id: instanceID, tokens: map[string]time.Time{}}
	m.http = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { s.serveIMDS(m, w, r) }))
	if s.closed {
		// Close has already closed (or is closing) the others: this one must not
		// outlive it either.
		m.http.Close()
		return m.http.URL
	}
	s.imds[instanceID] = m
	return m.http.URL
}

func (s *Server) serveIMDS(m *imdsServer, w http.ResponseWriter, r *http.Request) {
	status, header, body := s.answerIMDS(m, r)
	w.Header().Set("Content-Type", "text/plain")
	for k, v := range header {
		w.Header().Set(k, v)
	}
	w.WriteHeader(status)
	_, _ = w.Write([]byte(body))
}

// answerIMDS is one IMDS request's answer. The statuses are the ones AWS
// documents for IMDS (AWS re:Post knowledge center, "ec2-linux-metadata-retrieval":
// "400 - Bad Request … applies to IMDS v2. This error occurs if the PUT request
// is not valid"; "401 - Unauthorized … occurs if the GET request uses a token
// that's not valid. If this occurs, generate a new token"; "404 - Not Found …
// occurs when the requested resource isn't available"). invented: 405 for a
// method a path does not take (AWS documents none; the SDK's token provider
// treats 403, 404 and 405 from the token path alike), and the bodies' wording.
func (s *Server) answerIMDS(m *imdsServer, r *http.Request) (int, map[string]string, string) {
	now := time.Now()
	if r.URL.Path == "/latest/api/token" {
		if r.Method != http.MethodPut {
			return http.StatusMethodNotAllowed, nil, "405 - Method Not Allowed"
		}
		ttl, err := strconv.Atoi(r.Header.Get(imdsTokenTTLHeader))
		if err != nil || ttl < 1 || ttl > imdsMaxTTL {
			return http.StatusBadRequest, nil, "400 - Missing or Invalid Parameters"
		}
		token := rand.Text() // invented: the token's form; AWS's is opaque
		s.mu.Lock()
		for t, exp := range m.tokens {
			if !now.Before(exp) {
				delete(m.tokens, t) // keeps the map bounded by the live tokens
			}
		}
		m.tokens[token] = now.Add(time.Duration(ttl) * time.Second)
		s.mu.Unlock()
		// The SDK reads the token's TTL back from this header (imds
		// api_op_GetToken.go, buildGetTokenOutput) and fails without it.
		return http.StatusOK, map[string]string{imdsTokenTTLHeader: strconv.Itoa(ttl)}, token
	}
	if r.Method != http.MethodGet {
		return http.StatusMethodNotAllowed, nil, "405 - Method Not Allowed"
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	exp, ok := m.tokens[r.Header.Get(imdsTokenHeader)]
	if !ok || !now.Before(exp) {
		// No token (IMDSv1), a token of another instance, or an expired one.
		delete(m.tokens, r.Header.Get(imdsTokenHeader))
		return http.StatusUnauthorized, nil, "401 - Unauthorized"
	}
	inst := s.instances[m.id]
	if inst == nil {
		return http.StatusNotFound, nil, "404 - Not Found"
	}
	var v string
	switch strings.TrimSuffix(r.URL.Path, "/") {
	case "/latest/meta-data/instance-id":
		v = inst.id
	case "/latest/meta-data/ami-id":
		v = inst.imageID
	case "/latest/meta-data/instance-type":
		v = inst.instanceType
	case "/latest/meta-data/local-ipv4":
		v = inst.ip
	case "/latest/meta-data/placement/availability-zone":
		v = inst.az
	case "/latest/meta-data/placement/region":
		v = s.opts.Region
	case "/latest/meta-data/autoscaling/target-lifecycle-state":
		v = inst.targetLifecycleState()
	case "/latest/dynamic/instance-identity/document":
		v = s.identityDocument(inst)
	default:
		return http.StatusNotFound, nil, "404 - Not Found"
	}
	return http.StatusOK, nil, v
}

// targetLifecycleState is the instance's autoscaling/target-lifecycle-state.
// "The Auto Scaling instance lifecycle has two primary steady states—InService
// and Terminated—and two side steady states—Detached and Standby. If you use a
// warm pool, the lifecycle has four additional steady states … When an instance
// prepares to transition to one of the preceding steady states, Amazon EC2 Auto
// Scaling updates the value of the instance metadata item
// autoscaling/target-lifecycle-state"; the target lifecycle state is the state
// the instance is transitioning to, not the one it is in (Auto Scaling user
// guide, "Retrieve the target lifecycle state through instance metadata").
//
// So a launching instance (Pending, Pending:Wait, Pending:Proceed) reads
// InService, as does an InService one; from the moment the group decides to
// terminate it (Terminating, Terminating:Wait while a termination hook holds
// it, Terminating:Proceed) it reads Terminated, and so it stays once it has
// left the group. The fake models neither Standby, detaching, nor instances in
// a warm pool, so Standby, Detached and Warmed:* never appear. Called with s.mu
// held.
func (i *instance) targetLifecycleState() string {
	if i.live() {
		return "InService"
	}
	return "Terminated"
}

// identityDocument is the instance identity document, with the fields and
// format of the EC2 user guide's example ("Instance identity documents"):
// devpayProductCodes, marketplaceProductCodes, availabilityZone, privateIp,
// version "2017-09-30", instanceId, billingProducts, instanceType, accountId,
// imageId, pendingTime, architecture, kernelId, ramdiskId, region; the fields
// an instance has no value for are null. invented: architecture x86_64 (the
// fake's instance types are all x86). Called with s.mu held.
func (s *Server) identityDocument(inst *instance) string {
	doc := struct {
		DevpayProductCodes      []string `json:"devpayProductCodes"`
		MarketplaceProductCodes []string `json:"marketplaceProductCodes"`
		AvailabilityZone        string   `json:"availabilityZone"`
		PrivateIP               string   `json:"privateIp"`
		Version                 string   `json:"version"`
		InstanceID              string   `json:"instanceId"`
		BillingProducts         []string `json:"billingProducts"`
		InstanceType            string   `json:"instanceType"`
		AccountID               string   `json:"accountId"`
		ImageID                 string   `json:"imageId"`
		PendingTime             string   `json:"pendingTime"`
		Architecture            string   `json:"architecture"`
		KernelID                *string  `json:"kernelId"`
		RamdiskID               *string  `json:"ramdiskId"`
		Region                  string   `json:"region"`
	}{
		AvailabilityZone: inst.az, PrivateIP: inst.ip, Version: "2017-09-30", InstanceID: inst.id,
		InstanceType: inst.instanceType, AccountID: s.opts.AccountID, ImageID: inst.imageID,
		PendingTime: inst.launched.UTC().Format(time.RFC3339), Architecture: "x86_64", Region: s.opts.Region,
	}
	b, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		panic(fmt.Sprintf("awsfake: identity document: %v", err)) // cannot happen: strings and nils only
	}
	return string(b)
}

// closeIMDS closes every instance's metadata service. Called without s.mu
// (httptest.Server.Close waits for requests in flight, whose handlers take
// s.mu), after s.closed is set so that IMDS starts no new one.
func (s *Server) closeIMDS() {
	s.mu.Lock()
	var servers []*httptest.Server
	for _, m := range s.imds {
		servers = append(servers, m.http)
	}
	s.mu.Unlock()
	for _, h := range servers {
		h.Close()
	}
}
