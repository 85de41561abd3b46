// Package local is the embedded cloud provider: a real Consul cluster of detached
// `consul agent -server` processes on loopback addresses of this machine. An image is a
// named Consul binary plus extra agent config; an instance is one server process with
// node meta image_id/instance_id. All state lives in one JSON file guarded by flock(2),
// because the handlers that call the provider are many short-lived processes.
//
// `make demo` and the end-to-end tests roll real clusters with it.
package local

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/consul-rehydrate/consul-rehydrate/internal/cloud"
	"github.com/consul-rehydrate/consul-rehydrate/internal/cluster"
	"github.com/consul-rehydrate/consul-rehydrate/internal/fault"
	"github.com/consul-rehydrate/consul-rehydrate/internal/gate"
	"github.com/consul-rehydrate/consul-rehydrate/internal/poll"
)

// Defaults for Config.
const (
	DefaultDatacenter   = "dc1"
	DefaultConsulBinary = "consul"
	DefaultLeaveTimeout = 2 * time.Minute
)

const (
	// upTimeout bounds Up's wait for a leader and a healthy autopilot.
	upTimeout = 60 * time.Second
	// stopTimeout bounds Down's wait after SIGTERM, and every wait after a SIGKILL.
	stopTimeout = 10 * time.Second
	pollEvery   = 100 * time.Millisecond
	// execTimeout bounds start's wait for a started agent to show in /proc; it
	// takes a millisecond or so, polled every execPollEvery.
	execTimeout   = 10 * time.Second
	execPollEvery = time.Millisecond
	clientName    = "local-client"
)

// ErrUnknownInstance is returned by Terminate for an ID this provider never launched.
var ErrUnknownInstance = errors.New("unknown instance")

// Config configures a Provider.
type Config struct {
	// StateDir holds all state (created if missing).
	StateDir string
	// ConsulBinary is the default binary of registered images: a path or a name looked
	// up on PATH (default "consul").
	ConsulBinary string
	// Addresses is the loopback range agents get addresses from, e.g. 127.0.1.0/24: the
	// client agent the first usable one, servers the next.
	Addresses netip.Prefix
	// Datacenter defaults to "dc1".
	Datacenter string
	// BinDir is where the watch handlers (spinup, spindown) are; "" renders no watches.
	BinDir string
	// ConfigPath is the handler config file the watches pass with -config.
	ConfigPath string
	// LeaveTimeout bounds a graceful leave before SIGKILL (default 2m).
	LeaveTimeout time.Duration
	// Logger may be nil.
	Logger hclog.Logger
	// Getenv reads the environment: PATH, and where the pinned Consul is cached
	// (XDG_CACHE_HOME, HOME). Nil means os.Getenv.
	Getenv func(string) string
	// Cluster and EventName are the handler configuration's cluster and
	// roll.event_name: each server's handler token is the rehydrate-handlers policy
	// rendered with them. They are needed when BinDir is set.
	Cluster   string
	EventName string
}

// ImageOptions describe an image.
type ImageOptions struct {
	// ConsulBinary is the binary its servers run (default Config.ConsulBinary).
	ConsulBinary string
	// ExtraHCL is the image's own agent settings, loaded after every other file of a
	// server launched from it, so they may override any setting (image.hcl).
	ExtraHCL string
}

// Provider runs Consul servers as local processes. Any number of Providers, in any
// number of processes, may share one StateDir.
type Provider struct {
	cfg   Config
	addrs addrRange
	log   hclog.Logger
}

// New returns a Provider for cfg. It touches no files. It fails on any system but
// Linux.
func New(cfg Config) (*Provider, error) {
	if err := supported(); err != nil {
		return nil, err // it names the provider already
	}
	if cfg.StateDir == "" {
		return nil, errors.New("new local provider: no state dir")
	}
	// Absolute paths, because they end up in agent configs and, for the state dir, in
	// the /proc cmdline that tells our agents from reused PIDs.
	for _, p := range []*string{&cfg.StateDir, &cfg.BinDir, &cfg.ConfigPath} {
		if *p == "" {
			continue
		}
		abs, err := filepath.Abs(*p)
		if err != nil {
			return nil, fmt.Errorf("new local provider: path %q: %w", *p, err)
		}
		*p = abs
	}
	if cfg.BinDir != "" && cfg.ConfigPath == "" {
		return nil, errors.New("new local provider: watches need a handler config path")
	}
	if cfg.BinDir != "" && (cfg.Cluster == "" || cfg.EventName == "") {
		return nil, errors.New("new local provider: watches need the cluster and event name their handlers' tokens are for")
	}
	addrs, err := newAddrRange(cfg.Addresses)
	if err != nil {
		return nil, fmt.Errorf("new local provider: %w", err)
	}
	if cfg.Datacenter == "" {
		cfg.Datacenter = DefaultDatacenter
	}
	if cfg.ConsulBinary == "" {
		cfg.ConsulBinary = DefaultConsulBinary
	}
	if cfg.LeaveTimeout <= 0 {
		cfg.LeaveTimeout = DefaultLeaveTimeout
	}
	if cfg.Getenv == nil {
		cfg.Getenv = os.Getenv
	}
	log := cfg.Logger
	if log == nil {
		log = hclog.NewNullLogger()
	}
	return &Provider{cfg: cfg, addrs: addrs, log: log}, nil
}

// RegisterImage registers an image named name. Registering a name twice is an error.
func (p *Provider) RegisterImage(ctx context.Context, name string, opts ImageOptions) (cloud.Image, error) {
	if name == "" {
		return cloud.Image{}, errors.New("register image: empty name")
	}
	bin := opts.ConsulBinary
	if bin == "" {
		bin = p.cfg.ConsulBinary
	}
	// Resolved now, so every handler process launches the same binary whatever its PATH.
	bin, err := p.consulBinary(bin)
	if err != nil {
		return cloud.Image{}, fmt.Errorf("register image %q: %w", name, err)
	}
	var img imageRecord
	err = p.withState(func(s *state) (bool, error) {
		if s.image(name) != nil {
			return false, errors.New("already registered")
		}
		// Created orders images, and the roll picks the newest: keep it strictly
		// increasing even for images registered within one clock tick.
		created := time.Now().UTC()
		for _, im := range s.Images {
			if !created.After(im.Created) {
				created = im.Created.Add(time.Millisecond)
			}
		}
		img = imageRecord{Name: name, ConsulBinary: bin, ExtraHCL: opts.ExtraHCL, Created: created}
		s.Images = append(s.Images, img)
		return true, nil
	})
	if err != nil {
		return cloud.Image{}, fmt.Errorf("register image %q: %w", name, err)
	}
	p.log.Info("registered image", "image_id", name, "consul_binary", bin)
	return toImage(img), nil
}

// Images returns every registered image, oldest first.
func (p *Provider) Images(ctx context.Context) ([]cloud.Image, error) {
	var out []cloud.Image
	err := p.withState(func(s *state) (bool, error) {
		for _, im := range s.Images {
			out = append(out, toImage(im))
		}
		return false, nil
	})
	if err != nil {
		return nil, fmt.Errorf("list images: %w", err)
	}
	return out, nil
}

// Instances returns every instance not terminated, in launch order. An instance is
// pending until its process has been seen alive, then running for good, as on EC2: a
// crashed agent on a running instance is an unhealthy server, not a vanished instance.
func (p *Provider) Instances(ctx context.Context) ([]cloud.Instance, error) {
	var out []cloud.Instance
	err := p.withState(func(s *state) (bool, error) {
		changed := false
		for _, in := range s.Instances {
			if in.State == cloud.StateTerminated {
				continue
			}
			changed = p.refresh(in) || changed
			if in.State != cloud.StateTerminated {
				out = append(out, toInstance(in))
			}
		}
		return changed, nil
	})
	if err != nil {
		return nil, fmt.Errorf("list instances: %w", err)
	}
	return out, nil
}

// refresh promotes a pending instance whose process is alive to running, and ends a
// shutting-down one whose process has exited, as EC2 would: a terminator that died
// after the leave must not leave the instance shutting down for ever.
func (p *Provider) refresh(in *instanceRecord) bool {
	switch {
	case in.State == cloud.StatePending && alive(in.PID, configPath(p.instanceDir(in.ID))):
		in.State = cloud.StateRunning
		return true
	case in.State == cloud.StateShuttingDown && probe(in.PID, configPath(p.instanceDir(in.ID))).gone():
		in.State = cloud.StateTerminated
		return true
	}
	return false
}

// Launch starts one server on the image and returns it pending; it does not wait for
// the server to join. If a live instance was already launched for actionID, Launch
// returns it and starts nothing. The local provider has no group to manage: g is
// ignored.
func (p *Provider) Launch(ctx context.Context, imageID, actionID string, _ *cloud.GroupState) (cloud.Instance, error) {
	var out cloud.Instance
	started := 0
	err := p.withState(func(s *state) (bool, error) {
		if actionID != "" {
			for _, in := range s.Instances {
				if in.ActionID == actionID && in.State != cloud.StateTerminated {
					changed := p.refresh(in)
					out = toInstance(in)
					return changed, nil
				}
			}
		}
		img := s.image(imageID)
		if img == nil {
			return false, cloud.ErrUnknownImage
		}
		if s.BootstrapExpect == 0 {
			return false, errors.New("no cluster: run Up first")
		}
		addr, err := s.allocate(p.addrs)
		if err != nil {
			return false, err
		}
		id, err := s.newInstanceID()
		if err != nil {
			return false, err
		}
		var joins []string
		for _, in := range s.Instances {
			if in.State != cloud.StateTerminated {
				joins = append(joins, in.Address)
			}
		}
		in := &instanceRecord{ID: id, ImageID: imageID, Address: addr, State: cloud.StatePending, ActionID: actionID, Launched: time.Now().UTC()}
		spec := agentSpec{
			name: id, addr: addr, dir: p.instanceDir(id), joins: joins,
			server: true, expect: s.BootstrapExpect, imageID: imageID, extra: img.ExtraHCL,
		}
		// Its certificate and tokens exist before it starts, as an instance's
		// provisioning gives them before its agent runs.
		if err := p.prepareAgent(ctx, img.ConsulBinary, spec); err != nil {
			return false, err
		}
		if err := p.mintVia(ctx, s.Client, spec); err != nil {
			return false, err
		}
		// Started under the lock, so no process runs unrecorded; starting takes
		// milliseconds, joining (which we do not wait for) takes seconds.
		in.PID, err = p.start(ctx, img.ConsulBinary, spec)
		if err != nil {
			return false, err
		}
		started = in.PID
		s.Instances = append(s.Instances, in)
		out = toInstance(in)
		return true, nil
	})
	if err != nil {
		if started != 0 { // it runs, but the state could not record it
			_ = syscall.Kill(started, syscall.SIGKILL)
		}
		return cloud.Instance{}, fmt.Errorf("launch instance on image %q: %w", imageID, err)
	}
	p.log.Info("launched instance", "instance_id", out.ID, "image_id", imageID, "address", out.Address, "action_id", actionID)
	return out, nil
}

// Terminate makes the instance's server leave the cluster gracefully and returns once
// it is out of the raft configuration (SIGKILL after LeaveTimeout). The instance is
// shutting-down until its process has exited, then terminated, as on EC2.
// Terminating a terminated instance does nothing; an ID never launched is
// ErrUnknownInstance.
func (p *Provider) Terminate(ctx context.Context, instanceID, actionID string) error {
	rec, done, err := p.shuttingDown(instanceID)
	if err != nil || done {
		if err != nil {
			return fmt.Errorf("terminate instance %q: %w", instanceID, err)
		}
		return nil
	}
	p.log.Info("terminating instance", "instance_id", instanceID, "address", rec.Address, "action_id", actionID)
	// Outside the lock: a leave takes seconds, and every other handler needs the state.
	if err := p.leave(ctx, rec); err != nil {
		return fmt.Errorf("terminate instance %q: %w", instanceID, err)
	}
	fault.Point("left")
	if err := p.settle(instanceID); err != nil {
		return fmt.Errorf("terminate instance %q: %w", instanceID, err)
	}
	p.log.Info("instance's server left; the instance is shutting down", "instance_id", instanceID)
	return nil
}

// shuttingDown marks the instance shutting-down and returns its record; done if it
// is already terminated. It is recorded before the server is stopped, so a
// terminator killed mid-way leaves the instance visibly on its way out; the next
// call finishes it. An ID never launched is ErrUnknownInstance.
func (p *Provider) shuttingDown(instanceID string) (rec instanceRecord, done bool, err error) {
	err = p.withState(func(s *state) (bool, error) {
		in := s.instance(instanceID)
		switch {
		case in == nil:
			return false, ErrUnknownInstance
		case in.State == cloud.StateTerminated:
			done = true
			return false, nil
		}
		rec = *in
		changed := in.State != cloud.StateShuttingDown
		in.State = cloud.StateShuttingDown
		return changed, nil
	})
	return rec, done, err
}

// settle records what became of a shutting-down instance once its server was
// stopped: it stays shutting-down while the process drains, terminated once it has
// exited (see refresh).
func (p *Provider) settle(instanceID string) error {
	return p.withState(func(s *state) (bool, error) {
		in := s.instance(instanceID)
		if in == nil {
			return false, ErrUnknownInstance // the state dir was replaced under us
		}
		return p.refresh(in), nil
	})
}

// Kill SIGKILLs the instance's server, as a crash would: the instance stays running,
// its server stays in the raft configuration, failed. Restart brings it back.
func (p *Provider) Kill(ctx context.Context, instanceID string) error {
	rec, err := p.record(instanceID)
	if err != nil {
		return fmt.Errorf("kill instance %q: %w", instanceID, err)
	}
	if err := p.stop(ctx, agentProc{rec.PID, configPath(p.instanceDir(rec.ID))}, syscall.SIGKILL); err != nil {
		return fmt.Errorf("kill instance %q: %w", instanceID, err)
	}
	p.log.Info("killed instance's server", "instance_id", instanceID, "pid", rec.PID)
	return nil
}

// Restart stops the instance's server without a leave (SIGINT: servers skip the leave
// on interrupt) if it runs, and starts it again on its data, as a reboot would.
func (p *Provider) Restart(ctx context.Context, instanceID string) error {
	rec, err := p.record(instanceID)
	if err != nil {
		return fmt.Errorf("restart instance %q: %w", instanceID, err)
	}
	if rec.State != cloud.StateRunning && rec.State != cloud.StatePending {
		return fmt.Errorf("restart instance %q: it is %s", instanceID, rec.State)
	}
	dir := p.instanceDir(rec.ID)
	if err := p.stop(ctx, agentProc{rec.PID, configPath(dir)}, syscall.SIGINT); err != nil {
		return fmt.Errorf("restart instance %q: %w", instanceID, err)
	}
	err = p.withState(func(s *state) (bool, error) {
		img := s.image(rec.ImageID)
		if img == nil {
			return false, cloud.ErrUnknownImage
		}
		in := s.instance(rec.ID)
		if in == nil {
			return false, ErrUnknownInstance
		}
		pid, err := p.startWith(ctx, img.ConsulBinary, dir, rec.Address)
		if err != nil {
			return false, err
		}
		in.PID = pid
		return true, nil
	})
	if err != nil {
		return fmt.Errorf("restart instance %q: %w", instanceID, err)
	}
	p.log.Info("restarted instance's server", "instance_id", instanceID, "pid", rec.PID)
	return nil
}

// Reload sends the instance's server SIGHUP: it re-reads its configuration and
// restarts its watches, whose handlers then get what the agent has buffered.
func (p *Provider) Reload(ctx context.Context, instanceID string) error {
	rec, err := p.record(instanceID)
	if err != nil {
		return fmt.Errorf("reload instance %q: %w", instanceID, err)
	}
	if v := probe(rec.PID, configPath(p.instanceDir(rec.ID))); !v.ours {
		return fmt.Errorf("reload instance %q: its server (pid %d) is not running: /proc: %s", instanceID, rec.PID, v.desc)
	}
	if err := syscall.Kill(rec.PID, syscall.SIGHUP); err != nil {
		return fmt.Errorf("reload instance %q: %w", instanceID, err)
	}
	return nil
}

func (p *Provider) record(id string) (instanceRecord, error) {
	var rec instanceRecord
	err := p.withState(func(s *state) (bool, error) {
		in := s.instance(id)
		if in == nil {
			return false, ErrUnknownInstance
		}
		rec = *in
		return false, nil
	})
	return rec, err
}

// leave makes a live server leave gracefully, as an EC2 shutdown does: SIGTERM, which
// leave_on_terminate (server.hcl) turns into a graceful leave. It returns once the
// server is out of the raft configuration, or its process has exited; the rest of
// its shutdown (draining RPCs for leave_drain_time) needs nobody waiting. A server
// still in the configuration after LeaveTimeout is killed.
func (p *Provider) leave(ctx context.Context, in instanceRecord) error {
	cfg := configPath(p.instanceDir(in.ID))
	if !alive(in.PID, cfg) {
		return nil // crashed or never started: nothing to leave
	}
	client := p.clientAPI()
	// The stop path of every server (scripts/consul.service runs `rehydrate leave`):
	// a leader hands leadership off first, while it still serves, then leaves. The
	// node name is the instance ID.
	if client != nil {
		// Never to a server that is leaving too (the gate marks a departing one).
		leaving, err := gate.Leaving(ctx, client, p.cfg.Cluster)
		if err != nil {
			p.log.Warn("could not read the servers leaving; handing off to any", "instance_id", in.ID, "error", err)
		}
		if _, err := gate.HandOff(ctx, client, in.ID, gate.Options{Timeout: p.cfg.LeaveTimeout, Poll: pollEvery, Log: p.log, Leaving: leaving}); err != nil {
			p.log.Warn("leaving without a hand-off", "instance_id", in.ID, "error", err)
		}
	}
	if err := syscall.Kill(in.PID, syscall.SIGTERM); err != nil {
		return fmt.Errorf("signal server %d: %w", in.PID, err)
	}
	err := poll.Until(ctx, pollEvery, p.cfg.LeaveTimeout, func(context.Context) (bool, error) {
		return probe(in.PID, cfg).gone() || (client != nil && p.outOfRaft(client, in.Address)), nil
	})
	if !errors.Is(err, poll.ErrTimeout) {
		if err != nil {
			return fmt.Errorf("wait for leave: %w", err)
		}
		return nil
	}
	p.log.Warn("server did not leave in time, killing it", "instance_id", in.ID, "leave_timeout", p.cfg.LeaveTimeout)
	// Only the agent, not its process group: the handler terminating it may be one of
	// the agent's own watch handlers.
	return p.stop(ctx, agentProc{in.PID, cfg}, syscall.SIGKILL)
}

// stop sends sig to the agent, if it is still ours and running, and waits (bounded by
// stopTimeout) for it to exit. It logs what /proc showed, so that an agent taken for
// gone, and so never signalled, shows in the log.
func (p *Provider) stop(ctx context.Context, a agentProc, sig syscall.Signal) error {
	if v := probe(a.pid, a.cfg); v.ours {
		if err := syscall.Kill(a.pid, sig); err != nil {
			p.log.Warn("could not signal agent", "pid", a.pid, "signal", sig, "proc", v.desc, "error", err)
		} else {
			p.log.Debug("signalled agent", "pid", a.pid, "signal", sig, "proc", v.desc)
		}
	} else {
		p.log.Info("agent not running: nothing to signal", "pid", a.pid, "signal", sig, "file", a.cfg, "proc", v.desc)
	}
	exited, err := waitExit(ctx, stopTimeout, a)
	if err == nil && !exited {
		err = fmt.Errorf("process %d survived %s (/proc: %s)", a.pid, sig, probe(a.pid, a.cfg).desc)
	}
	return err
}

// clientAPI returns a client for the cluster's client agent, nil if there is none.
func (p *Provider) clientAPI() *api.Client {
	addr, err := p.ClientAddr()
	if err != nil {
		return nil
	}
	host, _, _ := strings.Cut(addr, ":")
	c, err := p.managementClient(host, 2*time.Second)
	if err != nil {
		return nil
	}
	return c
}

// outOfRaft reports whether the leader's raft configuration no longer lists a server
// at addr. An error (no leader, say) is not an answer: false.
func (p *Provider) outOfRaft(c *api.Client, addr string) bool {
	rc, err := c.Operator().RaftGetConfiguration(nil)
	if err != nil {
		return false
	}
	for _, s := range rc.Servers {
		if host, _, _ := strings.Cut(s.Address, ":"); host == addr {
			return false
		}
	}
	return true
}

// agentProc is an agent's PID and the config path its command line names.
type agentProc struct {
	pid int
	cfg string
}

// procView is what /proc showed of a PID (see probe).
type procView struct {
	ours   bool   // running, with the agent's command line
	exited bool   // no such process, or a zombie
	other  bool   // running another program: the PID was reused
	desc   string // what /proc showed, for the logs
}

// gone reports whether the agent has exited for good: no such process, a zombie, or
// its PID reused by another program. A process with an empty command line is
// neither ours nor gone: it is mid-exec, or mid-exit, when the kernel has released
// its memory (and so its arguments) but not yet closed its files, sockets included,
// so an agent restarted on its address before then could not bind it.
func (v procView) gone() bool { return v.exited || v.other }

// waitExit polls until every process has exited (true), limit has passed (false) or
// ctx ends (its cause).
func waitExit(ctx context.Context, limit time.Duration, procs ...agentProc) (bool, error) {
	err := poll.Until(ctx, pollEvery, limit, func(context.Context) (bool, error) {
		procs = slices.DeleteFunc(procs, func(a agentProc) bool { return probe(a.pid, a.cfg).gone() })
		return len(procs) == 0, nil
	})
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, poll.ErrTimeout):
		return false, nil
	}
	return false, fmt.Errorf("wait for exit: %w", err)
}

// Up starts a fresh cluster: one client agent and servers servers on imageID, and
// waits (at most a minute) for a leader, a healthy autopilot with that many voters, and
// every server's node meta in the catalog.
// It refuses to run while any instance or the client agent exists.
func (p *Provider) Up(ctx context.Context, servers int, imageID string) ([]cloud.Instance, error) {
	if servers < 1 {
		return nil, fmt.Errorf("start cluster: %d servers", servers)
	}
	var clientAddr string
	var procs []agentProc
	var specs []agentSpec      // the client's first
	ids := map[string]string{} // instance ID -> image ID
	err := p.withState(func(s *state) (bool, error) {
		if s.Client != nil || slices.ContainsFunc(s.Instances, func(in *instanceRecord) bool { return in.State != cloud.StateTerminated }) {
			return false, errors.New("a cluster already exists: run Down first")
		}
		img := s.image(imageID)
		if img == nil {
			return false, cloud.ErrUnknownImage
		}
		if p.addrs.count < servers+1 {
			return false, fmt.Errorf("address range %s has room for %d agents", p.cfg.Addresses, p.addrs.count)
		}
		if err := p.initSecrets(ctx, img.ConsulBinary); err != nil {
			return false, err
		}
		s.BootstrapExpect = servers
		var ins []*instanceRecord
		var joins []string
		for range servers {
			addr, err := s.allocate(p.addrs)
			if err != nil {
				return false, err
			}
			id, err := s.newInstanceID()
			if err != nil {
				return false, err
			}
			in := &instanceRecord{ID: id, ImageID: imageID, Address: addr, State: cloud.StatePending, Launched: time.Now().UTC()}
			s.Instances = append(s.Instances, in) // so allocate sees the address taken
			ins = append(ins, in)
			joins = append(joins, addr)
		}
		clientAddr = p.addrs.at(0)
		specs = append(specs, agentSpec{name: clientName, addr: clientAddr, dir: p.clientDir(), joins: joins})
		for _, in := range ins {
			others := slices.DeleteFunc(slices.Clone(joins), func(a string) bool { return a == in.Address })
			specs = append(specs, agentSpec{
				name: in.ID, addr: in.Address, dir: p.instanceDir(in.ID), joins: others,
				server: true, expect: servers, imageID: imageID, extra: img.ExtraHCL,
			})
		}
		for _, a := range specs {
			if err := p.prepareAgent(ctx, img.ConsulBinary, a); err != nil {
				return false, err
			}
		}
		for _, in := range ins {
			dir := p.instanceDir(in.ID)
			pid, err := p.start(ctx, img.ConsulBinary, specs[1+slices.Index(ins, in)])
			if err != nil {
				return false, err
			}
			in.PID = pid
			ids[in.ID] = imageID
			procs = append(procs, agentProc{pid, configPath(dir)})
		}
		pid, err := p.start(ctx, img.ConsulBinary, specs[0])
		if err != nil {
			return false, err
		}
		procs = append(procs, agentProc{pid, configPath(p.clientDir())})
		s.Client = &agentRecord{Address: clientAddr, PID: pid}
		return true, nil
	})
	if err != nil {
		for _, a := range procs { // they run, but the state does not record them
			_ = syscall.Kill(a.pid, syscall.SIGKILL)
		}
		return nil, fmt.Errorf("start cluster on image %q: %w", imageID, err)
	}
	p.log.Info("started cluster", "servers", servers, "image_id", imageID, "client_addr", clientAddr)
	if err := p.waitHealthy(ctx, clientAddr, servers, ids, procs, specs); err != nil {
		return nil, fmt.Errorf("start cluster on image %q: %w", imageID, err)
	}
	return p.Instances(ctx)
}

// waitHealthy waits until autopilot, asked through the client agent, reports a healthy
// cluster of servers voters, one of them leading, and the catalog has the node meta of
// every server in ids.
//
// It creates the agents' tokens (see mintTokens) as soon as there is a leader to
// create them: until then the agents' syncs and watches are refused, and retry.
func (p *Provider) waitHealthy(ctx context.Context, clientAddr string, servers int, ids map[string]string, procs []agentProc, unminted []agentSpec) error {
	// Every request is bounded by the client's timeout as well.
	cl, err := p.managementClient(clientAddr, 5*time.Second)
	if err != nil {
		return err
	}
	start := time.Now()
	last := ""
	err = poll.Until(ctx, pollEvery, upTimeout, func(ctx context.Context) (bool, error) {
		for _, a := range procs {
			if v := probe(a.pid, a.cfg); !v.ours {
				dir := filepath.Dir(a.cfg)
				p.log.Error("agent exited while the cluster started", "pid", a.pid, "dir", dir,
					"proc", v.desc, "took", time.Since(start))
				return false, fmt.Errorf("agent %s (pid %d) exited %s after the start (/proc: %s); see %s",
					dir, a.pid, time.Since(start).Round(time.Millisecond), v.desc, filepath.Join(dir, "agent.log"))
			}
		}
		for len(unminted) > 0 {
			if err := p.mintTokens(ctx, cl, unminted[0]); err != nil {
				last = err.Error()
				return false, nil
			}
			unminted = unminted[1:]
		}
		h, err := cl.Operator().AutopilotServerHealth((&api.QueryOptions{}).WithContext(ctx))
		switch {
		case err != nil:
			last = err.Error()
		case !h.Healthy || len(h.Servers) != servers:
			last = describeHealth(h)
		case !slices.ContainsFunc(h.Servers, func(s api.ServerHealth) bool { return s.Leader }) ||
			slices.ContainsFunc(h.Servers, func(s api.ServerHealth) bool { return !s.Voter }):
			last = describeHealth(h)
		default:
			// The catalog learns a node from serf before its agent syncs the node meta
			// the roll identifies servers by.
			ok, why := p.metaSynced(ctx, cl, ids)
			last = why
			return ok, nil
		}
		return false, nil
	})
	if err != nil && (errors.Is(err, poll.ErrTimeout) || ctx.Err() != nil) {
		return fmt.Errorf("wait for a healthy cluster of %d voters: %w; last: %s", servers, err, last)
	}
	return err
}

// metaSynced reports whether the catalog carries node meta of every instance in ids
// (instance ID -> image ID).
func (p *Provider) metaSynced(ctx context.Context, cl *api.Client, ids map[string]string) (bool, string) {
	nodes, _, err := cl.Catalog().Nodes((&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return false, err.Error()
	}
	synced := 0
	for _, n := range nodes {
		if img, ok := ids[n.Node]; ok && n.Meta[cluster.MetaInstanceID] == n.Node && n.Meta[cluster.MetaImageID] == img {
			synced++
		}
	}
	return synced == len(ids), fmt.Sprintf("node meta of %d of %d servers in the catalog", synced, len(ids))
}

func describeHealth(h *api.OperatorHealthReply) string {
	parts := []string{fmt.Sprintf("healthy=%v", h.Healthy)}
	for _, s := range h.Servers {
		parts = append(parts, fmt.Sprintf("%s(healthy=%v voter=%v leader=%v)", s.Name, s.Healthy, s.Voter, s.Leader))
	}
	return strings.Join(parts, " ")
}

// Down stops every agent (client included): SIGINT to each agent's process group
// (its watch handlers too), SIGKILL after 10s; then it removes the state dir.
// Down on a missing state dir does nothing.
func (p *Provider) Down(ctx context.Context) error {
	if _, err := os.Stat(p.cfg.StateDir); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	var procs []agentProc
	err := p.withState(func(s *state) (bool, error) {
		if s.Client != nil {
			procs = append(procs, agentProc{s.Client.PID, configPath(p.clientDir())})
		}
		for _, in := range s.Instances {
			procs = append(procs, agentProc{in.PID, configPath(p.instanceDir(in.ID))})
		}
		return false, nil
	})
	if err != nil {
		return fmt.Errorf("stop cluster: %w", err)
	}
	signal := func(sig syscall.Signal) {
		for _, a := range procs {
			// Setsid made each agent its process group's leader; signal the group
			// only while the leader is verified ours, as a dead one's PID may be reused.
			if alive(a.pid, a.cfg) {
				_ = syscall.Kill(-a.pid, sig)
			}
		}
	}
	// SIGINT, not SIGTERM: server.hcl sets leave_on_terminate, and servers all leaving
	// at once lose quorum and hang until killed, while on SIGINT (skip_leave_on_interrupt,
	// a server default) they shut down at once. The data is removed anyway.
	signal(syscall.SIGINT)
	exited, err := waitExit(ctx, stopTimeout, procs...)
	if err == nil && !exited {
		p.log.Warn("agents did not stop in time, killing them")
		signal(syscall.SIGKILL)
		exited, err = waitExit(ctx, stopTimeout, procs...)
		if err == nil && !exited {
			err = errors.New("agents survived SIGKILL")
		}
	}
	if err != nil {
		return fmt.Errorf("stop cluster: %w", err)
	}
	if err := os.RemoveAll(p.cfg.StateDir); err != nil {
		return fmt.Errorf("remove state dir: %w", err)
	}
	p.log.Info("stopped cluster", "state_dir", p.cfg.StateDir)
	return nil
}

// ClientAddr returns ip:port of the client agent's HTTPS API.
func (p *Provider) ClientAddr() (string, error) {
	var addr string
	err := p.withState(func(s *state) (bool, error) {
		if s.Client == nil {
			return false, errors.New("no cluster: run Up first")
		}
		addr = s.Client.Address + ":" + httpsPort
		return false, nil
	})
	if err != nil {
		return "", fmt.Errorf("client agent address: %w", err)
	}
	return addr, nil
}

func toImage(im imageRecord) cloud.Image {
	return cloud.Image{ID: im.Name, Name: im.Name, Created: im.Created}
}

func toInstance(in *instanceRecord) cloud.Instance {
	return cloud.Instance{ID: in.ID, ImageID: in.ImageID, Address: in.Address, State: in.State, Launched: in.Launched, ActionID: in.ActionID}
}

// Survey reports nothing: local servers have no group that acts on its own, no
// zones, and a launch either starts a process or fails the step.
func (p *Provider) Survey(context.Context, time.Time, time.Duration) (cloud.Survey, error) {
	return cloud.Survey{}, nil
}

// Prepare returns nil: there is no group to change and restore.
func (p *Provider) Prepare(context.Context) (*cloud.GroupState, error) { return nil, nil }

// Begin does nothing (see Prepare).
func (p *Provider) Begin(context.Context, *cloud.GroupState) error { return nil }

// End does nothing (see Prepare).
func (p *Provider) End(context.Context, *cloud.GroupState, bool) error { return nil }
