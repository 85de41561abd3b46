package testcluster

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
)

// Agent is one consul agent process.
type Agent struct {
	Name    string
	IP      string
	Server  bool
	Dir     string // holds config.hcl, data/ and agent.log
	cluster *Cluster
	joins   []string

	tokens *agentTokens // a secure cluster's only

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

func (c *Cluster) newAgent(name, ip string, server bool, joins []string) *Agent {
	dir := filepath.Join(c.t.TempDir(), name)
	a := &Agent{Name: name, IP: ip, Server: server, Dir: dir, cluster: c, joins: joins}
	WriteFile(c.t, a.ConfigPath(), a.config())
	if c.sec != nil {
		a.prepareSecure(c.t)
	}
	if c.opts.Files != nil {
		for name, content := range c.opts.Files(a) {
			WriteFile(c.t, filepath.Join(a.ConfigDir(), name), content)
		}
	}
	return a
}

// Cluster is the cluster the agent belongs to.
func (a *Agent) Cluster() *Cluster { return a.cluster }

// ConfigPath is the agent's main configuration file.
func (a *Agent) ConfigPath() string { return filepath.Join(a.Dir, "config.hcl") }

// HTTPAddr is host:port of the agent's plain-HTTP API, which a secure cluster's
// agents do not serve (see HTTPSAddr and APIAddr).
func (a *Agent) HTTPAddr() string { return a.IP + ":8500" }

// HTTPSAddr is host:port of the agent's HTTPS API, a secure cluster's only API.
func (a *Agent) HTTPSAddr() string { return a.IP + ":8501" }

// APIAddr is the URL of the API the agent serves, as CONSUL_HTTP_ADDR and -http-addr
// take it: https://<ip>:8501 on a secure cluster, http://<ip>:8500 otherwise.
func (a *Agent) APIAddr() string {
	if a.cluster.sec != nil {
		return "https://" + a.HTTPSAddr()
	}
	return "http://" + a.HTTPAddr()
}

// ServerAddr is host:port of the agent's server RPC, as raft and Status().Leader() name it.
func (a *Agent) ServerAddr() string { return a.IP + ":8300" }

// DNSAddr is host:port of the agent's DNS interface.
func (a *Agent) DNSAddr() string { return a.IP + ":8600" }

// Client returns an API client talking to this agent with Options.Token (on a secure
// cluster: over HTTPS, verified with CAFile, with the management token).
func (a *Agent) Client() *api.Client {
	cl, err := api.NewClient(a.apiConfig())
	if err != nil {
		panic(err) // only fails on bad TLS settings: our own CA file
	}
	return cl
}

func (a *Agent) apiConfig() *api.Config {
	cfg := api.DefaultConfig()
	cfg.Address = a.HTTPAddr()
	cfg.Token = a.cluster.opts.Token
	if a.cluster.sec != nil {
		// Nothing from the test's CONSUL_* environment: api.NewClient reads a token
		// file of $CONSUL_HTTP_TOKEN_FILE in preference to Token unless TokenFile is
		// set, so it names the management token's own file.
		cfg.Address, cfg.Scheme = a.HTTPSAddr(), "https"
		cfg.TokenFile = a.cluster.ManagementTokenFile()
		cfg.TLSConfig = api.TLSConfig{CAFile: a.cluster.CAFile()}
	}
	return cfg
}

func (a *Agent) config() string {
	c := a.cluster
	var b strings.Builder
	q := func(s string) string { return fmt.Sprintf("%q", s) }
	fmt.Fprintf(&b, "node_name = %s\ndatacenter = %s\ndata_dir = %s\n", q(a.Name), q(c.opts.Datacenter), q(filepath.Join(a.Dir, "data")))
	fmt.Fprintf(&b, "bind_addr = %s\nclient_addr = %s\nadvertise_addr = %s\n", q(a.IP), q(a.IP), q(a.IP))
	var joins []string
	for _, j := range a.joins {
		if j != a.IP {
			joins = append(joins, q(j))
		}
	}
	fmt.Fprintf(&b, "retry_join = [%s]\nretry_interval = \"1s\"\n", strings.Join(joins, ", "))
	b.WriteString(`log_level = "info"
disable_update_check = true
enable_script_checks = false
performance { raft_multiplier = 1 }
`)
	if c.sec != nil {
		// A secure cluster serves its API on HTTPS only, as the shipped image does on
		// its private address.
		b.WriteString("ports {\n  grpc     = -1\n  grpc_tls = -1\n  serf_wan = -1\n  http     = -1\n  https    = 8501\n}\n")
	} else {
		b.WriteString("ports {\n  grpc     = -1\n  grpc_tls = -1\n  https    = -1\n  serf_wan = -1\n}\n")
	}
	if a.Server {
		fmt.Fprintf(&b, "server = true\nbootstrap_expect = %d\n", c.opts.Servers)
	}
	if c.opts.NodeMeta != nil {
		if meta := c.opts.NodeMeta(a.Name); len(meta) > 0 {
			b.WriteString("node_meta {\n")
			for k, v := range meta {
				fmt.Fprintf(&b, "  %s = %s\n", k, q(v))
			}
			b.WriteString("}\n")
		}
	}
	if c.opts.ExtraHCL != nil {
		b.WriteString(c.opts.ExtraHCL(a))
		b.WriteString("\n")
	}
	return b.String()
}

// Start starts the agent process. It does not wait for it to join.
func (a *Agent) Start(t testing.TB) {
	t.Helper()
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cmd != nil {
		t.Fatalf("testcluster: %s already running", a.Name)
	}
	logf, err := os.OpenFile(filepath.Join(a.Dir, "agent.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatalf("testcluster: %v", err)
	}
	args := []string{"agent", "-config-file", a.ConfigPath()}
	if a.tokens != nil {
		// The shipped acl.hcl, then encryption, TLS and the agent's tokens; then the
		// test's files.
		args = append(args, "-config-file", filepath.Join(a.Dir, "acl.hcl"), "-config-file", a.secureConfigPath())
	}
	cmd := exec.Command(a.cluster.Binary, append(args, "-config-dir", a.ConfigDir())...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = a.processEnv()
	// Its own process group, so a kill reaches the watch handlers it runs too; and
	// killed with the test process, so an aborted `go test` leaves no agent behind.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := os.MkdirAll(a.ConfigDir(), 0o755); err != nil {
		t.Fatalf("testcluster: %v", err)
	}
	if err := cmd.Start(); err != nil {
		logf.Close()
		t.Fatalf("testcluster: start %s: %v", a.Name, err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		logf.Close()
		close(done)
	}()
	a.cmd, a.done = cmd, done
}

// ConfigDir is a directory of extra agent configuration files loaded after config.hcl;
// tests drop watch or service definitions there before (re)starting the agent.
func (a *Agent) ConfigDir() string { return filepath.Join(a.Dir, "config.d") }

// Running reports whether the agent process is alive.
func (a *Agent) Running() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cmd == nil {
		return false
	}
	select {
	case <-a.done:
		return false
	default:
		return true
	}
}

// Kill sends SIGKILL to the agent and its children and waits for it to exit: a crash.
func (a *Agent) Kill(t testing.TB) {
	t.Helper()
	a.signalAndWait(t, syscall.SIGKILL, 10*time.Second)
}

// Stop sends SIGTERM (a shutdown without leave, as leave_on_terminate is false for
// servers) and waits for the agent to exit.
func (a *Agent) Stop(t testing.TB) {
	t.Helper()
	a.signalAndWait(t, syscall.SIGTERM, 30*time.Second)
}

// Leave makes the agent leave the cluster gracefully (as `consul leave` does) and waits
// for the process to exit.
func (a *Agent) Leave(t testing.TB) {
	t.Helper()
	if err := a.Client().Agent().Leave(); err != nil {
		t.Fatalf("testcluster: leave %s: %v", a.Name, err)
	}
	a.waitExit(t, 60*time.Second)
}

// Restart starts a stopped agent again with the same data directory and address.
func (a *Agent) Restart(t testing.TB) {
	t.Helper()
	if a.Running() {
		t.Fatalf("testcluster: restart %s: still running", a.Name)
	}
	a.Start(t)
	a.waitMember(t, a.cluster.opts.StartTimeout)
}

func (a *Agent) signalAndWait(t testing.TB, sig syscall.Signal, timeout time.Duration) {
	t.Helper()
	a.mu.Lock()
	cmd := a.cmd
	a.mu.Unlock()
	if cmd == nil {
		t.Fatalf("testcluster: %s is not running", a.Name)
	}
	// An agent that exited by itself and was reaped may have its pid, and so its
	// process group id, taken by another process (a local provider's agent, which
	// leads a session of its own, once got a SIGTERM this way): signal only a live one.
	if !exited(a.doneChan()) {
		_ = syscall.Kill(-cmd.Process.Pid, sig)
	}
	a.waitExit(t, timeout)
}

func (a *Agent) waitExit(t testing.TB, timeout time.Duration) {
	t.Helper()
	a.mu.Lock()
	done := a.done
	a.mu.Unlock()
	select {
	case <-done:
	case <-time.After(timeout):
		t.Fatalf("testcluster: %s did not exit within %s", a.Name, timeout)
	}
	a.mu.Lock()
	a.cmd, a.done = nil, nil
	a.mu.Unlock()
}

// exited reports whether done, an agent's exit channel, is closed: the process has
// exited and been reaped.
func exited(done chan struct{}) bool {
	select {
	case <-done:
		return true
	default:
		return false
	}
}

func (a *Agent) doneChan() chan struct{} {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.done
}

// stop ends the agent however it can, for cleanup: SIGTERM, then SIGKILL.
func (a *Agent) stop() {
	a.mu.Lock()
	cmd, done := a.cmd, a.done
	a.cmd, a.done = nil, nil
	a.mu.Unlock()
	if cmd == nil || exited(done) {
		return // signalling an exited agent's group could reach whoever has its pid now
	}
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
	}
}

// waitMember waits until the agent's HTTP API answers and it sees a leader.
func (a *Agent) waitMember(t testing.TB, timeout time.Duration) {
	t.Helper()
	WaitFor(t, timeout, a.Name+" to join", func() (bool, string) {
		if !a.Running() {
			return false, "process exited: " + a.LogTail(5)
		}
		l, err := a.Client().Status().Leader()
		if err != nil {
			return false, err.Error()
		}
		return l != "", "no leader known"
	})
}

// LogTail returns the last n lines of the agent's log.
func (a *Agent) LogTail(n int) string {
	data, err := os.ReadFile(filepath.Join(a.Dir, "agent.log"))
	if err != nil {
		return err.Error()
	}
	lines := bytes.Split(bytes.TrimRight(data, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}
