package local

// Every cluster the provider starts is as secure as the shipped image's: gossip
// encryption with verification both ways, TLS on RPC with verify_incoming,
// verify_outgoing and verify_server_hostname, the HTTP API on HTTPS only, and ACLs
// on with default deny. `make demo` and every end-to-end test therefore prove the
// roll under the configuration users run.
//
// The state dir is the trust root here, as the AWS account is for the aws provider:
// its secrets/ directory (0700) holds the CA's key, the gossip key and the initial
// management token, and whoever can read it owns the cluster. The provider uses
// the management token only to do what a cloud's provisioning does: mint each new
// agent's own token (a node identity) and each server's handler token (the
// rehydrate-handlers policy rendered for that node), and to watch the cluster it
// runs. The handlers an agent runs hold only their node's handler token.

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-cleanhttp"

	consuld "github.com/consul-rehydrate/consul-rehydrate/consul.d"
	"github.com/consul-rehydrate/consul-rehydrate/internal/agentsec"
	"github.com/consul-rehydrate/consul-rehydrate/internal/atomicfile"
	"github.com/consul-rehydrate/consul-rehydrate/internal/poll"
)

const (
	httpsPort = "8501"

	secretsDirName      = "secrets"
	gossipKeyName       = "gossip.key"
	managementTokenName = "management.token"

	// In each agent's directory.
	tlsDirName       = "tls"
	secureConfigName = "secure.hcl"
	aclConfigName    = "acl.hcl"
	imageConfigName  = "image.hcl"
	agentTokenName   = "agent.token"
	handlerTokenName = "handler.token"

	// certDays is how long the local cluster's CA and certificates are valid.
	certDays = 3650

	// tokenTimeout bounds minting an agent's tokens: a leader election in progress
	// refuses ACL writes for a few seconds.
	tokenTimeout = 30 * time.Second
	tokenPoll    = 250 * time.Millisecond
)

func (p *Provider) secretsDir() string { return filepath.Join(p.cfg.StateDir, secretsDirName) }

// CAFile is the path of the cluster's CA certificate: what verifies every agent's
// HTTPS and RPC certificate.
func (p *Provider) CAFile() string { return filepath.Join(p.secretsDir(), agentsec.CACertName) }

// ManagementTokenFile is the path of the file holding the cluster's initial
// management token: the operator's token in `make demo` and the tests.
func (p *Provider) ManagementTokenFile() string {
	return filepath.Join(p.secretsDir(), managementTokenName)
}

// HandlerTokenFile is the path of the file holding the handler token of the
// instance id: the rehydrate-handlers policy rendered for its node.
func (p *Provider) HandlerTokenFile(id string) string {
	return filepath.Join(p.instanceDir(id), handlerTokenName)
}

// APIConfig returns the configuration of an operator's API client: the client
// agent over HTTPS, verified with the cluster's CA, with the management token, on
// a pooled transport of its own. It ignores every CONSUL_* environment variable.
//
// Pooled, because without keep-alives every request is a new TCP connection and
// TLS handshake: a workload writing 20 keys a second from a race-instrumented test
// binary on a loaded machine spent seconds per write in handshakes, and writes
// timed out.
func (p *Provider) APIConfig() (*api.Config, error) {
	addr, err := p.ClientAddr()
	if err != nil {
		return nil, err
	}
	tok, err := readSecret(p.ManagementTokenFile())
	if err != nil {
		return nil, fmt.Errorf("management token: %w", err)
	}
	c := api.DefaultNonPooledConfig()
	c.Address, c.Scheme, c.Token, c.TokenFile = addr, "https", tok, ""
	c.TLSConfig = api.TLSConfig{CAFile: p.CAFile()}
	c.Transport = cleanhttp.DefaultPooledTransport()
	return c, nil
}

// initSecrets creates the cluster's CA, gossip key and management token unless
// they exist: Up calls it, and a state dir keeps them until Down removes it.
func (p *Provider) initSecrets(ctx context.Context, binary string) error {
	dir := p.secretsDir()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create secrets dir: %w", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return fmt.Errorf("secrets dir: %w", err)
	}
	if _, err := os.Stat(filepath.Join(dir, agentsec.CAKeyName)); errors.Is(err, os.ErrNotExist) {
		if err := agentsec.MakeCA(ctx, binary, dir, certDays); err != nil {
			return err
		}
	}
	if err := writeSecretOnce(filepath.Join(dir, gossipKeyName), agentsec.NewGossipKey()); err != nil {
		return err
	}
	return writeSecretOnce(p.ManagementTokenFile(), agentsec.NewSecretID())
}

// prepareAgent writes what makes an agent a member of the secure cluster into its
// directory: a certificate signed by the cluster's CA (a server certificate,
// server.<dc>.consul, for a server; a client one otherwise), its own agent token,
// a server's handler token, and secure.hcl, which the agent loads after
// config.hcl. The tokens' IDs are made here; mintTokens creates the tokens.
func (p *Provider) prepareAgent(ctx context.Context, binary string, a agentSpec) error {
	if err := agentsec.MakeCert(ctx, binary, filepath.Join(a.dir, tlsDirName), p.secretsDir(), p.cfg.Datacenter, a.addr, a.server, certDays); err != nil {
		return err
	}
	if err := writeSecretOnce(filepath.Join(a.dir, agentTokenName), agentsec.NewSecretID()); err != nil {
		return err
	}
	if a.server && p.cfg.BinDir != "" {
		if err := writeSecretOnce(filepath.Join(a.dir, handlerTokenName), agentsec.NewSecretID()); err != nil {
			return err
		}
	}
	hcl, err := p.renderSecure(a)
	if err != nil {
		return err
	}
	if err := atomicfile.Write(filepath.Join(a.dir, aclConfigName), []byte(consuld.ACLHCL), 0o644); err != nil {
		return err
	}
	return atomicfile.Write(filepath.Join(a.dir, secureConfigName), []byte(hcl), 0o600)
}

// renderSecure returns the agent's secure.hcl (agentsec.Agent.HCL): gossip
// encryption, TLS, and its tokens. See scripts/user-data.sh for the same settings
// on EC2.
func (p *Provider) renderSecure(a agentSpec) (string, error) {
	key, err := readSecret(filepath.Join(p.secretsDir(), gossipKeyName))
	if err != nil {
		return "", fmt.Errorf("gossip key: %w", err)
	}
	agentTok, err := readSecret(filepath.Join(a.dir, agentTokenName))
	if err != nil {
		return "", fmt.Errorf("agent token: %w", err)
	}
	sec := agentsec.Agent{GossipKey: key, CAFile: p.CAFile(), TLSDir: filepath.Join(a.dir, tlsDirName), Server: a.server, AgentToken: agentTok}
	if a.server {
		if sec.InitialManagement, err = readSecret(p.ManagementTokenFile()); err != nil {
			return "", fmt.Errorf("management token: %w", err)
		}
	}
	return sec.HCL(), nil
}

// mintTokens creates the agent's tokens with the IDs prepareAgent wrote: its agent
// token (a node identity: node:write on itself, service:read) and a server's
// handler token (rehydrate-handlers rendered for the node). Creating a token that
// exists already does nothing, so a retry is safe.
func (p *Provider) mintTokens(ctx context.Context, c *api.Client, a agentSpec) error {
	agentTok, err := readSecret(filepath.Join(a.dir, agentTokenName))
	if err != nil {
		return err
	}
	want := []*api.ACLToken{{
		SecretID:       agentTok,
		AccessorID:     agentsec.NewSecretID(),
		Description:    "agent token of " + a.name,
		NodeIdentities: []*api.ACLNodeIdentity{{NodeName: a.name, Datacenter: p.cfg.Datacenter}},
	}}
	var policy *api.ACLPolicy
	if hf := filepath.Join(a.dir, handlerTokenName); a.server && fileExists(hf) {
		handlerTok, err := readSecret(hf)
		if err != nil {
			return err
		}
		rules, err := consuld.RenderPolicy(consuld.PolicyRehydrateHandlers, consuld.PolicyVars{
			Cluster: p.cfg.Cluster, Node: a.name, EventName: p.cfg.EventName,
		})
		if err != nil {
			return fmt.Errorf("handler policy of %s: %w", a.name, err)
		}
		policy = &api.ACLPolicy{Name: "rehydrate-handlers-" + a.name, Description: "spinup and spindown on " + a.name, Rules: rules}
		want = append(want, &api.ACLToken{
			SecretID:    handlerTok,
			AccessorID:  agentsec.NewSecretID(),
			Description: "rehydrate handlers on " + a.name,
			Policies:    []*api.ACLTokenPolicyLink{{Name: policy.Name}},
		})
	}
	q := (&api.WriteOptions{}).WithContext(ctx)
	if policy != nil {
		if _, _, err := c.ACL().PolicyCreate(policy, q); err != nil && !isExists(err) {
			return fmt.Errorf("create the handler policy of %s: %w", a.name, err)
		}
	}
	for _, t := range want {
		if _, _, err := c.ACL().TokenCreate(t, q); err != nil && !isExists(err) {
			return fmt.Errorf("create the tokens of %s: %w", a.name, err)
		}
	}
	return nil
}

// mintVia mints a new server's tokens through the cluster's client agent.
func (p *Provider) mintVia(ctx context.Context, client *agentRecord, a agentSpec) error {
	if client == nil {
		return errors.New("no client agent: run Up first")
	}
	c, err := p.managementClient(client.Address, 5*time.Second)
	if err != nil {
		return err
	}
	var last error
	err = poll.Until(ctx, tokenPoll, tokenTimeout, func(ctx context.Context) (bool, error) {
		last = p.mintTokens(ctx, c, a)
		return last == nil, nil
	})
	if err != nil {
		return fmt.Errorf("%w: %w", err, last)
	}
	return nil
}

// isExists tells a create that lost to an earlier one (a retry after a timeout
// that had in fact succeeded) from a failure.
func isExists(err error) bool {
	s := err.Error()
	return strings.Contains(s, "already exists") || strings.Contains(s, "already in use")
}

// managementClient returns an API client on the agent at addr with the management
// token, every request bounded by timeout.
func (p *Provider) managementClient(addr string, timeout time.Duration) (*api.Client, error) {
	tok, err := readSecret(p.ManagementTokenFile())
	if err != nil {
		return nil, fmt.Errorf("management token: %w", err)
	}
	return p.apiClient(addr, tok, timeout)
}

// apiClient talks HTTPS to the agent at ip, verified with the cluster's CA, with
// token, whatever CONSUL_HTTP_* says, every request bounded by timeout.
func (p *Provider) apiClient(ip, token string, timeout time.Duration) (*api.Client, error) {
	c := api.DefaultNonPooledConfig()
	c.Address, c.Scheme, c.Token, c.TokenFile = ip+":"+httpsPort, "https", token, ""
	c.TLSConfig = api.TLSConfig{CAFile: p.CAFile()}
	tr, err := api.NewHttpClient(c.Transport, c.TLSConfig)
	if err != nil {
		return nil, fmt.Errorf("consul client for %s: %w", ip, err)
	}
	c.HttpClient = &http.Client{Transport: tr.Transport, Timeout: timeout}
	cl, err := api.NewClient(c)
	if err != nil {
		return nil, fmt.Errorf("consul client for %s: %w", ip, err)
	}
	return cl, nil
}

// writeSecretOnce writes s to path, 0600, unless the file exists.
func writeSecretOnce(path, s string) error {
	if fileExists(path) {
		return nil
	}
	if err := atomicfile.Write(path, []byte(s+"\n"), 0o600); err != nil {
		return fmt.Errorf("write %s: %w", filepath.Base(path), err)
	}
	return nil
}

func readSecret(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return "", fmt.Errorf("%s is empty", path)
	}
	return s, nil
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
