package command

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
	"github.com/hashicorp/consul/api"

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
	if err := gate.Leave(ctx, c, self, gate.Options{Timeout: a.cfg.Roll.LeaveTimeout, Log: a.log}); err != nil {
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
	// Who this is (from the instance and its agent) and the hook's heartbeat
	// timeout: the gate can do nothing without them, so it waits for them, until
	// stopped. At boot the agent and the instance's role may come up after it.
	md := awsprovider.NewIMDS(pc.IMDSEndpoint)
	var (
		action  *awsprovider.LifecycleAction
		self    string
		timeout time.Duration
	)
	for {
		action, self, timeout, err = a.gateSetup(ctx, c, md)
		if err == nil {
			break
		}
		a.log.Warn("the gate is waiting for the instance metadata, the agent and the termination hook", "error", err)
		if poll.Sleep(ctx, time.Second) != nil {
			return app.ExitOK
		}
	}
	g := &gate.Gate{
		Consul: c, Self: self, Cluster: a.cfg.Cluster, Servers: a.cfg.Servers,
		Meta: awsprovider.Metadata{Client: md}, Action: action,
		MaxHold: pc.GateMaxHold, Heartbeat: max(timeout/3, time.Second), Poll: gatePoll,
		HandOffTimeout: a.cfg.Roll.LeaveTimeout, LockTTL: a.cfg.Lock.SessionTTL, Log: a.log,
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

// gateSetup reads what the gate needs before it can watch: the instance's
// identity, the agent's node name, AWS clients, and the termination hook's
// heartbeat timeout.
func (a *prog) gateSetup(ctx context.Context, c *api.Client, md *imds.Client) (*awsprovider.LifecycleAction, string, time.Duration, error) {
	pc := a.cfg.Provider.AWS
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	id, err := awsprovider.SelfIdentity(ctx, md)
	if err != nil {
		return nil, "", 0, err
	}
	self, err := nodeName(c)
	if err != nil {
		return nil, "", 0, fmt.Errorf("read the agent's node name: %w", err)
	}
	region := pc.Region
	if region == "" {
		region = id.Region
	}
	_, as, err := awsprovider.NewClients(ctx, awsprovider.ClientOptions{Region: region, EndpointURL: pc.EndpointURL, MaxAttempts: pc.MaxAttempts})
	if err != nil {
		return nil, "", 0, err
	}
	action := &awsprovider.LifecycleAction{Client: as, Group: pc.AutoscalingGroup, Hook: pc.LifecycleHook, InstanceID: id.InstanceID}
	timeout, err := action.HeartbeatTimeout(ctx)
	if err != nil {
		return nil, "", 0, err
	}
	return action, self, timeout, nil
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
