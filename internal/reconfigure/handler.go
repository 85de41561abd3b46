package reconfigure

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/consul-rehydrate/consul-rehydrate/config"
	"github.com/consul-rehydrate/consul-rehydrate/internal/app"
	"github.com/consul-rehydrate/consul-rehydrate/internal/atomicfile"
	"github.com/consul-rehydrate/consul-rehydrate/internal/payload"
	"github.com/consul-rehydrate/consul-rehydrate/internal/runcmd"
)

// Env the reload command gets, besides the handler's own.
const (
	EnvDestination = "REHYDRATE_RECONFIGURE_FILE"
	EnvInstances   = "REHYDRATE_RECONFIGURE_INSTANCES" // how many are healthy
)

// Main is the reconfigure handler: a service watch writes the service's entries on
// stdin. With -check it is the check instead: it judges the recorded state and exits
// as a Consul script check does (0 passing, 1 warning, 2 critical), its note on
// stdout.
func Main(args []string, env app.Env) int {
	return main(args, env, time.Now)
}

func main(args []string, env app.Env, now func() time.Time) int {
	f := app.NewFlags("reconfigure", env)
	name := f.String("name", "", "the reconfigure block to act on (needed when the file has more than one)")
	check := f.Bool("check", false, "judge the recorded state as a Consul script check (0 passing, 1 warning, 2 critical)")
	if _, code := f.Parse(args); code != app.ExitOK {
		return code
	}
	l, code := app.Load(f, config.JobReconfigure, app.FileRequired)
	if code != app.ExitOK {
		if *check {
			return ExitCode(Critical)
		}
		return code
	}
	defer l.Close()
	rc, err := pick(l.Config, *name)
	if err != nil {
		fmt.Fprintf(env.Stderr, "reconfigure: %v\n", err)
		if *check {
			return ExitCode(Critical)
		}
		return app.ExitUsage
	}
	if *check {
		s, err := loadState(rc.StateFile)
		if err != nil {
			fmt.Fprintf(env.Stdout, "cannot judge %s: %v\n", rc.Service, err)
			return ExitCode(Critical)
		}
		v := Judge(s, now(), rc.ExpectReplacement, rc.Probation)
		fmt.Fprintln(env.Stdout, v.Note)
		return ExitCode(v.Status)
	}
	h := &handler{rc: rc, log: l.Log.With("reconfigure", rc.Name, "service", rc.Service), now: now}
	return h.handle(env)
}

func pick(c *config.Config, name string) (*config.ReconfigureConfig, error) {
	if name != "" {
		if rc := c.Reconfigure(name); rc != nil {
			return rc, nil
		}
		return nil, fmt.Errorf("no reconfigure block %q in the configuration", name)
	}
	if len(c.Reconfigures) != 1 {
		return nil, fmt.Errorf("the configuration has %d reconfigure blocks: pass -name to pick one", len(c.Reconfigures))
	}
	return c.Reconfigures[0], nil
}

type handler struct {
	rc  *config.ReconfigureConfig
	log hclog.Logger
	now func() time.Time
}

func (h *handler) handle(env app.Env) int {
	// A bad payload is refused before anything is recorded or rendered.
	entries, err := payload.Services(env.Stdin)
	if err == nil {
		for _, e := range entries {
			if e.Service == nil || e.Service.Service != h.rc.Service {
				name := ""
				if e.Service != nil {
					name = e.Service.Service
				}
				err = fmt.Errorf("entry for service %q, want %q", name, h.rc.Service)
				break
			}
		}
	}
	if err != nil {
		h.log.Error("refusing service payload", "error", err)
		return app.ExitBadPayload
	}
	healthy, refused := Screen(Healthy(entries))
	for _, r := range refused {
		h.log.Warn("refusing an instance: it is left out of the file", "error", r.String())
	}

	prev, err := loadState(h.rc.StateFile)
	if err != nil {
		h.log.Warn("starting from an empty state", "error", err)
	}
	code, failure := h.update(healthy)

	// The state records what was seen, what was refused, and whether the file is up
	// to date: the check judges it, and stays critical until a run succeeds.
	keys := make([]string, len(healthy))
	for i, in := range healthy {
		keys[i] = in.Key()
	}
	s := Observe(prev, h.rc.Service, keys, h.now(), h.rc.Probation)
	s.Refused = refused
	if failure != nil {
		failure.Since = s.Seen
		if prev.Failure != nil && prev.Service == s.Service {
			failure.Since = prev.Failure.Since
		}
		s.Failure = failure
	}
	if err := saveState(h.rc.StateFile, s); err != nil {
		h.log.Error("record state", "error", err)
		return app.ExitError
	}
	if v := Judge(s, h.now(), h.rc.ExpectReplacement, h.rc.Probation); v.Status != Passing {
		h.log.Warn(v.Note)
	}
	return code
}

// update renders the file from healthy, and reloads when it changed. It returns the
// exit code, and what failed, if anything: the file then is as the last good run
// left it.
func (h *handler) update(healthy []Instance) (int, *Failure) {
	fail := func(step string, err error) *Failure {
		return &Failure{Step: step, Error: printableError(err)}
	}
	content, err := Render(h.rc, Data{Service: h.rc.Service, Instances: healthy})
	if err != nil {
		h.log.Error("keeping the previous file", "file", h.rc.Destination, "error", err)
		return app.ExitConfig, fail(StepRender, err)
	}
	old, mode, existed, err := current(h.rc.Destination)
	if err != nil {
		h.log.Error("read the current file", "error", err)
		return app.ExitError, fail(StepWrite, fmt.Errorf("read the current file: %w", err))
	}
	if existed && bytes.Equal(old, content) {
		h.log.Debug("unchanged", "file", h.rc.Destination, "healthy", len(healthy))
		return app.ExitOK, nil
	}
	// Mode 0 (unset) keeps the file's mode, or makes a new one 0644; either way the
	// file keeps its owner and group.
	if err := atomicfile.Write(h.rc.Destination, content, h.rc.Mode); err != nil {
		h.log.Error("write the file", "error", err)
		return app.ExitError, fail(StepWrite, fmt.Errorf("write the file: %w", err))
	}
	h.log.Info("rendered", "file", h.rc.Destination, "healthy", len(healthy))
	if len(h.rc.ReloadCommand) == 0 {
		return app.ExitOK, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), h.rc.ReloadTimeout+10*time.Second)
	defer cancel()
	out, err := runcmd.Run(ctx, runcmd.Spec{
		What: "reload command", Argv: h.rc.ReloadCommand, Timeout: h.rc.ReloadTimeout,
		Env: []string{EnvDestination + "=" + h.rc.Destination, fmt.Sprintf("%s=%d", EnvInstances, len(healthy))},
	})
	if err == nil {
		h.log.Info("reloaded")
		return app.ExitOK, nil
	}
	// Put the previous file back: what runs was loaded from it. The next change
	// renders and reloads again.
	if existed {
		err = fmt.Errorf("%w; the previous file is back in place", err)
		if rerr := atomicfile.Write(h.rc.Destination, old, mode); rerr != nil {
			err = fmt.Errorf("%w; put the previous file back: %w", err, rerr)
		}
	} else if rerr := os.Remove(h.rc.Destination); rerr != nil {
		err = fmt.Errorf("%w; remove the new file: %w", err, rerr)
	}
	h.log.Error("reload failed", "error", err, "output", out)
	return app.ExitFailed, fail(StepReload, err)
}
