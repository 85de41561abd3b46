package command

import (
	"github.com/consul-rehydrate/consul-rehydrate/internal/app"
	"github.com/consul-rehydrate/consul-rehydrate/internal/payload"
	"github.com/consul-rehydrate/consul-rehydrate/internal/roll"
	"github.com/consul-rehydrate/consul-rehydrate/internal/spindown"
)

// Spinup is the event watch handler (event "consul-rehydrate"): it reads the agent's
// new events on stdin and handles the newest one.
func Spinup(args []string, env app.Env) int {
	return runHandler(app.NewFlags("spinup", env), args, spinupTrigger)
}

// spinupTrigger reads the event watch's payload.
func spinupTrigger(a *prog) (roll.Trigger, int) {
	// A bad payload is refused before anything talks to Consul or the cloud.
	events, err := payload.Events(a.env.Stdin)
	if err != nil {
		a.log.Error("refusing event payload", "error", err)
		return roll.Trigger{}, app.ExitBadPayload
	}
	if len(events) == 0 {
		a.log.Debug("no events")
		return roll.Trigger{}, app.ExitOK
	}
	// On its first run the watch hands over the agent's whole buffer; earlier
	// events had their turn, and the roll is level-triggered: one event is enough,
	// the newest that requests something (a continuation only when none does; see
	// payload.Pick). Every malformed event is refused with a line of its own, and
	// does not hide a good one: events fired through different servers may reach
	// this agent in any order.
	picked, ok, refused := payload.Pick(events, a.cfg.Roll.EventName)
	for _, r := range refused {
		id := ""
		if r.Event != nil {
			id = r.Event.ID
		}
		a.log.Error("refusing event", "event_id", id, "error", r.Err)
	}
	if !ok {
		return roll.Trigger{}, app.ExitBadPayload
	}
	return roll.Trigger{EventID: picked.Event.ID, Image: picked.Request.ImageID, Continue: picked.Request.Continue}, -1
}

// Spindown is the service watch handler (service "consul"): membership or health of
// the servers changed, so a roll in progress may have a step due. The spindown
// executable is spindown.Main, which runs this (as `rehydrate spindown`) only when
// a roll is in progress.
func Spindown(args []string, env app.Env) int {
	return runHandler(app.NewFlags("spindown", env), args, spindownTrigger)
}

// spindownTrigger reads the service watch's payload.
func spindownTrigger(a *prog) (roll.Trigger, int) {
	entries, err := payload.Services(a.env.Stdin)
	if err != nil {
		a.log.Error("refusing service payload", "error", err)
		return roll.Trigger{}, app.ExitBadPayload
	}
	if err := spindown.CheckServices(entries); err != nil {
		a.log.Error("refusing service payload", "error", err)
		return roll.Trigger{}, app.ExitBadPayload
	}
	return roll.Trigger{}, -1
}

// runHandler parses the handler's flags, then runs it (see handle).
func runHandler(f *app.Flags, args []string, trigger func(*prog) (roll.Trigger, int)) int {
	if _, code := f.Parse(args); code != app.ExitOK {
		return code
	}
	return handle(f, trigger)
}

// handle loads the configuration, lets trigger read stdin (it returns an exit code
// to stop with, or -1 to go on), then runs one roll step.
func handle(f *app.Flags, trigger func(*prog) (roll.Trigger, int)) int {
	a, code := load(f)
	if code != app.ExitOK {
		return code
	}
	defer a.Close()
	trig, code := trigger(a)
	if code >= 0 {
		return code
	}
	r, code := a.roller()
	if code != app.ExitOK {
		return code
	}
	ctx, cancel := withTimeout(a.handlerTimeout())
	defer cancel()
	err := r.Run(ctx, trig)
	if trig.EventID != "" {
		// The line names the event, so that an operator (or a test) can tell what
		// became of each one.
		return a.exitCode(err, "event_id", trig.EventID)
	}
	return a.exitCode(err)
}
