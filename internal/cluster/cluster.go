// Package cluster observes a Consul cluster's servers: autopilot health, the raft
// configuration, the leader, and each server's node meta (image_id, instance_id).
package cluster

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/consul-rehydrate/consul-rehydrate/internal/poll"
)

// Node meta keys that tie a Consul server to the cloud instance it runs on.
const (
	MetaImageID    = "image_id"
	MetaInstanceID = "instance_id"
)

// Server is one server in the raft configuration, as autopilot sees it.
type Server struct {
	ID         string // raft server ID (the node ID)
	Name       string // node name
	Address    string // raft address, host:port
	ImageID    string // node meta image_id ("" if the node does not say)
	InstanceID string // node meta instance_id
	Voter      bool
	Leader     bool
	Healthy    bool
	SerfStatus string
	// StableSince is when autopilot last saw the server turn healthy.
	StableSince time.Time
	LastIndex   uint64
}

// Observation is one look at the cluster.
type Observation struct {
	Healthy          bool
	FailureTolerance int
	// Servers are those in the raft configuration, sorted by name.
	Servers []Server
	// Joining are servers registered in the catalog (alive in serf) but not yet in the
	// raft configuration, keyed by instance ID.
	Joining map[string]Server
}

// Leader returns the leading server, or nil.
func (o *Observation) Leader() *Server {
	for i := range o.Servers {
		if o.Servers[i].Leader {
			return &o.Servers[i]
		}
	}
	return nil
}

// ByInstance returns the server in the raft configuration running the instance, or nil.
func (o *Observation) ByInstance(id string) *Server {
	for i := range o.Servers {
		if id != "" && o.Servers[i].InstanceID == id {
			return &o.Servers[i]
		}
	}
	return nil
}

// Trailing returns how many raft log entries s trails the leader by (0 if no leader).
func (o *Observation) Trailing(s *Server) uint64 {
	l := o.Leader()
	if l == nil || s.LastIndex >= l.LastIndex {
		return 0
	}
	return l.LastIndex - s.LastIndex
}

// Observe takes one observation with two requests: autopilot health (which lists the
// raft configuration with each server's health and log index) and the catalog's
// `consul` service (which carries the servers' node meta).
func Observe(ctx context.Context, c *api.Client) (*Observation, error) {
	q := (&api.QueryOptions{}).WithContext(ctx)
	var health *api.OperatorHealthReply
	err := read(ctx, func() (err error) { health, err = c.Operator().AutopilotServerHealth(q); return err })
	if err != nil {
		return nil, fmt.Errorf("read autopilot health: %w", err)
	}
	// A consistent read: right after a leadership change (the roll's own transfer) a
	// new leader answers default reads from its FSM, which may not yet have applied
	// every entry its predecessor committed, so a server's node meta read as missing
	// (2 of 16 runs of TestObserveRaft_SeesALeadershipTransferAtOnce). A consistent
	// read waits, within the RPC hold timeout, for the leader's barrier.
	// https://developer.hashicorp.com/consul/api-docs/features/consistency
	var svcs []*api.CatalogService
	err = read(ctx, func() (err error) {
		svcs, _, err = c.Catalog().Service("consul", "", (&api.QueryOptions{RequireConsistent: true}).WithContext(ctx))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("read consul service catalog: %w", err)
	}
	meta := make(map[string]map[string]string, len(svcs))
	for _, s := range svcs {
		meta[s.Node] = s.NodeMeta
	}

	obs := &Observation{Healthy: health.Healthy, FailureTolerance: health.FailureTolerance, Joining: map[string]Server{}}
	inRaft := map[string]bool{}
	for _, h := range health.Servers {
		obs.Servers = append(obs.Servers, Server{
			ID: h.ID, Name: h.Name, Address: h.Address,
			ImageID: meta[h.Name][MetaImageID], InstanceID: meta[h.Name][MetaInstanceID],
			Voter: h.Voter, Leader: h.Leader, Healthy: h.Healthy, SerfStatus: h.SerfStatus,
			StableSince: h.StableSince, LastIndex: h.LastIndex,
		})
		inRaft[h.Name] = true
	}
	for _, s := range svcs {
		if inRaft[s.Node] || s.NodeMeta[MetaInstanceID] == "" {
			continue
		}
		obs.Joining[s.NodeMeta[MetaInstanceID]] = Server{
			Name: s.Node, Address: s.Address, ImageID: s.NodeMeta[MetaImageID], InstanceID: s.NodeMeta[MetaInstanceID],
		}
	}
	sort.Slice(obs.Servers, func(i, j int) bool { return obs.Servers[i].Name < obs.Servers[j].Name })
	return obs, nil
}

// ObserveRaft is Observe corrected by the raft configuration, one request more.
// Autopilot refreshes its view every 2s, so right after a leadership transfer or a
// server's removal it still shows the old leader or the departed server; the raft
// configuration, read from the leader, already does not. Servers autopilot lists but
// raft no longer has are dropped, leader and voter flags come from raft, and a server
// raft has but autopilot does not list yet is added, not healthy.
func ObserveRaft(ctx context.Context, c *api.Client) (*Observation, error) {
	obs, err := Observe(ctx, c)
	if err != nil {
		return nil, err
	}
	var rc *api.RaftConfiguration
	err = read(ctx, func() (err error) {
		rc, err = c.Operator().RaftGetConfiguration((&api.QueryOptions{}).WithContext(ctx))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("read raft configuration: %w", err)
	}
	byID := make(map[string]Server, len(obs.Servers))
	for _, s := range obs.Servers {
		byID[s.ID] = s
	}
	servers := make([]Server, 0, len(rc.Servers))
	for _, r := range rc.Servers {
		s, ok := byID[r.ID]
		if !ok {
			s = Server{ID: r.ID, Name: r.Node, Address: r.Address}
			for id, j := range obs.Joining {
				if j.Name == r.Node {
					s.ImageID, s.InstanceID = j.ImageID, j.InstanceID
					delete(obs.Joining, id)
				}
			}
		}
		s.Voter, s.Leader = r.Voter, r.Leader
		servers = append(servers, s)
	}
	sort.Slice(servers, func(i, j int) bool { return servers[i].Name < servers[j].Name })
	obs.Servers = servers
	return obs, nil
}

// Bounds of read's retry: a leader election or hand-off takes a few seconds.
const (
	readFor   = 10 * time.Second
	readFirst = 200 * time.Millisecond
	readMax   = 2 * time.Second
)

// read runs op, trying again while Consul answers with a server error: during a
// leadership change a consistent read is refused with "node is not the leader" and
// a forwarded one fails with "rpc error making call: EOF" (both 500), seen when
// `rehydrate status` ran 40 ms after the roll's own transfer (CI, stop 21).
func read(ctx context.Context, op func() error) error {
	return poll.Retry(ctx, readFor, readFirst, readMax, func(err error) bool {
		var se api.StatusError
		return errors.As(err, &se) && se.Code >= 500
	}, op)
}
