package awsfake_test

import (
	"errors"
	"io"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/consul-rehydrate/consul-rehydrate/test/awsfake"
)

const launching = "autoscaling:EC2_INSTANCE_LAUNCHING"

// imdsClient is the SDK's IMDS client for the instance, configured as the gate
// and internal/cloud/aws configure theirs: IMDSv2 only, no fallback to v1.
func imdsClient(srv *awsfake.Server, id string) *imds.Client {
	return imds.New(imds.Options{Endpoint: srv.IMDS(id), EnableFallback: aws.FalseTernary})
}

// getMetadata reads one metadata item through the SDK.
func getMetadata(t *testing.T, c *imds.Client, path string) (string, error) {
	t.Helper()
	out, err := c.GetMetadata(ctx(t), &imds.GetMetadataInput{Path: path})
	if err != nil {
		return "", err
	}
	defer out.Content.Close()
	b, err := io.ReadAll(out.Content)
	return string(b), err
}

// targetState reads autoscaling/target-lifecycle-state, "" on any error.
func targetState(t *testing.T, c *imds.Client) string {
	t.Helper()
	v, err := getMetadata(t, c, "autoscaling/target-lifecycle-state")
	if err != nil {
		return ""
	}
	return v
}

// httpStatus is the HTTP status of an SDK error, 0 if it has none.
func httpStatus(err error) int {
	var se interface{ HTTPStatusCode() int }
	if errors.As(err, &se) {
		return se.HTTPStatusCode()
	}
	return 0
}

// imdsRaw sends one request to an IMDS endpoint as curl would.
func imdsRaw(t *testing.T, method, url string, header map[string]string) (int, string, http.Header) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx(t), method, url, nil)
	require.NoError(t, err)
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(b), resp.Header
}

// imdsToken gets a session token from the endpoint with this TTL in seconds.
func imdsToken(t *testing.T, base string, ttl int) string {
	t.Helper()
	status, token, h := imdsRaw(t, http.MethodPut, base+"/latest/api/token",
		map[string]string{"X-aws-ec2-metadata-token-ttl-seconds": strconv.Itoa(ttl)})
	require.Equal(t, http.StatusOK, status)
	require.Equal(t, strconv.Itoa(ttl), h.Get("X-aws-ec2-metadata-token-ttl-seconds"), "the SDK reads the TTL back")
	require.NotEmpty(t, token)
	return token
}

func TestIMDS_ServesEachInstanceItsOwnIdentityThroughTheSDK(t *testing.T) {
	srv, _, _ := newFake(t, awsfake.Options{Machines: &machines{}})
	seedAZGroup(srv, awsfake.Group{Min: 2, Max: 2, Desired: 2})
	is := inServiceSnapshot(t, srv, 2)

	urls := map[string]bool{}
	for _, want := range is {
		url := srv.IMDS(want.ID)
		assert.Equal(t, url, srv.IMDS(want.ID), "the same instance keeps its endpoint")
		assert.Regexp(t, `^http://127\.0\.0\.1:\d+$`, url)
		urls[url] = true
		c := imdsClient(srv, want.ID)

		out, err := c.GetInstanceIdentityDocument(ctx(t), &imds.GetInstanceIdentityDocumentInput{})
		require.NoError(t, err)
		doc := out.InstanceIdentityDocument
		assert.Equal(t, want.ID, doc.InstanceID)
		assert.Equal(t, amiOld, doc.ImageID)
		assert.Equal(t, want.PrivateIP, doc.PrivateIP)
		assert.Equal(t, "us-east-1", doc.Region)
		assert.Equal(t, want.AZ, doc.AvailabilityZone)
		assert.Equal(t, "123456789012", doc.AccountID)
		assert.Equal(t, "t3.micro", doc.InstanceType)
		assert.Equal(t, "2017-09-30", doc.Version)
		assert.Equal(t, "x86_64", doc.Architecture)
		assert.Equal(t, want.LaunchTime.UTC().Truncate(time.Second), doc.PendingTime)

		for path, v := range map[string]string{
			"instance-id": want.ID, "ami-id": amiOld, "local-ipv4": want.PrivateIP, "instance-type": "t3.micro",
			"placement/availability-zone": want.AZ, "placement/region": "us-east-1",
			"autoscaling/target-lifecycle-state": "InService",
		} {
			got, err := getMetadata(t, c, path)
			require.NoError(t, err, path)
			assert.Equal(t, v, got, path)
		}
		region, err := c.GetRegion(ctx(t), &imds.GetRegionInput{})
		require.NoError(t, err)
		assert.Equal(t, "us-east-1", region.Region)

		_, err = getMetadata(t, c, "no/such/item")
		assert.Equal(t, http.StatusNotFound, httpStatus(err))
	}
	assert.Len(t, urls, 2, "one endpoint per instance")
}

func TestIMDS_RequiresAValidUnexpiredSessionTokenOfThatInstance(t *testing.T) {
	srv, _, _ := newFake(t, awsfake.Options{Machines: &machines{}})
	seedAZGroup(srv, awsfake.Group{Min: 2, Max: 2, Desired: 2})
	is := inServiceSnapshot(t, srv, 2)
	a, b := srv.IMDS(is[0].ID), srv.IMDS(is[1].ID)
	item := "/latest/meta-data/instance-id"

	// IMDSv1 (no token) is refused.
	status, _, _ := imdsRaw(t, http.MethodGet, a+item, nil)
	assert.Equal(t, http.StatusUnauthorized, status)

	// The TTL header is required and must be 1 to 21600 seconds.
	for _, ttl := range []string{"", "0", "-1", "21601", "1.5", "six hours"} {
		h := map[string]string{}
		if ttl != "" {
			h["X-aws-ec2-metadata-token-ttl-seconds"] = ttl
		}
		status, _, _ := imdsRaw(t, http.MethodPut, a+"/latest/api/token", h)
		assert.Equal(t, http.StatusBadRequest, status, "ttl %q", ttl)
	}
	status, _, _ = imdsRaw(t, http.MethodGet, a+"/latest/api/token", map[string]string{"X-aws-ec2-metadata-token-ttl-seconds": "60"})
	assert.Equal(t, http.StatusMethodNotAllowed, status, "a token is only PUT")

	token := imdsToken(t, a, 21600)
	status, body, _ := imdsRaw(t, http.MethodGet, a+item, map[string]string{"X-aws-ec2-metadata-token": token})
	assert.Equal(t, http.StatusOK, status)
	assert.Equal(t, is[0].ID, body)
	status, _, _ = imdsRaw(t, http.MethodGet, a+item, map[string]string{"X-aws-ec2-metadata-token": token + "x"})
	assert.Equal(t, http.StatusUnauthorized, status, "a made-up token")
	status, _, _ = imdsRaw(t, http.MethodGet, b+item, map[string]string{"X-aws-ec2-metadata-token": token})
	assert.Equal(t, http.StatusUnauthorized, status, "a token is valid only on the instance that issued it")
	status, _, _ = imdsRaw(t, http.MethodPost, a+item, map[string]string{"X-aws-ec2-metadata-token": token})
	assert.Equal(t, http.StatusMethodNotAllowed, status)

	// A token expires after its TTL.
	short := imdsToken(t, a, 1)
	status, _, _ = imdsRaw(t, http.MethodGet, a+item, map[string]string{"X-aws-ec2-metadata-token": short})
	assert.Equal(t, http.StatusOK, status)
	require.Eventually(t, func() bool {
		status, _, _ := imdsRaw(t, http.MethodGet, a+item, map[string]string{"X-aws-ec2-metadata-token": short})
		return status == http.StatusUnauthorized
	}, 5*time.Second, 50*time.Millisecond)
	status, _, _ = imdsRaw(t, http.MethodGet, a+item, map[string]string{"X-aws-ec2-metadata-token": token})
	assert.Equal(t, http.StatusOK, status, "the long-lived token still works")
}

func TestIMDS_TargetLifecycleStateIsTerminatedWhileATerminationHookHoldsTheInstance(t *testing.T) {
	srv, _, a := newFake(t, awsfake.Options{Machines: &machines{}})
	seedAZGroup(srv, awsfake.Group{Min: 2, Max: 2, Desired: 2})
	srv.AddLifecycleHook("consul", awsfake.LifecycleHook{Name: "gate", Transition: terminating})
	is := inServiceSnapshot(t, srv, 2)
	victim := is[0].ID
	c := imdsClient(srv, victim)
	require.Equal(t, "InService", targetState(t, c))

	// An operator's termination without decrement.
	terminate(t, a, victim, false)
	require.Equal(t, "Terminating:Wait", lifecycleOf(srv, victim))
	assert.Equal(t, "Terminated", targetState(t, c), "the target, not the current state, as soon as the group decides")
	assert.Equal(t, "InService", targetState(t, imdsClient(srv, is[1].ID)), "the other instance is untouched")
	// Terminate and launch: the replacement does not wait for the hook.
	var replacement string
	require.Eventually(t, func() bool {
		for _, i := range srv.Group("consul").Instances {
			if i.ID != victim && i.ID != is[1].ID && i.LifecycleState == "InService" {
				replacement = i.ID
			}
		}
		return replacement != ""
	}, 5*time.Second, 10*time.Millisecond)
	assert.Equal(t, []string{victim}, srv.WaitingForHook("consul"), "still held while its replacement is in service")
	assert.Equal(t, "InService", targetState(t, imdsClient(srv, replacement)))

	_, err := a.CompleteLifecycleAction(ctx(t), &autoscaling.CompleteLifecycleActionInput{
		AutoScalingGroupName: aws.String("consul"), LifecycleHookName: aws.String("gate"),
		InstanceId: aws.String(victim), LifecycleActionResult: aws.String("CONTINUE"),
	})
	require.NoError(t, err)
	require.Eventually(t, func() bool { return lifecycleOf(srv, victim) == "" }, 5*time.Second, 10*time.Millisecond)
	assert.Equal(t, "Terminated", targetState(t, c), "and so it stays")
}

func TestIMDS_HealthReplacementTargetsTerminatedAndLaunchesTheReplacementAtOnce(t *testing.T) {
	srv, _, _ := newFake(t, awsfake.Options{Machines: &machines{}})
	seedAZGroup(srv, awsfake.Group{Min: 3, Max: 3, Desired: 3})
	srv.AddLifecycleHook("consul", awsfake.LifecycleHook{Name: "gate", Transition: terminating})
	is := inServiceSnapshot(t, srv, 3)
	sick := is[1].ID
	c := imdsClient(srv, sick)

	require.True(t, srv.SetInstanceHealth(sick, "Unhealthy"))
	assert.Equal(t, "Terminated", targetState(t, c))
	assert.Equal(t, "Terminating:Wait", lifecycleOf(srv, sick))
	// The documented default for a health check failure is "Terminate and
	// launch": a fourth instance runs while the sick one waits for the hook.
	require.Eventually(t, func() bool {
		n := 0
		for _, i := range srv.Group("consul").Instances {
			if i.LifecycleState == "InService" {
				n++
			}
		}
		return n == 3
	}, 5*time.Second, 10*time.Millisecond)
	assert.Len(t, srv.Group("consul").Instances, 4)
	assert.Equal(t, []string{sick}, srv.WaitingForHook("consul"))
}

func TestIMDS_TargetLifecycleStateWithoutHooksAndWhileLaunching(t *testing.T) {
	m := &machines{release: make(chan struct{})}
	srv, _, a := newFake(t, awsfake.Options{Machines: m, ShutdownDelay: 300 * time.Millisecond})
	seedAZGroup(srv, awsfake.Group{Min: 0, Max: 2, Desired: 1})

	// Booted but not ready yet (Pending): on its way to InService.
	var id string
	require.Eventually(t, func() bool {
		is := srv.Group("consul").Instances
		if len(is) == 1 && is[0].LifecycleState == "Pending" {
			id = is[0].ID
		}
		return id != ""
	}, 5*time.Second, 10*time.Millisecond)
	c := imdsClient(srv, id)
	assert.Equal(t, "InService", targetState(t, c))
	close(m.release)
	inServiceSnapshot(t, srv, 1)

	// Held by a launch hook (Pending:Wait): still on its way to InService.
	srv.AddLifecycleHook("consul", awsfake.LifecycleHook{Name: "warm", Transition: launching})
	setDesired(t, a, 2)
	var held string
	require.Eventually(t, func() bool {
		for _, i := range srv.Group("consul").Instances {
			if i.LifecycleState == "Pending:Wait" {
				held = i.ID
			}
		}
		return held != ""
	}, 5*time.Second, 10*time.Millisecond)
	assert.Equal(t, "InService", targetState(t, imdsClient(srv, held)))

	// Without a termination hook: Terminated while it shuts down, and after.
	terminate(t, a, id, true)
	assert.Equal(t, "Terminated", targetState(t, c))
	require.Eventually(t, func() bool { return lifecycleOf(srv, id) == "" }, 5*time.Second, 10*time.Millisecond)
	assert.Equal(t, "Terminated", targetState(t, c))
}

func TestIMDS_AnInstanceTheFakeDoesNotKnowYetAnswers404(t *testing.T) {
	srv, _, _ := newFake(t, awsfake.Options{})
	c := imdsClient(srv, "i-0123456789abcdef0")
	_, err := getMetadata(t, c, "autoscaling/target-lifecycle-state")
	assert.Equal(t, http.StatusNotFound, httpStatus(err), "a token is issued, the item does not exist")
	_, err = c.GetInstanceIdentityDocument(ctx(t), &imds.GetInstanceIdentityDocumentInput{})
	assert.Equal(t, http.StatusNotFound, httpStatus(err))

	assert.Panics(t, func() { srv.IMDS("0123456789abcdef0") }, "an ID without i- is a test bug")
	assert.Panics(t, func() { srv.IMDS("i-") })
}

func TestIMDS_CloseClosesEveryInstancesEndpoint(t *testing.T) {
	srv := awsfake.New(awsfake.Options{Machines: &machines{}})
	seedAZGroup(srv, awsfake.Group{Min: 2, Max: 2, Desired: 2})
	is := inServiceSnapshot(t, srv, 2)
	var urls []string
	for _, i := range is {
		urls = append(urls, srv.IMDS(i.ID))
		imdsToken(t, urls[len(urls)-1], 60)
	}
	srv.Close()
	after := srv.IMDS("i-0fedcba9876543210")
	assert.Regexp(t, `^http://127\.0\.0\.1:\d+$`, after, "loopback even after Close")
	for _, u := range append(urls, after) {
		req, err := http.NewRequestWithContext(ctx(t), http.MethodPut, u+"/latest/api/token", nil)
		require.NoError(t, err)
		req.Header.Set("X-aws-ec2-metadata-token-ttl-seconds", "60")
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		assert.Error(t, err, "%s is closed", u)
	}
}
