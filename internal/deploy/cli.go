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
	"github.com/consul-rehydrate/consul-rehydrate/internal/printable"
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
	case errors.Is(err, ErrRefused):
		return app.ExitRefused
	case errors.Is(err, ErrBadConfigFilter):
		return app.ExitConfig
	case errors.Is(err, ErrBadFilter):
		return app.ExitUsage
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
// $CONSUL_HTTP_TOKEN, ...). With one that has a deploy block for the service, a
// version its handlers would refuse (Allowed) is refused before anything is written.
func StartFlags(f *app.Flags) func(*app.Flags, []string) int {
	service := f.String("service", "", "the Consul service to deploy")
	version := f.String("version", "", "the version to deploy: A-Z, a-z, 0-9 and . _ + -, starting with a letter or digit")
	artifact := f.String("artifact", "", "where the version comes from, handed to the deploy command")
	sha := f.String("sha256", "", "the artifact's SHA-256 (64 hex digits), handed to the deploy command to check its download")
	nodeFilter := f.String("node-filter", "", "deploy only to the service's nodes this Consul filter expression selects, e.g. 'Node matches \"^web-\"'; with the deploy block's node_filter, only to the nodes both select")
	batch := f.Int("batch", 1, "nodes deployed at once")
	maxUnavailable := f.Int("max-unavailable", 1, "most of the service's nodes out of passing at once")
	nodeTimeout := f.Duration("node-timeout", 15*time.Minute, "how long a batch may take")
	return func(f *app.Flags, _ []string) int {
		var problems []string
		problems = checkService(problems, *service)
		if err := (Desired{ID: "x", Version: *version, Artifact: *artifact, SHA256: *sha}).Check(); err != nil {
			problems = append(problems, "--version/--artifact/--sha256: "+strings.TrimPrefix(err.Error(), ErrBadDesired.Error()+": "))
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
				Client: c, Service: *service, Version: *version, Artifact: *artifact, SHA256: *sha,
				NodeFilter: *nodeFilter, Policy: p.Config.Deploy(*service), Batch: *batch,
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
			return Show(ctx, c, *service, p.Config.Deploy(*service), p.Env.Stdout, *asJSON)
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

func serviceName(s string) bool { return segment().MatchString(s) }

// View is what `deploy status` shows.
type View struct {
	Service string     `json:"service"`
	Rollout *Record    `json:"rollout,omitempty"`
	Nodes   []NodeView `json:"nodes"`
}

// NodeView is one node in `deploy status`.
type NodeView struct {
	Node    string `json:"node"`
	Current string `json:"current"`
	// CurrentError says why the current version is not one a handler acts on.
	CurrentError string   `json:"current_error,omitempty"`
	Desired      *Desired `json:"desired,omitempty"`
	// DesiredError says why the desired value is not one the handler acts on: it
	// does not parse, or (given the service's deploy block) the block refuses it.
	DesiredError string  `json:"desired_error,omitempty"`
	Status       *Status `json:"status,omitempty"`
	// StatusError says why the status's versions are not ones a handler acts on
	// (a resumed deployment rolls back to its previous version).
	StatusError string `json:"status_error,omitempty"`
	Health      string `json:"health"`
}

// Show prints every node of the service that is in the catalog or has keys. dc,
// when set, is the service's deploy block: desired values it refuses show as
// refused. Text output escapes every string it did not make itself (printable.String); JSON
// escapes control characters anyway.
func Show(ctx context.Context, c *api.Client, service string, dc *config.DeployConfig, w io.Writer, asJSON bool) error {
	v, err := Look(ctx, c, service, dc)
	if err != nil {
		return err
	}
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	if r := v.Rollout; r != nil {
		fmt.Fprintf(w, "rollout %s: %s to %s, %s (started %s", printable.String(r.ID), service, printable.String(r.Version), printable.String(r.State), r.Started.Format(time.RFC3339))
		if r.Finished != nil {
			fmt.Fprintf(w, ", finished %s", r.Finished.Format(time.RFC3339))
		}
		fmt.Fprintln(w, ")")
		if r.Error != "" {
			fmt.Fprintf(w, "  %s\n", printable.String(r.Error))
		}
		for _, nr := range r.Refused {
			fmt.Fprintf(w, "  refused node %s: %s\n", printable.String(nr.Node), printable.String(nr.Error))
		}
	} else {
		fmt.Fprintf(w, "no rollout of %s yet\n", service)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tCURRENT\tDESIRED\tSTATE\tATTEMPTS\tFINISHED\tHEALTH")
	for _, n := range v.Nodes {
		current, desired, state, attempts, finished := or(printable.String(n.Current), "-"), "-", "-", "-", "-"
		if n.CurrentError != "" {
			current = "invalid"
		}
		switch {
		case n.DesiredError != "":
			desired = "invalid"
		case n.Desired != nil:
			desired = printable.String(n.Desired.Version)
		}
		if s := n.Status; s != nil {
			state, attempts = printable.String(s.State), fmt.Sprint(s.Attempts)
			if s.Finished != nil {
				finished = s.Finished.Format(time.RFC3339)
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", printable.String(n.Node), current, desired, state, attempts, finished, n.Health)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, n := range v.Nodes {
		node := printable.String(n.Node)
		if n.CurrentError != "" {
			fmt.Fprintf(w, "%s: current version refused: %s\n", node, printable.String(n.CurrentError))
		}
		if n.DesiredError != "" {
			fmt.Fprintf(w, "%s: desired value refused: %s\n", node, printable.String(n.DesiredError))
		}
		if n.StatusError != "" {
			fmt.Fprintf(w, "%s: status refused: %s\n", node, printable.String(n.StatusError))
		}
		if n.Status != nil && n.Status.Error != "" {
			fmt.Fprintf(w, "%s: %s\n", node, printable.String(n.Status.Error))
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

// Look reads what `deploy status` shows: three requests. dc, when set, is the
// service's deploy block, whose allow-list and require_sha256 desired values are
// also held to.
func Look(ctx context.Context, c *api.Client, service string, dc *config.DeployConfig) (*View, error) {
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
		if k.current != "" {
			if err := CheckVersion(k.current); err != nil {
				nv.CurrentError = err.Error()
			}
		}
		if st := k.status; st != nil {
			for _, ver := range []struct{ name, v string }{{"", st.Version}, {"previous ", st.Previous}} {
				if ver.v == "" {
					continue
				}
				if err := CheckVersion(ver.v); err != nil && nv.StatusError == "" {
					nv.StatusError = ver.name + err.Error()
				}
			}
		}
		if k.hasDesired {
			d, err := ParseDesired(k.desired)
			if err == nil && dc != nil {
				err = Allowed(dc, d)
			}
			switch {
			case errors.Is(err, ErrBadDesired):
				nv.DesiredError = strings.TrimPrefix(err.Error(), ErrBadDesired.Error()+": ")
			case err != nil:
				nv.DesiredError, nv.Desired = strings.TrimPrefix(err.Error(), ErrRefused.Error()+": "), &d
			default:
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
