package testcluster

// Secure mode (Options.Secure) runs a cluster as the shipped image and the local
// provider (internal/cloud/local/secure.go) do: gossip encryption verified both ways,
// TLS on RPC with verify_incoming, verify_outgoing and verify_server_hostname, the
// HTTP API on HTTPS only (8501), and ACLs on with default deny (the shipped
// consul.d/acl.hcl). The CA and every certificate are made by the consul binary under
// test, as an operator following HashiCorp's guide would:
// https://developer.hashicorp.com/consul/commands/tls/ca and .../tls/cert.
//
// Clients get a `consul tls cert create -client` certificate rather than one from
// auto_encrypt: an auto-encrypt certificate is signed by the Connect CA, not by the
// CA file handlers verify the agent's HTTPS API with, and carries only the addresses
// the agent's auto_encrypt ip_san names; a CA-signed client certificate with the
// agent's IP is verifiable with CAFile alone, as the local provider's are.
//
// Every agent's token is made before it could be used where that matters: servers
// start first (nothing but the leader can create a token), then the harness creates
// every agent's token (a node identity), the handler, DNS and registration tokens the
// options ask for, and only then starts the clients. A watch that starts without a
// valid token backs off for 5s, then 20s, 45s... (api/watch/plan.go), so a client's
// watches must find their token already there; a server's are restarted by a reload
// once its tokens exist.

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	consuld "github.com/consul-rehydrate/consul-rehydrate/consul.d"
	"github.com/consul-rehydrate/consul-rehydrate/internal/agentsec"
)

// secrets are a secure cluster's shared secrets, in its own 0700 directory.
type secrets struct {
	dir       string
	gossipKey string
}

// agentTokens are the secret IDs of an agent's tokens, chosen before the agent starts
// (they are in its configuration and environment) and created once there is a leader.
type agentTokens struct {
	agent        string // acl.tokens.agent: a node identity
	registration string // acl.tokens.config_file_service_registration, or ""
	dns          string // acl.tokens.dns, or ""
	handler      string // in HandlerTokenFile, or ""
	minted       bool
}

// CAFile is the path of a secure cluster's CA certificate ("" otherwise): what
// verifies every agent's HTTPS API.
func (c *Cluster) CAFile() string {
	if c.sec == nil {
		return ""
	}
	return filepath.Join(c.sec.dir, agentsec.CACertName)
}

// ManagementTokenFile is the path of a 0600 file holding Options.Token (the initial
// management token of a secure cluster), for CLIs that read a token file; "" when
// the cluster has no token.
func (c *Cluster) ManagementTokenFile() string {
	if c.opts.Token == "" || c.sec == nil {
		return ""
	}
	return filepath.Join(c.sec.dir, "management.token")
}

// initSecrets makes the cluster's CA, gossip key and, unless Options.Token names one,
// its management token.
func (c *Cluster) initSecrets(t testing.TB) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "secrets")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatalf("testcluster: %v", err)
	}
	if err := agentsec.MakeCA(context.Background(), c.Binary, dir, 30); err != nil {
		t.Fatalf("testcluster: %v", err)
	}
	c.sec = &secrets{dir: dir, gossipKey: agentsec.NewGossipKey()}
	if c.opts.Token == "" {
		c.opts.Token = agentsec.NewSecretID()
	}
	WriteSecret(t, c.ManagementTokenFile(), c.opts.Token)
}

// prepareSecure writes what makes a a member of the secure cluster: its certificate
// (server.<dc>.consul for a server, client.<dc>.consul otherwise, each with the
// agent's IP for its HTTPS API), the shipped acl.hcl, secure.hcl (encryption, TLS,
// its tokens) and, when Options.HandlerPolicy gives it one, its handler token file.
func (a *Agent) prepareSecure(t testing.TB) {
	t.Helper()
	c := a.cluster
	if err := agentsec.MakeCert(context.Background(), c.Binary, filepath.Join(a.Dir, "tls"), c.sec.dir, c.opts.Datacenter, a.IP, a.Server, 30); err != nil {
		t.Fatalf("testcluster: certificate of %s: %v", a.Name, err)
	}

	a.tokens = &agentTokens{agent: agentsec.NewSecretID()}
	if c.opts.Services != nil {
		a.tokens.registration = agentsec.NewSecretID()
	}
	if c.opts.DNSPolicy != nil && c.opts.DNSPolicy(a) != "" {
		a.tokens.dns = agentsec.NewSecretID()
	}
	if c.opts.HandlerPolicy != nil && c.opts.HandlerPolicy(a) != "" {
		a.tokens.handler = agentsec.NewSecretID()
		WriteSecret(t, a.HandlerTokenFile(), a.tokens.handler)
	}
	WriteFile(t, filepath.Join(a.Dir, "acl.hcl"), consuld.ACLHCL)
	if err := os.WriteFile(a.secureConfigPath(), []byte(a.secureConfig()), 0o600); err != nil {
		t.Fatalf("testcluster: %v", err)
	}
}

func (a *Agent) secureConfigPath() string { return filepath.Join(a.Dir, "secure.hcl") }

// secureConfig is the agent's secure.hcl (agentsec.Agent.HCL): encryption, TLS and
// its tokens.
func (a *Agent) secureConfig() string {
	sec := agentsec.Agent{
		GossipKey: a.cluster.sec.gossipKey, CAFile: a.cluster.CAFile(), TLSDir: filepath.Join(a.Dir, "tls"), Server: a.Server,
		AgentToken: a.tokens.agent, ConfigFileServiceRegistration: a.tokens.registration, DNS: a.tokens.dns,
	}
	if a.Server {
		sec.InitialManagement = a.cluster.opts.Token
	}
	return sec.HCL()
}

// mintTokens creates a's tokens with the secret IDs prepareSecure chose: its agent
// token (a node identity: node:write on itself, service:read), its registration token
// (the same node identity, for the node checks of its files, and a service identity
// for each of Options.Services), and its DNS and handler tokens (a policy of the
// rules Options.DNSPolicy and HandlerPolicy give).
func (c *Cluster) mintTokens(t testing.TB, a *Agent) {
	t.Helper()
	if a.tokens == nil || a.tokens.minted {
		return
	}
	node := []*api.ACLNodeIdentity{{NodeName: a.Name, Datacenter: c.opts.Datacenter}}
	c.createToken(t, &api.ACLToken{SecretID: a.tokens.agent, Description: "agent token of " + a.Name, NodeIdentities: node})
	if a.tokens.registration != "" {
		var ids []*api.ACLServiceIdentity
		for _, s := range c.opts.Services(a) {
			ids = append(ids, &api.ACLServiceIdentity{ServiceName: s})
		}
		c.createToken(t, &api.ACLToken{SecretID: a.tokens.registration, Description: "config file services of " + a.Name,
			NodeIdentities: node, ServiceIdentities: ids})
	}
	if a.tokens.dns != "" {
		c.mint(t, a.tokens.dns, "dns-"+a.Name, c.opts.DNSPolicy(a))
	}
	if a.tokens.handler != "" {
		c.mint(t, a.tokens.handler, "handlers-"+a.Name, c.opts.HandlerPolicy(a))
	}
	a.tokens.minted = true
}

// Token creates a policy named name with rules (Consul parses them: a rule it does
// not accept fails the test) and returns the secret ID of a new token holding only it.
// A secure or ACL-enabled cluster only.
func (c *Cluster) Token(t testing.TB, name, rules string) string {
	t.Helper()
	secret := agentsec.NewSecretID()
	c.mint(t, secret, name, rules)
	return secret
}

// TokenFile is Token written to a new 0600 file, whose path it returns: what
// token_file and CONSUL_HTTP_TOKEN_FILE take (the handlers refuse a token file that
// others may read).
func (c *Cluster) TokenFile(t testing.TB, name, rules string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name+".token")
	WriteSecret(t, path, c.Token(t, name, rules))
	return path
}

// mint creates policy name with rules and the token secret holding only it.
func (c *Cluster) mint(t testing.TB, secret, name, rules string) {
	t.Helper()
	var id string
	c.retryACL(t, "policy "+name, func(cl *api.Client) error {
		p, _, err := cl.ACL().PolicyCreate(&api.ACLPolicy{Name: name, Rules: rules}, nil)
		if err != nil && isExists(err) {
			// An earlier attempt that timed out had in fact succeeded.
			p, _, err = cl.ACL().PolicyReadByName(name, nil)
			if err == nil && p == nil {
				err = fmt.Errorf("policy %s exists but cannot be read", name)
			}
			if err == nil && p.Rules != rules {
				// Not a retry: a second policy of the same name.
				t.Fatalf("testcluster: policy %s exists already, with other rules", name)
			}
		}
		if err == nil {
			id = p.ID
		}
		return err
	})
	c.createToken(t, &api.ACLToken{SecretID: secret, Description: name, Policies: []*api.ACLTokenPolicyLink{{ID: id}}})
}

// createToken creates tok; a token that exists already (a retry) is not an error.
func (c *Cluster) createToken(t testing.TB, tok *api.ACLToken) {
	t.Helper()
	tok.AccessorID = agentsec.NewSecretID()
	c.retryACL(t, "token "+tok.Description, func(cl *api.Client) error {
		_, _, err := cl.ACL().TokenCreate(tok, nil)
		if err != nil && isExists(err) {
			return nil
		}
		return err
	})
}

// retryACL runs an ACL write through a running server with the management token
// until it succeeds, for at most StartTimeout: while a leader is being elected, or
// has just been and is still establishing the ACL system, writes are refused.
func (c *Cluster) retryACL(t testing.TB, what string, write func(*api.Client) error) {
	t.Helper()
	WaitFor(t, c.opts.StartTimeout, "create "+what, func() (bool, string) {
		for _, s := range c.Servers {
			if !s.Running() {
				continue
			}
			if err := write(s.boundedClient(10 * time.Second)); err != nil {
				return false, err.Error()
			}
			return true, ""
		}
		return false, "no running server"
	})
}

func isExists(err error) bool {
	s := err.Error()
	return strings.Contains(s, "already exists") || strings.Contains(s, "already in use")
}

// HandlerTokenFile is the 0600 file holding the token of the agent's watches, handlers
// and checks (Options.HandlerPolicy), which CONSUL_HTTP_TOKEN_FILE of its environment
// names; it exists only when HandlerPolicy gives the agent rules.
func (a *Agent) HandlerTokenFile() string { return filepath.Join(a.Dir, "handler.token") }

// Env returns the CONSUL_* variables that point a program at this agent as the
// agent's own handlers are: CONSUL_HTTP_ADDR (https://<ip>:8501 on a secure cluster,
// http://<ip>:8500 otherwise), CONSUL_CACERT on a secure cluster, and, unless
// tokenFile is "", CONSUL_HTTP_TOKEN_FILE=tokenFile.
func (a *Agent) Env(tokenFile string) []string {
	env := []string{api.HTTPAddrEnvName + "=" + a.APIAddr()}
	if ca := a.cluster.CAFile(); ca != "" {
		env = append(env, api.HTTPCAFile+"="+ca)
	}
	if tokenFile != "" {
		env = append(env, api.HTTPTokenFileEnvName+"="+tokenFile)
	}
	return env
}

// processEnv is the agent process's environment, which its watches, handlers and
// checks inherit: nil (the test's own) unless the cluster is secure or
// Options.AgentEnv is set. A secure agent gets the test's environment without its
// CONSUL_* variables, then Env of itself with its handler token file, then AgentEnv.
// A watch without a token of its own reads CONSUL_HTTP_TOKEN_FILE of this
// environment (api.NewClient, which the agent's watch plans call with no token).
func (a *Agent) processEnv() []string {
	c := a.cluster
	if c.sec == nil && c.opts.AgentEnv == nil {
		return nil
	}
	var env []string
	for _, kv := range os.Environ() {
		if c.sec == nil || !strings.HasPrefix(kv, "CONSUL_") {
			env = append(env, kv)
		}
	}
	if c.sec != nil {
		tf := ""
		if a.tokens != nil && a.tokens.handler != "" {
			tf = a.HandlerTokenFile()
		}
		env = append(env, a.Env(tf)...)
	}
	if c.opts.AgentEnv != nil {
		env = append(env, c.opts.AgentEnv(a)...) // the last of a duplicate key wins (os/exec)
	}
	return env
}

// boundedClient is Client with every request bounded by timeout.
func (a *Agent) boundedClient(timeout time.Duration) *api.Client {
	cfg := a.apiConfig()
	tr, err := api.NewHttpClient(cfg.Transport, cfg.TLSConfig)
	if err != nil {
		panic(err) // our own CA file: only a harness bug makes this fail
	}
	cfg.HttpClient = &http.Client{Transport: tr.Transport, Timeout: timeout}
	cl, err := api.NewClient(cfg)
	if err != nil {
		panic(err)
	}
	return cl
}

// WriteSecret writes s and a newline to path, mode 0600, creating its directory, or
// fails t.
func WriteSecret(t testing.TB, path, s string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatalf("testcluster: %v", err)
	}
	if err := os.WriteFile(path, []byte(s+"\n"), 0o600); err != nil {
		t.Fatalf("testcluster: %v", err)
	}
}
