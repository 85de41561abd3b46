package userdata

import (
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/consul-rehydrate/consul-rehydrate/test/imdsmock"
)

// loopbackAddrs returns n consecutive unused addresses in 127.78.0.0/16, apart from
// loopbackPair's 127.77.0.0/16 and test/testcluster's 127.0.<n>.0/24 blocks.
func loopbackAddrs(t *testing.T, n int) []string {
	t.Helper()
	b := make([]byte, 2)
	_, err := rand.Read(b)
	require.NoError(t, err)
	third, fourth := int(b[0]), int(b[1])%(250-n)+1
	addrs := make([]string, n)
	for i := range addrs {
		addrs[i] = fmt.Sprintf("127.78.%d.%d", third, fourth+i)
	}
	return addrs
}

// renderedServer is one server booted on what user-data.sh renders, reached over
// HTTPS with the cluster's CA.
type renderedServer struct {
	ip      string
	secrets map[string][]byte
	https   *http.Client
	log     string
}

// startRenderedServer boots the real consul on user-data.sh's rendered secure.hcl
// and node.hcl (one server on the loopback "private IP" ip; only retry_join, which
// would call AWS, is dropped) with the shipped server.hcl and acl.hcl, and
// waits for it to lead.
func startRenderedServer(t *testing.T, ip string) renderedServer {
	t.Helper()
	s := makeSecrets(t, imdsmock.Region)
	root, out, err := runUserData(t, "IMDS_ENDPOINT="+startMetadata(t, ip), "SECRETS_DIR="+secretsDir(t, s), "CONSUL_SERVERS=1")
	require.NoError(t, err, out)
	etc := filepath.Join(root, "etc/consul.d")
	node := read(t, filepath.Join(etc, "node.hcl"))
	require.Contains(t, node, `bind_addr        = "`+ip+`"`)
	var kept []string
	for _, l := range strings.Split(node, "\n") {
		if !strings.HasPrefix(l, "retry_join") {
			kept = append(kept, l)
		}
	}
	require.NoError(t, os.WriteFile(filepath.Join(etc, "node.hcl"), []byte(strings.Join(kept, "\n")), 0o644))
	for _, f := range []string{"server.hcl", "acl.hcl"} {
		require.NoError(t, os.WriteFile(filepath.Join(etc, f), []byte(read(t, filepath.Join("../../consul.d", f))), 0o644))
	}
	srv := renderedServer{ip: ip, secrets: s, log: filepath.Join(t.TempDir(), "server.log")}
	startAgent(t, etc, srv.log)

	pool := x509.NewCertPool()
	require.True(t, pool.AppendCertsFromPEM(s["ca.pem"]))
	// Remote callers name the server as its certificate does (CONSUL_TLS_SERVER_NAME).
	srv.https = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "server." + imdsmock.Region + ".consul", MinVersion: tls.VersionTLS12},
	}}
	waitFor(t, 60*time.Second, "a leader over HTTPS (server log "+srv.log+")", func() bool {
		code, body, err := call(srv.https, http.MethodGet, srv.url("/v1/status/leader"), "", "")
		return err == nil && code == http.StatusOK && strings.Contains(body, ip+":8300")
	})
	return srv
}

func (s renderedServer) url(path string) string { return "https://" + s.ip + ":8501" + path }

// call sends one request with an optional ACL token and body, returning the status
// and the body.
func call(c *http.Client, method, url, token, body string) (int, string, error) {
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		return 0, "", err
	}
	if token != "" {
		req.Header.Set("X-Consul-Token", token)
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), nil
}

// bootstrapACL makes the cluster's management token with /v1/acl/bootstrap, retried
// while the new leader is still setting the ACL system up.
func (s renderedServer) bootstrapACL(t *testing.T) string {
	t.Helper()
	var token string
	var last string
	waitFor(t, 30*time.Second, "ACL bootstrap", func() bool {
		code, body, err := call(s.https, http.MethodPut, s.url("/v1/acl/bootstrap"), "", "")
		if err != nil || code != http.StatusOK {
			last = fmt.Sprint(code, " ", body, " ", err)
			return false
		}
		var tok struct{ SecretID string }
		if json.Unmarshal([]byte(body), &tok) != nil || tok.SecretID == "" {
			last = body
			return false
		}
		token = tok.SecretID
		return true
	})
	require.NotEmpty(t, token, last)
	return token
}

// nodeToken mints an agent token for node: a node identity, the least a client agent
// needs (node:write on itself, service:read; AutoEncrypt.Sign checks node:write).
func (s renderedServer) nodeToken(t *testing.T, management, node string) string {
	t.Helper()
	req := fmt.Sprintf(`{"Description":"agent token of %s","NodeIdentities":[{"NodeName":%q,"Datacenter":%q}]}`, node, node, imdsmock.Region)
	code, body, err := call(s.https, http.MethodPut, s.url("/v1/acl/token"), management, req)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, code, body)
	var tok struct{ SecretID string }
	require.NoError(t, json.Unmarshal([]byte(body), &tok))
	require.NotEmpty(t, tok.SecretID)
	return tok.SecretID
}

// clientAgentConfig is the configuration of a client agent that uses auto-encrypt:
// the gossip key, the CA certificate (caFile; empty: none), auto_encrypt.tls, TLS
// verification of the servers, ACLs with its agent token, and no certificate of its
// own. Its HTTPS API (on ip only) serves the certificate auto-encrypt fetched, which
// is valid for ip (ip_san). This is the snippet the README documents for clients.
func clientAgentConfig(name, ip, dataDir, serverIP, gossipKey, caFile, agentToken string) string {
	ca := ""
	if caFile != "" {
		ca = fmt.Sprintf("    ca_file         = %q\n", caFile)
	}
	return fmt.Sprintf(`node_name            = %q
datacenter           = %q
data_dir             = %q
bind_addr            = %q
client_addr          = %q
retry_join           = [%q]
retry_interval       = "1s"
disable_update_check = true
ports {
  http     = -1
  https    = 8501
  dns      = -1
  grpc     = -1
  grpc_tls = -1
}

encrypt                 = %q
encrypt_verify_incoming = true
encrypt_verify_outgoing = true

tls {
  defaults {
%s    verify_incoming = false
    verify_outgoing = true
  }
  internal_rpc {
    verify_server_hostname = true
  }
}

auto_encrypt {
  tls    = true
  ip_san = [%q]
}

acl {
  tokens {
    agent = %q
  }
}
`, name, imdsmock.Region, dataDir, ip, ip, serverIP, gossipKey, ca, ip, agentToken)
}

// startClient writes the client's configuration, with the shipped acl.hcl (ACLs on,
// default deny), into a new directory and starts the agent; it returns its log.
func startClient(t *testing.T, name, ip, serverIP, gossipKey, caFile, agentToken string) string {
	t.Helper()
	dir := t.TempDir()
	cfg := clientAgentConfig(name, ip, filepath.Join(dir, "data"), serverIP, gossipKey, caFile, agentToken)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "client.hcl"), []byte(cfg), 0o600))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "acl.hcl"), []byte(read(t, "../../consul.d/acl.hcl")), 0o644))
	log := filepath.Join(t.TempDir(), "client.log") // not in the config dir
	startAgent(t, dir, log)
	return log
}

// TestUserData_AClientAgentGetsItsCertificateByAutoEncryptFromTheRenderedServer boots
// the server user-data.sh renders (auto_encrypt.allow_tls) and a client agent that
// holds only the gossip key, the CA certificate, a node-identity agent token and
// auto_encrypt { tls = true }, no certificate of its own, and proves: the client
// joins; its HTTPS API serves a certificate the servers' built-in (Connect) CA
// signed for it, which it can only have fetched from the servers; a KV write through
// it (its RPC to the servers, over TLS with verify_server_hostname) is read back from
// the server. A client without the CA file, and one with another CA, never get a
// certificate: the server's certificate is not trusted, their API never answers, and
// nothing they were asked to write reaches the server.
func TestUserData_AClientAgentGetsItsCertificateByAutoEncryptFromTheRenderedServer(t *testing.T) {
	addrs := loopbackAddrs(t, 4)
	ip, clientIP, noCAIP, otherCAIP := addrs[0], addrs[1], addrs[2], addrs[3]
	srv := startRenderedServer(t, ip)
	management := srv.bootstrapACL(t)
	key := strings.TrimSpace(string(srv.secrets["gossip-key"]))

	caDir := t.TempDir()
	caFile := filepath.Join(caDir, "ca.pem")
	require.NoError(t, os.WriteFile(caFile, srv.secrets["ca.pem"], 0o644))
	clientLog := startClient(t, "client-1", clientIP, ip, key, caFile, srv.nodeToken(t, management, "client-1"))

	// The client joins: the server sees it alive in the LAN pool.
	waitFor(t, 60*time.Second, "client-1 alive in the server's members (client log "+clientLog+")", func() bool {
		code, body, err := call(srv.https, http.MethodGet, srv.url("/v1/agent/members"), management, "")
		if err != nil || code != http.StatusOK {
			return false
		}
		var members []struct {
			Name   string
			Status int
		}
		if json.Unmarshal([]byte(body), &members) != nil {
			return false
		}
		for _, m := range members {
			if m.Name == "client-1" && m.Status == 1 {
				return true
			}
		}
		return false
	})

	// Its HTTPS API presents the certificate auto-encrypt fetched: signed by the
	// servers' built-in CA (not the cluster's CA, whose key the client never saw), for
	// the agent client-1 of this datacenter.
	code, body, err := call(srv.https, http.MethodGet, srv.url("/v1/connect/ca/roots"), management, "")
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, code, body)
	var roots struct {
		TrustDomain string
		Roots       []struct{ RootCert string }
	}
	require.NoError(t, json.Unmarshal([]byte(body), &roots))
	require.NotEmpty(t, roots.Roots)
	connectCA := x509.NewCertPool()
	for _, r := range roots.Roots {
		require.True(t, connectCA.AppendCertsFromPEM([]byte(r.RootCert)))
	}
	var leaf *x509.Certificate
	viaClient := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: connectCA, MinVersion: tls.VersionTLS12,
			VerifyConnection: func(cs tls.ConnectionState) error {
				leaf = cs.PeerCertificates[0]
				return nil
			}},
	}}
	clientURL := "https://" + clientIP + ":8501"
	code, body, err = call(viaClient, http.MethodGet, clientURL+"/v1/status/leader", "", "")
	require.NoError(t, err, "the client's HTTPS API with the auto-encrypt certificate (client log %s)", clientLog)
	require.Equal(t, http.StatusOK, code, body)
	require.NotNil(t, leaf)
	var uris []string
	for _, u := range leaf.URIs {
		uris = append(uris, u.String())
	}
	assert.Contains(t, uris, "spiffe://"+roots.TrustDomain+"/agent/client/dc/"+imdsmock.Region+"/id/client-1")
	_, err = leaf.Verify(x509.VerifyOptions{Roots: srv.https.Transport.(*http.Transport).TLSClientConfig.RootCAs})
	assert.Error(t, err, "the client's certificate is not one of the cluster's CA: it came from the servers")

	// Its RPC to the servers works: a KV write through it is read back from the server.
	value := uuid(t)
	code, body, err = call(viaClient, http.MethodPut, clientURL+"/v1/kv/autoencrypt/client-1", management, value)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, code, body)
	assert.Equal(t, "true", strings.TrimSpace(body))
	code, body, err = call(srv.https, http.MethodGet, srv.url("/v1/kv/autoencrypt/client-1?raw"), management, "")
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, code, body)
	assert.Equal(t, value, body)

	// Without the CA file the agent refuses to start (verify_outgoing needs a CA);
	// with another CA it cannot trust the server's certificate. Either way it gets no
	// certificate and no RPC path.
	otherCA := filepath.Join(t.TempDir(), "other-ca.pem")
	require.NoError(t, os.WriteFile(otherCA, newCA(t).caPEM(t), 0o644))
	for _, bad := range []struct{ name, ip, caFile, log string }{
		{"client-no-ca", noCAIP, "", "VerifyOutgoing set but no CA certificates were provided"},
		{"client-other-ca", otherCAIP, otherCA, "certificate signed by unknown authority"},
	} {
		t.Run(bad.name, func(t *testing.T) {
			log := startClient(t, bad.name, bad.ip, ip, key, bad.caFile, srv.nodeToken(t, management, bad.name))
			waitFor(t, 60*time.Second, "the client to log "+bad.log+" (its log "+log+")", func() bool {
				b, _ := os.ReadFile(log)
				return strings.Contains(string(b), bad.log)
			})
			insecure := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
				// Only to reach whatever it serves: the write must fail either way.
				TLSClientConfig: &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12}, //nolint:gosec
			}}
			code, body, err := call(insecure, http.MethodPut, "https://"+bad.ip+":8501/v1/kv/autoencrypt/"+bad.name, management, "x")
			assert.False(t, err == nil && code == http.StatusOK, "a KV write through %s succeeded: %d %s", bad.name, code, body)
			code, body, err = call(srv.https, http.MethodGet, srv.url("/v1/kv/autoencrypt/"+bad.name), management, "")
			require.NoError(t, err)
			assert.Equal(t, http.StatusNotFound, code, body)
		})
	}
}
