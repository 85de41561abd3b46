package deploy

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/consul-rehydrate/consul-rehydrate/internal/poll"
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
		return nil, consulErr(ctx, fmt.Errorf("health of service %s: %w", service, err))
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

// errHealthWait is the cause waitHealthy's own bound ends its context with, so
// that its end is told apart from the end of the handler's context.
var errHealthWait = errors.New("health wait over")

// waitHealthy waits until every check of service on node has passed without a break
// for minHealthy, at most timeout. The node's own checks count too: a node that
// fails its serf health check serves nothing. If ctx ends first, it returns ctx's
// cause.
func waitHealthy(ctx context.Context, c *api.Client, service, node string, minHealthy, timeout, interval time.Duration) error {
	// The bound is also the context's, so that no health read outlasts it.
	wctx, cancel := context.WithTimeoutCause(ctx, timeout, errHealthWait)
	defer cancel()
	var since time.Time
	last := "no instance registered"
	err := poll.Until(wctx, interval, timeout, func(ctx context.Context) (bool, error) {
		hs, err := health(ctx, c, service)
		if err != nil {
			return false, err
		}
		h, ok := hs[node]
		switch {
		case !ok:
			since, last = time.Time{}, "no instance registered"
		case !h.passing:
			since, last = time.Time{}, strings.TrimSuffix(h.summary, "; ")
		case since.IsZero():
			since = time.Now()
		}
		return !since.IsZero() && time.Since(since) >= minHealthy, nil
	})
	switch {
	case err == nil:
		return nil
	case errors.Is(err, poll.ErrTimeout), errors.Is(context.Cause(wctx), errHealthWait):
		// The bound passed: the checks did not pass in time.
	default:
		return err // a health read failed, or ctx ended
	}
	if !since.IsZero() {
		last = fmt.Sprintf("passing for only %s", time.Since(since).Round(time.Millisecond))
	}
	return fmt.Errorf("checks of %s on %s did not pass for %s within %s: %s", service, node, minHealthy, timeout, last)
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
