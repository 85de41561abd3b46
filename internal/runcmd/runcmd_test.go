package runcmd

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestTail_KeepsTheEndOfTheOutput(t *testing.T) {
	tl := &Tail{N: 8}
	_, _ = tl.Write([]byte("0123"))
	assert.Equal(t, "0123", tl.String())
	_, _ = tl.Write([]byte("456789ab"))
	assert.Equal(t, "…456789ab", tl.String())
}

func TestRun_ReportsExitAndOutputAndPassesTheEnvironment(t *testing.T) {
	out, err := Run(context.Background(), Spec{What: "reload command", Argv: []string{"/bin/sh", "-c", `echo "v=$V"; exit 3`},
		Env: []string{"V=7"}, Timeout: 10 * time.Second})
	require.Error(t, err)
	assert.Equal(t, "reload command /bin/sh: exit status 3", err.Error())
	assert.Equal(t, "v=7\n", out)

	out, err = Run(context.Background(), Spec{What: "x", Argv: []string{"/bin/sh", "-c", "echo ok"}, Timeout: 10 * time.Second})
	require.NoError(t, err)
	assert.Equal(t, "ok\n", out)
}

func TestRun_NamesTheTimeoutAndTheParentsEnd(t *testing.T) {
	start := time.Now()
	_, err := Run(context.Background(), Spec{What: "reload command", Argv: []string{"/bin/sh", "-c", "sleep 30"}, Timeout: 200 * time.Millisecond})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "killed after its timeout of 200ms")
	assert.Less(t, time.Since(start), 5*time.Second)

	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err = Run(ctx, Spec{What: "reload command", Argv: []string{"/bin/sh", "-c", "sleep 30"}, Timeout: time.Minute})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "the handler is out of time")
}

// A command sees the allow-listed variables and its own, never the handler's
// credentials: a command that prints its environment does not print them.
func TestRun_ACommandDoesNotSeeTheHandlersCredentials(t *testing.T) {
	secrets := map[string]string{
		"CONSUL_HTTP_TOKEN":      "consul-secret",
		"CONSUL_HTTP_TOKEN_FILE": "/etc/consul-rehydrate/token",
		"AWS_ACCESS_KEY_ID":      "AKIAEXAMPLE",
		"AWS_SECRET_ACCESS_KEY":  "aws-secret",
		"AWS_SESSION_TOKEN":      "aws-session",
		"VAULT_TOKEN":            "vault-secret",
		"REHYDRATE_CONFIG":       "/etc/consul-rehydrate/config.hcl",
		"NOTIFY_SOCKET":          "/run/systemd/notify",
		"LD_PRELOAD":             "/tmp/evil.so",
		"HTTPS_PROXY":            "http://user:pass@proxy:3128",
		"SHELL":                  "/bin/bash",
	}
	for k, v := range secrets {
		t.Setenv(k, v)
	}
	t.Setenv("LC_ALL", "C.UTF-8")
	t.Setenv("TZ", "UTC")
	out, err := Run(context.Background(), Spec{What: "deploy command", Argv: []string{"/usr/bin/env"},
		Env: []string{"REHYDRATE_DEPLOY_VERSION=1.2.3"}, Timeout: 10 * time.Second})
	require.NoError(t, err)
	got := map[string]string{}
	for _, kv := range strings.Split(strings.TrimSuffix(out, "\n"), "\n") {
		k, v, ok := strings.Cut(kv, "=")
		require.True(t, ok, kv)
		got[k] = v
	}
	for k := range secrets {
		assert.NotContains(t, got, k)
	}
	assert.Equal(t, "1.2.3", got["REHYDRATE_DEPLOY_VERSION"], "the command's own variables")
	assert.Equal(t, os.Getenv("PATH"), got["PATH"])
	assert.Equal(t, "C.UTF-8", got["LC_ALL"])
	assert.Equal(t, "UTC", got["TZ"])
	for k := range got {
		assert.True(t, allowed(k) || strings.HasPrefix(k, "REHYDRATE_DEPLOY_"), "%s is not allowed", k)
	}
}

func TestEnviron_KeepsOnlyTheAllowListThenAdds(t *testing.T) {
	got := Environ([]string{
		"PATH=/usr/bin", "HOME=/root", "USER=root", "LOGNAME=root", "LANG=C", "LANGUAGE=en", "LC_CTYPE=C.UTF-8",
		"TZ=UTC", "TMPDIR=/tmp/x", "SSL_CERT_FILE=/etc/ca.pem", "SSL_CERT_DIR=/etc/ssl",
		"CONSUL_HTTP_TOKEN=s", "PATHX=1", "XPATH=1", "LC=1", "AWS_PROFILE=p", "no-equals-sign",
	}, []string{"REHYDRATE_X=1", "PATH=/override"})
	assert.Equal(t, []string{
		"PATH=/usr/bin", "HOME=/root", "USER=root", "LOGNAME=root", "LANG=C", "LANGUAGE=en", "LC_CTYPE=C.UTF-8",
		"TZ=UTC", "TMPDIR=/tmp/x", "SSL_CERT_FILE=/etc/ca.pem", "SSL_CERT_DIR=/etc/ssl",
		"REHYDRATE_X=1", "PATH=/override",
	}, got, "exact names (or the LC_ prefix) only, in order; the caller's last (exec keeps the last of a duplicate)")
}
