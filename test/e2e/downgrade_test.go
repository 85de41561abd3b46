package e2e

import (
	"encoding/json"
	"fmt"
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

// TestDowngrade_PullingTheRunningImageDoesNotLetAnyEventRollBack rolls the cluster
// to B, then pulls B the ways operators pull a bad AMI: deprecated, then (deprecation
// lifted) untagged. Either way B leaves the image filter and the newest image it
// allows is the older A. A plain `fire`, a plain event fired past the CLI (as any
// event writer can), and an event naming A are each refused, naming both images and
// roll.allow_downgrade: the roll record keeps B as the last completed target. Nothing
// is launched and no roll starts.
func TestDowngrade_PullingTheRunningImageDoesNotLetAnyEventRollBack(t *testing.T) {
	t.Parallel()
	e, fake := newAWSEnv(t)
	const (
		amiA = "ami-0aaaaaaaaaaaaaaaa"
		amiB = "ami-0bbbbbbbbbbbbbbbb"
	)
	fake.AddImage(awsfake.Image{ID: amiB, Name: "consul-server-2", CreationDate: time.Now().Add(-time.Hour), Tags: map[string]string{"role": "consul-server"}})
	out, code := e.run("fire", "--image", amiB)
	require.Equal(t, app.ExitOK, code, out)
	e.waitRolled(amiB, 5*time.Minute)
	rec := e.rollRecord("e2e-aws")
	require.NotNil(t, rec.Completed, "the roll record keeps the completed target")
	assert.Equal(t, amiB, rec.Completed.Image)
	assert.False(t, rec.Completed.Created.IsZero(), "with the image's creation time")

	pulls := []struct {
		how        string
		pull, undo func()
	}{
		{"deprecated", func() {
			past := time.Now().Add(-time.Minute)
			fake.DeprecateImage(amiB, &past)
		}, func() { fake.DeprecateImage(amiB, nil) }},
		{"untagged", func() {
			fake.SetImageTags(amiB, nil)
		}, func() { fake.SetImageTags(amiB, map[string]string{"role": "consul-server"}) }},
	}
	for _, p := range pulls {
		p.pull()
		// The filter no longer lists B: without the record, A would be the newest.
		out, code := e.run("plan")
		require.Equal(t, app.ExitOK, code, out)
		assert.Contains(t, out, "refuse", "%s: plan says the newest allowed image is refused", p.how)

		calls := len(fake.Calls())
		before := e.rollRecord("e2e-aws")
		group := fake.Group("consul-servers")

		out, code = e.run("fire")
		assert.Equal(t, app.ExitRefused, code, "%s: %s", p.how, out)
		for _, want := range []string{"the newest allowed image " + amiA, "is older than " + amiB, "the target of the last completed roll", "roll.allow_downgrade = true"} {
			assert.Contains(t, out, want, "%s: the CLI refuses a plain fire", p.how)
		}
		for _, payload := range [][]byte{nil, []byte(`{"image_id":"` + amiA + `"}`)} {
			id, _, err := e.client.Event().Fire(&api.UserEvent{Name: "consul-rehydrate", Payload: payload}, nil)
			require.NoError(t, err)
			got := e.handledAs("e2e-aws", id)
			assert.Contains(t, got, "refused: ", "%s: event %q", p.how, payload)
			assert.Contains(t, got, amiA+" (created ", "%s: event %q", p.how, payload)
			assert.Contains(t, got, "is older than "+amiB, "%s: event %q", p.how, payload)
			assert.Contains(t, got, "roll.allow_downgrade = true", "%s: event %q", p.how, payload)
		}

		after := e.rollRecord("e2e-aws")
		assert.Equal(t, before, after, "%s: the roll record is unchanged", p.how)
		g := fake.Group("consul-servers")
		assert.Equal(t, 3, g.Desired, "%s: nothing launched", p.how)
		assert.Equal(t, len(group.Instances), len(g.Instances), "%s: no instance added or removed", p.how)
		for _, i := range g.Instances {
			assert.Equal(t, amiB, i.ImageID, "%s: instance %s", p.how, i.ID)
		}
		for _, c := range fake.Calls()[calls:] {
			for _, a := range []string{"CreateLaunchTemplateVersion", "UpdateAutoScalingGroup", "SetDesiredCapacity", "TerminateInstanceInAutoScalingGroup"} {
				assert.NotEqual(t, a, c.Action, "%s: no call that changes the group", p.how)
			}
		}
		p.undo()
	}
}

// rollRecord reads the cluster's roll record.
func (e *env) rollRecord(cluster string) coord.Roll {
	e.t.Helper()
	kv, _, err := e.client.KV().Get("rehydrate/"+cluster+"/roll", &api.QueryOptions{RequireConsistent: true})
	require.NoError(e.t, err)
	require.NotNil(e.t, kv, "a roll record")
	var r coord.Roll
	require.NoError(e.t, json.Unmarshal(kv.Value, &r))
	return r
}

// handledAs waits until a handler recorded the event as handled and returns what it
// recorded.
func (e *env) handledAs(cluster, eventID string) string {
	e.t.Helper()
	var kv *api.KVPair
	testcluster.WaitFor(e.t, time.Minute, "event "+eventID+" handled", func() (bool, string) {
		var err error
		kv, _, err = e.client.KV().Get("rehydrate/"+cluster+"/events/"+eventID, nil)
		return err == nil && kv != nil, fmt.Sprint(err)
	})
	return string(kv.Value)
}
