// Package command holds the executables' entry points. Each takes its arguments and
// an Env and returns an exit code, so tests drive whole programs without a subprocess.
package command

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-cleanhttp"
	"github.com/hashicorp/go-hclog"

	"github.com/consul-rehydrate/consul-rehydrate/config"
	"github.com/consul-rehydrate/consul-rehydrate/internal/cloud"
	awsprovider "github.com/consul-rehydrate/consul-rehydrate/internal/cloud/aws"
	"github.com/consul-rehydrate/consul-rehydrate/internal/cloud/local"
	"github.com/consul-rehydrate/consul-rehydrate/internal/payload"
	"github.com/consul-rehydrate/consul-rehydrate/internal/roll"
	"github.com/consul-rehydrate/consul-rehydrate/internal/watch"
)

// Exit codes, environment and what every executable shares live in package watch,
// which the lean spindown is built from; they are repeated here for callers.
const (
	ExitOK         = watch.ExitOK
	ExitError      = watch.ExitError
	ExitUsage      = watch.ExitUsage
	ExitConfig     = watch.ExitConfig
	ExitBadPayload = watch.ExitBadPayload
	ExitConsul     = watch.ExitConsul
	ExitCloud      = watch.ExitCloud
	ExitLockLost   = watch.ExitLockLost
	ExitRefused    = watch.ExitRefused
)

// Env is what a program reads and writes besides its arguments.
type Env = watch.Env

// OSEnv is the process's own environment.
func OSEnv() Env { return watch.OSEnv() }

// Environment variables the programs read.
const (
	EnvConfig  = watch.EnvConfig
	EnvLogFile = watch.EnvLogFile
	EnvBinDir  = watch.EnvBinDir
)

// app is what every command sets up from its flags.
type app struct {
	name       string
	env        Env
	configPath string
	httpAddr   string
	cfg        *config.Config
	log        hclog.Logger
	loaded     *watch.Loaded
	// transport is shared by every client the command makes and closed with it, so
	// in-process callers (tests, the demo) do not pile up idle connections against
	// Consul's per-client connection limit.
	transport *http.Transport
}

func newApp(name string, env Env, fs *flag.FlagSet) *app {
	a := &app{name: name, env: env}
	watch.RegisterFlags(fs, env, &a.configPath, &a.httpAddr)
	return a
}

// load reads the configuration and sets up logging. It returns an exit code != 0
// on failure, having said why.
func (a *app) load() int {
	l, code := watch.Load(a.name, a.configPath, config.JobRoll, a.env)
	if code != ExitOK {
		return code
	}
	a.loaded, a.cfg, a.log, a.configPath = l, l.Config, l.Log, l.ConfigPath
	return ExitOK
}

func (a *app) close() {
	if a.transport != nil {
		a.transport.CloseIdleConnections()
	}
	if a.loaded != nil {
		a.loaded.Close()
	}
}

// consul returns a client for the configured agent.
func (a *app) consul() (*api.Client, error) {
	ac, err := a.cfg.Consul.APIConfig()
	if err != nil {
		return nil, err
	}
	if a.httpAddr != "" {
		ac.Address = a.httpAddr
	}
	if a.transport == nil {
		a.transport = cleanhttp.DefaultPooledTransport()
	}
	ac.Transport = a.transport
	c, err := api.NewClient(ac)
	if err != nil {
		return nil, fmt.Errorf("consul client: %w", err)
	}
	return c, nil
}

// localProvider builds the local provider from the configuration.
func (a *app) localProvider() (*local.Provider, error) {
	lp := a.cfg.Provider.Local
	if lp == nil {
		return nil, fmt.Errorf("provider %q: this command needs provider \"local\"", a.cfg.Provider.Type)
	}
	binDir, err := watch.BinDir(a.env)
	if err != nil {
		return nil, err
	}
	return local.New(local.Config{
		StateDir: lp.StateDir, ConsulBinary: lp.ConsulBinary, Addresses: lp.Addresses,
		BinDir: binDir, ConfigPath: a.configPath, LeaveTimeout: a.cfg.Roll.LeaveTimeout, Logger: a.log,
	})
}

// provider builds the configured provider.
func (a *app) provider() (roll.Provider, error) {
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

func (l *lazyProvider) Launch(ctx context.Context, imageID, actionID string) (cloud.Instance, error) {
	p, err := l.get()
	if err != nil {
		return cloud.Instance{}, err
	}
	return p.Launch(ctx, imageID, actionID)
}

func (l *lazyProvider) Terminate(ctx context.Context, instanceID, actionID string) error {
	p, err := l.get()
	if err != nil {
		return err
	}
	return p.Terminate(ctx, instanceID, actionID)
}

// roller builds a Roller against the configured Consul and provider.
func (a *app) roller() (*roll.Roller, int) {
	c, err := a.consul()
	if err != nil {
		a.log.Error("set up consul client", "error", err)
		return nil, ExitConfig
	}
	p, err := a.provider()
	if err != nil {
		a.log.Error("set up provider", "error", err)
		return nil, ExitConfig
	}
	r := roll.New(a.cfg, c, p, a.log)
	r.Holder = a.name + " " + r.Holder
	return r, ExitOK
}

// handlerTimeout bounds one handler invocation: the lock wait and the longest wait a
// step may take, plus slack, so that no handler outlives its usefulness.
func (a *app) handlerTimeout() time.Duration {
	return a.cfg.Lock.Wait + a.cfg.Roll.LaunchTimeout + a.cfg.Roll.LeaveTimeout + time.Minute
}

// exitCode maps an error from a roll to an exit code and logs it.
func (a *app) exitCode(err error) int {
	if err == nil {
		return ExitOK
	}
	code := ExitError
	switch {
	case errors.Is(err, roll.ErrRefused):
		code = ExitRefused
	case errors.Is(err, roll.ErrLockLost):
		code = ExitLockLost
	case errors.Is(err, roll.ErrCloud):
		code = ExitCloud
	case errors.Is(err, roll.ErrConsul):
		code = ExitConsul
	case errors.Is(err, payload.ErrBadPayload):
		code = ExitBadPayload
	}
	a.log.Error("step failed", "error", err, "exit_code", code)
	return code
}

func withTimeout(d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), d)
}
