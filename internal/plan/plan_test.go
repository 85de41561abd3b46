package plan

import (
	"fmt"
	"math/rand"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/consul-rehydrate/consul-rehydrate/internal/cloud"
	"github.com/consul-rehydrate/consul-rehydrate/internal/cluster"
)

var t0 = time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)

// world is a cluster under construction: each server is an instance and, unless it
// says otherwise, a healthy voter stable for an hour.
type world struct {
	in Input
}

func newWorld(n int, image string) *world {
	w := &world{in: Input{
		Now: t0, Desired: n, Stabilization: 10 * time.Second, LaunchTimeout: 10 * time.Minute, MaxTrailingLogs: 250,
		Cluster: &cluster.Observation{Healthy: true},
		Images: []cloud.Image{
			{ID: "A", Created: t0.Add(-72 * time.Hour)},
			{ID: "B", Created: t0.Add(-48 * time.Hour)},
			{ID: "C", Created: t0.Add(-24 * time.Hour)},
		},
	}}
	for i := 1; i <= n; i++ {
		w.server(fmt.Sprintf("i-%d", i), image, t0.Add(-time.Duration(100-i)*time.Hour))
	}
	if n > 0 {
		w.in.Cluster.Servers[0].Leader = true
	}
	return w
}

func (w *world) server(id, image string, launched time.Time) *cluster.Server {
	w.in.Instances = append(w.in.Instances, cloud.Instance{ID: id, ImageID: image, State: cloud.StateRunning, Launched: launched})
	w.in.Cluster.Servers = append(w.in.Cluster.Servers, cluster.Server{
		ID: "raft-" + id, Name: "node-" + id, InstanceID: id, ImageID: image,
		Voter: true, Healthy: true, StableSince: t0.Add(-time.Hour), LastIndex: 1000,
	})
	return &w.in.Cluster.Servers[len(w.in.Cluster.Servers)-1]
}

func (w *world) srv(id string) *cluster.Server { return w.in.Cluster.ByInstance(id) }

// surge adds a server on image launched `ago`, stable for `stable` (0: not a voter yet).
func (w *world) surge(id, image string, ago, stable time.Duration) *cluster.Server {
	s := w.server(id, image, t0.Add(-ago))
	s.StableSince = t0.Add(-stable)
	s.Voter = stable >= 10*time.Second
	return s
}

func (w *world) setLeader(id string) {
	for i := range w.in.Cluster.Servers {
		w.in.Cluster.Servers[i].Leader = w.in.Cluster.Servers[i].InstanceID == id
	}
}

func TestNext_Rules(t *testing.T) {
	tests := []struct {
		name   string
		build  func() Input
		kind   Kind
		inst   string
		reason string
	}{
		{"up to date does nothing", func() Input { return newWorld(3, "C").in }, Nothing, "", "up to date"},
		{"outdated healthy cluster launches one, naming the oldest follower it replaces", func() Input { return newWorld(3, "B").in }, Launch, "i-2", "surge one on C"},
		{"requested image is the target", func() Input {
			w := newWorld(3, "A")
			w.in.Requested = "B"
			return w.in
		}, Launch, "i-2", "on B"},
		{"unhealthy cluster never launches", func() Input {
			w := newWorld(3, "B")
			w.in.Cluster.Healthy = false
			w.srv("i-2").Healthy = false
			return w.in
		}, Hold, "", "not healthy"},
		{"missing server never launches", func() Input {
			w := newWorld(3, "B")
			w.in.Instances = w.in.Instances[:2]
			w.in.Cluster.Servers = w.in.Cluster.Servers[:2]
			return w.in
		}, Hold, "", "only 2 of 3"},
		{"a server not in raft blocks the launch", func() Input {
			w := newWorld(3, "B")
			w.in.Cluster.Servers = w.in.Cluster.Servers[:2]
			return w.in
		}, Hold, "", "will not launch"},
		{"surge not yet a voter: wait", func() Input {
			w := newWorld(3, "B")
			w.surge("i-9", "C", 20*time.Second, 0)
			return w.in
		}, Wait, "i-9", "not a voter yet"},
		{"surge voter but not stable long enough: wait", func() Input {
			w := newWorld(3, "B")
			w.surge("i-9", "C", 20*time.Second, 12*time.Second)
			w.in.Stabilization = 30 * time.Second
			return w.in
		}, Wait, "i-9", "stable for 12s of 30s"},
		{"surge trailing too far: wait", func() Input {
			w := newWorld(3, "B")
			w.surge("i-9", "C", time.Minute, time.Minute).LastIndex = 10
			return w.in
		}, Wait, "i-9", "trails the leader by 990"},
		{"settled surge: retire the oldest outdated follower", func() Input {
			w := newWorld(3, "B")
			w.surge("i-9", "C", time.Minute, 30*time.Second)
			return w.in
		}, Retire, "i-2", "retire outdated i-2"},
		{"unhealthy outdated server goes first", func() Input {
			w := newWorld(5, "B")
			w.surge("i-9", "C", time.Minute, 30*time.Second)
			w.srv("i-4").Healthy = false
			return w.in
		}, Retire, "i-4", ""},
		{"leader last: transfer when it is the only outdated one", func() Input {
			w := newWorld(3, "C")
			w.in.Instances[0].ImageID, w.srv("i-1").ImageID = "B", "B"
			w.in.RollTarget = "C"
			w.surge("i-9", "C", time.Minute, 30*time.Second).LastIndex = 1001
			return w.in
		}, Transfer, "i-1", "move leadership to node-i-9"},
		{"after the transfer the old leader is retired", func() Input {
			w := newWorld(3, "C")
			w.in.Instances[0].ImageID, w.srv("i-1").ImageID = "B", "B"
			w.in.RollTarget = "C"
			w.surge("i-9", "C", time.Minute, 30*time.Second)
			w.setLeader("i-9")
			return w.in
		}, Retire, "i-1", ""},
		{"retiring would leave fewer than N healthy voters", func() Input {
			w := newWorld(3, "B")
			w.surge("i-9", "C", time.Minute, 30*time.Second)
			w.srv("i-2").Healthy = false // two outdated servers ill: even retiring an ill one
			w.srv("i-3").Healthy = false // leaves only i-1 and i-9 healthy
			return w.in
		}, Hold, "", "would leave 2 healthy voters, fewer than 3"},
		{"surge that never settles fails the roll after launch_timeout", func() Input {
			w := newWorld(3, "B")
			w.in.RollTarget = "C"
			w.surge("i-9", "C", 11*time.Minute, 0)
			return w.in
		}, Fail, "i-9", "launch_timeout"},
		{"a settled target server falling ill later is not an image failure", func() Input {
			w := newWorld(3, "C")
			w.in.RollTarget = "C"
			w.in.Cluster.Healthy = false
			w.srv("i-3").Healthy = false
			return w.in
		}, Done, "", ""},
		{"more than one surge: refuse to act", func() Input {
			w := newWorld(3, "B")
			w.surge("i-8", "C", time.Minute, time.Minute)
			w.surge("i-9", "C", time.Minute, time.Minute)
			return w.in
		}, Nothing, "", "more than 3+1"},
		{"a retired server still leaving: wait", func() Input {
			w := newWorld(3, "C")
			w.in.RollTarget = "C"
			w.in.Instances = append(w.in.Instances, cloud.Instance{ID: "i-0", ImageID: "B", State: cloud.StateShuttingDown, Launched: t0.Add(-200 * time.Hour)})
			w.in.Cluster.Servers = append(w.in.Cluster.Servers, cluster.Server{ID: "raft-i-0", InstanceID: "i-0", Voter: true})
			return w.in
		}, Wait, "", "i-0 to leave"},
		{"roll in progress and all on target: done", func() Input {
			w := newWorld(3, "C")
			w.in.RollTarget = "C"
			return w.in
		}, Done, "", "all 3 servers run C"},
		{"roll in progress, all on target but short of servers: not done yet", func() Input {
			w := newWorld(3, "C")
			w.in.RollTarget = "C"
			w.in.Instances = w.in.Instances[:2]
			w.in.Cluster.Servers = w.in.Cluster.Servers[:2]
			return w.in
		}, Hold, "", "only 2 of 3 servers, all on C"},
		{"roll in progress and no instances at all: not done", func() Input {
			w := newWorld(3, "C")
			w.in.RollTarget = "C"
			w.in.Instances, w.in.Cluster.Servers = nil, nil
			return w.in
		}, Hold, "", "only 0 of 3 servers"},
		{"roll in progress keeps its target over a newer request, and takes its step", func() Input {
			w := newWorld(3, "B")
			w.in.RollTarget = "B"
			w.in.Requested = "C"
			return w.in
		}, Done, "", "all 3 servers run B; a roll to B is in progress; C can follow when it is done"},
		{"a request during a roll is a trigger like any other: the roll takes its next step", func() Input {
			w := newWorld(3, "A")
			w.in.RollTarget = "B"
			w.in.Requested = "C"
			return w.in
		}, Launch, "i-2", "surge one on B to replace i-2; a roll to B is in progress; C can follow"},
		{"a request refused outside a roll is refused during one too", func() Input {
			w := newWorld(3, "A")
			w.in.RollTarget = "C"
			w.in.Requested = "B"
			w.in.BadImages = map[string]bool{"B": true}
			return w.in
		}, Refuse, "", "image B is marked bad"},
		{"a continuation takes the roll's next step", func() Input {
			w := newWorld(3, "A")
			w.in.RollTarget = "B"
			w.in.Continue = true
			return w.in
		}, Launch, "i-2", "surge one on B"},
		{"a continuation with no roll in progress does nothing", func() Input {
			w := newWorld(3, "A")
			w.in.Continue = true
			return w.in
		}, Nothing, "", "a continuation, and no roll is in progress to continue"},
		{"image outside the filter is refused", func() Input {
			w := newWorld(3, "B")
			w.in.Requested = "ami-evil"
			return w.in
		}, Refuse, "", "not allowed by the image filter"},
		{"bad image is refused", func() Input {
			w := newWorld(3, "B")
			w.in.Requested = "C"
			w.in.BadImages = map[string]bool{"C": true}
			return w.in
		}, Refuse, "", "marked bad"},
		{"bad images are skipped when choosing the newest", func() Input {
			w := newWorld(3, "B")
			w.in.BadImages = map[string]bool{"C": true}
			return w.in
		}, Nothing, "", "up to date: all 3 servers run B"},
		{"downgrade is refused", func() Input {
			w := newWorld(3, "C")
			w.in.Requested = "A"
			return w.in
		}, Refuse, "", "image A is older than C, which i-1 runs; set roll.allow_downgrade = true to roll back"},
		{"downgrade allowed when configured", func() Input {
			w := newWorld(3, "C")
			w.in.Requested = "A"
			w.in.AllowDowngrade = true
			return w.in
		}, Launch, "i-2", "on A"},
		{"the newest allowed image older than a running one is refused too", func() Input {
			w := newWorld(3, "C")
			w.in.BadImages = map[string]bool{"C": true}
			return w.in
		}, Refuse, "", "the newest allowed image B is older than C, which i-1 runs; set roll.allow_downgrade = true"},
		// Pulling the running image (deprecated or untagged: it leaves the filter)
		// must not let any event roll the cluster back past the last completed roll.
		{"plain request: the newest allowed image older than the last completed target is refused", func() Input {
			w := pulled("C")
			return w.in
		}, Refuse, "", "the newest allowed image B (created 2026-11-21T12:00:00Z) is older than C (created 2026-11-22T12:00:00Z), the target of the last completed roll, whether or not the image filter still lists it; set roll.allow_downgrade = true to roll back"},
		{"named request older than the last completed target is refused", func() Input {
			w := pulled("C")
			w.in.Requested = "A"
			return w.in
		}, Refuse, "", "image A (created 2026-11-20T12:00:00Z) is older than C (created 2026-11-22T12:00:00Z), the target of the last completed roll"},
		{"a rollback past the last completed target when allowed", func() Input {
			w := pulled("C")
			w.in.AllowDowngrade = true
			return w.in
		}, Launch, "i-2", "surge one on B"},
		{"an image newer than the last completed target is no downgrade", func() Input {
			w := pulled("B")
			return w.in
		}, Launch, "i-2", "surge one on C"},
		{"the last completed target itself is no downgrade", func() Input {
			w := newWorld(3, "A")
			w.in.Completed = cloud.Image{ID: "B", Created: t0.Add(-48 * time.Hour)}
			w.in.Requested = "B"
			return w.in
		}, Launch, "i-2", "surge one on B"},
		{"a record that never knew its target's age: the age comes from the filter", func() Input {
			w := newWorld(3, "C")
			w.in.Completed = cloud.Image{ID: "C"}
			w.in.Requested = "B"
			return w.in
		}, Refuse, "", "image B (created 2026-11-21T12:00:00Z) is older than C (created 2026-11-22T12:00:00Z)"},
		{"a record that never knew its target's age, gone from the filter: no known age", func() Input {
			w := newWorld(3, "ami-old")
			w.in.Completed = cloud.Image{ID: "ami-old"}
			w.in.Requested = "B"
			return w.in
		}, Launch, "i-2", ""},
		{"a deregistered current image does not block an upgrade", func() Input {
			w := newWorld(3, "ami-old")
			w.in.Requested = "B"
			return w.in
		}, Launch, "i-2", ""},
		{"a crashed server whose node meta is gone is matched by address", func() Input {
			w := newWorld(3, "B")
			w.surge("i-9", "C", time.Minute, 30*time.Second)
			w.in.Instances[1].Address = "192.0.2.2"
			s := w.srv("i-2")
			s.InstanceID, s.Address, s.Healthy = "", "192.0.2.2:8300", false
			return w.in
		}, Retire, "i-2", "retire outdated i-2"},
		{"no image at all", func() Input {
			w := newWorld(3, "B")
			w.in.Images = nil
			return w.in
		}, Nothing, "", "no image matches"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Next(tt.build())
			assert.Equal(t, tt.kind, got.Kind, "step: %s", got)
			if tt.inst != "" {
				assert.Equal(t, tt.inst, got.Instance, "step: %s", got)
			}
			assert.Contains(t, got.String(), tt.reason)
		})
	}
}

// pulled is a cluster that completed a roll to image and then had image pulled:
// it left the filter (deprecated or untagged), while every server still runs it.
func pulled(image string) *world {
	w := newWorld(3, image)
	for _, img := range w.in.Images {
		if img.ID == image {
			w.in.Completed = img
		}
	}
	w.in.Images = slices.DeleteFunc(w.in.Images, func(img cloud.Image) bool { return img.ID == image })
	return w
}

func TestNext_ActionIDsAreDeterministic(t *testing.T) {
	w := newWorld(3, "B")
	a, b := Next(w.in), Next(w.in)
	require.Equal(t, Launch, a.Kind)
	assert.Equal(t, "launch/C/3-outdated", a.ActionID)
	assert.Equal(t, a, b)
}

// TestNext_FullRollTakesLeaderLast walks a whole roll through the planner, applying
// each step to the world the way the cloud and Consul would.
func TestNext_FullRollTakesLeaderLast(t *testing.T) {
	for _, n := range []int{3, 5} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			w := newWorld(n, "B")
			w.in.RollTarget = "C"
			var kinds []Kind
			retiredLeader := false
			for i := 0; i < 10*n; i++ {
				s := Next(w.in)
				kinds = append(kinds, s.Kind)
				switch s.Kind {
				case Launch:
					w.surge(fmt.Sprintf("i-new-%d", i), "C", 0, time.Minute).LastIndex = 1000
				case Transfer:
					for _, srv := range w.in.Cluster.Servers {
						if srv.ID == s.TransferTo {
							w.setLeader(srv.InstanceID)
						}
					}
				case Retire:
					require.False(t, w.srv(s.Instance).Leader, "retired the leader without a transfer")
					for _, srv := range w.in.Cluster.Servers {
						if srv.ImageID == "B" && srv.InstanceID != s.Instance {
							require.False(t, retiredLeader)
						}
					}
					if w.srv(s.Instance).ID == "raft-i-1" {
						retiredLeader = true
					}
					w.remove(s.Instance)
				case Done:
					assert.True(t, retiredLeader, "the original leader was replaced")
					assert.Len(t, w.in.Instances, n)
					return
				default:
					t.Fatalf("unexpected step %s after %v", s, kinds)
				}
			}
			t.Fatalf("roll did not finish: %v", kinds)
		})
	}
}

func (w *world) remove(id string) {
	var insts []cloud.Instance
	for _, i := range w.in.Instances {
		if i.ID != id {
			insts = append(insts, i)
		}
	}
	var srvs []cluster.Server
	for _, s := range w.in.Cluster.Servers {
		if s.InstanceID != id {
			srvs = append(srvs, s)
		}
	}
	w.in.Instances, w.in.Cluster.Servers = insts, srvs
}

// TestNext_SafetyProperties checks the rules of DESIGN.md over random cluster states.
func TestNext_SafetyProperties(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	images := []string{"A", "B", "C"}
	kinds, rebalances := map[Kind]int{}, 0
	for iter := 0; iter < 20000; iter++ {
		n := []int{3, 5}[rng.Intn(2)]
		w := newWorld(0, "")
		w.in.Desired = n
		w.in.Cluster.Healthy = rng.Intn(4) > 0
		count := n - 1 + rng.Intn(4) // N-1 .. N+2
		for i := 0; i < count; i++ {
			s := w.server(fmt.Sprintf("i-%d", i), images[rng.Intn(3)], t0.Add(-time.Duration(rng.Intn(1000))*time.Minute))
			s.Healthy = rng.Intn(6) > 0
			s.Voter = rng.Intn(6) > 0
			s.StableSince = t0.Add(-time.Duration(rng.Intn(60)) * time.Second)
			s.LastIndex = uint64(900 + rng.Intn(200))
			if rng.Intn(10) == 0 {
				w.in.Cluster.Servers = w.in.Cluster.Servers[:len(w.in.Cluster.Servers)-1] // not joined yet
			}
		}
		if len(w.in.Cluster.Servers) > 0 && rng.Intn(8) > 0 {
			w.in.Cluster.Servers[rng.Intn(len(w.in.Cluster.Servers))].Leader = true
		}
		if rng.Intn(2) == 0 {
			w.in.RollTarget = images[1+rng.Intn(2)]
		}
		azs := []string{"a", "b", "c"}[:1+rng.Intn(3)]
		for i := range w.in.Instances {
			w.in.Instances[i].AZ = azs[rng.Intn(len(azs))]
		}
		// The group's zones (cloud.Survey): those the instances are in, perhaps one
		// more left empty; or none, as from a provider without zones.
		if rng.Intn(4) > 0 {
			w.in.Zones = []string{"a", "b", "c"}[:len(azs)+rng.Intn(4-len(azs))]
		}
		// The downgrade rule: a last completed target, a request, an image pulled
		// from the filter.
		if rng.Intn(2) == 0 {
			w.in.Completed = w.in.Images[rng.Intn(3)]
		}
		if rng.Intn(2) == 0 {
			w.in.Requested = images[rng.Intn(3)]
		}
		if rng.Intn(3) == 0 {
			i := rng.Intn(3)
			w.in.Images = slices.Delete(slices.Clone(w.in.Images), i, i+1)
		}
		w.in.AllowDowngrade = rng.Intn(8) == 0
		s := Next(w.in)
		if s.Kind == Launch && w.in.RollTarget == "" && !w.in.AllowDowngrade && w.in.Completed.ID != "" {
			created := map[string]time.Time{"A": t0.Add(-72 * time.Hour), "B": t0.Add(-48 * time.Hour), "C": t0.Add(-24 * time.Hour)}
			require.False(t, created[s.Image].Before(w.in.Completed.Created),
				"started a roll to %s, older than the last completed target %s: %s", s.Image, w.in.Completed.ID, s)
		}
		live := len(w.in.Instances)
		healthyVoters := 0
		for _, srv := range w.in.Cluster.Servers {
			if srv.Voter && srv.Healthy {
				healthyVoters++
			}
		}
		switch s.Kind {
		case Launch:
			require.True(t, w.in.Cluster.Healthy, "launched while unhealthy: %s", s)
			require.Equal(t, n, live, "launch must keep at most one surge: %s", s)
			require.GreaterOrEqual(t, healthyVoters, n)
		case Retire:
			srv := w.srv(s.Instance)
			after := healthyVoters
			if srv != nil && srv.Voter && srv.Healthy {
				after--
			}
			require.GreaterOrEqual(t, after, n, "retire left fewer than N healthy voters: %s", s)
			require.False(t, srv != nil && srv.Leader, "retired the leader: %s", s)
			var target string
			for _, i := range w.in.Instances {
				if i.ID == s.Instance {
					target = i.ImageID
				}
			}
			outdated := 0
			for _, i := range w.in.Instances {
				if i.ImageID != s.Image {
					outdated++
				}
			}
			if outdated > 0 {
				require.NotEqual(t, s.Image, target, "retired a server on the target image while outdated ones are left: %s", s)
			}
			// Never fewer zones than before the surge: the surge is the newest live
			// instance, and the pair (surge, retire) keeps the spread.
			newest := w.in.Instances[0]
			for _, i := range w.in.Instances {
				if i.Launched.After(newest.Launched) {
					newest = i
				}
			}
			// Unless the group put the surge where nothing outdated is left (no retire
			// keeps every zone then; see retireOrder).
			if !onlyTargetsInCrowdedZones(w.in.Instances, s.Image) {
				require.GreaterOrEqual(t, zones(w.in.Instances, s.Instance), zones(w.in.Instances, newest.ID),
					"retire %s left fewer zones than before the surge %s: %+v", s.Instance, newest.ID, w.in.Instances)
			}
			// The surplus trimmed once every server is on the target goes from a
			// zone that keeps a server.
			if outdated == 0 && crowdedZone(w.in.Instances) > 1 {
				require.Equal(t, zones(w.in.Instances, ""), zones(w.in.Instances, s.Instance),
					"trimmed %s lost a zone: %+v", s.Instance, w.in.Instances)
			}
		case Transfer:
			require.True(t, w.srv(s.Instance).Leader)
		case Done:
			// Done only once the servers are spread as evenly as the zones allow.
			if len(w.in.Zones) >= 2 {
				per := map[string]int{}
				for _, i := range w.in.Instances {
					if i.Live() {
						per[i.AZ]++
					}
				}
				most, least := per[w.in.Zones[0]], per[w.in.Zones[0]]
				for _, z := range w.in.Zones {
					most, least = max(most, per[z]), min(least, per[z])
				}
				require.LessOrEqual(t, most-least, 1, "done while spread %v over %v: %s", per, w.in.Zones, s)
			}
		}
		kinds[s.Kind]++
		if s.Kind == Launch && strings.HasSuffix(s.ActionID, "/rebalance") {
			rebalances++
		}
	}
	// The zone branch was reached: rolls that end unbalanced surge to rebalance.
	assert.Positive(t, rebalances, "no rebalancing launch in %v", kinds)
	assert.Positive(t, kinds[Done], "no roll done in %v", kinds)
}

// crowdedZone is how many live servers the most crowded zone holds.
func crowdedZone(insts []cloud.Instance) int {
	per, most := map[string]int{}, 0
	for _, i := range insts {
		if i.Live() {
			per[i.AZ]++
			most = max(most, per[i.AZ])
		}
	}
	return most
}

// onlyTargetsInCrowdedZones reports whether every most crowded zone holds only
// servers on target.
func onlyTargetsInCrowdedZones(insts []cloud.Instance, target string) bool {
	per, outdated, most := map[string]int{}, map[string]bool{}, 0
	for _, i := range insts {
		if i.Live() {
			per[i.AZ]++
			most = max(most, per[i.AZ])
			outdated[i.AZ] = outdated[i.AZ] || i.ImageID != target
		}
	}
	for az, n := range per {
		if n == most && outdated[az] {
			return false
		}
	}
	return true
}

// zones counts the distinct zones of the live instances but the one with id except.
func zones(insts []cloud.Instance, except string) int {
	seen := map[string]bool{}
	for _, i := range insts {
		if i.Live() && i.ID != except {
			seen[i.AZ] = true
		}
	}
	return len(seen)
}

// TestNext_RetiresInTheSurgesZone: the group launched the surge into zone a (its
// emptiest, after AWS's balancing), so the outdated server retired is a's, though
// it is not the oldest and it leads: leadership moves first.
func TestNext_RetiresInTheSurgesZone(t *testing.T) {
	w := newWorld(3, "B")
	w.in.RollTarget = "C"
	for i, az := range []string{"a", "b", "c"} {
		w.in.Instances[i].AZ = az
	}
	w.setLeader("i-1")
	w.surge("i-9", "C", time.Minute, 30*time.Second)
	w.in.Instances[3].AZ = "a"
	s := Next(w.in)
	require.Equal(t, Transfer, s.Kind, "%s", s)
	assert.Equal(t, "i-1", s.Instance)
	assert.Equal(t, "raft-i-9", s.TransferTo)

	w.setLeader("i-9")
	s = Next(w.in)
	require.Equal(t, Retire, s.Kind, "%s", s)
	assert.Equal(t, "i-1", s.Instance, "the outdated server in the surge's zone")

	// Without zones (local provider), the oldest follower goes, the leader last.
	for i := range w.in.Instances {
		w.in.Instances[i].AZ = ""
	}
	w.setLeader("i-1")
	s = Next(w.in)
	require.Equal(t, Retire, s.Kind, "%s", s)
	assert.Equal(t, "i-2", s.Instance)
}

// TestNext_FullRollKeepsOneServerPerZone walks whole rolls of 3 and 5 servers over
// 3 zones, placing each surge as the group does (the zone with the fewest live
// instances, ties to the first zone: the worst case, as AWS documents no tie-break),
// with the leader in each zone in turn: the roll ends spread as it began, with at
// most one launch more than servers.
func TestNext_FullRollKeepsOneServerPerZone(t *testing.T) {
	zoneList := []string{"a", "b", "c"}
	for _, n := range []int{3, 5} {
		for lead := 1; lead <= 3; lead++ {
			t.Run(fmt.Sprintf("%d servers, leader i-%d", n, lead), func(t *testing.T) {
				w := newWorld(n, "B")
				w.in.RollTarget = "C"
				w.in.Zones = zoneList
				for i := range w.in.Instances {
					w.in.Instances[i].AZ = zoneList[i%3]
				}
				w.setLeader(fmt.Sprintf("i-%d", lead))
				spread := func() map[string]int {
					m := map[string]int{}
					for _, i := range w.in.Instances {
						m[i.AZ]++
					}
					return m
				}
				start, transfers, launches := spread(), 0, 0
				for i := 0; i < 10*n; i++ {
					s := Next(w.in)
					switch s.Kind {
					case Launch:
						launches++
						per := spread()
						az := zoneList[0]
						for _, z := range zoneList {
							if per[z] < per[az] {
								az = z
							}
						}
						w.surge(fmt.Sprintf("i-new-%d", i), "C", 0, time.Minute).LastIndex = 1000
						w.in.Instances[len(w.in.Instances)-1].AZ = az
					case Transfer:
						transfers++
						for _, srv := range w.in.Cluster.Servers {
							if srv.ID == s.TransferTo {
								w.setLeader(srv.InstanceID)
							}
						}
					case Retire:
						require.False(t, w.srv(s.Instance).Leader, "retired the leader without a transfer")
						w.remove(s.Instance)
					case Done:
						shape := func(m map[string]int) []int {
							var c []int
							for _, v := range m {
								c = append(c, v)
							}
							slices.Sort(c)
							return c
						}
						assert.Equal(t, shape(start), shape(spread()), "the roll ends as balanced as it began: %v", spread())
						assert.LessOrEqual(t, launches, n+2, "at most two surges spent on bad placements")
						assert.LessOrEqual(t, transfers, 2)
						return
					default:
						t.Fatalf("unexpected step %s", s)
					}
				}
				t.Fatal("roll did not finish")
			})
		}
	}
}

// TestNext_GroupProblemsRefuseANewRollAndHoldOne: a group unfit for a roll (an
// instance refresh running, say) refuses a new roll (exit 17 by the CLI) and holds
// one in progress before its next act.
func TestNext_GroupProblemsRefuseANewRollAndHoldOne(t *testing.T) {
	w := newWorld(3, "B")
	w.in.Problems = []string{"an instance refresh is in progress", "MinSize is 1, not 3"}
	s := Next(w.in)
	assert.Equal(t, Refuse, s.Kind)
	assert.Contains(t, s.Reason, "the group is not fit for a roll: an instance refresh is in progress; MinSize is 1, not 3")

	w.in.RollTarget = "C"
	s = Next(w.in)
	assert.Equal(t, Hold, s.Kind)
	assert.Contains(t, s.Reason, "instance refresh")

	w.surge("i-9", "C", time.Minute, 30*time.Second)
	s = Next(w.in)
	assert.Equal(t, Hold, s.Kind, "no retire either")

	// Up to date: nothing to refuse.
	up := newWorld(3, "C")
	up.in.Problems = w.in.Problems
	assert.Equal(t, Nothing, Next(up.in).Kind)
}

// TestNext_FailedLaunches: while the surge has not appeared, the group's failed
// launches fail the roll at once when they are the image's, else once
// launch_timeout has passed since the surge was asked for; until then it waits.
func TestNext_FailedLaunches(t *testing.T) {
	w := newWorld(3, "B")
	w.in.RollTarget = "C"
	w.in.Surged = t0.Add(-time.Minute)
	capacity := cloud.LaunchFailure{Time: t0.Add(-30 * time.Second), Message: "InsufficientInstanceCapacity"}
	w.in.LaunchFailures = []cloud.LaunchFailure{capacity}
	s := Next(w.in)
	assert.Equal(t, Wait, s.Kind, "%s", s)
	assert.Contains(t, s.Reason, "InsufficientInstanceCapacity")

	w.in.Surged = t0.Add(-11 * time.Minute)
	s = Next(w.in)
	assert.Equal(t, Fail, s.Kind, "%s", s)
	assert.Equal(t, "", s.Instance, "no instance to terminate")
	assert.Equal(t, "fail/launch/C", s.ActionID)
	assert.Contains(t, s.Reason, "launch_timeout")

	w.in.Surged = t0.Add(-time.Minute)
	w.in.LaunchFailures = append(w.in.LaunchFailures, cloud.LaunchFailure{Message: "image ami-x is encrypted with a key the group may not use", Image: true})
	s = Next(w.in)
	assert.Equal(t, Fail, s.Kind, "%s", s)
	assert.Contains(t, s.Reason, "encrypted")

	// No surge asked for (a new roll): failures of old are not this roll's.
	w.in.Surged = time.Time{}
	assert.Equal(t, Launch, Next(w.in).Kind)
}

// TestNext_WaitsForAnInstanceTheCloudDoesNotDescribeYet: a surge the group names
// but EC2 does not describe yet has no image; it is neither outdated (so never
// retired) nor on the target (so no second launch).
func TestNext_WaitsForAnInstanceTheCloudDoesNotDescribeYet(t *testing.T) {
	w := newWorld(3, "B")
	w.in.RollTarget = "C"
	w.in.Instances = append(w.in.Instances, cloud.Instance{ID: "i-new", State: cloud.StatePending, Launched: t0})
	s := Next(w.in)
	assert.Equal(t, Wait, s.Kind, "%s", s)
	assert.Contains(t, s.Reason, "i-new")
}

func BenchmarkNext(b *testing.B) {
	w := newWorld(5, "B")
	w.surge("i-9", "C", time.Minute, 30*time.Second)
	b.ReportAllocs()
	for b.Loop() {
		_ = Next(w.in)
	}
}
