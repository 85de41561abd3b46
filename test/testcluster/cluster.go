// Package testcluster starts real Consul agents (servers and clients) on loopback
// addresses for integration tests, and stops every one of them when the test ends.
//
// Each cluster owns a 127.0.<n>.0/24 block (see AllocateBlock), servers on .1, .2, …
// and clients on .101, .102, …, all on Consul's default ports. Every wait is bounded
// and fails the test with what it last saw.
//
// With Options.Secure a cluster runs as the shipped image does: gossip encryption, TLS
// with certificates made by `consul tls`, the API on HTTPS only and ACLs on with
// default deny, each agent and each handler holding its own token (see secure.go).
package testcluster

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
)

// Options configure a cluster.
type Options struct {
	// Servers is the number of server agents (default 3).
	Servers int
	// Clients is the number of client agents (default 0).
	Clients int
	// Datacenter defaults to "dc1".
	Datacenter string
	// NodeMeta, if set, returns extra node meta for an agent.
	NodeMeta func(name string) map[string]string
	// ExtraHCL, if set, returns HCL appended to an agent's configuration (watches,
	// ACLs, services, …).
	ExtraHCL func(a *Agent) string
	// Files, if set, returns extra configuration files (name -> content) for an
	// agent's config.d, loaded after config.hcl as Consul merges a config dir.
	Files func(a *Agent) map[string]string
	// StartTimeout bounds the wait for a leader and a healthy autopilot (default 60s).
	StartTimeout time.Duration
	// Token is the ACL token the harness's own API clients use (ACL-enabled clusters).
	// On a secure cluster it is the initial management token, a new one if unset.
	Token string

	// Secure runs the cluster as the shipped image runs: gossip encryption, TLS with
	// certificates from `consul tls`, the API on HTTPS only, ACLs on with default deny
	// and a node-identity token for each agent. See secure.go.
	Secure bool
	// HandlerPolicy, if set, returns the ACL rules of the token the agent's watches,
	// handlers and checks hold (secure clusters): its file is HandlerTokenFile, and
	// the agent's environment names it in CONSUL_HTTP_TOKEN_FILE. "" gives the agent
	// no such token: its token-less watches are then refused.
	HandlerPolicy func(a *Agent) string
	// DNSPolicy, if set, returns the ACL rules of the agent's DNS token
	// (acl.tokens.dns; secure clusters). Without one, DNS answers nothing.
	DNSPolicy func(a *Agent) string
	// Services, if set, names the services the agent's own configuration files
	// register (secure clusters): they and the checks of those files are registered
	// with a token of the agent's node identity (node:write, for node checks) and a
	// service identity for each (acl.tokens.config_file_service_registration).
	// Without it, an agent's files can register nothing: default deny.
	Services func(a *Agent) []string
	// AgentEnv, if set, returns variables added to the agent process's environment,
	// which its watches, handlers and checks inherit (see Agent.Env).
	AgentEnv func(a *Agent) []string
}

// Cluster is a set of running Consul agents.
type Cluster struct {
	t       testing.TB
	opts    Options
	Block   Block
	Binary  string
	Servers []*Agent
	Clients []*Agent

	sec *secrets // a secure cluster's only
}

// ConsulBinary returns the consul binary tests run: $CONSUL_BIN, else `consul` on PATH.
// `make test` builds the pinned version and puts it on PATH.
func ConsulBinary() (string, error) {
	if p := os.Getenv("CONSUL_BIN"); p != "" {
		return p, nil
	}
	p, err := exec.LookPath("consul")
	if err != nil {
		return "", errors.New("no consul binary: set CONSUL_BIN or run the tests with `make test`, which builds the pinned Consul")
	}
	return p, nil
}

// Start starts a cluster, waits until it has a leader and autopilot reports it healthy,
// and registers its teardown with t.Cleanup.
func Start(t testing.TB, opts Options) *Cluster {
	t.Helper()
	if opts.Servers == 0 {
		opts.Servers = 3
	}
	if opts.Datacenter == "" {
		opts.Datacenter = "dc1"
	}
	if opts.StartTimeout == 0 {
		opts.StartTimeout = 60 * time.Second
	}
	bin, err := ConsulBinary()
	if err != nil {
		t.Fatalf("testcluster: %v", err)
	}
	// Create the temp dir root before registering stopAll: cleanups run last-in
	// first-out, and the agents' logs must still exist when stopAll prints them.
	_ = t.TempDir()
	c := &Cluster{t: t, opts: opts, Block: AllocateBlock(t), Binary: bin}
	t.Cleanup(c.stopAll)
	if opts.Secure {
		c.initSecrets(t)
	}

	var joins []string
	for i := 1; i <= opts.Servers; i++ {
		joins = append(joins, c.Block.Addr(i))
	}
	for i := 1; i <= opts.Servers; i++ {
		c.Servers = append(c.Servers, c.newAgent(fmt.Sprintf("server-%d", i), c.Block.Addr(i), true, joins))
	}
	for i := 1; i <= opts.Clients; i++ {
		c.Clients = append(c.Clients, c.newAgent(fmt.Sprintf("client-%d", i), c.Block.Addr(100+i), false, joins))
	}
	if c.sec == nil {
		for _, a := range c.Agents() {
			a.Start(t)
		}
		c.WaitForLeader(t, opts.StartTimeout)
	} else {
		// The servers, then every agent's tokens once a leader can create them, then
		// the clients, whose watches find valid tokens from their first request (see
		// secure.go); a server's watches, started before, restart on a reload.
		for _, a := range c.Servers {
			a.Start(t)
		}
		c.WaitForLeader(t, opts.StartTimeout)
		for _, a := range c.Agents() {
			c.mintTokens(t, a)
		}
		for _, a := range c.Servers {
			if a.tokens.handler != "" {
				if err := a.Client().Agent().Reload(); err != nil {
					t.Fatalf("testcluster: reload %s: %v", a.Name, err)
				}
			}
		}
		for _, a := range c.Clients {
			a.Start(t)
		}
	}
	c.WaitHealthy(t, opts.StartTimeout)
	for _, a := range c.Clients {
		a.waitMember(t, opts.StartTimeout)
	}
	c.waitRegistered(t, opts.StartTimeout, c.Agents()...)
	return c
}

// waitRegistered waits until each agent's node is in the catalog with a passing
// serfHealth check and its configured node meta. Autopilot may call a new cluster healthy a moment before the
// leader has registered its members, and until then a session for the node (every
// lock) is refused ("Missing node registration", or a critical serfHealth).
func (c *Cluster) waitRegistered(t testing.TB, timeout time.Duration, agents ...*Agent) {
	t.Helper()
	cl := c.Client(t)
	for _, a := range agents {
		WaitFor(t, timeout, a.Name+" to be registered with a passing serfHealth", func() (bool, string) {
			checks, _, err := cl.Health().Node(a.Name, &api.QueryOptions{RequireConsistent: true})
			if err != nil {
				return false, err.Error()
			}
			passing := false
			for _, ch := range checks {
				if ch.CheckID == "serfHealth" {
					passing = ch.Status == api.HealthPassing
				}
			}
			if !passing {
				return false, "not in the catalog with a passing serfHealth yet"
			}
			// The leader registers a member from gossip; its node meta arrives with the
			// agent's own sync a moment later.
			if c.opts.NodeMeta == nil {
				return true, ""
			}
			n, _, err := cl.Catalog().Node(a.Name, &api.QueryOptions{RequireConsistent: true})
			if err != nil || n == nil || n.Node == nil {
				return false, fmt.Sprintf("catalog node: %v", err)
			}
			for k, v := range c.opts.NodeMeta(a.Name) {
				if n.Node.Meta[k] != v {
					return false, fmt.Sprintf("node meta %s=%q, want %q", k, n.Node.Meta[k], v)
				}
			}
			return true, ""
		})
	}
}

// Agents returns servers then clients.
func (c *Cluster) Agents() []*Agent {
	return append(append([]*Agent(nil), c.Servers...), c.Clients...)
}

// AddClient starts one more client agent joined to the servers.
func (c *Cluster) AddClient(t testing.TB) *Agent {
	t.Helper()
	var joins []string
	for _, s := range c.Servers {
		joins = append(joins, s.IP)
	}
	a := c.newAgent(fmt.Sprintf("client-%d", len(c.Clients)+1), c.Block.Addr(101+len(c.Clients)), false, joins)
	c.Clients = append(c.Clients, a)
	c.mintTokens(t, a)
	a.Start(t)
	a.waitMember(t, c.opts.StartTimeout)
	c.waitRegistered(t, c.opts.StartTimeout, a)
	return a
}

// Client returns an API client of a running server (the first one that answers).
func (c *Cluster) Client(t testing.TB) *api.Client {
	t.Helper()
	for _, s := range c.Servers {
		if s.Running() {
			return s.Client()
		}
	}
	t.Fatalf("testcluster: no running server")
	return nil
}

// Leader returns the server that currently leads, failing the test if none does.
func (c *Cluster) Leader(t testing.TB) *Agent {
	t.Helper()
	l := c.leader()
	if l == nil {
		t.Fatalf("testcluster: no leader")
	}
	return l
}

func (c *Cluster) leader() *Agent {
	for _, s := range c.Servers {
		if !s.Running() {
			continue
		}
		addr, err := s.Client().Status().Leader()
		if err != nil || addr == "" {
			continue
		}
		for _, cand := range c.Servers {
			if cand.ServerAddr() == addr {
				return cand
			}
		}
	}
	return nil
}

// WaitForLeader waits until a running server reports a leader that is itself running.
func (c *Cluster) WaitForLeader(t testing.TB, timeout time.Duration) *Agent {
	t.Helper()
	var l *Agent
	WaitFor(t, timeout, "a leader", func() (bool, string) {
		l = c.leader()
		if l == nil || !l.Running() {
			return false, "no running leader"
		}
		return true, ""
	})
	return l
}

// Health returns autopilot's view of server health, asked of any running server.
func (c *Cluster) Health() (*api.OperatorHealthReply, error) {
	var lastErr error = errors.New("no running server")
	for _, s := range c.Servers {
		if !s.Running() {
			continue
		}
		h, err := s.Client().Operator().AutopilotServerHealth(nil)
		if err == nil {
			return h, nil
		}
		lastErr = err
	}
	return nil, lastErr
}

// WaitHealthy waits until autopilot reports every server healthy and the raft
// configuration has as many voters as there are running servers.
func (c *Cluster) WaitHealthy(t testing.TB, timeout time.Duration) {
	t.Helper()
	c.waitHealth(t, timeout, true)
}

// WaitUnhealthy waits until autopilot reports the cluster unhealthy.
func (c *Cluster) WaitUnhealthy(t testing.TB, timeout time.Duration) {
	t.Helper()
	c.waitHealth(t, timeout, false)
}

func (c *Cluster) waitHealth(t testing.TB, timeout time.Duration, want bool) {
	t.Helper()
	WaitFor(t, timeout, fmt.Sprintf("autopilot healthy=%v", want), func() (bool, string) {
		h, err := c.Health()
		if err != nil {
			return false, err.Error()
		}
		if h.Healthy != want {
			return false, describeHealth(h)
		}
		if want {
			running := 0
			for _, s := range c.Servers {
				if s.Running() {
					running++
				}
			}
			if len(h.Servers) != running {
				return false, fmt.Sprintf("%d servers in autopilot, %d running: %s", len(h.Servers), running, describeHealth(h))
			}
			for _, s := range h.Servers {
				if !s.Voter {
					return false, describeHealth(h)
				}
			}
		}
		return true, ""
	})
}

func describeHealth(h *api.OperatorHealthReply) string {
	var parts []string
	for _, s := range h.Servers {
		parts = append(parts, fmt.Sprintf("%s(healthy=%v voter=%v leader=%v serf=%s)", s.Name, s.Healthy, s.Voter, s.Leader, s.SerfStatus))
	}
	return fmt.Sprintf("healthy=%v failure_tolerance=%d [%s]", h.Healthy, h.FailureTolerance, strings.Join(parts, " "))
}

// stopAll stops every agent; on failure it first prints the tail of each agent's log.
// The clients go first, together, while the servers they leave through still run (a
// client's SIGTERM is a graceful leave); then the servers, together.
func (c *Cluster) stopAll() {
	if c.t.Failed() {
		for _, a := range c.Agents() {
			c.t.Logf("--- log of %s (%s), last lines:\n%s", a.Name, a.IP, a.LogTail(40))
		}
	}
	for _, group := range [][]*Agent{c.Clients, c.Servers} {
		var wg sync.WaitGroup
		for _, a := range group {
			wg.Add(1)
			go func() {
				defer wg.Done()
				a.stop()
			}()
		}
		wg.Wait()
	}
}

// WaitFor polls cond every 100ms until it returns true or timeout passes, then fails
// the test with what cond last reported.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	last := ""
	for {
		ok, why := cond()
		if ok {
			return
		}
		last = why
		if time.Now().After(deadline) {
			t.Fatalf("testcluster: timed out after %s waiting for %s; last: %s", timeout, what, last)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// WriteFile writes content to path (mode 0644), creating its directory, or fails t.
func WriteFile(t testing.TB, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatalf("testcluster: %v", err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatalf("testcluster: %v", err)
	}
}

// Tail returns the last n lines of s, for a failing test's log.
func Tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
