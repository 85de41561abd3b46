package config

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestConsulConfig_TokenPrefersInlineThenFileThenEnvironment(t *testing.T) {
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "consul.token")
	write(t, tokenFile, "  file-token\n")
	emptyFile := filepath.Join(dir, "empty.token")
	write(t, emptyFile, "\n")

	tests := []struct {
		name    string
		c       ConsulConfig
		env     string
		want    string
		wantErr string
	}{
		{name: "inline", c: ConsulConfig{InlineToken: "inline-token", TokenFile: tokenFile}, env: "env-token", want: "inline-token"},
		{name: "file, trimmed", c: ConsulConfig{TokenFile: tokenFile}, env: "env-token", want: "file-token"},
		{name: "environment", env: "env-token", want: "env-token"},
		{name: "none"},
		{name: "empty file", c: ConsulConfig{TokenFile: emptyFile}, wantErr: "token file " + emptyFile + " is empty"},
		{name: "missing file", c: ConsulConfig{TokenFile: filepath.Join(dir, "absent")}, wantErr: "read token file: open " + dir},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.c.EnvToken = Secret(tt.env)
			got, err := tt.c.Token()
			if tt.wantErr != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tt.wantErr)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
		})
	}
}

func TestConsulConfig_APIConfigCarriesEverySetting(t *testing.T) {
	c := ConsulConfig{
		Address:     "consul.example.internal:8501",
		Scheme:      "https",
		Datacenter:  "dc2",
		InlineToken: "inline-token",
		TLS: TLSConfig{
			CAFile:             "/tls/ca.pem",
			CertFile:           "/tls/client.pem",
			KeyFile:            "/tls/client-key.pem",
			ServerName:         "server.dc2.consul",
			InsecureSkipVerify: true,
		},
	}
	got, err := c.APIConfig()
	require.NoError(t, err)
	assert.Equal(t, &api.Config{
		Address:    "consul.example.internal:8501",
		Scheme:     "https",
		Datacenter: "dc2",
		Token:      "inline-token",
		TLSConfig: api.TLSConfig{
			Address:            "server.dc2.consul",
			CAFile:             "/tls/ca.pem",
			CertFile:           "/tls/client.pem",
			KeyFile:            "/tls/client-key.pem",
			InsecureSkipVerify: true,
		},
	}, got)
}

func TestConsulConfig_APIConfigFailsWhenTheTokenFileIsUnreadable(t *testing.T) {
	_, err := ConsulConfig{TokenFile: filepath.Join(t.TempDir(), "absent")}.APIConfig()
	require.Error(t, err)
	assert.Contains(t, err.Error(), "consul token: read token file:")
}

func TestConfig_NeverPrintsTheToken(t *testing.T) {
	const secret = "b1gs3cr3t-0000-token"
	c, err := parse(t, minimal+"consul {\n  token = \""+secret+"\"\n}\n")
	require.NoError(t, err)
	tok, err := c.Consul.Token()
	require.NoError(t, err)
	require.Equal(t, secret, tok, "the token is still usable")

	values := map[string]any{
		"*Config": c, "Config": *c, "ConsulConfig": c.Consul, "Secret": c.Consul.InlineToken,
	}
	for name, v := range values {
		for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%X", "%d"} {
			out := fmt.Sprintf(verb, v)
			assert.NotContains(t, out, secret, "%s with %s", name, verb)
			assert.NotContains(t, out, hex.EncodeToString([]byte(secret)), "%s with %s", name, verb)
			assert.Contains(t, out, redacted, "%s with %s shows that a token is set", name, verb)
		}
	}
	assert.Equal(t, redacted, c.Consul.InlineToken.String())
	assert.Equal(t, `"[redacted]"`, c.Consul.InlineToken.GoString())

	js, err := json.Marshal(c)
	require.NoError(t, err)
	assert.NotContains(t, string(js), secret)
	assert.Contains(t, string(js), `"InlineToken":"[redacted]"`)
}

func TestSecret_EmptyPrintsEmpty(t *testing.T) {
	assert.Equal(t, "", fmt.Sprintf("%v", Secret("")))
	assert.Equal(t, `""`, fmt.Sprintf("%#v", Secret("")))
}

func TestLoad_RefusesATokenFileGroupOrOthersMayReadOrWrite(t *testing.T) {
	dir := t.TempDir()
	for _, mode := range []os.FileMode{0o644, 0o640, 0o604, 0o620, 0o602, 0o660, 0o666} {
		t.Run(fmt.Sprintf("%#o", mode), func(t *testing.T) {
			tf := filepath.Join(dir, fmt.Sprintf("token-%o", mode))
			write(t, tf, "secret-token\n")
			require.NoError(t, os.Chmod(tf, mode)) // whatever the umask
			cfg := filepath.Join(dir, fmt.Sprintf("config-%o.hcl", mode))
			write(t, cfg, minimal+"consul {\n  token_file = \""+tf+"\"\n}\n")

			c, err := Load(cfg)
			assert.Nil(t, c)
			var cerr *Error
			require.ErrorAs(t, err, &cerr, "a configuration error, so the program exits with its code")
			assertLines(t, []string{fmt.Sprintf("%s:8:3: consul.token_file: %s is readable or writable by group or others (mode %#o): it holds an ACL token; chmod 600 %s",
				cfg, tf, mode, tf)}, err)
			assert.NotContains(t, err.Error(), "secret-token")
		})
	}
	for _, mode := range []os.FileMode{0o600, 0o400} {
		t.Run(fmt.Sprintf("%#o is accepted", mode), func(t *testing.T) {
			tf := filepath.Join(dir, fmt.Sprintf("ok-%o", mode))
			write(t, tf, "secret-token\n")
			require.NoError(t, os.Chmod(tf, mode))
			c, err := ParseFor([]byte(minimal+"consul {\n  token_file = \""+tf+"\"\n}\n"), "config.hcl", JobRoll, nil)
			require.NoError(t, err)
			tok, err := c.Consul.Token()
			require.NoError(t, err)
			assert.Equal(t, "secret-token", tok)
		})
	}

	// The same holds for a token file named by $CONSUL_HTTP_TOKEN_FILE, and the
	// error says where the path came from.
	open := filepath.Join(dir, "env-token")
	write(t, open, "secret-token\n")
	require.NoError(t, os.Chmod(open, 0o644))
	_, err := ParseFor([]byte(minimal), "config.hcl", JobRoll, env(api.HTTPTokenFileEnvName, open))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "consul.token_file: "+open+" is readable or writable by group or others (mode 0644)")
	assert.Contains(t, err.Error(), "(set by $CONSUL_HTTP_TOKEN_FILE)")
	_, err = FromEnv(env(api.HTTPTokenFileEnvName, open))
	require.ErrorContains(t, err, "is readable or writable by group or others", "also without a file")
}

// vars is an environment of the given variables.
func vars(kv map[string]string) Getenv { return func(k string) string { return kv[k] } }

func TestParseFor_TheConsulCLIsVariablesFillWhatTheFileLeavesOut(t *testing.T) {
	dir := t.TempDir()
	files := map[string]string{}
	for _, f := range []string{"ca.pem", "client.pem", "client-key.pem", "env.token", "file-ca.pem", "file-client.pem", "file-client-key.pem", "file.token"} {
		files[f] = filepath.Join(dir, f)
		write(t, files[f], "placeholder\n")
	}
	agentEnv := map[string]string{
		api.HTTPAddrEnvName:      "https://127.0.0.1:8501",
		api.HTTPCAFile:           files["ca.pem"],
		api.HTTPClientCert:       files["client.pem"],
		api.HTTPClientKey:        files["client-key.pem"],
		api.HTTPTLSServerName:    "localhost",
		api.HTTPTokenFileEnvName: files["env.token"],
		api.HTTPTokenEnvName:     "env-token",
	}

	// A file without a consul block: everything from the environment, as the local
	// provider's agents hand it to their watch handlers.
	c, err := ParseFor([]byte(`deploy "web" { command = ["d"] }`), "deploy.hcl", JobDeploy, vars(agentEnv))
	require.NoError(t, err)
	assert.Equal(t, ConsulConfig{
		Address:   "https://127.0.0.1:8501",
		Scheme:    "https",
		TokenFile: files["env.token"],
		EnvToken:  "env-token",
		TLS: TLSConfig{
			CAFile: files["ca.pem"], CertFile: files["client.pem"], KeyFile: files["client-key.pem"], ServerName: "localhost",
		},
	}, c.Consul)
	ac, err := c.Consul.APIConfig()
	require.NoError(t, err)
	assert.Equal(t, "placeholder", ac.Token, "the token file wins over $CONSUL_HTTP_TOKEN, as in the consul CLI")
	assert.Equal(t, "https", ac.Scheme)
	assert.Equal(t, files["ca.pem"], ac.TLSConfig.CAFile)

	// The file wins, setting by setting; a client certificate and key come as a pair.
	c, err = ParseFor([]byte(fmt.Sprintf(`
consul {
  address    = "127.0.0.1:8500"
  scheme     = "http"
  token_file = %q
  tls {
    ca_file     = %q
    cert_file   = %q
    key_file    = %q
    server_name = "consul.internal"
  }
}
deploy "web" { command = ["d"] }
`, files["file.token"], files["file-ca.pem"], files["file-client.pem"], files["file-client-key.pem"])), "deploy.hcl", JobDeploy, vars(agentEnv))
	require.NoError(t, err)
	assert.Equal(t, ConsulConfig{
		Address:   "127.0.0.1:8500",
		Scheme:    "http",
		TokenFile: files["file.token"],
		EnvToken:  "env-token",
		TLS: TLSConfig{
			CAFile: files["file-ca.pem"], CertFile: files["file-client.pem"], KeyFile: files["file-client-key.pem"], ServerName: "consul.internal",
		},
	}, c.Consul)

	// An inline token in the file: no token file from the environment.
	c, err = ParseFor([]byte("consul {\n  token = \"inline\"\n}\ndeploy \"web\" { command = [\"d\"] }\n"), "deploy.hcl", JobDeploy, vars(agentEnv))
	require.NoError(t, err)
	assert.Empty(t, c.Consul.TokenFile)
	tok, err := c.Consul.Token()
	require.NoError(t, err)
	assert.Equal(t, "inline", tok)

	// A file with only a client certificate gets no key from the environment: the
	// pair is incomplete, and said so.
	_, err = ParseFor([]byte(fmt.Sprintf("consul {\n  tls {\n    cert_file = %q\n  }\n}\ndeploy \"web\" { command = [\"d\"] }\n", files["file-client.pem"])),
		"deploy.hcl", JobDeploy, vars(agentEnv))
	assertLines(t, []string{"deploy.hcl:3:5: consul.tls.cert_file needs consul.tls.key_file"}, err)

	// $CONSUL_HTTP_SSL=true means https, as for the consul CLI; a value that is not a
	// boolean is an error naming it.
	c, err = ParseFor([]byte(minimal), "config.hcl", JobRoll, vars(map[string]string{api.HTTPSSLEnvName: "true"}))
	require.NoError(t, err)
	assert.Equal(t, "https", c.Consul.Scheme)
	_, err = ParseFor([]byte(minimal), "config.hcl", JobRoll, vars(map[string]string{api.HTTPSSLEnvName: "yes please"}))
	assertLines(t, []string{`config.hcl:1:1: $CONSUL_HTTP_SSL "yes please" must be true or false`}, err)

	// An https:// address with scheme = "http" is a contradiction.
	_, err = parse(t, minimal+"consul {\n  address = \"https://127.0.0.1:8501\"\n  scheme  = \"http\"\n}\n")
	assertLines(t, []string{`/etc/consul-rehydrate/config.hcl:9:3: consul.scheme "http" contradicts the https:// of consul.address "https://127.0.0.1:8501": drop one`}, err)

	// A relative path in the environment is the program's: against its working
	// directory, not the file's.
	t.Chdir(dir)
	c, err = ParseFor([]byte(minimal), "/etc/consul-rehydrate/config.hcl", JobRoll, vars(map[string]string{api.HTTPCAFile: "ca.pem"}))
	require.NoError(t, err)
	assert.Equal(t, files["ca.pem"], c.Consul.TLS.CAFile)

	// A CA file from the environment that does not exist is reported like the file's.
	_, err = ParseFor([]byte(minimal), "config.hcl", JobRoll, vars(map[string]string{api.HTTPCAFile: filepath.Join(dir, "absent.pem")}))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "consul.tls.ca_file: stat "+filepath.Join(dir, "absent.pem"))
	assert.Contains(t, err.Error(), "(set by $CONSUL_CACERT)")
}

func TestParseFor_ReadsTheConsulTLSVariablesOnlyThroughGetenv(t *testing.T) {
	for _, k := range []string{api.HTTPCAFile, api.HTTPClientCert, api.HTTPClientKey, api.HTTPTokenFileEnvName} {
		t.Setenv(k, "/process/only/"+k)
	}
	t.Setenv(api.HTTPTLSServerName, "process-only")
	t.Setenv(api.HTTPSSLEnvName, "true")
	t.Setenv(api.HTTPAddrEnvName, "https://10.9.9.9:8501")
	c, err := ParseFor([]byte(minimal), "config.hcl", JobRoll, nil)
	require.NoError(t, err)
	assert.Equal(t, Default().Consul, c.Consul, "nothing from the process environment")
}

// TestConsulConfig_FromTheAgentsVariablesTalksHTTPSWithTheCAAndToken is what a watch
// handler whose file has no consul block does when its agent hands it
// CONSUL_HTTP_ADDR=https://..., CONSUL_CACERT and CONSUL_HTTP_TOKEN_FILE: it talks
// HTTPS, trusts that CA (and no other) and sends the token. The agent is a TLS server
// on loopback that answers the one request a handler starts with.
func TestConsulConfig_FromTheAgentsVariablesTalksHTTPSWithTheCAAndToken(t *testing.T) {
	var gotToken atomic.Value
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotToken.Store(r.Header.Get("X-Consul-Token"))
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"Config":{"NodeName":"node-1"}}`)
	}))
	defer srv.Close()
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca.pem")
	write(t, ca, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})))
	tokenFile := filepath.Join(dir, "token")
	write(t, tokenFile, "agent-handed-token\n")

	agentEnv := map[string]string{
		api.HTTPAddrEnvName:      "https://" + srv.Listener.Addr().String(),
		api.HTTPCAFile:           ca,
		api.HTTPTokenFileEnvName: tokenFile,
	}
	c, err := ParseFor([]byte(`deploy "web" { command = ["d"] }`), "deploy.hcl", JobDeploy, vars(agentEnv))
	require.NoError(t, err)
	ac, err := c.Consul.APIConfig()
	require.NoError(t, err)
	client, err := api.NewClient(ac)
	require.NoError(t, err)
	name, err := client.Agent().NodeName()
	require.NoError(t, err, "HTTPS with the CA from $CONSUL_CACERT")
	assert.Equal(t, "node-1", name)
	assert.Equal(t, "agent-handed-token", gotToken.Load(), "the token from $CONSUL_HTTP_TOKEN_FILE")

	// Without the CA, the same agent is not trusted: the CA is what makes it work.
	otherCA := filepath.Join(dir, "other-ca.pem")
	write(t, otherCA, selfSignedCA(t))
	agentEnv[api.HTTPCAFile] = otherCA
	c, err = ParseFor([]byte(`deploy "web" { command = ["d"] }`), "deploy.hcl", JobDeploy, vars(agentEnv))
	require.NoError(t, err)
	ac, err = c.Consul.APIConfig()
	require.NoError(t, err)
	client, err = api.NewClient(ac)
	require.NoError(t, err)
	_, err = client.Agent().NodeName()
	require.Error(t, err)
	assert.Contains(t, err.Error(), "certificate")
}

// selfSignedCA returns the PEM of a new CA certificate, one that signed nothing.
func selfSignedCA(t *testing.T) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "another CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

// The image-published Lambda loads the servers' file, copied into its zip without
// the token file it names: its token comes from SSM. Under JobTrigger the file
// loads; under JobRoll alone the missing token file is still an error.
func TestLoadFor_TriggerDoesNotNeedTheTokenFile(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.hcl")
	write(t, cfg, minimal+"consul {\n  token_file = \"absent.token\"\n}\n")

	c, err := LoadFor(cfg, JobRoll|JobTrigger, NoEnv)
	require.NoError(t, err)
	assert.Equal(t, filepath.Join(dir, "absent.token"), c.Consul.TokenFile, "the path is kept as the file has it")

	_, err = LoadFor(cfg, JobRoll, NoEnv)
	var cerr *Error
	require.ErrorAs(t, err, &cerr)
	assert.Contains(t, err.Error(), cfg+":8:3: consul.token_file: stat "+filepath.Join(dir, "absent.token"))

	// A token file others may read is not the trigger's concern either; the rest
	// of the file is validated as for the roll.
	open := filepath.Join(dir, "open.token")
	write(t, open, "secret-token\n")
	require.NoError(t, os.Chmod(open, 0o644))
	_, err = ParseFor([]byte(minimal+"consul {\n  token_file = \""+open+"\"\n}\n"), "config.hcl", JobRoll|JobTrigger, nil)
	require.NoError(t, err)
	_, err = ParseFor([]byte("consul {\n  token_file = \"absent.token\"\n}\n"), "config.hcl", JobRoll|JobTrigger, nil)
	require.ErrorContains(t, err, "cluster is required", "JobTrigger relaxes only the token file")
	assert.NotContains(t, err.Error(), "token_file")
}
