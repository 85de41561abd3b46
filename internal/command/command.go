// Package command holds the executables' entry points. Each takes its arguments and
// an Env and returns an exit code, so tests drive whole programs without a subprocess.
package command

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/consul-rehydrate/consul-rehydrate/config"
	"github.com/consul-rehydrate/consul-rehydrate/internal/app"
	"github.com/consul-rehydrate/consul-rehydrate/internal/cloud"
	awsprovider "github.com/consul-rehydrate/consul-rehydrate/internal/cloud/aws"
	"github.com/consul-rehydrate/consul-rehydrate/internal/cloud/local"
	"github.com/consul-rehydrate/consul-rehydrate/internal/payload"
	"github.com/consul-rehydrate/consul-rehydrate/internal/roll"
)

// prog is a command set up by package app, with what the roll's commands add: the
// provider and the roller.
type prog struct {
	*app.Program
	name       string
	env        app.Env
	cfg        *config.Config
	log        hclog.Logger
	configPath string
}

// load sets up the command whose flags are f for the roll's jobs. It returns an
// exit code != 0 on failure, having said why.
func load(f *app.Flags) (*prog, int) {
	p, code := app.Load(f, config.JobRoll, app.FileRequired)
	if code != app.ExitOK {
		return nil, code
	}
	return &prog{Program: p, name: p.Name, env: p.Env, cfg: p.Config, log: p.Log, configPath: p.ConfigPath}, app.ExitOK
}

// consul returns the program's Consul client.
func (a *prog) consul() (*api.Client, error) { return a.Consul() }

// localProvider builds the local provider from the configuration.
func (a *prog) localProvider() (*local.Provider, error) {
	lp := a.cfg.Provider.Local
	if lp == nil {
		return nil, fmt.Errorf("provider %q: this command needs provider \"local\"", a.cfg.Provider.Type)
	}
	binDir, err := a.BinDir()
	if err != nil {
		return nil, err
	}
	return local.New(local.Config{
		StateDir: lp.StateDir, ConsulBinary: lp.ConsulBinary, Addresses: lp.Addresses,
		BinDir: binDir, ConfigPath: a.configPath, LeaveTimeout: a.cfg.Roll.LeaveTimeout, Logger: a.log,
		Getenv: a.env.Getenv, Cluster: a.cfg.Cluster, EventName: a.cfg.Roll.EventName,
	})
}

// provider builds the configured provider.
func (a *prog) provider() (roll.Provider, error) {
	switch {
	case a.cfg.Provider.Local != nil:
		return a.localProvider()
	case a.cfg.Provider.AWS != nil:
		pc := a.cfg.Provider.AWS
		// Built on first use: loading the SDK's configuration (credentials chain,
		// instance metadata) is most of an idle handler's cost, and an idle handler
		// never calls AWS.
		return &lazyProvider{build: func() (roll.Provider, error) {
			ctx, cancel := withTimeout(30 * time.Second)
			defer cancel()
			e, as, err := awsprovider.NewClients(ctx, awsprovider.ClientOptions{Region: pc.Region, EndpointURL: pc.EndpointURL, MaxAttempts: pc.MaxAttempts})
			if err != nil {
				return nil, err
			}
			return awsprovider.New(e, as, awsprovider.Config{
				Group: pc.AutoscalingGroup, LaunchTemplate: pc.LaunchTemplate, Servers: a.cfg.Servers,
				Owners: pc.Image.Owners, NamePattern: pc.Image.NamePattern, Tags: pc.Image.Tags, Logger: a.log,
				LaunchTimeout: a.cfg.Roll.LaunchTimeout,
			}), nil
		}}, nil
	default:
		return nil, fmt.Errorf("provider %q is not supported by this build", a.cfg.Provider.Type)
	}
}

// lazyProvider builds its provider on first use.
type lazyProvider struct {
	once  sync.Once
	build func() (roll.Provider, error)
	p     roll.Provider
	err   error
}

func (l *lazyProvider) get() (roll.Provider, error) {
	l.once.Do(func() { l.p, l.err = l.build() })
	return l.p, l.err
}

func (l *lazyProvider) Images(ctx context.Context) ([]cloud.Image, error) {
	p, err := l.get()
	if err != nil {
		return nil, err
	}
	return p.Images(ctx)
}

func (l *lazyProvider) Instances(ctx context.Context) ([]cloud.Instance, error) {
	p, err := l.get()
	if err != nil {
		return nil, err
	}
	return p.Instances(ctx)
}

func (l *lazyProvider) Launch(ctx context.Context, imageID, actionID string, g *cloud.GroupState) (cloud.Instance, error) {
	p, err := l.get()
	if err != nil {
		return cloud.Instance{}, err
	}
	return p.Launch(ctx, imageID, actionID, g)
}

func (l *lazyProvider) Survey(ctx context.Context, since time.Time, rollFor time.Duration) (cloud.Survey, error) {
	p, err := l.get()
	if err != nil {
		return cloud.Survey{}, err
	}
	return p.Survey(ctx, since, rollFor)
}

func (l *lazyProvider) Prepare(ctx context.Context) (*cloud.GroupState, error) {
	p, err := l.get()
	if err != nil {
		return nil, err
	}
	return p.Prepare(ctx)
}

func (l *lazyProvider) Begin(ctx context.Context, g *cloud.GroupState) error {
	p, err := l.get()
	if err != nil {
		return err
	}
	return p.Begin(ctx, g)
}

func (l *lazyProvider) End(ctx context.Context, g *cloud.GroupState, failed bool) error {
	p, err := l.get()
	if err != nil {
		return err
	}
	return p.End(ctx, g, failed)
}

func (l *lazyProvider) Terminate(ctx context.Context, instanceID, actionID string) error {
	p, err := l.get()
	if err != nil {
		return err
	}
	return p.Terminate(ctx, instanceID, actionID)
}

// roller builds a Roller against the configured Consul and provider.
func (a *prog) roller() (*roll.Roller, int) {
	c, err := a.consul()
	if err != nil {
		a.log.Error("set up consul client", "error", err)
		return nil, app.ExitConfig
	}
	p, err := a.provider()
	if err != nil {
		a.log.Error("set up provider", "error", err)
		return nil, app.ExitConfig
	}
	r := roll.New(a.cfg, c, p, a.log)
	r.Holder = a.name + " " + r.Holder
	return r, app.ExitOK
}

// handlerTimeout bounds one handler invocation: the lock wait and the longest wait a
// step may take, plus slack, so that no handler outlives its usefulness.
func (a *prog) handlerTimeout() time.Duration {
	return a.cfg.Lock.Wait + a.cfg.Roll.LaunchTimeout + a.cfg.Roll.LeaveTimeout + time.Minute
}

// exitCode maps an error from a roll to an exit code and logs it, with args (more
// key/value pairs, e.g. the event being handled) on the line.
func (a *prog) exitCode(err error, args ...interface{}) int {
	if err == nil {
		return app.ExitOK
	}
	code := app.ExitError
	switch {
	case errors.Is(err, roll.ErrRefused):
		code = app.ExitRefused
	// A lost lock and a deadline are told apart before what failed under them.
	case errors.Is(err, roll.ErrLockLost):
		code = app.ExitLockLost
	case errors.Is(err, roll.ErrTimedOut):
		code = app.ExitTimedOut
	case errors.Is(err, roll.ErrCloud):
		code = app.ExitCloud
	case errors.Is(err, roll.ErrConsul):
		code = app.ExitConsul
	case errors.Is(err, payload.ErrBadPayload):
		code = app.ExitBadPayload
	}
	a.log.Error("step failed", append([]interface{}{"error", err, "exit_code", code}, args...)...)
	return code
}

func withTimeout(d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), d)
}
