package deploy

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
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
	"github.com/consul-rehydrate/consul-rehydrate/internal/coord"
	"github.com/consul-rehydrate/consul-rehydrate/internal/payload"
	"github.com/consul-rehydrate/consul-rehydrate/internal/watch"
)

// healthPoll is how often the handler re-checks the service's health.
const healthPoll = 500 * time.Millisecond

// Main is the deploy watch handler: a key watch on
// deploy/<service>/nodes/<node>/desired writes the key (or null) on stdin.
func Main(args []string, env watch.Env) int {
	f := watch.NewFlags("deploy", env)
	if code := f.Parse(args); code != watch.ExitOK {
		return code
	}
	l, code := watch.Load("deploy", f.ConfigPath, config.JobDeploy, env)
	if code != watch.ExitOK {
		return code
	}
	defer l.Close()
	// A bad payload is refused before anything talks to Consul.
	pair, err := payload.Key(env.Stdin)
	if err != nil {
		l.Log.Error("refusing key payload", "error", err)
		return watch.ExitBadPayload
	}
	c, err := l.Consul(f.HTTPAddr)
	if err != nil {
		l.Log.Error("set up consul client", "error", err)
		return watch.ExitConfig
	}
	cfg := l.Config
	// The handler may wait for the node lock, then run a deploy and a rollback,
	// each followed by a health wait.
	limit := cfg.Lock.Wait + time.Minute
	for _, d := range cfg.Deploys {
		limit = max(limit, cfg.Lock.Wait+2*(d.Timeout+d.HealthTimeout)+time.Minute)
	}
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	n := &Node{
		Client: c, Config: cfg, Log: l.Log, Poll: healthPoll, Now: time.Now,
		Lock: coord.LockOptions{TTL: cfg.Lock.SessionTTL, Delay: cfg.Lock.LockDelay, Wait: cfg.Lock.Wait},
	}
	err = n.Handle(ctx, pair)
	if err == nil {
		return watch.ExitOK
	}
	code = exitCode(err)
	l.Log.Error("deploy failed", "error", err, "exit_code", code)
	return code
}

func exitCode(err error) int {
	switch {
	case err == nil:
		return watch.ExitOK
	case errors.Is(err, ErrBadDesired):
		return watch.ExitBadPayload
	case errors.Is(err, ErrLockLost):
		return watch.ExitLockLost
	case errors.Is(err, ErrConsul):
		return watch.ExitConsul
	case errors.Is(err, ErrBusy):
		return watch.ExitBusy
	case errors.Is(err, ErrFailed):
		return watch.ExitFailed
	}
	return watch.ExitError
}

// Usage is the usage of `rehydrate deploy`.
const Usage = `usage: rehydrate [-config FILE] [-http-addr ADDR] deploy COMMAND [flags]

commands:
  start  --service S --version V   deploy V to every node of S, a batch at a time;
         [--artifact A] [--batch K] [--max-unavailable M] [--node-timeout D]
                                   halts at the first failure and rolls back the
                                   nodes it updated
  status --service S [--json]      each node's version and state, and the last rollout

Without -config, Consul is reached as the consul CLI does ($CONSUL_HTTP_ADDR,
$CONSUL_HTTP_TOKEN, $CONSUL_HTTP_TOKEN_FILE, ...).
`

// CLI is `rehydrate deploy`: args are what follows "deploy", after the global
// -config and -http-addr (which may also follow the command).
func CLI(args []string, env watch.Env) int {
	if len(args) == 0 || (args[0] != "start" && args[0] != "status") {
		fmt.Fprint(env.Stderr, Usage)
		return watch.ExitUsage
	}
	cmd := args[0]
	fs := flag.NewFlagSet("rehydrate deploy "+cmd, flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	var configPath, httpAddr string
	fs.StringVar(&configPath, "config", "", "configuration file (HCL): its consul block says how to reach Consul")
	fs.StringVar(&httpAddr, "http-addr", "", "Consul HTTP address")
	service := fs.String("service", "", "the Consul service to deploy")
	version := fs.String("version", "", "the version to deploy (start)")
	artifact := fs.String("artifact", "", "where the version comes from, handed to the deploy command (start)")
	batch := fs.Int("batch", 1, "nodes deployed at once (start)")
	maxUnavailable := fs.Int("max-unavailable", 1, "most of the service's nodes out of passing at once (start)")
	nodeTimeout := fs.Duration("node-timeout", 15*time.Minute, "how long a batch may take (start)")
	asJSON := fs.Bool("json", false, "print JSON (status)")
	if err := fs.Parse(args[1:]); err != nil {
		return watch.ExitUsage
	}
	var problems []string
	if fs.NArg() > 0 {
		problems = append(problems, fmt.Sprintf("unexpected argument %q", fs.Arg(0)))
	}
	if !serviceName(*service) {
		problems = append(problems, fmt.Sprintf("--service %q: want a service name (A-Z, a-z, 0-9, _ . -)", *service))
	}
	if cmd == "start" {
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
	}
	if len(problems) > 0 {
		fmt.Fprintf(env.Stderr, "rehydrate deploy %s: %s\n", cmd, strings.Join(problems, "; "))
		return watch.ExitUsage
	}

	ac := api.DefaultConfig()
	lock := coord.LockOptions{TTL: config.DefaultLockSessionTTL, Delay: config.DefaultLockDelay, Wait: time.Second}
	if configPath == "" {
		configPath = env.Getenv(watch.EnvConfig)
	}
	if configPath != "" {
		cfg, err := config.LoadFor(configPath, 0)
		if err != nil {
			fmt.Fprintf(env.Stderr, "rehydrate deploy: %v\n", err)
			return watch.ExitConfig
		}
		if ac, err = cfg.Consul.APIConfig(); err != nil {
			fmt.Fprintf(env.Stderr, "rehydrate deploy: %v\n", err)
			return watch.ExitConfig
		}
		lock.TTL, lock.Delay = cfg.Lock.SessionTTL, cfg.Lock.LockDelay
	}
	if httpAddr != "" {
		ac.Address = httpAddr
	}
	c, err := api.NewClient(ac)
	if err != nil {
		fmt.Fprintf(env.Stderr, "rehydrate deploy: consul client: %v\n", err)
		return watch.ExitConfig
	}
	if cmd == "status" {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := Show(ctx, c, *service, env.Stdout, *asJSON); err != nil {
			fmt.Fprintf(env.Stderr, "rehydrate deploy status: %v\n", err)
			return exitCode(err)
		}
		return watch.ExitOK
	}
	r := &Rollout{
		Client: c, Service: *service, Version: *version, Artifact: *artifact, Batch: *batch,
		MaxUnavailable: *maxUnavailable, NodeTimeout: *nodeTimeout, Poll: healthPoll, Lock: lock,
		Out: env.Stdout, Now: time.Now,
	}
	// Run bounds every wait by NodeTimeout, and makes at most two per node each way.
	// An interrupt stops it between steps, releasing the lock; nodes finish what
	// they started.
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	if _, err := r.Run(ctx); err != nil {
		fmt.Fprintf(env.Stderr, "rehydrate deploy start: %v\n", err)
		return exitCode(err)
	}
	return watch.ExitOK
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
