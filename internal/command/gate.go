package command

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/consul-rehydrate/consul-rehydrate/internal/app"
	awsprovider "github.com/consul-rehydrate/consul-rehydrate/internal/cloud/aws"
	"github.com/consul-rehydrate/consul-rehydrate/internal/gate"
	"github.com/consul-rehydrate/consul-rehydrate/internal/poll"
)

// leaveFlags is `rehydrate leave`: the stop path of scripts/consul.service.
func leaveFlags(*app.Flags) func(*app.Flags, []string) int {
	return func(f *app.Flags, _ []string) int { return withProg(f, (*prog).leave) }
}

// leave hands leadership off if the agent's server leads, then makes the agent
// leave gracefully (gate.Leave), bounded by roll.leave_timeout and a minute more.
func (a *prog) leave() int {
	c, err := a.consul()
	if err != nil {
		a.log.Error("set up consul client", "error", err)
		return app.ExitConfig
	}
	ctx, cancel := withTimeout(a.cfg.Roll.LeaveTimeout + time.Minute)
	defer cancel()
	self, err := nodeName(c)
	if err != nil {
		a.log.Error("read the agent's node name", "error", err)
		return app.ExitConsul
	}
	// Servers whose gates are terminating them are no successors.
	leaving, err := gate.Leaving(ctx, c, a.cfg.Cluster)
	if err != nil {
		a.log.Warn("handing off without knowing which servers are leaving", "node", self, "error", err)
	}
	if err := gate.Leave(ctx, c, self, gate.Options{Timeout: a.cfg.Roll.LeaveTimeout, Leaving: leaving, Log: a.log}); err != nil {
		a.log.Error("leave", "node", self, "error", err)
		return app.ExitConsul
	}
	return app.ExitOK
}

// Lifecycle is the termination gate (handlers/lifecycle), run on every server by
// scripts/rehydrate-lifecycle.service: it watches the instance's target lifecycle
// state and, once the group decides to terminate the instance, lets the server go
// only when that is safe (see package gate). It runs until then, or until stopped.
func Lifecycle(args []string, env app.Env) int {
	f := app.NewFlags("lifecycle", env)
	if _, code := f.Parse(args); code != app.ExitOK {
		return code
	}
	return withProg(f, (*prog).lifecycle)
}

// gatePoll is how often the gate reads the target lifecycle state.
const gatePoll = time.Second

func (a *prog) lifecycle() int {
	pc := a.cfg.Provider.AWS
	if pc == nil {
		a.log.Error("the termination gate needs provider \"aws\"", "error", fmt.Errorf("provider is %q", a.cfg.Provider.Type))
		return app.ExitConfig
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	c, err := a.consul()
	if err != nil {
		a.log.Error("set up consul client", "error", err)
		return app.ExitConfig
	}
	// Who this is (from the instance and its agent), then the hook's heartbeat
	// timeout: the gate can do nothing without them, so it waits for them, until
	// stopped. At boot the agent and the instance's role may come up after it.
	md := awsprovider.NewIMDS(pc.IMDSEndpoint)
	var (
		action *awsprovider.LifecycleAction
		self   string
	)
	quiet := &quietRetry{log: a.log}
	for {
		action, self, err = a.gateSetup(ctx, c, md)
		if err == nil {
			break
		}
		quiet.report("the gate is waiting for the instance metadata and the agent", err)
		if poll.Sleep(ctx, time.Second) != nil {
			return app.ExitOK
		}
	}
	timeout, err := waitForHook(ctx, action, a.log, poll.Sleep)
	if err != nil {
		return app.ExitOK // stopped
	}
	peer, err := a.peerClients(c)
	if err != nil {
		a.log.Warn("the gate will not check the raft configuration after the leave", "error", err)
	}
	g := &gate.Gate{
		Consul: c, Self: self, Cluster: a.cfg.Cluster, Servers: a.cfg.Servers,
		Meta: awsprovider.Metadata{Client: md}, Action: action,
		MaxHold: pc.GateMaxHold, Heartbeat: max(timeout/3, time.Second), Poll: gatePoll,
		HandOffTimeout: a.cfg.Roll.LeaveTimeout, LockTTL: a.cfg.Lock.SessionTTL, LockDelay: a.cfg.Lock.LockDelay,
		Peer: peer, Log: a.log,
	}
	err = g.Run(ctx)
	switch {
	case err == nil:
		return app.ExitOK
	case errors.Is(err, context.Canceled):
		a.log.Info("stopped")
		return app.ExitOK
	}
	a.log.Error("termination gate", "error", err)
	return app.ExitCloud
}

// gateSetup reads who the gate is: the instance's identity, the agent's node
// name, and its lifecycle action on the termination hook (AWS clients built, no
// AWS call made).
func (a *prog) gateSetup(ctx context.Context, c *api.Client, md *imds.Client) (*awsprovider.LifecycleAction, string, error) {
	pc := a.cfg.Provider.AWS
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	id, err := awsprovider.SelfIdentity(ctx, md)
	if err != nil {
		return nil, "", err
	}
	self, err := nodeName(c)
	if err != nil {
		return nil, "", fmt.Errorf("read the agent's node name: %w", err)
	}
	region := pc.Region
	if region == "" {
		region = id.Region
	}
	_, as, err := awsprovider.NewClients(ctx, awsprovider.ClientOptions{Region: region, EndpointURL: pc.EndpointURL, MaxAttempts: pc.MaxAttempts})
	if err != nil {
		return nil, "", err
	}
	return &awsprovider.LifecycleAction{Client: as, Group: pc.AutoscalingGroup, Hook: pc.LifecycleHook, InstanceID: id.InstanceID}, self, nil
}

// hookReader reads the termination hook's heartbeat timeout
// (awsprovider.LifecycleAction).
type hookReader interface {
	HeartbeatTimeout(ctx context.Context) (time.Duration, error)
}

// Backoff of waitForHook: the image enables the gate on every server, but the hook
// is the operator's choice (README, "The termination gate"). Without it the gate
// asks DescribeLifecycleHooks again and again; every server of every group shares
// the account's Auto Scaling API rate, so the asks slow down to one per
// hookRetryMax, and a hook added later is still found within that.
const (
	hookRetryFirst = time.Second
	hookRetryMax   = 5 * time.Minute
)

// waitForHook reads the hook's heartbeat timeout until it can, backing off
// exponentially from hookRetryFirst to hookRetryMax; sleep waits (poll.Sleep; a
// test's fake), and its error (the gate stopping) ends the wait. Each new error
// is a warning, the same one again only a debug line: no journal spam.
func waitForHook(ctx context.Context, h hookReader, log hclog.Logger, sleep func(context.Context, time.Duration) error) (time.Duration, error) {
	quiet := &quietRetry{log: log}
	wait := hookRetryFirst
	for attempt := 1; ; attempt++ {
		t, err := h.HeartbeatTimeout(ctx)
		if err == nil {
			if attempt > 1 {
				log.Info("found the termination hook", "attempt", attempt)
			}
			return t, nil
		}
		quiet.report("the gate is waiting for the group's termination hook; it does nothing without one", err, "attempt", attempt)
		if err := sleep(ctx, wait); err != nil {
			return 0, err
		}
		wait = min(2*wait, hookRetryMax)
	}
}

// quietRetry logs a retried error at warn the first time and whenever it
// changes, and at debug while it repeats.
type quietRetry struct {
	log  hclog.Logger
	last string
}

func (q *quietRetry) report(msg string, err error, kv ...any) {
	args := append([]any{"error", err}, kv...)
	if err.Error() == q.last {
		q.log.Debug(msg, args...)
		return
	}
	q.last = err.Error()
	q.log.Warn(msg, args...)
}

// peerClients returns how the gate reaches another server's HTTP API after its own
// agent has left: the same settings as its own client (token, CA, scheme), the
// other server's host (from its raft address) and this agent's HTTP port (the
// servers of a group run the same image). Over HTTPS it verifies the server's
// certificate for server.<datacenter>.consul, which every server's certificate
// carries (verify_server_hostname requires it; scripts/user-data.sh's shared
// certificate has no private IPs), unless consul.tls.server_name says otherwise.
func (a *prog) peerClients(c *api.Client) (func(string) (*api.Client, error), error) {
	own := a.HTTPAddr()
	if own == "" {
		own = a.cfg.Consul.Address
	}
	if own == "" {
		own = a.env.Getenv(api.HTTPAddrEnvName)
	}
	if own == "" {
		own = "127.0.0.1:8500"
	}
	if _, err := peerAddress(own, "192.0.2.1:8300"); err != nil {
		return nil, err
	}
	self, err := c.Agent().Self()
	if err != nil {
		return nil, fmt.Errorf("read the agent's datacenter: %w", err)
	}
	dc, _ := self["Config"]["Datacenter"].(string)
	if dc == "" {
		return nil, errors.New("the agent reports no datacenter")
	}
	return func(raftAddr string) (*api.Client, error) {
		addr, err := peerAddress(own, raftAddr)
		if err != nil {
			return nil, err
		}
		ac, err := a.cfg.Consul.APIConfig()
		if err != nil {
			return nil, err
		}
		ac.Address = addr
		if ac.TLSConfig.Address == "" && a.env.Getenv(api.HTTPTLSServerName) == "" {
			ac.TLSConfig.Address = "server." + dc + ".consul"
		}
		return api.NewClient(ac)
	}, nil
}

// peerAddress is own (an HTTP API address, "host:port" or "scheme://host:port")
// with the host of raftAddr (host:port).
func peerAddress(own, raftAddr string) (string, error) {
	scheme, hostport := "", own
	if i := strings.Index(own, "://"); i >= 0 {
		scheme, hostport = own[:i+3], own[i+3:]
	}
	if scheme == "unix://" {
		return "", fmt.Errorf("the agent's API is a unix socket (%s): no port to reach other servers on", own)
	}
	_, port, err := net.SplitHostPort(hostport)
	if err != nil {
		return "", fmt.Errorf("the agent's API address %q: %w", own, err)
	}
	host, _, err := net.SplitHostPort(raftAddr)
	if err != nil {
		return "", fmt.Errorf("raft address %q: %w", raftAddr, err)
	}
	return scheme + net.JoinHostPort(host, port), nil
}

// nodeName returns the node name of the agent c talks to.
func nodeName(c *api.Client) (string, error) {
	self, err := c.Agent().Self()
	if err != nil {
		return "", err
	}
	name, _ := self["Config"]["NodeName"].(string)
	if name == "" {
		return "", errors.New("the agent reports no node name")
	}
	return name, nil
}
