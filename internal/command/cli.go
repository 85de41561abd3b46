package command

import (
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/consul-rehydrate/consul-rehydrate/internal/app"
	"github.com/consul-rehydrate/consul-rehydrate/internal/deploy"
)

// A command of the rehydrate CLI: its own flag set (with -config and -http-addr,
// which every command takes) and its run. A small table of our own rather than
// hashicorp/cli: seven commands need no plugin registry, autocompletion or
// hierarchy of factories, and the table keeps help and flags in one place.
type command struct {
	name     string   // the words that name it, e.g. "local image register"
	synopsis string   // one line for `rehydrate -h`
	args     []string // its positional arguments, e.g. "NAME"
	hidden   bool     // not for operators (spindown hands steps to it)
	// flags adds the command's own flags to f and returns its run, which gets the
	// parsed flags and positional arguments.
	flags func(f *app.Flags) func(f *app.Flags, args []string) int
}

// commands is the rehydrate CLI, in the order `rehydrate -h` lists them.
var commands = []command{
	{name: "fire", synopsis: "ask the cluster to roll (to --image, or the newest allowed image)", flags: fireFlags},
	{name: "status", synopsis: "servers, images, the roll's phase and history", flags: statusFlags},
	{name: "plan", synopsis: "the next step and why; changes nothing", flags: planFlags},
	{name: "check", synopsis: "a Consul script check: is a roll stuck or failed? (exit 0 passing, 1 warning, else critical)", flags: noFlags((*prog).check)},
	{name: "leave", synopsis: "hand leadership off if this agent's server leads, then leave gracefully (the consul unit's stop)", flags: leaveFlags},
	{name: "local up", synopsis: "start a local cluster (local provider)", flags: localUpFlags},
	{name: "local image register", synopsis: "register a local image", args: []string{"NAME"}, flags: localRegisterFlags},
	{name: "local down", synopsis: "stop the local cluster and remove its state", flags: noFlags((*prog).localDown)},
	{name: "local demo", synopsis: "a whole roll of a local cluster under write load", flags: demoFlags},
	{name: "deploy start", synopsis: "deploy a version to every node of a service, a batch at a time", flags: deploy.StartFlags},
	{name: "deploy status", synopsis: "each node's version and state, and the last rollout", flags: deploy.StatusFlags},
	{name: "spindown", hidden: true, flags: func(*app.Flags) func(*app.Flags, []string) int {
		return func(f *app.Flags, _ []string) int { return handle(f, spindownTrigger) }
	}},
}

// Rehydrate is the operator CLI: `rehydrate [-config FILE] [-http-addr ADDR]
// COMMAND [flags] [args]`. -config and -http-addr may stand before the command as
// well as among its flags; any other flag must belong to the command.
func Rehydrate(args []string, env app.Env) int {
	global := app.NewFlags("rehydrate", env)
	global.Usage = func() { usage(env.Stderr, "") }
	if err := global.FlagSet.Parse(args); err != nil {
		return app.ExitUsage
	}
	args = global.Args()
	if len(args) == 0 || args[0] == "help" {
		usage(env.Stderr, "")
		return app.ExitUsage
	}
	cmd, rest := find(args)
	if cmd == nil {
		group := strings.Join(args[:groupLen(args)], " ")
		if group == "" {
			fmt.Fprintf(env.Stderr, "rehydrate: unknown command %q\n", args[0])
		} else if len(args) > groupLen(args) {
			fmt.Fprintf(env.Stderr, "rehydrate: unknown command %q\n", strings.Join(args[:groupLen(args)+1], " "))
		}
		usage(env.Stderr, group)
		return app.ExitUsage
	}
	f := app.NewFlags("rehydrate "+cmd.name, env)
	f.ConfigPath, f.HTTPAddr, f.Positional = global.ConfigPath, global.HTTPAddr, cmd.args
	run := cmd.flags(f)
	f.Usage = func() { commandUsage(env.Stderr, cmd, f) }
	pos, code := f.Parse(rest)
	if code != app.ExitOK {
		return code
	}
	return run(f, pos)
}

// find returns the command args name (the longest match) and the arguments that
// follow its name.
func find(args []string) (*command, []string) {
	var best *command
	for i := range commands {
		c := &commands[i]
		words := strings.Fields(c.name)
		if len(words) <= len(args) && slices.Equal(words, args[:len(words)]) &&
			(best == nil || len(words) > len(strings.Fields(best.name))) {
			best = c
		}
	}
	if best == nil {
		return nil, nil
	}
	return best, args[len(strings.Fields(best.name)):]
}

// groupLen is how many leading words of args name a group of commands ("local",
// "local image", "deploy"), 0 if none.
func groupLen(args []string) int {
	n := 0
	for _, c := range commands {
		words := strings.Fields(c.name)
		for k := len(words) - 1; k > n; k-- {
			if k <= len(args) && slices.Equal(words[:k], args[:k]) {
				n = k
			}
		}
	}
	return n
}

// usage lists the commands (of group, when not "") with their synopses.
func usage(w io.Writer, group string) {
	fmt.Fprintln(w, "usage: rehydrate [-config FILE] [-http-addr ADDR] COMMAND [flags] [args]")
	fmt.Fprintln(w, "\ncommands:")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, c := range commands {
		if !c.hidden && (group == "" || strings.HasPrefix(c.name, group+" ")) {
			fmt.Fprintf(tw, "  %s\t%s\n", strings.Join(append([]string{c.name}, c.args...), " "), c.synopsis)
		}
	}
	tw.Flush()
	fmt.Fprintln(w, "\n`rehydrate COMMAND -h` shows a command's flags. -config defaults to $"+app.EnvConfig+".")
}

// commandUsage shows one command's flags, and only them.
func commandUsage(w io.Writer, c *command, f *app.Flags) {
	fmt.Fprintf(w, "usage: rehydrate %s [flags]%s\n\n%s\n\nflags:\n", c.name, strings.TrimRight(" "+strings.Join(c.args, " "), " "), c.synopsis)
	f.PrintDefaults()
}

// noFlags is a command with only the common flags.
func noFlags(run func(*prog) int) func(*app.Flags) func(*app.Flags, []string) int {
	return func(*app.Flags) func(*app.Flags, []string) int {
		return func(f *app.Flags, _ []string) int { return withProg(f, run) }
	}
}

// withProg loads the roll's configuration for f's command and runs it.
func withProg(f *app.Flags, run func(*prog) int) int {
	a, code := load(f)
	if code != app.ExitOK {
		return code
	}
	defer a.Close()
	return run(a)
}

func fireFlags(f *app.Flags) func(*app.Flags, []string) int {
	image := f.String("image", "", "the image to roll to; default the newest the filter allows")
	return func(f *app.Flags, _ []string) int { return withProg(f, func(a *prog) int { return a.fire(*image) }) }
}

func statusFlags(f *app.Flags) func(*app.Flags, []string) int {
	asJSON := f.Bool("json", false, "print JSON")
	return func(f *app.Flags, _ []string) int { return withProg(f, func(a *prog) int { return a.status(*asJSON) }) }
}

func planFlags(f *app.Flags) func(*app.Flags, []string) int {
	asJSON := f.Bool("json", false, "print JSON")
	return func(f *app.Flags, _ []string) int { return withProg(f, func(a *prog) int { return a.plan(*asJSON) }) }
}

func localUpFlags(f *app.Flags) func(*app.Flags, []string) int {
	servers := f.Int("servers", 3, "number of servers")
	image := f.String("image", "", "the image the servers run (registered with the provider's defaults if new); required")
	return func(f *app.Flags, _ []string) int {
		if *image == "" {
			fmt.Fprintln(f.Output(), "rehydrate local up: --image is required")
			return app.ExitUsage
		}
		return withProg(f, func(a *prog) int { return a.localUp(*servers, *image) })
	}
}

func localRegisterFlags(f *app.Flags) func(*app.Flags, []string) int {
	consulBinary := f.String("consul-binary", "", "the image's consul binary; default the provider's")
	extraHCL := f.String("extra-hcl", "", "a file of extra agent configuration for the image's servers")
	return func(f *app.Flags, args []string) int {
		return withProg(f, func(a *prog) int { return a.localRegister(args[0], *consulBinary, *extraHCL) })
	}
}

func demoFlags(f *app.Flags) func(*app.Flags, []string) int {
	servers := f.Int("servers", 3, "number of servers")
	return func(f *app.Flags, _ []string) int {
		if f.ConfigPath == "" {
			// The demo needs no set-up: it writes its own configuration.
			dir, err := os.MkdirTemp("", "rehydrate-demo-")
			if err != nil {
				fmt.Fprintf(f.Output(), "rehydrate local demo: %v\n", err)
				return app.ExitError
			}
			defer os.RemoveAll(dir)
			if f.ConfigPath, err = DemoConfig(dir, *servers); err != nil {
				fmt.Fprintf(f.Output(), "rehydrate local demo: %v\n", err)
				return app.ExitError
			}
		}
		return withProg(f, func(a *prog) int { return a.demo(*servers) })
	}
}
