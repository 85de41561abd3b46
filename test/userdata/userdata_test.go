// Package userdata runs scripts/user-data.sh as an instance would at boot, against
// the real ec2-metadata-mock, with secrets made by the real consul (`consul tls ca
// create`, `consul tls cert create -server`, `consul keygen`), and validates what it
// renders with the real consul.
package userdata

import (
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/consul-rehydrate/consul-rehydrate/test/imdsmock"
	"github.com/consul-rehydrate/consul-rehydrate/test/testcluster"
)

// secretNames are the secrets user-data.sh reads, by file (SECRETS_DIR) or SSM
// parameter name.
var secretNames = []string{"gossip-key", "ca.pem", "server.pem", "server-key.pem", "agent-token", "handler-token"}

// owners makes the script chown its files to the user running the test: the test
// machine has no consul user.
func owners() []string {
	o := fmt.Sprintf("%d:%d", os.Getuid(), os.Getgid())
	return []string{"CONSUL_OWNER=" + o, "HANDLER_OWNER=" + o}
}

func consulBin(t *testing.T) string {
	t.Helper()
	consul, err := testcluster.ConsulBinary()
	require.NoError(t, err)
	return consul
}

// consulIn runs consul with args in dir and returns its output.
func consulIn(t *testing.T, dir string, args ...string) string {
	t.Helper()
	cmd := exec.Command(consulBin(t), args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "consul %s: %s", strings.Join(args, " "), out)
	return string(out)
}

func uuid(t *testing.T) string {
	t.Helper()
	b := make([]byte, 16)
	_, err := rand.Read(b)
	require.NoError(t, err)
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

// certAuthority is a CA made by `consul tls ca create` in its own directory.
type certAuthority struct{ dir string }

func newCA(t *testing.T) certAuthority {
	t.Helper()
	dir := t.TempDir()
	consulIn(t, dir, "tls", "ca", "create")
	return certAuthority{dir}
}

func (ca certAuthority) caPEM(t *testing.T) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(ca.dir, "consul-agent-ca.pem"))
	require.NoError(t, err)
	return b
}

// serverCert returns a server certificate and its key for dc, as
// `consul tls cert create -server -dc <dc>` makes them.
func (ca certAuthority) serverCert(t *testing.T, dc string) (cert, key []byte) {
	t.Helper()
	consulIn(t, ca.dir, "tls", "cert", "create", "-server", "-dc", dc)
	matches, err := filepath.Glob(filepath.Join(ca.dir, dc+"-server-consul-*-key.pem"))
	require.NoError(t, err)
	require.NotEmpty(t, matches)
	keyFile := matches[len(matches)-1] // the newest: -0, -1, ... in creation order for < 10
	key, err = os.ReadFile(keyFile)
	require.NoError(t, err)
	cert, err = os.ReadFile(strings.TrimSuffix(keyFile, "-key.pem") + ".pem")
	require.NoError(t, err)
	return cert, key
}

// makeSecrets returns the secrets a cluster in dc needs, by name.
func makeSecrets(t *testing.T, dc string) map[string][]byte {
	t.Helper()
	ca := newCA(t)
	cert, key := ca.serverCert(t, dc)
	return map[string][]byte{
		"gossip-key":     []byte(consulIn(t, t.TempDir(), "keygen")),
		"ca.pem":         ca.caPEM(t),
		"server.pem":     cert,
		"server-key.pem": key,
		"agent-token":    []byte(uuid(t) + "\n"),
		"handler-token":  []byte(uuid(t) + "\n"),
	}
}

// secretsDir writes secrets into a new directory, as SECRETS_DIR.
func secretsDir(t *testing.T, secrets map[string][]byte) string {
	t.Helper()
	dir := t.TempDir()
	for name, b := range secrets {
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), b, 0o600))
	}
	return dir
}

func runUserData(t *testing.T, env ...string) (root, out string, err error) {
	t.Helper()
	root = t.TempDir()
	cmd := exec.Command("bash", "../../scripts/user-data.sh")
	// No inherited AWS_* setting (profile, region, endpoint) may point the aws CLI
	// anywhere but the test's loopback fakes.
	var base []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "AWS_") {
			base = append(base, kv)
		}
	}
	cmd.Env = append(base, append(append([]string{"ROOT=" + root, "SKIP_SYSTEMD=1"}, owners()...), env...)...)
	b, err := cmd.CombinedOutput()
	return root, string(b), err
}

func read(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	return string(b)
}

// withShipped copies the shipped server.hcl, watches.hcl and acl.hcl next to what
// user-data.sh wrote, as the image has them, and returns that directory.
func withShipped(t *testing.T, root string) string {
	t.Helper()
	etc := filepath.Join(root, "etc/consul.d")
	for _, f := range []string{"server.hcl", "watches.hcl", "acl.hcl"} {
		require.NoError(t, os.WriteFile(filepath.Join(etc, f), []byte(read(t, filepath.Join("../../consul.d", f))), 0o644))
	}
	return etc
}

func TestUserData_RendersValidServerConfigWithNodeMetaAndAutoJoin(t *testing.T) {
	endpoint := imdsmock.Start(t)
	secrets := secretsDir(t, makeSecrets(t, imdsmock.Region))
	root, out, err := runUserData(t, "IMDS_ENDPOINT="+endpoint, "SECRETS_DIR="+secrets,
		"CONSUL_SERVERS=5", "JOIN_TAG_KEY=consul-cluster", "JOIN_TAG_VALUE=prod")
	require.NoError(t, err, out)

	node := read(t, filepath.Join(root, "etc/consul.d/node.hcl"))
	assert.Contains(t, node, `node_name        = "`+imdsmock.InstanceID+`"`)
	assert.Contains(t, node, `instance_id = "`+imdsmock.InstanceID+`"`)
	assert.Regexp(t, `image_id    = "ami-[0-9a-f]+"`, node)
	assert.Contains(t, node, "bootstrap_expect = 5")
	assert.Contains(t, node, `retry_join       = ["provider=aws region=us-east-1 tag_key=consul-cluster tag_value=prod"]`)

	// Together with the shipped server.hcl, watches.hcl and acl.hcl it is a valid
	// server config.
	v, err := exec.Command(consulBin(t), "validate", withShipped(t, root)).CombinedOutput()
	require.NoError(t, err, string(v))
	assert.Contains(t, string(v), "Configuration is valid!")
}

// TestUserData_RendersGossipEncryptionTLSAndTokensFromTheSecrets: the boot-written
// secure.hcl turns on gossip encryption with both verify flags, TLS with
// verify_incoming, verify_outgoing and verify_server_hostname on the CA-signed
// server certificate, HTTP on loopback only, auto-encrypt for clients and the agent
// token; the files holding secrets are not world-readable; consul validates the
// whole directory; and no secret appears in the script's output.
func TestUserData_RendersGossipEncryptionTLSAndTokensFromTheSecrets(t *testing.T) {
	endpoint := imdsmock.Start(t)
	s := makeSecrets(t, imdsmock.Region)
	root, out, err := runUserData(t, "IMDS_ENDPOINT="+endpoint, "SECRETS_DIR="+secretsDir(t, s))
	require.NoError(t, err, out)

	etc := filepath.Join(root, "etc/consul.d")
	tlsDir := filepath.Join(etc, "tls")
	key := strings.TrimSpace(string(s["gossip-key"]))
	agentToken := strings.TrimSpace(string(s["agent-token"]))
	handlerToken := strings.TrimSpace(string(s["handler-token"]))

	secure := read(t, filepath.Join(etc, "secure.hcl"))
	for _, want := range []string{
		`encrypt                 = "` + key + `"`,
		"encrypt_verify_incoming = true",
		"encrypt_verify_outgoing = true",
		`ca_file         = "` + tlsDir + `/ca.pem"`,
		`cert_file       = "` + tlsDir + `/server.pem"`,
		`key_file        = "` + tlsDir + `/server-key.pem"`,
		"verify_incoming = true",
		"verify_outgoing = true",
		"verify_server_hostname = true",
		"allow_tls = true",
		`http = "127.0.0.1"`,
		"https = 8501",
		`agent                           = "` + agentToken + `"`,
		`config_file_service_registration = "` + agentToken + `"`,
	} {
		assert.Contains(t, secure, want)
	}
	// The HTTPS API authenticates by ACL token, not client certificate.
	assert.Regexp(t, `https \{\s+verify_incoming = false\s+\}`, secure)
	node := read(t, filepath.Join(etc, "node.hcl"))
	assert.Regexp(t, `client_addr      = "127\.0\.0\.1 [0-9.]+"`, node)

	for name, body := range map[string][]byte{"ca.pem": s["ca.pem"], "server.pem": s["server.pem"], "server-key.pem": s["server-key.pem"]} {
		assert.Equal(t, string(body), read(t, filepath.Join(tlsDir, name)), name)
	}
	assert.Equal(t, handlerToken+"\n", read(t, filepath.Join(root, "etc/consul-rehydrate/consul.token")))

	modes := map[string]os.FileMode{
		filepath.Join(etc, "secure.hcl"):                         0o640,
		filepath.Join(tlsDir, "server-key.pem"):                  0o640,
		filepath.Join(tlsDir, "server.pem"):                      0o640,
		filepath.Join(tlsDir, "ca.pem"):                          0o640,
		tlsDir:                                                   0o750 | os.ModeDir,
		filepath.Join(root, "etc/consul-rehydrate/consul.token"): 0o600,
		filepath.Join(root, "etc/consul-rehydrate"):              0o750 | os.ModeDir,
	}
	for path, want := range modes {
		fi, err := os.Stat(path)
		require.NoError(t, err)
		assert.Equal(t, want, fi.Mode(), path)
	}

	for _, secret := range []string{key, agentToken, handlerToken, "PRIVATE KEY"} {
		assert.NotContains(t, out, secret, "the script's output names a secret")
	}

	v, err := exec.Command(consulBin(t), "validate", withShipped(t, root)).CombinedOutput()
	require.NoError(t, err, string(v))
	assert.Contains(t, string(v), "Configuration is valid!")
}

// TestUserData_RefusesToStartWithoutGoodSecrets: each missing or wrong secret is
// refused with an error naming it (and not its value), and nothing is written, so
// consul.service (ConditionFileNotEmpty) does not start.
func TestUserData_RefusesToStartWithoutGoodSecrets(t *testing.T) {
	endpoint := imdsmock.Start(t)
	good := makeSecrets(t, imdsmock.Region)
	other := newCA(t)
	otherCert, otherKey := other.serverCert(t, imdsmock.Region)
	// Signed by its CA, but for server.eu-west-1.consul.
	dcCA := newCA(t)
	dcCert, dcKey := dcCA.serverCert(t, "eu-west-1")
	short := make([]byte, 10)
	_, err := rand.Read(short)
	require.NoError(t, err)

	tests := []struct {
		name   string
		change map[string][]byte // nil value: the secret is missing
		want   string
	}{
		{"no gossip key", map[string][]byte{"gossip-key": nil}, "secret gossip-key missing or empty"},
		{"gossip key not base64", map[string][]byte{"gossip-key": []byte("not a key!")}, "gossip-key is not base64"},
		{"gossip key of 10 bytes", map[string][]byte{"gossip-key": []byte(base64.StdEncoding.EncodeToString(short))}, "gossip-key must decode to 16, 24 or 32 bytes"},
		{"no CA", map[string][]byte{"ca.pem": nil}, "secret ca.pem missing or empty"},
		{"CA not a certificate", map[string][]byte{"ca.pem": []byte("hello")}, "ca.pem is not a PEM certificate"},
		{"no server certificate", map[string][]byte{"server.pem": nil}, "secret server.pem missing or empty"},
		{"no server key", map[string][]byte{"server-key.pem": nil}, "secret server-key.pem missing or empty"},
		{"certificate of another CA", map[string][]byte{"server.pem": otherCert, "server-key.pem": otherKey}, "server.pem is not signed by ca.pem"},
		{"certificate for another datacenter", map[string][]byte{"ca.pem": dcCA.caPEM(t), "server.pem": dcCert, "server-key.pem": dcKey}, "server.pem is not valid for server.us-east-1.consul"},
		{"key of another certificate", map[string][]byte{"server-key.pem": otherKey}, "server-key.pem is not the key of server.pem"},
		{"no agent token", map[string][]byte{"agent-token": nil}, "secret agent-token missing or empty"},
		{"agent token not a UUID", map[string][]byte{"agent-token": []byte(`x" } acl { enabled = false`)}, "agent-token is not an ACL token secret ID"},
		{"no handler token", map[string][]byte{"handler-token": nil}, "secret handler-token missing or empty"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := map[string][]byte{}
			for k, v := range good {
				s[k] = v
			}
			for k, v := range tt.change {
				if v == nil {
					delete(s, k)
				} else {
					s[k] = v
				}
			}
			root, out, err := runUserData(t, "IMDS_ENDPOINT="+endpoint, "SECRETS_DIR="+secretsDir(t, s))
			require.Error(t, err, out)
			assert.Contains(t, out, tt.want)
			assert.NotContains(t, out, "configured")
			for _, v := range tt.change {
				if len(v) > 0 {
					assert.NotContains(t, out, string(v), "the error repeats the secret")
				}
			}
			_, statErr := os.Stat(filepath.Join(root, "etc"))
			assert.True(t, os.IsNotExist(statErr), "nothing written")
		})
	}
}

// fakeSSM answers SSM GetParameter (the JSON 1.1 protocol the aws CLI speaks) from
// params, recording each request; an unknown name is ParameterNotFound, as SSM
// answers it.
func fakeSSM(t *testing.T, params map[string]string) (url string, requests func() []map[string]any) {
	t.Helper()
	var mu sync.Mutex
	var got []map[string]any
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var req map[string]any
		if r.Header.Get("X-Amz-Target") != "AmazonSSM.GetParameter" || json.Unmarshal(body, &req) != nil {
			http.Error(w, `{"__type":"InvalidAction"}`, http.StatusBadRequest)
			return
		}
		mu.Lock()
		got = append(got, req)
		mu.Unlock()
		w.Header().Set("Content-Type", "application/x-amz-json-1.1")
		name, _ := req["Name"].(string)
		v, ok := params[name]
		if !ok {
			w.WriteHeader(http.StatusBadRequest)
			_, _ = io.WriteString(w, `{"__type":"ParameterNotFound"}`)
			return
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"Parameter": map[string]any{
			"Name": name, "Type": "SecureString", "Value": v, "Version": 1,
		}})
	}))
	t.Cleanup(srv.Close)
	return srv.URL, func() []map[string]any {
		mu.Lock()
		defer mu.Unlock()
		return append([]map[string]any(nil), got...)
	}
}

// awsEnv runs the real aws CLI against loopback only: fixed credentials, no
// profile, no instance metadata.
func awsEnv(t *testing.T, endpoint string) []string {
	t.Helper()
	_, err := exec.LookPath("aws")
	require.NoError(t, err, "the aws CLI is not on PATH (pip install awscli, or Debian's awscli)")
	home := t.TempDir()
	return []string{
		"SSM_ENDPOINT=" + endpoint, "HOME=" + home,
		"AWS_ACCESS_KEY_ID=AKIDTEST", "AWS_SECRET_ACCESS_KEY=test",
		"AWS_CONFIG_FILE=" + filepath.Join(home, "none"), "AWS_SHARED_CREDENTIALS_FILE=" + filepath.Join(home, "none"),
		"AWS_EC2_METADATA_DISABLED=true",
	}
}

// TestUserData_ReadsSecretsFromSSMWithDecryption: without SECRETS_DIR the script
// reads every secret as a SecureString under SSM_PREFIX with the real aws CLI, and
// a missing parameter stops it before anything is written.
func TestUserData_ReadsSecretsFromSSMWithDecryption(t *testing.T) {
	endpoint := imdsmock.Start(t)
	s := makeSecrets(t, imdsmock.Region)
	params := map[string]string{}
	for name, v := range s {
		params["/consul-rehydrate/prod/"+name] = string(v)
	}
	ssm, requests := fakeSSM(t, params)

	root, out, err := runUserData(t, append(awsEnv(t, ssm), "IMDS_ENDPOINT="+endpoint, "JOIN_TAG_VALUE=prod")...)
	require.NoError(t, err, out)
	var names []string
	for _, r := range requests() {
		names = append(names, r["Name"].(string))
		assert.Equal(t, true, r["WithDecryption"], "%s read without decryption", r["Name"])
	}
	var want []string
	for _, n := range secretNames {
		want = append(want, "/consul-rehydrate/prod/"+n)
	}
	assert.Equal(t, want, names)
	secure := read(t, filepath.Join(root, "etc/consul.d/secure.hcl"))
	assert.Contains(t, secure, `encrypt                 = "`+strings.TrimSpace(string(s["gossip-key"]))+`"`)
	// `--output text` ends the value with a newline of its own: harmless in PEM.
	assert.Equal(t, strings.TrimSpace(string(s["server-key.pem"])), strings.TrimSpace(read(t, filepath.Join(root, "etc/consul.d/tls/server-key.pem"))))

	delete(params, "/consul-rehydrate/prod/server-key.pem")
	ssm, _ = fakeSSM(t, params)
	root, out, err = runUserData(t, append(awsEnv(t, ssm), "IMDS_ENDPOINT="+endpoint, "JOIN_TAG_VALUE=prod")...)
	require.Error(t, err, out)
	assert.Contains(t, out, "read secret /consul-rehydrate/prod/server-key.pem from SSM Parameter Store")
	_, statErr := os.Stat(filepath.Join(root, "etc"))
	assert.True(t, os.IsNotExist(statErr), "nothing written")
}

func TestUserData_FailsClearlyAndWritesNothing(t *testing.T) {
	endpoint := imdsmock.Start(t)
	secrets := secretsDir(t, makeSecrets(t, imdsmock.Region))
	tests := []struct {
		name string
		env  []string
		want string
	}{
		{"no metadata service", []string{"IMDS_ENDPOINT=http://127.0.0.1:1"}, "no IMDSv2 token from http://127.0.0.1:1"},
		{"server count not a number", []string{"IMDS_ENDPOINT=" + endpoint, "CONSUL_SERVERS=three"}, "CONSUL_SERVERS must be a number"},
		{"join tag breaks out of its string", []string{"IMDS_ENDPOINT=" + endpoint, `JOIN_TAG_VALUE=main"]`}, "may not contain quotes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root, out, err := runUserData(t, append(tt.env, "SECRETS_DIR="+secrets)...)
			require.Error(t, err)
			assert.Contains(t, out, tt.want)
			_, statErr := os.Stat(filepath.Join(root, "etc/consul.d/node.hcl"))
			assert.True(t, os.IsNotExist(statErr), "no config written")
			assert.False(t, strings.Contains(out, "configured"))
		})
	}
}

// startMetadata runs ec2-metadata-mock as imdsmock.Start does, but serving
// local-ipv4 = ip, so the rendered server binds to a loopback address.
func startMetadata(t *testing.T, ip string) string {
	t.Helper()
	bin, err := exec.LookPath("ec2-metadata-mock")
	require.NoError(t, err, "ec2-metadata-mock not on PATH: run the tests with `make test`, which installs it")
	dir := t.TempDir()
	cfg := filepath.Join(dir, "aemm.json")
	require.NoError(t, os.WriteFile(cfg, []byte(`{"metadata":{"values":{"local-ipv4":"`+ip+`"}}}`), 0o644))
	port := freePort(t, "127.0.0.1")
	cmd := exec.Command(bin, "--hostname", "127.0.0.1", "--port", port, "--imdsv2", "-c", cfg)
	cmd.Dir = dir
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	endpoint := "http://127.0.0.1:" + port
	waitFor(t, 10*time.Second, "ec2-metadata-mock to start", func() bool {
		resp, err := http.Get(endpoint + "/latest/meta-data/instance-id")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return true
	})
	return endpoint
}

func freePort(t *testing.T, host string) string {
	t.Helper()
	l, err := net.Listen("tcp", host+":0")
	require.NoError(t, err)
	defer l.Close()
	return strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
}

// waitFor polls cond every 100ms until it holds, failing the test after limit.
func waitFor(t *testing.T, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", limit, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// startAgent runs consul agent on the configuration in dir, logging to log, and
// stops it when the test ends.
func startAgent(t *testing.T, dir, log string) {
	t.Helper()
	f, err := os.Create(log)
	require.NoError(t, err)
	t.Cleanup(func() { f.Close() })
	cmd := exec.Command(consulBin(t), "agent", "-config-dir", dir)
	cmd.Stdout, cmd.Stderr = f, f
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			b, _ := os.ReadFile(log)
			t.Logf("%s:\n%s", log, b)
		}
	})
}

// loopbackPair returns two unused addresses in 127.77.0.0/16, outside the
// 127.0.<n>.0/24 blocks test/testcluster hands out.
func loopbackPair(t *testing.T) (string, string) {
	t.Helper()
	b := make([]byte, 2)
	_, err := rand.Read(b)
	require.NoError(t, err)
	third, fourth := int(b[0]), int(b[1])%250+1
	return fmt.Sprintf("127.77.%d.%d", third, fourth), fmt.Sprintf("127.77.%d.%d", third, fourth+1)
}

// TestUserData_TheRenderedServerSpeaksOnlyTLSAndGossipsOnlyWithTheKey boots the real
// consul on what user-data.sh renders (one server, on a loopback "private IP" from
// the metadata mock; only retry_join, which would call AWS, is dropped) and proves:
// the API answers HTTPS with the CA's certificate, on the private IP and on
// loopback; plain HTTP on the private IP finds no listener, and plain HTTP to the
// HTTPS port is refused; a client of another CA is refused; a write without a token
// is denied; and an agent without the gossip key cannot join.
func TestUserData_TheRenderedServerSpeaksOnlyTLSAndGossipsOnlyWithTheKey(t *testing.T) {
	ip, stranger := loopbackPair(t)
	srv := startRenderedServer(t, ip) // leads, over HTTPS verified as server.<dc>.consul
	remote := srv.https

	pool := x509.NewCertPool()
	require.True(t, pool.AppendCertsFromPEM(srv.secrets["ca.pem"]))
	client := func(serverName string, roots *x509.CertPool) *http.Client {
		return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
			TLSClientConfig: &tls.Config{RootCAs: roots, ServerName: serverName, MinVersion: tls.VersionTLS12},
		}}
	}
	get := func(c *http.Client, url string) (int, string, error) { return call(c, http.MethodGet, url, "", "") }

	// The agent's own watches reach it at https://127.0.0.1:8501, verified as is.
	code, _, err := get(client("", pool), "https://127.0.0.1:8501/v1/status/leader")
	require.NoError(t, err)
	assert.Equal(t, http.StatusOK, code)

	plain := &http.Client{Timeout: 5 * time.Second}
	_, _, err = get(plain, "http://"+ip+":8500/v1/status/leader")
	assert.Error(t, err, "plain HTTP on the private IP must find no listener")
	code, body, err := get(plain, "http://"+ip+":8501/v1/status/leader")
	require.NoError(t, err)
	assert.Equal(t, http.StatusBadRequest, code)
	assert.Contains(t, body, "HTTP request to an HTTPS server")

	_, _, err = get(client("server."+imdsmock.Region+".consul", x509.NewCertPool()), "https://"+ip+":8501/v1/status/leader")
	assert.ErrorContains(t, err, "certificate", "a server the caller's CA did not sign is not trusted")
	otherCA := x509.NewCertPool()
	require.True(t, otherCA.AppendCertsFromPEM(newCA(t).caPEM(t)))
	_, _, err = get(client("server."+imdsmock.Region+".consul", otherCA), "https://"+ip+":8501/v1/status/leader")
	assert.ErrorContains(t, err, "certificate")

	req, err := http.NewRequest(http.MethodPut, "https://"+ip+":8501/v1/kv/rehydrate/x", strings.NewReader("v"))
	require.NoError(t, err)
	resp, err := remote.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusForbidden, resp.StatusCode, "default deny: a write without a token")

	// An agent without the gossip key tries to join: the server drops its messages.
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "client.hcl"), []byte(fmt.Sprintf(`node_name = "stranger"
datacenter = %q
data_dir = %q
bind_addr = %q
client_addr = %q
ports {
  dns      = -1
  grpc     = -1
  grpc_tls = -1
}
retry_join = [%q]
retry_interval = "1s"
disable_update_check = true
`, imdsmock.Region, filepath.Join(dir, "data"), stranger, stranger, ip)), 0o644))
	strangerLog := filepath.Join(dir, "client.log")
	startAgent(t, dir, strangerLog)
	waitFor(t, 30*time.Second, "the stranger's join to be refused (its log "+strangerLog+")", func() bool {
		b, _ := os.ReadFile(strangerLog)
		return strings.Contains(string(b), "Failed to join "+ip+":8301: Remote state is encrypted and encryption is not configured")
	})
	code, body, err = get(plain, "http://"+stranger+":8500/v1/agent/members")
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, code, body)
	var members []struct{ Name string }
	require.NoError(t, json.Unmarshal([]byte(body), &members))
	assert.Equal(t, []struct{ Name string }{{"stranger"}}, members, "the keyless agent is alone")
}
