package deploy

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
)

// nodeHealth is the health of a service's instances on one node, as the catalog
// (and so every load balancer and DNS query) sees it.
type nodeHealth struct {
	instances int
	passing   bool   // at least one instance, and every check of every one passes
	summary   string // the checks that do not pass, for errors
}

// health reads the health of service's instances, by node.
func health(ctx context.Context, c *api.Client, service string) (map[string]nodeHealth, error) {
	var entries []*api.ServiceEntry
	err := retry(ctx, func() (err error) {
		entries, _, err = c.Health().Service(service, "", false, (&api.QueryOptions{}).WithContext(ctx))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("%w: health of service %s: %w", ErrConsul, service, err)
	}
	out := map[string]nodeHealth{}
	for _, e := range entries {
		if e.Node == nil {
			continue
		}
		h := out[e.Node.Node]
		if h.instances == 0 {
			h.passing = true
		}
		h.instances++
		for _, chk := range e.Checks {
			if chk.Status != api.HealthPassing {
				h.passing = false
				h.summary += fmt.Sprintf("%s %s: %s; ", chk.Name, chk.Status, strings.TrimSpace(firstLine(chk.Output)))
			}
		}
		out[e.Node.Node] = h
	}
	return out, nil
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return s
}

// waitHealthy waits until every check of service on node has passed without a break
// for minHealthy, at most timeout. The node's own checks count too: a node that
// fails its serf health check serves nothing.
func waitHealthy(ctx context.Context, c *api.Client, service, node string, minHealthy, timeout, poll time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var since time.Time
	last := "no instance registered"
	for {
		hs, err := health(ctx, c, service)
		if err != nil && ctx.Err() == nil {
			return err
		}
		h, ok := hs[node]
		switch {
		case err != nil:
		case !ok:
			since, last = time.Time{}, "no instance registered"
		case !h.passing:
			since, last = time.Time{}, strings.TrimSuffix(h.summary, "; ")
		case since.IsZero():
			since = time.Now()
		}
		if !since.IsZero() && time.Since(since) >= minHealthy {
			return nil
		}
		select {
		case <-ctx.Done():
			if !since.IsZero() {
				last = fmt.Sprintf("passing for only %s", time.Since(since).Round(time.Millisecond))
			}
			return fmt.Errorf("checks of %s on %s did not pass for %s within %s: %s", service, node, minHealthy, timeout, last)
		case <-time.After(poll):
		}
	}
}

// unavailable lists the nodes of nodes whose instances of the service are not all
// passing, sorted.
func unavailable(hs map[string]nodeHealth, nodes []string) []string {
	var out []string
	for _, n := range nodes {
		if h, ok := hs[n]; !ok || !h.passing {
			out = append(out, n)
		}
	}
	sort.Strings(out)
	return out
}
