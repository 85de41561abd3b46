package local

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	consuld "github.com/consul-rehydrate/consul-rehydrate/consul.d"
	"github.com/consul-rehydrate/consul-rehydrate/internal/cluster"
	"github.com/consul-rehydrate/consul-rehydrate/internal/poll"
)

// agentSpec is what differs between the agents the provider runs.
type agentSpec struct {
	name    string
	addr    string
	dir     string
	joins   []string
	server  bool
	expect  int
	imageID string
	extra   string // the image's ExtraHCL, written to image.hcl
}

func (p *Provider) instanceDir(id string) string {
	return filepath.Join(p.cfg.StateDir, "instances", id)
}

func (p *Provider) clientDir() string { return filepath.Join(p.cfg.StateDir, "client") }

func configPath(dir string) string { return filepath.Join(dir, "config.hcl") }

// render returns the agent's config.hcl.
func (p *Provider) render(a agentSpec) string {
	var b strings.Builder
	q := func(s string) string { return fmt.Sprintf("%q", s) }
	fmt.Fprintf(&b, "node_name = %s\ndatacenter = %s\ndata_dir = %s\n", q(a.name), q(p.cfg.Datacenter), q(filepath.Join(a.dir, "data")))
	fmt.Fprintf(&b, "bind_addr = %s\nclient_addr = %s\nadvertise_addr = %s\n", q(a.addr), q(a.addr), q(a.addr))
	// The API on HTTPS only (secure.hcl has its TLS settings): a plain-HTTP
	// request finds no listener.
	b.WriteString("ports {\n  http     = -1\n  https    = " + httpsPort + "\n  grpc     = -1\n  grpc_tls = -1\n  serf_wan = -1\n  dns      = 8600\n}\n")
	joins := make([]string, len(a.joins))
	for i, j := range a.joins {
		joins[i] = q(j)
	}
	fmt.Fprintf(&b, "retry_join = [%s]\nretry_interval = \"1s\"\n", strings.Join(joins, ", "))
	b.WriteString("disable_update_check = true\nlog_level = \"info\"\n")
	if !a.server {
		return b.String()
	}
	fmt.Fprintf(&b, "bootstrap_expect = %d\n", a.expect)
	fmt.Fprintf(&b, "node_meta {\n  %s = %s\n  %s = %s\n}\n", cluster.MetaImageID, q(a.imageID), cluster.MetaInstanceID, q(a.name))
	b.WriteString("\n" + consuld.ServerHCL + "\n")
	if p.cfg.BinDir != "" {
		w := strings.ReplaceAll(consuld.WatchesHCL, consuld.BinDir, p.cfg.BinDir)
		b.WriteString(strings.ReplaceAll(w, consuld.ConfigPath, p.cfg.ConfigPath) + "\n")
	}
	return b.String()
}

// start writes the agent's config and starts it detached: in its own session, so it
// outlives the short-lived handler that launched it (and a signal to the handler's
// process group never reaches it), logging to agent.log. It returns the PID.
func (p *Provider) start(ctx context.Context, binary string, a agentSpec) (int, error) {
	if err := os.MkdirAll(filepath.Join(a.dir, "data"), 0o755); err != nil {
		return 0, fmt.Errorf("create agent dir: %w", err)
	}
	if err := os.WriteFile(configPath(a.dir), []byte(p.render(a)), 0o644); err != nil {
		return 0, fmt.Errorf("write agent config: %w", err)
	}
	// The image's own settings, loaded last, as a real image's files would be: they
	// may override anything, the cluster's gossip key included (a bad image).
	if err := os.WriteFile(filepath.Join(a.dir, imageConfigName), []byte(a.extra+"\n"), 0o644); err != nil {
		return 0, fmt.Errorf("write image config: %w", err)
	}
	return p.startWith(ctx, binary, a.dir, a.addr)
}

// startWith starts the agent whose config and data are in dir, detached; addr is the
// address its watch handlers talk to. It returns once /proc shows the agent (see
// waitExec), so that every liveness check of the PID it returns, in any process,
// recognises it.
func (p *Provider) startWith(ctx context.Context, binary, dir, addr string) (int, error) {
	cfgPath := configPath(dir)
	logf, err := os.OpenFile(filepath.Join(dir, "agent.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return 0, fmt.Errorf("open agent log: %w", err)
	}
	defer logf.Close() // the child has its own copy
	// acl.hcl and secure.hcl after config.hcl: ACLs, encryption, TLS and the agent's
	// tokens; then the image's own settings.
	cmd := exec.Command(binary, "agent", "-config-file", cfgPath,
		"-config-file", filepath.Join(dir, aclConfigName), "-config-file", filepath.Join(dir, secureConfigName),
		"-config-file", filepath.Join(dir, imageConfigName))
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = logf, logf // Stdin stays nil: /dev/null
	cmd.Env = p.agentEnv(dir, addr)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("start %s: %w", binary, err)
	}
	pid := cmd.Process.Pid
	// Nobody waits for it: liveness is read from /proc (see alive), from any process.
	_ = cmd.Process.Release()
	if err := p.waitExec(ctx, pid, cfgPath); err != nil {
		// Not reaped, so the PID is still this child's: nothing else is signalled.
		_ = syscall.Kill(pid, syscall.SIGKILL)
		return 0, fmt.Errorf("start %s: %w", binary, err)
	}
	return pid, nil
}

// waitExec waits until /proc shows pid running the agent's command line, or the
// process has already exited (its liveness checks then see it gone, and the caller
// reports it with its agent.log). exec.Cmd.Start returns while the kernel is still
// finishing the exec: /proc/<pid>/cmdline stays empty until the new program's
// arguments are in place, which on a loaded machine may be milliseconds later, and
// a liveness check in that window took a starting agent for an exited one.
func (p *Provider) waitExec(ctx context.Context, pid int, cfgPath string) error {
	start := time.Now()
	polls := 0
	var first, last procView
	err := poll.Until(ctx, execPollEvery, execTimeout, func(context.Context) (bool, error) {
		last = probe(pid, cfgPath)
		if polls++; polls == 1 {
			first = last
		}
		return last.ours || last.exited, nil
	})
	if err != nil {
		return fmt.Errorf("wait for agent %d to finish its exec (/proc: %s): %w", pid, last.desc, err)
	}
	if polls > 1 {
		p.log.Debug("agent was not yet recognisable when its start returned",
			"pid", pid, "proc_before", first.desc, "proc", last.desc, "took", time.Since(start), "attempts", polls)
	}
	return nil
}

// agentEnv points the watch handlers an agent runs at that agent, over HTTPS
// with the cluster's CA and the node's handler token (when it has one). Inherited
// CONSUL_* settings (address, token, TLS) would point them elsewhere. The agent's
// watches themselves read with the same token: a watch without a token of its own
// uses CONSUL_HTTP_TOKEN_FILE of the agent's environment (api.NewClient, which
// the agent's watch plans call with an empty token).
func (p *Provider) agentEnv(dir, addr string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "CONSUL_") {
			env = append(env, kv)
		}
	}
	env = append(env,
		"CONSUL_HTTP_ADDR=https://"+addr+":"+httpsPort,
		"CONSUL_CACERT="+p.CAFile(),
		"REHYDRATE_LOG_FILE="+filepath.Join(p.cfg.StateDir, "handlers.log"),
	)
	if tf := filepath.Join(dir, handlerTokenName); fileExists(tf) {
		env = append(env, "CONSUL_HTTP_TOKEN_FILE="+tf)
	}
	return env
}
