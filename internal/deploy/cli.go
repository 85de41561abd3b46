package deploy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/consul-rehydrate/consul-rehydrate/config"
	"github.com/consul-rehydrate/consul-rehydrate/internal/app"
	"github.com/consul-rehydrate/consul-rehydrate/internal/coord"
	"github.com/consul-rehydrate/consul-rehydrate/internal/payload"
)

// healthPoll is how often the handler re-checks the service's health.
const healthPoll = 500 * time.Millisecond

// Main is the deploy watch handler: a key watch on
// deploy/<service>/nodes/<node>/desired writes the key (or null) on stdin.
func Main(args []string, env app.Env) int {
	p, code := app.Start("deploy", args, env, config.JobDeploy)
	if code != app.ExitOK {
		return code
	}
	defer p.Close()
	// A bad payload is refused before anything talks to Consul.
	pair, err := payload.Key(env.Stdin)
	if err != nil {
		p.Log.Error("refusing key payload", "error", err)
		return app.ExitBadPayload
	}
	c, err := p.Consul()
	if err != nil {
		p.Log.Error("set up consul client", "error", err)
		return app.ExitConfig
	}
	cfg := p.Config
	// The handler may wait for the node lock, then run a deploy and a rollback,
	// each followed by a health wait.
	limit := cfg.Lock.Wait + time.Minute
	for _, d := range cfg.Deploys {
		limit = max(limit, cfg.Lock.Wait+2*(d.Timeout+d.HealthTimeout)+time.Minute)
	}
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	n := &Node{
		Client: c, Config: cfg, Log: p.Log, Poll: healthPoll, Now: time.Now,
		Lock: coord.LockOptions{TTL: cfg.Lock.SessionTTL, Delay: cfg.Lock.LockDelay, Wait: cfg.Lock.Wait},
	}
	err = n.Handle(ctx, pair)
	if err == nil {
		return app.ExitOK
	}
	code = exitCode(err)
	p.Log.Error("deploy failed", "error", err, "exit_code", code)
	return code
}

func exitCode(err error) int {
	switch {
	case err == nil:
		return app.ExitOK
	case errors.Is(err, ErrBadDesired):
		return app.ExitBadPayload
	// A lost lock and a deadline are told apart before what failed under them.
	case errors.Is(err, ErrLockLost):
		return app.ExitLockLost
	case errors.Is(err, ErrTimedOut):
		return app.ExitTimedOut
	case errors.Is(err, ErrConsul):
		return app.ExitConsul
	case errors.Is(err, ErrBusy):
		return app.ExitBusy
	case errors.Is(err, ErrFailed):
		return app.ExitFailed
	case errors.Is(err, app.ErrClient):
		return app.ExitConfig
	}
	return app.ExitError
}

// StartFlags adds the flags of `rehydrate deploy start` to f and returns its run.
// Without -config, Consul is reached as the consul CLI does ($CONSUL_HTTP_ADDR,
// $CONSUL_HTTP_TOKEN).
func StartFlags(f *app.Flags) func(*app.Flags, []string) int {
	service := f.String("service", "", "the Consul service to deploy")
	version := f.String("version", "", "the version to deploy")
	artifact := f.String("artifact", "", "where the version comes from, handed to the deploy command")
	batch := f.Int("batch", 1, "nodes deployed at once")
	maxUnavailable := f.Int("max-unavailable", 1, "most of the service's nodes out of passing at once")
	nodeTimeout := f.Duration("node-timeout", 15*time.Minute, "how long a batch may take")
	return func(f *app.Flags, _ []string) int {
		var problems []string
		problems = checkService(problems, *service)
		if err := (Desired{ID: "x", Version: *version, Artifact: *artifact}).Check(); err != nil {
			problems = append(problems, "--version/--artifact: "+strings.TrimPrefix(err.Error(), ErrBadDesired.Error()+": "))
		}
		if *batch < 1 {
			problems = append(problems, fmt.Sprintf("--batch must be at least 1, got %d", *batch))
		}
		if *maxUnavailable < 1 {
			problems = append(problems, fmt.Sprintf("--max-unavailable must be at least 1, got %d", *maxUnavailable))
		}
		if *nodeTimeout <= 0 {
			problems = append(problems, fmt.Sprintf("--node-timeout must be positive, got %s", *nodeTimeout))
		}
		return withClient(f, problems, func(p *app.Program, c *api.Client) error {
			r := &Rollout{
				Client: c, Service: *service, Version: *version, Artifact: *artifact, Batch: *batch,
				MaxUnavailable: *maxUnavailable, NodeTimeout: *nodeTimeout, Poll: healthPoll,
				Lock: coord.LockOptions{TTL: p.Config.Lock.SessionTTL, Delay: p.Config.Lock.LockDelay, Wait: time.Second},
				Out:  p.Env.Stdout, Now: time.Now,
			}
			// Run bounds every wait by NodeTimeout, and makes at most two per node each
			// way. An interrupt stops it between steps, releasing the lock; nodes finish
			// what they started.
			ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer cancel()
			_, err := r.Run(ctx)
			return err
		})
	}
}

// StatusFlags adds the flags of `rehydrate deploy status` to f and returns its run.
func StatusFlags(f *app.Flags) func(*app.Flags, []string) int {
	service := f.String("service", "", "the Consul service to show")
	asJSON := f.Bool("json", false, "print JSON")
	return func(f *app.Flags, _ []string) int {
		return withClient(f, checkService(nil, *service), func(p *app.Program, c *api.Client) error {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			return Show(ctx, c, *service, p.Env.Stdout, *asJSON)
		})
	}
}

func checkService(problems []string, service string) []string {
	if !serviceName(service) {
		problems = append(problems, fmt.Sprintf("--service %q: want a service name (A-Z, a-z, 0-9, _ . -)", service))
	}
	return problems
}

// withClient refuses the command's problems, if any, as a usage error; otherwise it
// sets the command up (a configuration file is optional: a rollout has no roll to
// set up) and runs it with a Consul client.
func withClient(f *app.Flags, problems []string, run func(*app.Program, *api.Client) error) int {
	if len(problems) > 0 {
		fmt.Fprintf(f.Output(), "%s: %s\n", f.Name(), strings.Join(problems, "; "))
		return app.ExitUsage
	}
	p, code := app.Load(f, 0, app.FileOptional)
	if code != app.ExitOK {
		return code
	}
	defer p.Close()
	c, err := p.Consul()
	if err == nil {
		err = run(p, c)
	}
	if err != nil {
		code := exitCode(err)
		p.Log.Error(f.Name()+" failed", "error", err, "exit_code", code)
		return code
	}
	return app.ExitOK
}

func serviceName(s string) bool { return segment.MatchString(s) }

// View is what `deploy status` shows.
type View struct {
	Service string     `json:"service"`
	Rollout *Record    `json:"rollout,omitempty"`
	Nodes   []NodeView `json:"nodes"`
}

// NodeView is one node in `deploy status`.
type NodeView struct {
	Node    string   `json:"node"`
	Current string   `json:"current"`
	Desired *Desired `json:"desired,omitempty"`
	// DesiredError says why the desired value is not one the handler acts on.
	DesiredError string  `json:"desired_error,omitempty"`
	Status       *Status `json:"status,omitempty"`
	Health       string  `json:"health"`
}

// Show prints every node of the service that is in the catalog or has keys.
func Show(ctx context.Context, c *api.Client, service string, w io.Writer, asJSON bool) error {
	v, err := Look(ctx, c, service)
	if err != nil {
		return err
	}
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	if r := v.Rollout; r != nil {
		fmt.Fprintf(w, "rollout %s: %s to %s, %s (started %s", r.ID, service, r.Version, r.State, r.Started.Format(time.RFC3339))
		if r.Finished != nil {
			fmt.Fprintf(w, ", finished %s", r.Finished.Format(time.RFC3339))
		}
		fmt.Fprintln(w, ")")
		if r.Error != "" {
			fmt.Fprintf(w, "  %s\n", r.Error)
		}
	} else {
		fmt.Fprintf(w, "no rollout of %s yet\n", service)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tCURRENT\tDESIRED\tSTATE\tATTEMPTS\tFINISHED\tHEALTH")
	for _, n := range v.Nodes {
		desired, state, attempts, finished := "-", "-", "-", "-"
		switch {
		case n.DesiredError != "":
			desired = "invalid"
		case n.Desired != nil:
			desired = n.Desired.Version
		}
		if s := n.Status; s != nil {
			state, attempts = s.State, fmt.Sprint(s.Attempts)
			if s.Finished != nil {
				finished = s.Finished.Format(time.RFC3339)
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", n.Node, or(n.Current, "-"), desired, state, attempts, finished, n.Health)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, n := range v.Nodes {
		if n.DesiredError != "" {
			fmt.Fprintf(w, "%s: desired value refused: %s\n", n.Node, n.DesiredError)
		}
		if n.Status != nil && n.Status.Error != "" {
			fmt.Fprintf(w, "%s: %s\n", n.Node, n.Status.Error)
		}
	}
	return nil
}

func or(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// Look reads what `deploy status` shows: three requests.
func Look(ctx context.Context, c *api.Client, service string) (*View, error) {
	v := &View{Service: service}
	store := kv{c}
	var rec Record
	ok, err := store.getJSON(ctx, ServiceKey(service, "rollout"), &rec)
	if err != nil {
		return nil, err
	}
	if ok {
		v.Rollout = &rec
	}
	keys, err := store.nodes(ctx, service)
	if err != nil {
		return nil, err
	}
	hs, err := health(ctx, c, service)
	if err != nil {
		return nil, err
	}
	byNode := map[string]*NodeView{}
	get := func(node string) *NodeView {
		if byNode[node] == nil {
			byNode[node] = &NodeView{Node: node, Health: "not registered"}
		}
		return byNode[node]
	}
	for node, h := range hs {
		get(node).Health = "not passing"
		if h.passing {
			get(node).Health = "passing"
		}
	}
	for node, k := range keys {
		nv := get(node)
		nv.Current, nv.Status = k.current, k.status
		if k.hasDesired {
			if d, err := ParseDesired(k.desired); err != nil {
				nv.DesiredError = strings.TrimPrefix(err.Error(), ErrBadDesired.Error()+": ")
			} else {
				nv.Desired = &d
			}
		}
	}
	for _, nv := range byNode {
		v.Nodes = append(v.Nodes, *nv)
	}
	slices.SortFunc(v.Nodes, func(a, b NodeView) int { return strings.Compare(a.Node, b.Node) })
	return v, nil
}
