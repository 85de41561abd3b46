package command

import (
	"flag"

	"github.com/consul-rehydrate/consul-rehydrate/internal/payload"
	"github.com/consul-rehydrate/consul-rehydrate/internal/roll"
	"github.com/consul-rehydrate/consul-rehydrate/internal/watch"
)

// Spinup is the event watch handler (event "consul-rehydrate"): it reads the agent's
// new events on stdin and handles the newest one.
func Spinup(args []string, env Env) int {
	return runHandler("spinup", args, env, func(a *app) (roll.Trigger, int) {
		// A bad payload is refused before anything talks to Consul or the cloud.
		events, err := payload.Events(env.Stdin)
		if err != nil {
			a.log.Error("refusing event payload", "error", err)
			return roll.Trigger{}, ExitBadPayload
		}
		if len(events) == 0 {
			a.log.Debug("no events")
			return roll.Trigger{}, ExitOK
		}
		// On its first run the watch hands over the agent's whole buffer; earlier
		// events had their turn, and the roll is level-triggered: the newest well-formed
		// one is enough. Every malformed event is refused with a line of its own, and
		// does not hide a good one: events fired through different servers may reach
		// this agent in any order.
		var trig *roll.Trigger
		for _, ev := range events {
			req, err := payload.ParseRequest(ev, a.cfg.Roll.EventName)
			if err != nil {
				a.log.Error("refusing event", "event_id", ev.ID, "error", err)
				continue
			}
			trig = &roll.Trigger{EventID: ev.ID, Image: req.ImageID}
		}
		if trig == nil {
			return roll.Trigger{}, ExitBadPayload
		}
		return *trig, -1
	})
}

// Spindown is the service watch handler (service "consul"): membership or health of
// the servers changed, so a roll in progress may have a step due. The spindown
// executable is watch.Spindown, which runs this (as `rehydrate spindown`) only when
// a roll is in progress.
func Spindown(args []string, env Env) int {
	return runHandler("spindown", args, env, func(a *app) (roll.Trigger, int) {
		entries, err := payload.Services(env.Stdin)
		if err != nil {
			a.log.Error("refusing service payload", "error", err)
			return roll.Trigger{}, ExitBadPayload
		}
		if err := watch.CheckServices(entries); err != nil {
			a.log.Error("refusing service payload", "error", err)
			return roll.Trigger{}, ExitBadPayload
		}
		return roll.Trigger{}, -1
	})
}

// runHandler parses flags, loads the configuration, lets trigger read stdin (it
// returns an exit code to stop with, or -1 to go on), then runs one roll step.
func runHandler(name string, args []string, env Env, trigger func(*app) (roll.Trigger, int)) int {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	a := newApp(name, env, fs)
	if err := fs.Parse(args); err != nil {
		return ExitUsage
	}
	if code := a.load(); code != ExitOK {
		return code
	}
	defer a.close()
	trig, code := trigger(a)
	if code >= 0 {
		return code
	}
	r, code := a.roller()
	if code != ExitOK {
		return code
	}
	ctx, cancel := withTimeout(a.handlerTimeout())
	defer cancel()
	return a.exitCode(r.Run(ctx, trig))
}
