// Package watch is what every executable shares before it gets to work (exit codes,
// the environment, configuration and logging), and the fast path of the service
// watch handler.
//
// spindown runs on every server at every change in the servers' membership or
// health, and almost always has nothing to do. It is built from this package alone,
// without the providers, the planner or the AWS SDK, so that an idle invocation costs
// a small binary's start, the configuration and one KV read. When a roll is in
// progress it hands the payload to `rehydrate spindown`, which takes the step.
package watch

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/consul-rehydrate/consul-rehydrate/config"
	"github.com/consul-rehydrate/consul-rehydrate/internal/coord"
	"github.com/consul-rehydrate/consul-rehydrate/internal/payload"
)

// Exit codes. Callers tell causes apart by code; the log line says the detail.
const (
	ExitOK         = 0
	ExitError      = 10 // anything unexpected
	ExitUsage      = 11 // bad flags or arguments
	ExitConfig     = 12 // the configuration file is missing or invalid
	ExitBadPayload = 13 // stdin is not what the watch should have written
	ExitConsul     = 14 // Consul unreachable or failing
	ExitCloud      = 15 // the provider failed
	ExitLockLost   = 16 // the lock was lost mid-step; nothing more was done
	ExitRefused    = 17 // the request was refused (image not allowed, bad, or a downgrade)
	ExitFailed     = 18 // a deployment or rollout did not succeed (it may have rolled back)
	ExitBusy       = 19 // another rollout of the service is in progress
)

// Env is what a program reads and writes besides its arguments.
type Env struct {
	Stdin  io.Reader
	Stdout io.Writer
	Stderr io.Writer
	Getenv func(string) string
}

// OSEnv is the process's own environment.
func OSEnv() Env {
	return Env{Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr, Getenv: os.Getenv}
}

// Environment variables the programs read.
const (
	EnvConfig  = "REHYDRATE_CONFIG"   // the config file when -config is not given
	EnvLogFile = "REHYDRATE_LOG_FILE" // also append log lines to this file
	// EnvBinDir is where the executables find each other (the local provider's
	// servers find spinup and spindown there, spindown finds rehydrate); default:
	// beside the running executable.
	EnvBinDir = "REHYDRATE_BIN_DIR"
)

// RegisterFlags adds the flags every program takes to fs: -config (default
// $REHYDRATE_CONFIG) and -http-addr.
func RegisterFlags(fs *flag.FlagSet, env Env, configPath, httpAddr *string) {
	fs.StringVar(configPath, "config", env.Getenv(EnvConfig), "handler configuration file (HCL); default $"+EnvConfig)
	fs.StringVar(httpAddr, "http-addr", "", "Consul HTTP address, overriding the configuration")
}

// Flags is a handler's flag set, with the flags every program takes.
type Flags struct {
	*flag.FlagSet
	ConfigPath string
	HTTPAddr   string
	env        Env
}

// NewFlags returns the flag set of the handler name; add its own flags, then Parse.
func NewFlags(name string, env Env) *Flags {
	f := &Flags{FlagSet: flag.NewFlagSet(name, flag.ContinueOnError), env: env}
	f.SetOutput(env.Stderr)
	RegisterFlags(f.FlagSet, env, &f.ConfigPath, &f.HTTPAddr)
	return f
}

// Parse parses args, which a handler takes no positional argument among. It returns
// ExitUsage, having said why, or ExitOK.
func (f *Flags) Parse(args []string) int {
	if err := f.FlagSet.Parse(args); err != nil {
		return ExitUsage
	}
	if f.NArg() > 0 {
		fmt.Fprintf(f.env.Stderr, "%s: unexpected argument %q\n", f.Name(), f.Arg(0))
		return ExitUsage
	}
	return ExitOK
}

// Loaded is a program's configuration and logger.
type Loaded struct {
	Config     *config.Config
	ConfigPath string // absolute
	Log        hclog.Logger
	logFile    io.Closer
}

// Close closes the log file, if any.
func (l *Loaded) Close() {
	if l.logFile != nil {
		l.logFile.Close()
	}
}

// Load reads the configuration for the program name's jobs and sets up its logging.
// It returns an exit code != 0 on failure, having said why on env.Stderr.
func Load(name, configPath string, jobs config.Jobs, env Env) (*Loaded, int) {
	if configPath == "" {
		fmt.Fprintf(env.Stderr, "%s: no configuration: pass -config FILE or set $%s\n", name, EnvConfig)
		return nil, ExitConfig
	}
	if abs, err := filepath.Abs(configPath); err == nil {
		configPath = abs
	}
	cfg, err := config.LoadFor(configPath, jobs)
	if err != nil {
		fmt.Fprintf(env.Stderr, "%s: %v\n", name, err)
		return nil, ExitConfig
	}
	l := &Loaded{Config: cfg, ConfigPath: configPath}
	var out io.Writer = env.Stderr
	if p := env.Getenv(EnvLogFile); p != "" {
		if f, err := os.OpenFile(p, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644); err == nil {
			out, l.logFile = io.MultiWriter(env.Stderr, f), f
		}
	}
	l.Log = hclog.New(&hclog.LoggerOptions{
		Name: name, Level: hclog.LevelFromString(cfg.LogLevel), Output: out, TimeFormat: "15:04:05.000",
	})
	return l, ExitOK
}

// Consul returns a client for the configured agent, at httpAddr if that is set.
func (l *Loaded) Consul(httpAddr string) (*api.Client, error) {
	ac, err := l.Config.Consul.APIConfig()
	if err != nil {
		return nil, err
	}
	if httpAddr != "" {
		ac.Address = httpAddr
	}
	c, err := api.NewClient(ac)
	if err != nil {
		return nil, fmt.Errorf("consul client: %w", err)
	}
	return c, nil
}

// CheckServices refuses a service watch payload that is not about the `consul`
// service, the one the roll's watch is on.
func CheckServices(entries []*api.ServiceEntry) error {
	for _, e := range entries {
		name := ""
		if e.Service != nil {
			name = e.Service.Service
		}
		if name != "consul" {
			return fmt.Errorf("entry for service %q, want \"consul\"", name)
		}
	}
	return nil
}

// BinDir is where the executables are: $REHYDRATE_BIN_DIR, or beside this one.
func BinDir(env Env) (string, error) {
	if d := env.Getenv(EnvBinDir); d != "" {
		return d, nil
	}
	bin, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("find the executables: %w", err)
	}
	return filepath.Dir(bin), nil
}

// Spindown is the service watch handler's fast path: it validates the payload, and
// unless a roll is in progress it is done. Otherwise `rehydrate spindown` takes the
// step, with the same payload on its stdin.
func Spindown(args []string, env Env) int {
	f := NewFlags("spindown", env)
	if code := f.Parse(args); code != ExitOK {
		return code
	}
	l, code := Load("spindown", f.ConfigPath, config.JobRoll, env)
	if code != ExitOK {
		return code
	}
	defer l.Close()

	// Read at most one byte over the limit, so the decoder can say the payload is too
	// big without anything reading the rest.
	in, err := io.ReadAll(io.LimitReader(env.Stdin, payload.DefaultMaxBytes+1))
	if err != nil {
		l.Log.Error("refusing service payload", "error", fmt.Errorf("read stdin: %w", err))
		return ExitBadPayload
	}
	entries, err := payload.Services(bytes.NewReader(in))
	if err == nil {
		err = CheckServices(entries)
	}
	if err != nil {
		l.Log.Error("refusing service payload", "error", err)
		return ExitBadPayload
	}

	c, err := l.Consul(f.HTTPAddr)
	if err != nil {
		l.Log.Error("set up consul client", "error", err)
		return ExitConfig
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rec, err := coord.New(c, l.Config.Cluster).Roll(ctx)
	if err != nil {
		l.Log.Error("step failed", "error", fmt.Errorf("consul: %w", err), "exit_code", ExitConsul)
		return ExitConsul
	}
	if !rec.InProgress() {
		l.Log.Debug("no roll in progress")
		return ExitOK
	}

	dir, err := BinDir(env)
	if err != nil {
		l.Log.Error("hand the step to rehydrate", "error", err)
		return ExitError
	}
	full := []string{"-config", l.ConfigPath}
	if f.HTTPAddr != "" {
		full = append(full, "-http-addr", f.HTTPAddr)
	}
	cmd := exec.Command(filepath.Join(dir, "rehydrate"), append(full, "spindown")...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = bytes.NewReader(in), env.Stdout, env.Stderr
	err = cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return ExitOK
	case errors.As(err, &ee) && ee.ExitCode() > 0:
		return ee.ExitCode()
	default:
		l.Log.Error("hand the step to rehydrate", "error", err)
		return ExitError
	}
}
