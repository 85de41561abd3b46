// Package spindown is the service watch handler's fast path.
//
// spindown runs on every server at every change in the servers' membership or
// health, and almost always has nothing to do. It is built from this package and
// package app alone, without the providers, the planner or the AWS SDK, so that an
// idle invocation costs a small binary's start, the configuration and one KV read.
// When a roll is in progress it hands the payload to `rehydrate spindown`, which
// takes the step.
package spindown

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/consul-rehydrate/consul-rehydrate/config"
	"github.com/consul-rehydrate/consul-rehydrate/internal/app"
	"github.com/consul-rehydrate/consul-rehydrate/internal/coord"
	"github.com/consul-rehydrate/consul-rehydrate/internal/payload"
)

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

// Main validates the payload, and unless a roll is in progress it is done.
// Otherwise `rehydrate spindown` takes the step, with the same payload on its stdin.
func Main(args []string, env app.Env) int {
	p, code := app.Start("spindown", args, env, config.JobRoll)
	if code != app.ExitOK {
		return code
	}
	defer p.Close()

	// Read at most one byte over the limit, so the decoder can say the payload is too
	// big without anything reading the rest.
	in, err := io.ReadAll(io.LimitReader(env.Stdin, payload.DefaultMaxBytes+1))
	if err != nil {
		p.Log.Error("refusing service payload", "error", fmt.Errorf("read stdin: %w", err))
		return app.ExitBadPayload
	}
	entries, err := payload.Services(bytes.NewReader(in))
	if err == nil {
		err = CheckServices(entries)
	}
	if err != nil {
		p.Log.Error("refusing service payload", "error", err)
		return app.ExitBadPayload
	}

	c, err := p.Consul()
	if err != nil {
		p.Log.Error("set up consul client", "error", err)
		return app.ExitConfig
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rec, err := coord.New(c, p.Config.Cluster).Roll(ctx)
	if err != nil {
		p.Log.Error("step failed", "error", fmt.Errorf("consul: %w", err), "exit_code", app.ExitConsul)
		return app.ExitConsul
	}
	if !rec.InProgress() {
		p.Log.Debug("no roll in progress")
		return app.ExitOK
	}

	dir, err := p.BinDir()
	if err != nil {
		p.Log.Error("hand the step to rehydrate", "error", err)
		return app.ExitError
	}
	full := []string{"spindown", "-config", p.ConfigPath}
	if a := p.HTTPAddr(); a != "" {
		full = append(full, "-http-addr", a)
	}
	cmd := exec.Command(filepath.Join(dir, "rehydrate"), full...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = bytes.NewReader(in), env.Stdout, env.Stderr
	err = cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return app.ExitOK
	case errors.As(err, &ee) && ee.ExitCode() > 0:
		return ee.ExitCode()
	default:
		p.Log.Error("hand the step to rehydrate", "error", err)
		return app.ExitError
	}
}
