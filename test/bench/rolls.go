package main

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/consul-rehydrate/consul-rehydrate/config"
	"github.com/consul-rehydrate/consul-rehydrate/internal/cloud"
	"github.com/consul-rehydrate/consul-rehydrate/internal/payload"
	"github.com/consul-rehydrate/consul-rehydrate/internal/workload"
)

// load is the workload running during a roll, or during the steady state after
// one: writes of new keys, consistent reads of one key, and check-and-set
// read-modify-writes of casKeys, every attempt recorded for the linearizability
// check and every operation for the latency-over-time picture.
type load struct {
	rec     *workload.Recorder
	w       *workload.Writer
	r       *workload.Reader
	cas     *workload.CASer
	leaders *workload.LeaderWatch
	health  *healthWatch
}

// startLoad starts the load on cl; phase names its writes' prefix, so that each
// phase of a case writes keys of its own.
func startLoad(ctx context.Context, cl *cluster, phase string) (*load, error) {
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if _, err := cl.c.KV().Put(&api.KVPair{Key: readKey, Value: []byte(readValue)}, (&api.WriteOptions{}).WithContext(wctx)); err != nil {
		return nil, fmt.Errorf("write %s: %w", readKey, err)
	}
	rec := workload.NewRecorder()
	return &load{
		rec:     rec,
		w:       workload.StartWriterRecorded(cl.writeC, "bench/writes/"+phase+"/", rate, attempts, opTimeout, rec),
		r:       workload.StartReaderRecorded(cl.readC, readKey, []byte(readValue), rate, attempts, opTimeout, rec),
		cas:     workload.StartCAS(cl.casC, casKeys, casRate, attempts, opTimeout, rec),
		leaders: workload.WatchLeader(cl.c, 100*time.Millisecond),
		health:  watchHealth(cl.c, sampleEvery, cl.servers),
	}, nil
}

// stop stops the workload, checks its history and records what it saw in r; it
// returns when each server was first seen healthy, and healthy and a voter.
func (l *load) stop(r *Roll) (firstHealthy, firstVoter map[string]time.Time) {
	firstHealthy, firstVoter, exposure := l.health.Stop()
	r.Exposure, r.versionsAtOnce = &exposure, l.health.versionsAtOnce
	changes, noLeader := l.leaders.Stop()
	r.LeaderChanges, r.NoLeaderSeconds = changes, round1(noLeader.Seconds())
	// All stop at once: each waits for its operations in flight, up to 15 s.
	reads := make(chan workload.ReadResult)
	go func() { reads <- l.r.Stop() }()
	cass := make(chan workload.CASResult)
	go func() { cass <- l.cas.Stop() }()
	// The read-back needs a leader; a cluster that lost quorum has none, and then
	// lost writes are unknown, not zero.
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	wr, err := l.w.Stop(ctx)
	rr, cr := <-reads, <-cass
	r.Reads = &Reads{OK: rr.OK, Failed: rr.Failed, LatencyMS: ms(rr.Latency), SpentMS: ms(rr.Spent)}
	r.Writes = &Writes{OK: wr.OK, Failed: wr.Failed,
		LatencyMS: Latency{P50: msOf(wr.P50), P99: msOf(wr.P99), Max: msOf(wr.Max)}, SpentMS: ms(wr.Spent)}
	if err == nil {
		r.Writes.Lost = &wr.Lost
	} else {
		r.Writes.LostUnknown = err.Error()
	}
	r.MaxWriteMS = r.Writes.SpentMS.Max
	r.CAS = &CAS{OK: cr.OK, Conflicts: cr.Conflicts, Failed: cr.Failed, LatencyMS: ms(cr.Latency)}
	t := time.Now()
	lin := l.rec.Check(checkBound)
	r.Linearizability, r.Linearizable = &lin, ptr(lin.Linearizable)
	r.CheckSeconds = round1(time.Since(t).Seconds())
	r.samples = l.rec.Samples()
	return firstHealthy, firstVoter
}

// rollOurs rolls cl to image target (registered) through the real watches, under
// load, and returns the figures. keys is what was loaded before (for the report).
func (b *bench) rollOurs(ctx context.Context, cl *cluster, name, target string, keys int) (r Roll) {
	r = Roll{Case: name, Kind: "ours", Servers: cl.servers, Keys: keys, Target: target}
	l, err := startLoad(ctx, cl, name)
	if err != nil {
		r.Error = err.Error()
		return r
	}
	body, _ := payload.NewRequestPayload(target)
	sleep(ctx, warmUp)
	b.observe(name + " start")
	start := time.Now()
	r.start = start
	if _, _, err := cl.c.Event().Fire(&api.UserEvent{Name: config.DefaultRollEventName, Payload: body}, nil); err != nil {
		l.stop(&r)
		r.Error = fmt.Sprintf("fire: %v", err)
		return r
	}
	progress("%s: fired the event for image %s; the watches roll it", name, target)
	rec, seen, err := cl.waitRolled(ctx, target, time.Duration(cl.servers)*rollBoundPerServer)
	r.RollSeconds = round1(time.Since(start).Seconds())
	b.observe(name + " end")
	r.Completed = err == nil
	// The retired servers' processes finish exiting meanwhile; timed alongside.
	gone := make(chan *float64, 1)
	go func() {
		if err == nil && cl.waitOldGone(ctx, target, time.Minute) {
			gone <- ptr(round1(time.Since(start).Seconds()))
		}
		close(gone)
	}()
	firstHealthy, firstVoter := l.stop(&r)
	r.OldGoneSeconds = <-gone
	for _, in := range sortedByLaunch(seen) {
		if in.Launched.After(start.Add(-time.Second)) {
			r.NewServers = append(r.NewServers, newServer(in, firstHealthy, firstVoter))
		}
	}
	if rec != nil {
		for _, h := range rec.History {
			if h.Time.Before(start.Add(-time.Second)) {
				continue // an earlier roll's
			}
			r.History = append(r.History, Step{AtSeconds: round1(h.Time.Sub(start).Seconds()), Step: h.Step, Instance: h.Instance, Detail: h.Detail})
		}
	}
	r.summarize()
	progress("%s: %s", name, r.oneLine())
	if err != nil {
		r.Error = err.Error()
	}
	return r
}

// steady runs the same load on cl, which no roll is changing, for as long as r's
// roll took, and records it and the ratios of r's p99 to its.
func (b *bench) steady(ctx context.Context, cl *cluster, r *Roll) error {
	d := time.Duration(r.RollSeconds * float64(time.Second))
	progress("%s: steady state: the same load, no roll, for %s", r.Case, d)
	l, err := startLoad(ctx, cl, r.Case+"-steady")
	if err != nil {
		return err
	}
	b.observe(r.Case + " steady start")
	sleep(ctx, d)
	b.observe(r.Case + " steady end")
	var s Roll
	l.stop(&s)
	r.Steady = &Steady{Seconds: round1(d.Seconds()), Writes: s.Writes, Reads: s.Reads, CAS: s.CAS,
		Linearizability: s.Linearizability, Linearizable: s.Linearizable, LeaderChanges: s.LeaderChanges}
	if r.Writes != nil && r.Reads != nil {
		r.Steady.WriteP99Ratio = round2(ratio(r.Writes.SpentMS.P99, s.Writes.SpentMS.P99))
		r.Steady.ReadP99Ratio = round2(ratio(r.Reads.SpentMS.P99, s.Reads.SpentMS.P99))
		r.P99RatioToSteady = ptr(max(r.Steady.WriteP99Ratio, r.Steady.ReadP99Ratio))
	}
	progress("%s: steady writes p50/p99/max %s ms, reads %s ms; roll p99 / steady p99: writes ×%.2f, reads ×%.2f",
		r.Case, fmtLat(s.Writes.SpentMS), fmtLat(s.Reads.SpentMS), r.Steady.WriteP99Ratio, r.Steady.ReadP99Ratio)
	return nil
}

const (
	// inServiceBound bounds the instance refresh's wait for a new instance to be
	// InService.
	inServiceBound = time.Minute
	// stopBound is how long an old server gets to stop on SIGTERM before it is
	// killed: systemd's default TimeoutStopSec.
	stopBound = 90 * time.Second
)

// refreshRoll replaces every server of cl (which has no watches) with one on target
// the way an Auto Scaling instance refresh does with MinHealthyPercentage=100,
// MaxHealthyPercentage=200 (launch before terminate), an instance warmup of warmup,
// and servers that leave gracefully when their instance shuts down
// (leave_on_terminate): for each old server in launch order, the leader wherever it
// falls, launch a replacement; once it is InService, wait warmup; then terminate the
// old one (SIGTERM, no hand-off) and wait until it is gone. It knows nothing of Raft:
// it moves on when the warmup ends, caught up or not.
//
// InService here is the instance running with its agent process up (the local
// provider's "running"): with EC2 health checks an instance is healthy as soon as it
// runs, and nothing in an instance refresh looks at Consul. Of the batch sizes
// MaxHealthyPercentage=200 allows (up to all N at once), this is the kindest: one at
// a time.
func (b *bench) refreshRoll(ctx context.Context, cl *cluster, name, target string, warmup time.Duration, keys int) (r Roll) {
	r = Roll{Case: name, Kind: "refresh", Servers: cl.servers, Keys: keys, Target: target, WarmupSeconds: ptr(warmup.Seconds())}
	var olds []cloud.Instance
	insts, err := cl.p.Instances(ctx)
	if err != nil {
		r.Error = err.Error()
		return r
	}
	for _, in := range insts {
		if in.Live() {
			olds = append(olds, in)
		}
	}
	l, err := startLoad(ctx, cl, name)
	if err != nil {
		r.Error = err.Error()
		return r
	}
	sleep(ctx, warmUp)
	b.observe(name + " start")
	start := time.Now()
	r.start = start
	step := func(s, inst, detail string) {
		r.History = append(r.History, Step{AtSeconds: round1(time.Since(start).Seconds()), Step: s, Instance: inst, Detail: detail})
	}
	var news []cloud.Instance
	inService := map[string]float64{}
	var stepErr error
	for i, old := range olds {
		progress("%s: launching a replacement for %s on %s", name, old.ID, target)
		t := time.Now()
		in, err := cl.p.Launch(ctx, target, fmt.Sprintf("refresh/%s/%d", target, i), nil)
		if err != nil {
			stepErr = err
			break
		}
		step("launch", in.ID, "")
		news = append(news, in)
		if err := waitInService(ctx, cl, in.ID); err != nil {
			stepErr = err
			break
		}
		inService[in.ID] = time.Since(t).Seconds()
		step("in service", in.ID, "")
		sleep(ctx, warmup)
		step("terminate", old.ID, "")
		progress("%s: warmup over; terminating %s (SIGTERM, leave_on_terminate)", name, old.ID)
		killed, err := cl.p.Shutdown(ctx, old.ID, stopBound)
		if err != nil {
			stepErr = err
			break
		}
		detail := ""
		if killed {
			detail = fmt.Sprintf("killed after %s", stopBound)
		}
		step("terminated", old.ID, detail)
	}
	r.RollSeconds = round1(time.Since(start).Seconds())
	r.Completed = stepErr == nil
	if stepErr == nil {
		ids := map[string]bool{}
		for _, in := range news {
			ids[in.ID] = true
		}
		progress("%s: every old server terminated; waiting up to %s for a healthy cluster of %d voters", name, settleBound, cl.servers)
		if took, ok := waitRecovered(ctx, cl.c, ids, settleBound); ok {
			r.RecoveredAfterSeconds = ptr(round1(took.Seconds()))
		}
		r.Recovered = ptr(r.RecoveredAfterSeconds != nil)
	}
	b.observe(name + " end")
	firstHealthy, firstVoter := l.stop(&r)
	for _, in := range news {
		ns := newServer(in, firstHealthy, firstVoter)
		if s, ok := inService[in.ID]; ok {
			ns.LaunchToInServiceSeconds = ptr(round2(s))
		}
		r.NewServers = append(r.NewServers, ns)
	}
	r.summarize()
	progress("%s: %s", name, r.oneLine())
	if stepErr != nil {
		r.Error = stepErr.Error()
	}
	return r
}

// waitInService polls until the instance is running (its agent's process is up),
// bounded.
func waitInService(ctx context.Context, cl *cluster, id string) error {
	ctx, cancel := context.WithTimeout(ctx, inServiceBound)
	defer cancel()
	for {
		insts, err := cl.p.Instances(ctx)
		if err == nil && slices.ContainsFunc(insts, func(i cloud.Instance) bool { return i.ID == id && i.State == cloud.StateRunning }) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("instance %s not in service within %s", id, inServiceBound)
		case <-time.After(100 * time.Millisecond):
		}
	}
}
