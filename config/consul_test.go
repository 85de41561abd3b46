package config

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"path/filepath"
	"testing"

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
