package e2e

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/consul-rehydrate/consul-rehydrate/internal/app"
	"github.com/consul-rehydrate/consul-rehydrate/internal/coord"
	"github.com/consul-rehydrate/consul-rehydrate/test/awsfake"
	"github.com/consul-rehydrate/consul-rehydrate/test/testcluster"
)

const (
	amiA = "ami-0aaaaaaaaaaaaaaaa"
	amiB = "ami-0bbbbbbbbbbbbbbbb"
)

// TestAWSGroup_LatestTemplateLaggingEC2AndABusyGroup rolls a group the way
// Terraform leaves one: on $Latest, whose $Default (version 1) is stale, so only
// $Latest carries the servers' user data. EC2 does not describe a new instance for
// 3 s, and the group answers ScalingActivityInProgress to the calls that change
// it. The termination gate runs on every server: the roll's retires go through the
// group's termination hook. The roll completes, and every new server launched with
// the latest settings.
func TestAWSGroup_LatestTemplateLaggingEC2AndABusyGroup(t *testing.T) {
	t.Parallel()
	userData := base64.StdEncoding.EncodeToString([]byte("#!/bin/bash\n/usr/local/sbin/consul-user-data\n"))
	g := newGates(t)
	e, fake := newAWSEnv(t, g.shape, func(s *awsSetup) {
		s.fake.DescribeLag = 3 * time.Second
		s.group.Version = "$Latest"
		s.before = func(f *awsfake.Server) {
			v := f.AddLaunchTemplateVersion("consul-server", awsfake.LaunchTemplateData{ImageID: amiA, InstanceType: "t3.small", UserData: userData}, false)
			require.EqualValues(t, 2, v)
		}
	})
	// The termination gate on every server, and the group's hook: the roll's own
	// retires go through it, never waiting out its heartbeat timeout.
	g.attach(e, fake)
	fake.AddImage(awsfake.Image{ID: amiB, Name: "consul-server-2", CreationDate: time.Now().Add(-time.Hour), Tags: map[string]string{"role": "consul-server"}})
	fake.ActivityInProgress("SetDesiredCapacity", 2)
	fake.ActivityInProgress("UpdateAutoScalingGroup", 1)
	fake.ActivityInProgress("TerminateInstanceInAutoScalingGroup", 1)

	out, code := e.run("fire", "--image", amiB)
	require.Equal(t, app.ExitOK, code, out)
	e.waitRolled(amiB, 5*time.Minute)
	assert.Positive(t, fake.Lagged(), "the roll met EC2's lag: a new instance the group named that DescribeInstances did not know yet")

	busy := 0
	for _, c := range fake.Calls() {
		if c.Status == 400 && (c.Action == "SetDesiredCapacity" || c.Action == "UpdateAutoScalingGroup" || c.Action == "TerminateInstanceInAutoScalingGroup") {
			busy++
		}
		if c.Action == "DescribeInstances" {
			assert.Empty(t, c.Params.Get("InstanceId.1"), "instances are described by filter, never by id")
		}
	}
	assert.Equal(t, 4, busy, "each ScalingActivityInProgress was answered and retried")
	rolled := 0
	for _, i := range fake.Instances() {
		if i.ImageID == amiB {
			rolled++
			assert.Equal(t, userData, i.UserData, "%s launched with $Latest's user data, not stale $Default's", i.ID)
		}
	}
	assert.GreaterOrEqual(t, rolled, 3)
	for _, i := range fake.Instances() {
		if i.ImageID == amiA {
			assert.True(t, completed(fake, i.ID), "the gate of retired %s completed its hook", i.ID)
			assert.Contains(t, g.logOf(i.ID), "left the cluster")
		}
	}
	rec := e.rollRecord("e2e-aws")
	require.NotNil(t, rec.Group)
	assert.Equal(t, "2", rec.Group.TemplateVersion, "$Latest resolved to a number when the roll started")
	assert.True(t, rec.Group.Released)
}

// TestAWSGroup_RefusalsAndAFailedLaunch: a group unfit for a roll refuses it (exit
// 17, with the reason) and the handlers change nothing on it; then, on the
// cluster's own group, an image whose every launch fails (its KMS key is not usable,
// which the group retries for ever) fails the roll within launch_timeout, marks the
// image bad, terminates nothing and puts the group back as it was.
func TestAWSGroup_RefusalsAndAFailedLaunch(t *testing.T) {
	t.Parallel()
	e, fake := newAWSEnv(t)

	shapes := []struct {
		name   string
		shape  func(*awsfake.Group)
		before func(*awsfake.Server)
		reason string
	}{
		{"min size", func(g *awsfake.Group) { g.Min = 1 }, nil, "MinSize is 1, not servers = 3"},
		{"mixed instances", func(g *awsfake.Group) { g.MixedInstances = true }, nil, "MixedInstancesPolicy"},
		{"warm pool", func(g *awsfake.Group) { g.WarmPool = true }, nil, "warm pool"},
		// AWS takes no lifetime under a day: what refuses the roll is a server that
		// reaches it before the roll could end.
		{"max instance lifetime", func(g *awsfake.Group) { g.MaxInstanceLifetime = 24 * time.Hour }, func(f *awsfake.Server) {
			testcluster.WaitFor(t, 30*time.Second, "an instance to backdate", func() (bool, string) {
				is := f.Group("consul-servers").Instances
				return len(is) > 0 && f.SetLaunchTime(is[0].ID, time.Now().Add(-24*time.Hour+time.Minute)), "no instance yet"
			})
		}, "max instance lifetime (24h0m0s) replaces"},
		{"instance refresh", nil, func(f *awsfake.Server) { f.AddInstanceRefresh("consul-servers", "InProgress") }, "instance refresh"},
	}
	for _, sh := range shapes {
		other := awsfake.New(awsfake.Options{})
		other.AddImage(awsfake.Image{ID: amiA, Name: "consul-server-1", CreationDate: time.Now().Add(-48 * time.Hour), Tags: map[string]string{"role": "consul-server"}})
		other.AddImage(awsfake.Image{ID: amiB, Name: "consul-server-2", CreationDate: time.Now().Add(-time.Hour), Tags: map[string]string{"role": "consul-server"}})
		other.AddLaunchTemplate("consul-server", amiA)
		g := awsfake.Group{Name: "consul-servers", LaunchTemplate: "consul-server", Version: "1", Min: 3, Max: 3, Desired: 3,
			AZs: []string{"us-east-1a", "us-east-1b", "us-east-1c"}}
		if sh.shape != nil {
			sh.shape(&g)
		}
		other.AddGroup(g)
		if sh.before != nil {
			sh.before(other)
		}
		cfg, err := os.ReadFile(e.cfgPath)
		require.NoError(t, err)
		path := filepath.Join(t.TempDir(), "rehydrate.hcl")
		require.NoError(t, os.WriteFile(path, []byte(strings.Replace(string(cfg), fake.URL, other.URL, 1)), 0o644))
		o := *e
		o.cfgPath = path

		for _, args := range [][]string{{"plan"}, {"fire", "--image", amiB}} {
			out, code := o.run(args...)
			if args[0] == "fire" {
				assert.Equal(t, app.ExitRefused, code, "%s: %s", sh.name, out)
			}
			assert.Contains(t, out, "the group is not fit for a roll", "%s: %v", sh.name, args)
			assert.Contains(t, out, sh.reason, "%s: %v", sh.name, args)
		}
		for _, c := range other.Calls() {
			assert.True(t, strings.HasPrefix(c.Action, "Describe"), "%s: the refusal called %s", sh.name, c.Action)
		}
		other.Close()
	}

	// An image the group cannot launch.
	const amiC = "ami-0dddddddddddddddd"
	fake.AddImage(awsfake.Image{ID: amiC, Name: "consul-server-3", CreationDate: time.Now().Add(-time.Hour), Tags: map[string]string{"role": "consul-server"},
		LaunchError: "Client.InvalidKMSKey.InvalidState: The KMS key provided is in an incorrect state"})
	start := time.Now()
	out, code := e.run("fire", "--image", amiC)
	require.Equal(t, app.ExitOK, code, out)
	var rec coord.Roll
	testcluster.WaitFor(t, 3*time.Minute, "the roll to fail", func() (bool, string) {
		kv, _, err := e.client.KV().Get("rehydrate/e2e-aws/roll", &api.QueryOptions{RequireConsistent: true})
		if err != nil || kv == nil {
			return false, fmt.Sprintf("no roll record yet (%v)", err)
		}
		rec = coord.Roll{}
		require.NoError(t, json.Unmarshal(kv.Value, &rec))
		return rec.Phase == coord.PhaseFailed && rec.Group != nil && rec.Group.Released, rec.Phase
	})
	assert.Less(t, time.Since(start), 3*time.Minute, "within launch_timeout")
	assert.Contains(t, rec.Failure, "KMS key")
	bad, _, err := e.client.KV().Get("rehydrate/e2e-aws/bad-images/"+amiC, nil)
	require.NoError(t, err)
	require.NotNil(t, bad, "the image is marked bad")

	g := fake.Group("consul-servers")
	assert.Equal(t, 3, g.Desired, "the surge is undone")
	assert.Equal(t, 3, g.Max, "MaxSize restored")
	assert.Equal(t, "1", g.Version, "the group is back on its template version")
	assert.Empty(t, g.Suspended, "processes resumed")
	for _, a := range fake.Activities("consul-servers") {
		assert.NotEqual(t, "terminate", a.Kind, "nothing terminated: %+v", a)
	}
	failed := 0
	for _, a := range fake.Activities("consul-servers") {
		if a.Kind == "launch" && a.Status == "Failed" {
			failed++
		}
	}
	assert.Positive(t, failed, "the group's launches failed")
	for _, i := range g.Instances {
		assert.Equal(t, amiA, i.ImageID)
	}
	out, code = e.run("fire", "--image", amiC)
	assert.Equal(t, app.ExitRefused, code, out)
	assert.Contains(t, out, "marked bad", fmt.Sprint("a bad image is refused: ", out))
}
