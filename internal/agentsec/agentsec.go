// Package agentsec makes what turns a Consul agent into a member of a secure
// cluster, as the shipped image runs one (scripts/user-data.sh): a CA and agent
// certificates made by the consul binary itself, a gossip key, token IDs, and the
// agent configuration that turns on gossip encryption, TLS and the ACL tokens. The
// local provider (internal/cloud/local) and the test harness (test/testcluster)
// both build their clusters with it, so the two cannot drift apart.
package agentsec

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// Names of the CA's files, as `consul tls ca create` writes them.
const (
	CACertName = "consul-agent-ca.pem"
	CAKeyName  = "consul-agent-ca-key.pem"
)

// Names an agent's certificate and key get in its TLS directory.
const (
	CertName = "agent.pem"
	KeyName  = "agent-key.pem"
)

// consulTimeout bounds each run of the consul binary.
const consulTimeout = time.Minute

// MakeCA makes a CA valid for days in dir with `consul tls ca create`, as an
// operator following HashiCorp's guide would:
// https://developer.hashicorp.com/consul/commands/tls/ca
func MakeCA(ctx context.Context, binary, dir string, days int) error {
	return runConsul(ctx, binary, dir, "tls", "ca", "create", "-days", fmt.Sprint(days))
}

// MakeCert makes an agent's certificate and key, signed by the CA in caDir, into
// tlsDir as CertName and KeyName, with `consul tls cert create`
// (https://developer.hashicorp.com/consul/commands/tls/cert): a server's is for
// server.<dc>.consul, which verify_server_hostname requires of every server, a
// client's for client.<dc>.consul; both also for ip, where the agent's HTTPS API
// listens.
func MakeCert(ctx context.Context, binary, tlsDir, caDir, dc, ip string, server bool, days int) error {
	if err := os.MkdirAll(tlsDir, 0o700); err != nil {
		return fmt.Errorf("create agent tls dir: %w", err)
	}
	kind := "-client"
	if server {
		kind = "-server"
	}
	if err := runConsul(ctx, binary, tlsDir, "tls", "cert", "create", kind, "-dc", dc, "-days", fmt.Sprint(days),
		"-ca", filepath.Join(caDir, CACertName), "-key", filepath.Join(caDir, CAKeyName),
		"-additional-ipaddress", ip); err != nil {
		return err
	}
	made, err := filepath.Glob(filepath.Join(tlsDir, dc+"-*-consul-*.pem"))
	if err != nil || len(made) != 2 {
		return fmt.Errorf("agent certificate: %v (%d files made)", err, len(made))
	}
	for _, f := range made {
		dst := CertName
		if strings.HasSuffix(f, "-key.pem") {
			dst = KeyName
		}
		if err := os.Rename(f, filepath.Join(tlsDir, dst)); err != nil {
			return fmt.Errorf("agent certificate: %w", err)
		}
	}
	return nil
}

// NewGossipKey returns what `consul keygen` makes: 32 random bytes, base64.
func NewGossipKey() string {
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return base64.StdEncoding.EncodeToString(key)
}

// NewSecretID returns a random UUID (version 4), the form Consul gives token IDs.
func NewSecretID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// Agent is what an agent's secure configuration names.
type Agent struct {
	GossipKey string
	CAFile    string
	// TLSDir holds the agent's CertName and KeyName.
	TLSDir string
	Server bool
	// Tokens: InitialManagement is used by a server only when the first leader
	// bootstraps the ACL system; each empty one is left out.
	InitialManagement, AgentToken, ConfigFileServiceRegistration, DNS string
}

// HCL returns the agent's configuration: gossip encryption verified both ways; TLS
// with verify_incoming, verify_outgoing and verify_server_hostname on RPC, the API
// authenticated by ACL token rather than client certificate; the acl block's tokens
// (the shipped acl.hcl, in a file of its own, has the rest: Consul merges acl blocks
// across files, not within one); and auto-encrypt for client agents on a server.
// Settings: https://developer.hashicorp.com/consul/docs/reference/agent/configuration-file
func (a Agent) HCL() string {
	q := func(s string) string { return fmt.Sprintf("%q", s) }
	var b strings.Builder
	fmt.Fprintf(&b, "encrypt = %s\nencrypt_verify_incoming = true\nencrypt_verify_outgoing = true\n", q(a.GossipKey))
	fmt.Fprintf(&b, `tls {
  defaults {
    ca_file         = %s
    cert_file       = %s
    key_file        = %s
    verify_incoming = true
    verify_outgoing = true
  }
  internal_rpc {
    verify_server_hostname = true
  }
  # The API authenticates by ACL token; requiring client certificates too would
  # hand every operator and handler a certificate to guard.
  https {
    verify_incoming = false
  }
}
`, q(a.CAFile), q(filepath.Join(a.TLSDir, CertName)), q(filepath.Join(a.TLSDir, KeyName)))
	b.WriteString("acl {\n  tokens {\n")
	for _, t := range []struct{ name, value string }{
		{"initial_management", a.InitialManagement},
		{"agent", a.AgentToken},
		{"config_file_service_registration", a.ConfigFileServiceRegistration},
		{"dns", a.DNS},
	} {
		if t.value != "" {
			fmt.Fprintf(&b, "    %s = %s\n", t.name, q(t.value))
		}
	}
	b.WriteString("  }\n}\n")
	if a.Server {
		b.WriteString("auto_encrypt {\n  allow_tls = true\n}\n")
	}
	return b.String()
}

// runConsul runs a consul subcommand in dir, bounded by consulTimeout, with no
// environment but PATH: no CONSUL_* setting of ours reaches it.
func runConsul(ctx context.Context, binary, dir string, args ...string) error {
	ctx, cancel := context.WithTimeout(ctx, consulTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, args...)
	cmd.Dir = dir
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("consul %s: %w: %s", strings.Join(args[:min(3, len(args))], " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
