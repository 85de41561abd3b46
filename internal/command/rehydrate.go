package command

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"text/tabwriter"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/consul-rehydrate/consul-rehydrate/config"
	"github.com/consul-rehydrate/consul-rehydrate/internal/app"
	"github.com/consul-rehydrate/consul-rehydrate/internal/cloud/local"
	"github.com/consul-rehydrate/consul-rehydrate/internal/coord"
	"github.com/consul-rehydrate/consul-rehydrate/internal/payload"
	"github.com/consul-rehydrate/consul-rehydrate/internal/plan"
	"github.com/consul-rehydrate/consul-rehydrate/internal/printable"
	"github.com/consul-rehydrate/consul-rehydrate/internal/roll"
)

// cliConsul returns a client for operator commands. With the local provider and no
// address set anywhere, it talks to the local cluster's client agent.
func (a *prog) cliConsul() (*api.Client, error) {
	if a.HTTPAddr() == "" && a.cfg.Provider.Local != nil && a.cfg.Consul.Address == config.DefaultConsulAddress && a.env.Getenv(api.HTTPAddrEnvName) == "" {
		p, err := a.localProvider()
		if err != nil {
			return nil, err
		}
		addr, err := p.ClientAddr()
		if err != nil {
			return nil, fmt.Errorf("local cluster: %w", err)
		}
		// The local cluster's own client agent, over HTTPS with its CA. The
		// operator of a local cluster is whoever owns its state dir, which holds
		// the management token: it is the token unless one is set.
		cc := &a.cfg.Consul
		cc.Scheme, cc.TLS = "https", config.TLSConfig{CAFile: p.CAFile()}
		if cc.InlineToken == "" && cc.TokenFile == "" && cc.EnvToken == "" {
			cc.TokenFile = p.ManagementTokenFile()
		}
		a.SetHTTPAddr(addr)
	}
	return a.consul()
}

// cliRoller is a Roller for operator commands.
func (a *prog) cliRoller() (*roll.Roller, int) {
	c, err := a.cliConsul()
	if err != nil {
		a.log.Error("set up consul client", "error", err)
		return nil, app.ExitConsul
	}
	p, err := a.provider()
	if err != nil {
		a.log.Error("set up provider", "error", err)
		return nil, app.ExitConfig
	}
	return roll.New(a.cfg, c, p, a.log), app.ExitOK
}

func (a *prog) fire(image string) int {
	body, err := payload.NewRequestPayload(image)
	if err != nil {
		a.log.Error("invalid image", "error", err)
		return app.ExitUsage
	}
	r, code := a.cliRoller()
	if code != app.ExitOK {
		return code
	}
	ctx, cancel := withTimeout(time.Minute)
	defer cancel()
	// Refuse here what every handler would refuse, so the operator hears why at once.
	rec, err := r.Store.Roll(ctx)
	if err != nil {
		return a.exitCode(fmt.Errorf("%w: %w", roll.ErrConsul, err))
	}
	in, err := r.Observe(ctx, rec, image)
	if err != nil {
		return a.exitCode(err)
	}
	if st := plan.Next(in); st.Kind == plan.Refuse {
		return a.exitCode(fmt.Errorf("%w: %s", roll.ErrRefused, st.Reason))
	}
	id, _, err := r.Consul.Event().Fire(&api.UserEvent{Name: a.cfg.Roll.EventName, Payload: body}, nil)
	if err != nil {
		return a.exitCode(fmt.Errorf("%w: fire %s: %w", roll.ErrConsul, a.cfg.Roll.EventName, err))
	}
	fmt.Fprintf(a.env.Stdout, "fired %s (event %s)%s\n", a.cfg.Roll.EventName, id, map[bool]string{true: " for image " + image}[image != ""])
	return app.ExitOK
}

// Status is what `status --json` prints.
type Status struct {
	Servers   []ServerStatus    `json:"servers"`
	Target    string            `json:"target_image"`
	Roll      *coord.Roll       `json:"roll"`
	BadImages map[string]string `json:"bad_images"`
	LockedBy  string            `json:"locked_by,omitempty"`
	Next      NextStep          `json:"next"`
}

// ServerStatus is one row of the status table.
type ServerStatus struct {
	Node     string `json:"node"`
	Instance string `json:"instance"`
	Image    string `json:"image"`
	State    string `json:"state"`
	Voter    bool   `json:"voter"`
	Leader   bool   `json:"leader"`
	Healthy  bool   `json:"healthy"`
	Outdated bool   `json:"outdated"`
}

// NextStep is the planner's decision, as `plan --json` prints it.
type NextStep struct {
	Kind     string `json:"step"`
	Image    string `json:"image,omitempty"`
	Instance string `json:"instance,omitempty"`
	Reason   string `json:"reason"`
}

// collectStatus observes everything status and plan show.
func collectStatus(ctx context.Context, r *roll.Roller) (*Status, error) {
	rec, err := r.Store.Roll(ctx)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", roll.ErrConsul, err)
	}
	in, err := r.Observe(ctx, rec, "")
	if err != nil {
		return nil, err
	}
	st := plan.Next(in)
	bad, err := r.Store.BadImages(ctx)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", roll.ErrConsul, err)
	}
	holder, err := r.Store.Holder(ctx)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", roll.ErrConsul, err)
	}
	out := &Status{Target: st.Image, Roll: rec, BadImages: bad, LockedBy: holder,
		Next: NextStep{Kind: string(st.Kind), Image: st.Image, Instance: st.Instance, Reason: st.Reason}}
	for _, inst := range in.Instances {
		row := ServerStatus{Instance: inst.ID, Image: inst.ImageID, State: inst.State, Outdated: st.Image != "" && inst.ImageID != st.Image}
		if s := in.Server(inst); s != nil {
			row.Node, row.Voter, row.Leader, row.Healthy = s.Name, s.Voter, s.Leader, s.Healthy
		}
		out.Servers = append(out.Servers, row)
	}
	return out, nil
}

// status and plan show the same observation: the whole of it, or its next step.
func (a *prog) status(asJSON bool) int {
	return a.withStatus(func(st *Status) int {
		if asJSON {
			return a.printJSON(st)
		}
		printStatus(a.env.Stdout, st, time.Now())
		return app.ExitOK
	})
}

func (a *prog) plan(asJSON bool) int {
	return a.withStatus(func(st *Status) int {
		if asJSON {
			return a.printJSON(st.Next)
		}
		fmt.Fprintf(a.env.Stdout, "%s: %s\n", st.Next.Kind, st.Next.Reason)
		return app.ExitOK
	})
}

func (a *prog) withStatus(show func(*Status) int) int {
	r, code := a.cliRoller()
	if code != app.ExitOK {
		return code
	}
	ctx, cancel := withTimeout(time.Minute)
	defer cancel()
	st, err := collectStatus(ctx, r)
	if err != nil {
		return a.exitCode(err)
	}
	return show(st)
}

// printStatus prints st for a terminal. Every string in it may come from a KV,
// catalog or event writer (node names and meta, the roll record, bad-image reasons,
// the lock's session name), so each is escaped if it holds a control character: a
// KV writer must not be able to drive the operator's terminal or forge a line.
func printStatus(out io.Writer, st *Status, now time.Time) {
	p := printable.String
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tINSTANCE\tIMAGE\tSTATE\tVOTER\tLEADER\tHEALTHY\tOUTDATED")
	yes := map[bool]string{true: "yes", false: "-"}
	for _, s := range st.Servers {
		node := p(s.Node)
		if node == "" {
			node = "(not in raft)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", node, p(s.Instance), p(s.Image), p(s.State), yes[s.Voter], yes[s.Leader], yes[s.Healthy], yes[s.Outdated])
	}
	tw.Flush()
	if r := st.Roll; r != nil {
		fmt.Fprintf(out, "\nroll: %s to %s, started %s ago", p(r.Phase), p(r.Target), now.Sub(r.Started).Round(time.Second))
		if r.Failure != "" {
			fmt.Fprintf(out, "\nfailure: %s", p(r.Failure))
		}
		fmt.Fprintln(out)
		for _, e := range r.History {
			fmt.Fprintf(out, "  %s  %-8s %s\n", e.Time.Format("15:04:05"), p(e.Step), p(e.Detail))
		}
	} else {
		fmt.Fprintln(out, "\nroll: none yet")
	}
	for img, why := range st.BadImages {
		fmt.Fprintf(out, "bad image %s: %s\n", p(img), p(why))
	}
	if st.LockedBy != "" {
		fmt.Fprintf(out, "lock held by %s\n", p(st.LockedBy))
	}
	fmt.Fprintf(out, "next: %s: %s\n", p(st.Next.Kind), p(st.Next.Reason))
}

func (a *prog) printJSON(v any) int {
	enc := json.NewEncoder(a.env.Stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		a.log.Error("write output", "error", err)
		return app.ExitError
	}
	return app.ExitOK
}

func (a *prog) localUp(servers int, image string) int {
	if image == "" {
		fmt.Fprintln(a.env.Stderr, "rehydrate local up: --image is required")
		return app.ExitUsage
	}
	p, err := a.localProvider()
	if err != nil {
		a.log.Error("local provider", "error", err)
		return app.ExitConfig
	}
	ctx, cancel := withTimeout(3 * time.Minute)
	defer cancel()
	if err := ensureImage(ctx, p, image); err != nil {
		return a.exitCode(fmt.Errorf("%w: %w", roll.ErrCloud, err))
	}
	insts, err := p.Up(ctx, servers, image)
	if err != nil {
		return a.exitCode(fmt.Errorf("%w: %w", roll.ErrCloud, err))
	}
	addr, _ := p.ClientAddr()
	for _, i := range insts {
		fmt.Fprintf(a.env.Stdout, "server %s on %s (%s)\n", i.ID, i.Address, i.ImageID)
	}
	fmt.Fprintf(a.env.Stdout, "client agent on %s\n", addr)
	return app.ExitOK
}

// ensureImage registers image with the provider's defaults unless it exists.
func ensureImage(ctx context.Context, p *local.Provider, image string) error {
	imgs, err := p.Images(ctx)
	if err != nil {
		return err
	}
	for _, i := range imgs {
		if i.ID == image {
			return nil
		}
	}
	_, err = p.RegisterImage(ctx, image, local.ImageOptions{})
	return err
}

func (a *prog) localRegister(name, binary, extraFile string) int {
	p, err := a.localProvider()
	if err != nil {
		a.log.Error("local provider", "error", err)
		return app.ExitConfig
	}
	opts := local.ImageOptions{ConsulBinary: binary}
	if extraFile != "" {
		b, err := os.ReadFile(extraFile)
		if err != nil {
			fmt.Fprintf(a.env.Stderr, "rehydrate: read --extra-hcl: %v\n", err)
			return app.ExitUsage
		}
		opts.ExtraHCL = string(b)
	}
	img, err := p.RegisterImage(context.Background(), name, opts)
	if err != nil {
		return a.exitCode(fmt.Errorf("%w: %w", roll.ErrCloud, err))
	}
	fmt.Fprintf(a.env.Stdout, "registered image %s\n", img.ID)
	return app.ExitOK
}

func (a *prog) localDown() int {
	p, err := a.localProvider()
	if err != nil {
		a.log.Error("local provider", "error", err)
		return app.ExitConfig
	}
	ctx, cancel := withTimeout(2 * time.Minute)
	defer cancel()
	if err := p.Down(ctx); err != nil {
		return a.exitCode(fmt.Errorf("%w: %w", roll.ErrCloud, err))
	}
	fmt.Fprintln(a.env.Stdout, "local cluster stopped")
	return app.ExitOK
}
