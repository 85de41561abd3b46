package command

import (
	"flag"
	"fmt"

	"github.com/hashicorp/consul/api"

	"github.com/consul-rehydrate/consul-rehydrate/internal/payload"
	"github.com/consul-rehydrate/consul-rehydrate/internal/roll"
)

// Spinup is the event watch handler (event "consul-rehydrate"): it reads the agent's
// buffer of events on stdin and handles the newest one.
func Spinup(args []string, env Env) int {
	fs := flag.NewFlagSet("spinup", flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	a := newApp("spinup", env, fs)
	if err := fs.Parse(args); err != nil {
		return ExitUsage
	}
	if code := a.load(); code != ExitOK {
		return code
	}
	defer a.close()

	// A bad payload is refused before anything talks to Consul or the cloud.
	events, err := payload.Events(env.Stdin)
	if err != nil {
		a.log.Error("refusing event payload", "error", err)
		return ExitBadPayload
	}
	if len(events) == 0 {
		a.log.Debug("no events")
		return ExitOK
	}
	// The agent hands over its whole buffer; earlier events had their own
	// invocations, and the roll is level-triggered, so the newest one is enough.
	ev := events[len(events)-1]
	req, err := payload.ParseRequest(ev, a.cfg.Roll.EventName)
	if err != nil {
		a.log.Error("refusing event", "event_id", ev.ID, "error", err)
		return ExitBadPayload
	}

	r, code := a.roller()
	if code != ExitOK {
		return code
	}
	ctx, cancel := withTimeout(a.handlerTimeout())
	defer cancel()
	return a.exitCode(r.Run(ctx, roll.Trigger{EventID: ev.ID, Image: req.ImageID}))
}

// Spindown is the service watch handler (service "consul"): membership or health of
// the servers changed, so a roll in progress may have a step due.
func Spindown(args []string, env Env) int {
	fs := flag.NewFlagSet("spindown", flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	a := newApp("spindown", env, fs)
	if err := fs.Parse(args); err != nil {
		return ExitUsage
	}
	if code := a.load(); code != ExitOK {
		return code
	}
	defer a.close()

	entries, err := payload.Services(env.Stdin)
	if err != nil {
		a.log.Error("refusing service payload", "error", err)
		return ExitBadPayload
	}
	for _, e := range entries {
		if e.Service == nil || e.Service.Service != "consul" {
			a.log.Error("refusing service payload", "error", fmt.Sprintf("entry for service %q, want \"consul\"", serviceName(e.Service)))
			return ExitBadPayload
		}
	}

	r, code := a.roller()
	if code != ExitOK {
		return code
	}
	ctx, cancel := withTimeout(a.handlerTimeout())
	defer cancel()
	return a.exitCode(r.Run(ctx, roll.Trigger{}))
}

func serviceName(s *api.AgentService) string {
	if s == nil {
		return ""
	}
	return s.Service
}
