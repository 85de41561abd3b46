package aws

import (
	"context"
	"encoding/base64"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/consul-rehydrate/consul-rehydrate/internal/cloud"
	"github.com/consul-rehydrate/consul-rehydrate/test/awsfake"
)

const (
	imgA = "ami-0aaaaaaaaaaaaaaaa"
	imgB = "ami-0bbbbbbbbbbbbbbbb"
)

// onFake returns a provider for a 3-server group over 3 zones on the wire fake,
// through the real SDK clients; shape may change the group before it is made.
func onFake(t *testing.T, shape func(*awsfake.Server, *awsfake.Group)) (*Provider, *awsfake.Server) {
	t.Helper()
	fake := awsfake.New(awsfake.Options{})
	t.Cleanup(fake.Close)
	fake.AddImage(awsfake.Image{ID: imgA, Name: "consul-server-1", CreationDate: time.Now().Add(-48 * time.Hour), Tags: map[string]string{"role": "consul-server"}})
	fake.AddImage(awsfake.Image{ID: imgB, Name: "consul-server-2", CreationDate: time.Now().Add(-time.Hour), Tags: map[string]string{"role": "consul-server"}})
	fake.AddLaunchTemplate("consul-server", imgA)
	g := awsfake.Group{Name: "consul", LaunchTemplate: "consul-server", Version: "1", Min: 3, Max: 3, Desired: 3,
		AZs: []string{"us-east-1a", "us-east-1b", "us-east-1c"}}
	if shape != nil {
		shape(fake, &g)
	}
	fake.AddGroup(g)
	cfg := fake.Config()
	p := New(ec2.NewFromConfig(cfg), autoscaling.NewFromConfig(cfg), Config{
		Group: "consul", LaunchTemplate: "consul-server", Servers: 3, Owners: []string{"self"}, NamePattern: "consul-server-*",
		LaunchWait: 5 * time.Second,
	})
	require.Eventually(t, func() bool {
		insts, err := p.Instances(context.Background())
		return err == nil && len(insts) == 3
	}, 10*time.Second, 50*time.Millisecond)
	return p, fake
}

func TestSurvey_NamesEachProblemOfTheGroup(t *testing.T) {
	ctx := context.Background()
	p, _ := onFake(t, nil)
	sv, err := p.Survey(ctx, time.Time{}, time.Hour)
	require.NoError(t, err)
	assert.Empty(t, sv.Problems)
	assert.Equal(t, []string{"us-east-1a", "us-east-1b", "us-east-1c"}, sv.Zones)
	insts, err := p.Instances(ctx)
	require.NoError(t, err)
	for i, inst := range insts {
		assert.Equal(t, sv.Zones[i], inst.AZ, "one per zone, in placement order")
	}

	for _, tc := range []struct {
		name  string
		shape func(*awsfake.Server, *awsfake.Group)
		want  string
	}{
		{"min size", func(_ *awsfake.Server, g *awsfake.Group) { g.Min = 2 }, "MinSize is 2, not servers = 3"},
		{"mixed", func(_ *awsfake.Server, g *awsfake.Group) { g.MixedInstances = true }, "MixedInstancesPolicy"},
		{"warm pool", func(_ *awsfake.Server, g *awsfake.Group) { g.WarmPool = true }, "warm pool"},
		{"health check grace", func(_ *awsfake.Server, g *awsfake.Group) {
			g.HealthCheckType, g.HealthCheckGracePeriod = "ELB", 5*time.Minute
		}, "health check type is ELB with a grace period of 5m0s, shorter than launch_timeout (10m0s)"},
		{"zones", func(_ *awsfake.Server, g *awsfake.Group) { g.AZs = g.AZs[:2] }, "spans 2 availability zone(s), fewer than 3"},
		{"other template", func(f *awsfake.Server, g *awsfake.Group) {
			f.AddLaunchTemplate("web", imgA)
			g.LaunchTemplate = "web"
		}, `does not launch from launch template "consul-server"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, _ := onFake(t, tc.shape)
			p.cfg.LaunchTimeout = 10 * time.Minute
			sv, err := p.Survey(ctx, time.Time{}, time.Hour)
			require.NoError(t, err)
			require.Len(t, sv.Problems, 1, "%v", sv.Problems)
			assert.Contains(t, sv.Problems[0], tc.want)
		})
	}
	t.Run("health checks fit", func(t *testing.T) {
		for _, shape := range []func(*awsfake.Server, *awsfake.Group){
			func(_ *awsfake.Server, g *awsfake.Group) {
				g.HealthCheckType, g.HealthCheckGracePeriod = "ELB", 10*time.Minute
			},
			func(_ *awsfake.Server, g *awsfake.Group) { g.HealthCheckType, g.HealthCheckGracePeriod = "EC2", 0 },
		} {
			p, _ := onFake(t, shape)
			p.cfg.LaunchTimeout = 10 * time.Minute
			sv, err := p.Survey(ctx, time.Time{}, time.Hour)
			require.NoError(t, err)
			assert.Empty(t, sv.Problems)
		}
	})
	// AWS takes no max instance lifetime under a day, longer than any roll: what
	// matters is whether an instance reaches it before a roll could end.
	t.Run("lifetime", func(t *testing.T) {
		p, fake := onFake(t, func(_ *awsfake.Server, g *awsfake.Group) { g.MaxInstanceLifetime = 24 * time.Hour })
		sv, err := p.Survey(ctx, time.Time{}, time.Hour)
		require.NoError(t, err)
		assert.Empty(t, sv.Problems, "every instance is new: a day to go")

		insts, err := p.Instances(ctx)
		require.NoError(t, err)
		require.True(t, fake.SetLaunchTime(insts[1].ID, time.Now().Add(-23*time.Hour-30*time.Minute)))
		sv, err = p.Survey(ctx, time.Time{}, time.Hour)
		require.NoError(t, err)
		require.Len(t, sv.Problems, 1, "%v", sv.Problems)
		assert.Contains(t, sv.Problems[0], "max instance lifetime (24h0m0s) replaces "+insts[1].ID)
		assert.Contains(t, sv.Problems[0], "before a roll started now could end (1h0m0s)")

		sv, err = p.Survey(ctx, time.Time{}, 20*time.Minute)
		require.NoError(t, err)
		assert.Empty(t, sv.Problems, "a shorter roll ends before it")
	})
	t.Run("instance refresh", func(t *testing.T) {
		p, fake := onFake(t, nil)
		id := fake.AddInstanceRefresh("consul", "InProgress")
		sv, err := p.Survey(ctx, time.Time{}, time.Hour)
		require.NoError(t, err)
		require.Len(t, sv.Problems, 1)
		assert.Contains(t, sv.Problems[0], "instance refresh "+id+" is InProgress")
	})
}

// TestGroupState_SuspendProtectLaunchAndRestore: Prepare records only what the roll
// will change (an operator's suspension stays theirs), Begin suspends and protects,
// Launch sources the recorded version number (the group is on $Latest, whose user
// data $Default lacks), and End resumes, restores MaxSize, and on failure the
// version and desired capacity.
func TestGroupState_SuspendProtectLaunchAndRestore(t *testing.T) {
	ctx := context.Background()
	userData := base64.StdEncoding.EncodeToString([]byte("latest settings"))
	p, fake := onFake(t, func(f *awsfake.Server, g *awsfake.Group) {
		f.AddLaunchTemplateVersion("consul-server", awsfake.LaunchTemplateData{ImageID: imgA, UserData: userData}, false)
		g.Version = "$Latest"
		g.Suspended = []string{"AZRebalance"}
	})
	st, err := p.Prepare(ctx)
	require.NoError(t, err)
	assert.Equal(t, &cloud.GroupState{Suspended: []string{"AlarmNotification", "ScheduledActions"}, MaxSize: 3, TemplateVersion: "2", GroupVersion: "$Latest"}, st)
	assert.Empty(t, callsOf(fake, "SuspendProcesses"), "Prepare changes nothing")

	require.NoError(t, p.Begin(ctx, st))
	require.NoError(t, p.Begin(ctx, st), "idempotent")
	g := fake.Group("consul")
	assert.Equal(t, []string{"AZRebalance", "AlarmNotification", "ScheduledActions"}, sortedLike(g.Suspended, []string{"AZRebalance", "AlarmNotification", "ScheduledActions"}))
	assert.True(t, g.NewInstancesProtectedFromScaleIn)
	for _, i := range g.Instances {
		assert.True(t, i.ProtectedFromScaleIn, i.ID)
	}

	inst, err := p.Launch(ctx, imgB, "launch/b/3-outdated", st)
	require.NoError(t, err)
	require.NotEqual(t, "(pending)", inst.ID)
	for _, i := range fake.Instances() {
		if i.ID == inst.ID {
			assert.Equal(t, userData, i.UserData, "the new version copied $Latest (the recorded 2), not stale $Default")
			assert.Equal(t, imgB, i.ImageID)
			assert.True(t, i.ProtectedFromScaleIn)
		}
	}
	assert.Equal(t, 4, fake.Group("consul").Max)

	require.NoError(t, p.End(ctx, st, true))
	g = fake.Group("consul")
	assert.Equal(t, []string{"AZRebalance"}, g.Suspended, "only what the roll suspended is resumed")
	assert.Equal(t, 3, g.Desired, "a failed roll's surge is undone")
	assert.Equal(t, 3, g.Max)
	assert.Equal(t, "$Latest", g.Version, "back on $Latest, as the group named it, not the number it resolved to")
	updates := len(callsOf(fake, "UpdateAutoScalingGroup"))
	require.NoError(t, p.End(ctx, st, true), "idempotent")
	assert.Len(t, callsOf(fake, "UpdateAutoScalingGroup"), updates, "nothing left to restore")

	// A record written before GroupVersion existed puts back the number.
	old := *st
	old.GroupVersion = ""
	require.NoError(t, p.End(ctx, &old, true))
	assert.Equal(t, "2", fake.Group("consul").Version)
}

// TestTerminate_AScaleInDuringTheSurgeDoesNotWedgeTheRetire: a person sets the
// desired capacity back to N during the surge; every server is protected, so the
// group terminates nothing and stays at N+1 instances with N desired. The retire
// then terminates without a decrement (one would go below MinSize = N, a
// ValidationError on every trigger), and the group ends at N, replacing nothing.
func TestTerminate_AScaleInDuringTheSurgeDoesNotWedgeTheRetire(t *testing.T) {
	ctx := context.Background()
	p, fake := onFake(t, nil)
	st, err := p.Prepare(ctx)
	require.NoError(t, err)
	require.NoError(t, p.Begin(ctx, st))
	old, err := p.Instances(ctx)
	require.NoError(t, err)
	_, err = p.Launch(ctx, imgB, "launch/b/3-outdated", st)
	require.NoError(t, err)
	require.Eventually(t, func() bool { g := fake.Group("consul"); return len(g.Instances) == 4 && g.Launching == 0 }, 10*time.Second, 20*time.Millisecond)

	a := autoscaling.NewFromConfig(fake.Config())
	_, err = a.SetDesiredCapacity(ctx, &autoscaling.SetDesiredCapacityInput{AutoScalingGroupName: aws.String("consul"), DesiredCapacity: aws.Int32(3)})
	require.NoError(t, err)
	g := fake.Group("consul")
	require.Equal(t, 3, g.Desired)
	require.Len(t, g.Instances, 4, "every server is protected: nothing scaled in")

	require.NoError(t, p.Terminate(ctx, old[0].ID, "retire/"+old[0].ID))
	terms := callsOf(fake, "TerminateInstanceInAutoScalingGroup")
	require.Len(t, terms, 1)
	assert.Equal(t, "false", terms[0].Params.Get("ShouldDecrementDesiredCapacity"))
	require.Eventually(t, func() bool {
		g := fake.Group("consul")
		return len(g.Instances) == 3 && g.Launching == 0
	}, 10*time.Second, 20*time.Millisecond)
	g = fake.Group("consul")
	assert.Equal(t, 3, g.Desired)
	for _, i := range g.Instances {
		assert.NotEqual(t, old[0].ID, i.ID)
	}
	for _, act := range fake.Activities("consul") {
		assert.False(t, act.Kind == "launch" && act.Start.After(terms[0].Time), "no replacement launched: %+v", act)
	}

}

// TestSurvey_ReportsTheGroupsFailedLaunchesSinceTheSurge: the group retries a launch
// whose image it cannot use for ever; the survey reads the failures from its
// scaling activities, says they are the image's, and leaves out older ones.
func TestSurvey_ReportsTheGroupsFailedLaunchesSinceTheSurge(t *testing.T) {
	ctx := context.Background()
	p, fake := onFake(t, nil)
	const bad = "ami-0dddddddddddddddd"
	fake.AddImage(awsfake.Image{ID: bad, Name: "consul-server-3", CreationDate: time.Now(), Tags: map[string]string{"role": "consul-server"},
		LaunchError: "Client.InvalidKMSKey.InvalidState: The KMS key provided is in an incorrect state"})
	fake.FailLaunches("consul", "", 1) // an older capacity failure, before the surge
	since := time.Now()
	_, err := p.Launch(ctx, bad, "launch/bad/3-outdated", nil)
	require.NoError(t, err)
	var sv cloud.Survey
	require.Eventually(t, func() bool {
		sv, err = p.Survey(ctx, since, time.Hour)
		return err == nil && len(sv.LaunchFailures) >= 2
	}, 20*time.Second, 200*time.Millisecond)
	for _, f := range sv.LaunchFailures {
		assert.False(t, f.Time.Before(since.Truncate(time.Millisecond)))
	}
	last := sv.LaunchFailures[len(sv.LaunchFailures)-1]
	assert.Contains(t, last.Message, "KMS key")
	assert.True(t, last.Image)
	assert.False(t, imageFault("We currently do not have sufficient t3.micro capacity in the Availability Zone you requested"))
}

// TestNewClients_RetryScalingActivityInProgress: the SDK's standard retryer does not
// retry this 400; the clients the handlers build do.
func TestNewClients_RetryScalingActivityInProgress(t *testing.T) {
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIDFAKE")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "fake")
	t.Setenv("AWS_CONFIG_FILE", "/dev/null")
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
	_, fake := onFake(t, nil)
	_, as, err := NewClients(context.Background(), ClientOptions{Region: "us-east-1", EndpointURL: fake.URL, MaxAttempts: 4})
	require.NoError(t, err)
	fake.ActivityInProgress("SetDesiredCapacity", 2)
	_, err = as.SetDesiredCapacity(context.Background(), &autoscaling.SetDesiredCapacityInput{AutoScalingGroupName: aws.String("consul"), DesiredCapacity: aws.Int32(3)})
	require.NoError(t, err)
	assert.Len(t, callsOf(fake, "SetDesiredCapacity"), 3)
}

func callsOf(fake *awsfake.Server, action string) []awsfake.Call {
	var out []awsfake.Call
	for _, c := range fake.Calls() {
		if c.Action == action {
			out = append(out, c)
		}
	}
	return out
}

// sortedLike orders got as order lists them (the fake sorts its snapshot).
func sortedLike(got, order []string) []string {
	var out []string
	for _, o := range order {
		for _, g := range got {
			if g == o {
				out = append(out, g)
			}
		}
	}
	if len(out) != len(got) {
		return got
	}
	return out
}
