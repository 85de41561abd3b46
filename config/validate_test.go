package config

import (
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// validLocal and validAWS are complete configurations built in code.
func validLocal() *Config {
	c := Default()
	c.Cluster, c.Servers = "main", 3
	c.Provider = ProviderConfig{Type: ProviderLocal, Local: defaultLocal()}
	c.Provider.Local.StateDir = "/var/lib/consul-rehydrate/local"
	return c
}

func validAWS() *Config {
	c := Default()
	c.Cluster, c.Servers = "main", 3
	c.Provider = ProviderConfig{Type: ProviderAWS, AWS: defaultAWS()}
	c.Provider.AWS.AutoscalingGroup = "consul-servers"
	c.Provider.AWS.LaunchTemplate = "consul-server"
	c.Provider.AWS.Image.Tags = map[string]string{"role": "consul-server"}
	return c
}

func TestValidate_RejectsEachBadSettingNamingItsKey(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name   string
		base   func() *Config
		mutate func(*Config)
		want   string
	}{
		{"cluster too long", validLocal, func(c *Config) { c.Cluster = strings.Repeat("a", 64) },
			"must be 1 to 63 characters of a-z, 0-9, - and _"},
		{"servers above 7", validLocal, func(c *Config) { c.Servers = 9 }, "servers must be an odd number from 1 to 7, got 9"},
		{"negative servers", validLocal, func(c *Config) { c.Servers = -1 }, "servers must be an odd number from 1 to 7, got -1"},
		{"log level in capitals", validLocal, func(c *Config) { c.LogLevel = "INFO" }, `log_level "INFO" must be one of`},
		{"scheme", validLocal, func(c *Config) { c.Consul.Scheme = "tcp" }, `consul.scheme "tcp" must be http or https`},
		{"address", validLocal, func(c *Config) { c.Consul.Address = "127.0.0.1" }, `invalid consul.address "127.0.0.1": address 127.0.0.1: missing port`},
		{"datacenter", validLocal, func(c *Config) { c.Consul.Datacenter = "DC1" }, `consul.datacenter "DC1" must be characters of a-z`},
		{"token file is a directory", validLocal, func(c *Config) { c.Consul.TokenFile = dir }, "consul.token_file: " + dir + " is not a regular file"},
		{"missing CA file", validLocal, func(c *Config) { c.Consul.TLS.CAFile = filepath.Join(dir, "ca.pem") }, "consul.tls.ca_file: stat " + dir},
		{"cert without key", validLocal, func(c *Config) { c.Consul.TLS.CertFile = "/dev/null" }, "consul.tls.cert_file needs consul.tls.key_file"},
		{"key without cert", validLocal, func(c *Config) { c.Consul.TLS.KeyFile = "/dev/null" }, "consul.tls.key_file needs consul.tls.cert_file"},
		{"lock delay", validLocal, func(c *Config) { c.Lock.LockDelay = -1e9 }, "lock.lock_delay must be from 0s to 1m, got -1s"},
		{"lock wait", validLocal, func(c *Config) { c.Lock.Wait = 0 }, "lock.wait must be positive, got 0s"},
		{"negative stabilization", validLocal, func(c *Config) { c.Roll.Stabilization = -1e9 }, "roll.stabilization must not be negative, got -1s"},
		{"event name", validLocal, func(c *Config) { c.Roll.EventName = "roll now" }, `roll.event_name "roll now" must be non-empty, without spaces or /`},
		{"no state dir", validLocal, func(c *Config) { c.Provider.Local.StateDir = "" }, "provider.local.state_dir is required"},
		{"empty consul binary", validLocal, func(c *Config) { c.Provider.Local.ConsulBinary = "" }, "provider.local.consul_binary must not be empty"},
		{"no addresses", validLocal, func(c *Config) { c.Provider.Local.Addresses = netip.Prefix{} }, "provider.local.addresses is required"},
		{"two providers", validLocal, func(c *Config) { c.Provider.AWS = defaultAWS() }, "provider is required: exactly one of local and aws"},
		{"type without provider", validLocal, func(c *Config) { c.Provider.Type = ProviderAWS }, "provider is required"},
		{"no image owners", validAWS, func(c *Config) { c.Provider.AWS.Image.Owners = nil }, "provider.aws.image.owners must list at least one owner"},
		{"empty image owner", validAWS, func(c *Config) { c.Provider.AWS.Image.Owners = []string{""} }, "provider.aws.image.owners must list at least one owner"},
		{"image filter matching everything", validAWS, func(c *Config) { c.Provider.AWS.Image.Tags = nil }, "provider.aws.image needs name_pattern or tags"},
		{"empty tag key", validAWS, func(c *Config) { c.Provider.AWS.Image.Tags = map[string]string{"": "x"} }, "provider.aws.image.tags must not have an empty key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := tt.base()
			require.NoError(t, c.Validate(), "the base is valid")
			tt.mutate(c)
			err := c.Validate()
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.want)
		})
	}
}

func TestCheckAddress_AcceptsWhatTheConsulClientAccepts(t *testing.T) {
	for addr, ok := range map[string]bool{
		"127.0.0.1:8500":               true,
		"[::1]:8500":                   true,
		"consul.service.consul:8500":   true,
		"http://127.0.0.1:8500":        true,
		"https://consul.internal:8501": true,
		"unix:///run/consul/http.sock": true,
		"":                             false,
		"127.0.0.1":                    false,
		":8500":                        false,
		"127.0.0.1:0":                  false,
		"127.0.0.1:http":               false,
		"ftp://127.0.0.1:21":           false,
		"unix://":                      false,
	} {
		err := checkAddress(addr)
		assert.Equal(t, ok, err == nil, "%q: %v", addr, err)
	}
}

func TestShort_DropsTrailingZeroUnits(t *testing.T) {
	for d, want := range map[string]string{"24h": "24h", "1m": "1m", "90m": "1h30m", "0s": "0s", "1h0m5s": "1h0m5s", "1.5s": "1.5s"} {
		v, err := time.ParseDuration(d)
		require.NoError(t, err)
		assert.Equal(t, want, short(v))
	}
}
