// Package app is the one path from argv to a configured program that every
// executable and subcommand goes through: the environment a program is handed,
// its exit codes, its common flags, its configuration (read through the program's
// own environment, never the process's), its logger and its one Consul client.
//
// It is a leaf: it imports no provider, planner or AWS SDK, so the lean spindown
// executable, built on it, stays lean.
package app

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-cleanhttp"
	"github.com/hashicorp/go-hclog"

	"github.com/consul-rehydrate/consul-rehydrate/config"
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
	ExitTimedOut   = 20 // the program ran out of time; the next invocation resumes
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

// Flags is a program's or command's own flag set, with the flags every program
// takes: -config (default $REHYDRATE_CONFIG) and -http-addr. A flag that does not
// belong to it is a usage error naming the flag.
type Flags struct {
	*flag.FlagSet
	ConfigPath string
	HTTPAddr   string
	// Positional names the positional arguments the program takes, in order
	// (e.g. "NAME"); none by default. Flags may stand before or after them.
	Positional []string
	env        Env
}

// NewFlags returns the flag set of the program or command name (e.g. "spindown",
// "rehydrate status"); add its own flags, then Parse.
func NewFlags(name string, env Env) *Flags {
	f := &Flags{FlagSet: flag.NewFlagSet(name, flag.ContinueOnError), env: env}
	f.SetOutput(env.Stderr)
	f.StringVar(&f.ConfigPath, "config", env.Getenv(EnvConfig), "configuration file (HCL); default $"+EnvConfig)
	f.StringVar(&f.HTTPAddr, "http-addr", "", "Consul HTTP address, overriding the configuration")
	return f
}

// Parse parses args. It returns the positional arguments and ExitOK, or ExitUsage
// having said why (an unknown flag, a missing or an unexpected argument). -h
// prints the flags and is ExitUsage too.
func (f *Flags) Parse(args []string) ([]string, int) {
	var pos []string
	for {
		if err := f.FlagSet.Parse(args); err != nil {
			return nil, ExitUsage
		}
		if f.NArg() == 0 {
			break
		}
		pos, args = append(pos, f.Arg(0)), f.Args()[1:]
	}
	switch {
	case len(pos) > len(f.Positional):
		fmt.Fprintf(f.env.Stderr, "%s: unexpected argument %q\n", f.Name(), pos[len(f.Positional)])
		return nil, ExitUsage
	case len(pos) < len(f.Positional):
		fmt.Fprintf(f.env.Stderr, "%s: missing argument %s\n", f.Name(), f.Positional[len(pos)])
		return nil, ExitUsage
	}
	return pos, ExitOK
}

// Program is a program set up from its flags: its configuration, logger and Consul
// client. Close it when done.
type Program struct {
	Name       string
	Env        Env
	Config     *config.Config
	ConfigPath string // absolute; "" when the program runs on defaults (FileOptional)
	Log        hclog.Logger
	httpAddr   string
	logFile    io.Closer
	consul     *api.Client
	// transport is shared by the program's requests and closed with it, so
	// in-process callers (tests, the demo) do not pile up idle connections against
	// Consul's per-client connection limit.
	transport *http.Transport
}

// File says whether a program needs a configuration file.
type File bool

const (
	// FileRequired: no -config and no $REHYDRATE_CONFIG is a configuration error.
	FileRequired File = false
	// FileOptional: without one the program runs on the defaults, reaching Consul
	// as the consul CLI does ($CONSUL_HTTP_ADDR, $CONSUL_HTTP_TOKEN).
	FileOptional File = true
)

// Load reads the configuration for the program's jobs (from f's -config) and sets
// up its logging; file says whether it may run without one. It returns an exit code != 0 on
// failure, having said why on the program's stderr.
func Load(f *Flags, jobs config.Jobs, file File) (*Program, int) {
	name, env := f.Name(), f.env
	p := &Program{Name: name, Env: env, httpAddr: f.HTTPAddr}
	var err error
	switch {
	case f.ConfigPath != "":
		if p.ConfigPath, err = filepath.Abs(f.ConfigPath); err != nil {
			fmt.Fprintf(env.Stderr, "%s: config: %v\n", name, err)
			return nil, ExitConfig
		}
		p.Config, err = config.LoadFor(p.ConfigPath, jobs, env.Getenv)
	case file == FileOptional:
		p.Config, err = config.FromEnv(env.Getenv)
	default:
		fmt.Fprintf(env.Stderr, "%s: no configuration: pass -config FILE or set $%s\n", name, EnvConfig)
		return nil, ExitConfig
	}
	if err != nil {
		fmt.Fprintf(env.Stderr, "%s: %v\n", name, err)
		return nil, ExitConfig
	}
	var out io.Writer = env.Stderr
	if path := env.Getenv(EnvLogFile); path != "" {
		// Log lines may name nodes and instances: not for every local user.
		lf, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
		if err != nil {
			// Logging to stderr alone (which the agent keeps) beats not running the
			// handler at all; say so there.
			fmt.Fprintf(env.Stderr, "%s: logging to stderr only: $%s: %v\n", name, EnvLogFile, err)
		} else {
			if msg := tightenLogFile(lf); msg != "" {
				fmt.Fprintf(env.Stderr, "%s: $%s: %s\n", name, EnvLogFile, msg)
			}
			out, p.logFile = io.MultiWriter(env.Stderr, lf), lf
		}
	}
	p.Log = hclog.New(&hclog.LoggerOptions{
		Name: logName(name), Level: hclog.LevelFromString(p.Config.LogLevel), Output: out, TimeFormat: "15:04:05.000",
	})
	return p, ExitOK
}

// tightenLogFile makes an existing log file that group or others may read or write
// 0600, as a new one is created: OpenFile's mode applies only to a file it creates,
// and a file left from before (or made by a logrotate `create 0644`) would go on
// showing every local user which nodes and instances a handler acts on. Only a file
// we own is changed: one of another user's may be shared on purpose, and root's
// chmod would take it from its owner's group; that is said, and logging goes on as
// before. Only a regular file: /dev/null or a FIFO is not ours to change. The chmod
// goes through the open descriptor, so it is the file we write that changes, whatever
// the path names by then. It returns what to say on stderr, "" for nothing.
func tightenLogFile(f *os.File) string {
	fi, err := f.Stat()
	if err != nil {
		return fmt.Sprintf("cannot check its mode: %v", err)
	}
	perm := fi.Mode().Perm()
	if !fi.Mode().IsRegular() || perm&0o077 == 0 {
		return ""
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || int(st.Uid) != os.Geteuid() {
		return fmt.Sprintf("%s has mode %#o and is not ours to change: other users may read the log lines", f.Name(), perm)
	}
	if err := f.Chmod(0o600); err != nil {
		return fmt.Sprintf("%s has mode %#o: %v: other users may read the log lines", f.Name(), perm, err)
	}
	return fmt.Sprintf("%s had mode %#o: now 0600", f.Name(), perm)
}

// Start is how a watch handler with only the common flags begins: it parses args
// and loads the configuration for jobs (a file is required). On failure it returns
// the exit code, having said why.
func Start(name string, args []string, env Env, jobs config.Jobs) (*Program, int) {
	f := NewFlags(name, env)
	if _, code := f.Parse(args); code != ExitOK {
		return nil, code
	}
	return Load(f, jobs, FileRequired)
}

// logName is the program's name in its log lines: "rehydrate status" logs as
// "rehydrate.status".
func logName(name string) string { return strings.ReplaceAll(name, " ", ".") }

// Close closes the program's connections and its log file.
func (p *Program) Close() {
	if p.transport != nil {
		p.transport.CloseIdleConnections()
	}
	if p.logFile != nil {
		p.logFile.Close()
	}
}

// HTTPAddr is the -http-addr override, "" when none was given.
func (p *Program) HTTPAddr() string { return p.httpAddr }

// SetHTTPAddr points the program's Consul client at addr (e.g. the local
// cluster's client agent). It must be called before the first Consul call.
func (p *Program) SetHTTPAddr(addr string) { p.httpAddr = addr }

// ErrClient is wrapped by Consul's error when the client cannot be set up (a bad
// TLS file, an unreadable token file): a configuration problem.
var ErrClient = errors.New("consul client")

// Consul returns the program's one client for the configured agent (at -http-addr
// if given), made on first use.
func (p *Program) Consul() (*api.Client, error) {
	if p.consul != nil {
		return p.consul, nil
	}
	ac, err := p.Config.Consul.APIConfig()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrClient, err)
	}
	if p.httpAddr != "" {
		ac.Address = p.httpAddr
	}
	p.transport = cleanhttp.DefaultPooledTransport()
	ac.Transport = p.transport
	c, err := api.NewClient(ac)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrClient, err)
	}
	p.consul = c
	return c, nil
}

// BinDir is where the executables are: $REHYDRATE_BIN_DIR, or beside this one.
func (p *Program) BinDir() (string, error) { return BinDir(p.Env) }

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
