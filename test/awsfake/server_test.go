package awsfake_test

import (
	"context"
	"encoding/xml"
	"net/http"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/consul-rehydrate/consul-rehydrate/test/awsfake"
)

// statuses returns the HTTP statuses the fake answered action with, in order.
func statuses(srv *awsfake.Server, action string) []int {
	var out []int
	for _, c := range srv.Calls() {
		if c.Action == action {
			out = append(out, c.Status)
		}
	}
	return out
}

func TestClientsConfiguredAsTheProviderDoesTalkToTheFake(t *testing.T) {
	srv := awsfake.New(awsfake.Options{})
	t.Cleanup(srv.Close)
	srv.AddImage(awsfake.Image{ID: amiOld})
	cfg := aws.Config{
		Region:           "us-east-1",
		Credentials:      credentials.NewStaticCredentialsProvider("AKIDFAKE", "secret", ""),
		RetryMaxAttempts: 2,
	}
	e := ec2.NewFromConfig(cfg, func(o *ec2.Options) { o.BaseEndpoint = aws.String(srv.URL) })
	a := autoscaling.NewFromConfig(cfg, func(o *autoscaling.Options) { o.BaseEndpoint = aws.String(srv.URL) })

	imgs, err := e.DescribeImages(ctx(t), &ec2.DescribeImagesInput{})
	require.NoError(t, err)
	assert.Len(t, imgs.Images, 1)
	_, err = a.DescribeAutoScalingGroups(ctx(t), &autoscaling.DescribeAutoScalingGroupsInput{})
	require.NoError(t, err)
}

func TestCalls_RecordActionQueryParamsAndStatus(t *testing.T) {
	srv, e, a := newFake(t, awsfake.Options{})
	_, err := e.DescribeImages(ctx(t), &ec2.DescribeImagesInput{
		Owners:  []string{"self"},
		Filters: []ec2types.Filter{filter("name", "consul-*")},
	})
	require.NoError(t, err)
	_, err = a.DescribeAutoScalingGroups(ctx(t), &autoscaling.DescribeAutoScalingGroupsInput{AutoScalingGroupNames: []string{"consul"}})
	require.NoError(t, err)

	calls := srv.Calls()
	require.Len(t, calls, 2)
	assert.Equal(t, "DescribeImages", calls[0].Action)
	assert.Equal(t, http.StatusOK, calls[0].Status)
	assert.Equal(t, "2016-11-15", calls[0].Params.Get("Version"))
	assert.Equal(t, "self", calls[0].Params.Get("Owner.1"))
	assert.Equal(t, "name", calls[0].Params.Get("Filter.1.Name"))
	assert.Equal(t, "consul-*", calls[0].Params.Get("Filter.1.Value.1"))
	assert.Equal(t, "DescribeAutoScalingGroups", calls[1].Action)
	assert.Equal(t, "2011-01-01", calls[1].Params.Get("Version"))
	assert.Equal(t, "consul", calls[1].Params.Get("AutoScalingGroupNames.member.1"))
	assert.False(t, calls[1].Time.Before(calls[0].Time))
}

func TestThrottle_EC2IsRetriedAndSucceedsWhenTimesIsBelowTheAttempts(t *testing.T) {
	srv, e, _ := newFake(t, awsfake.Options{})
	srv.Throttle("DescribeImages", 2)
	_, err := e.DescribeImages(ctx(t), &ec2.DescribeImagesInput{})
	require.NoError(t, err)
	assert.Equal(t, []int{503, 503, 200}, statuses(srv, "DescribeImages"))
}

func TestThrottle_EC2FailsWithRequestLimitExceededWhenTimesReachesTheAttempts(t *testing.T) {
	srv, e, _ := newFake(t, awsfake.Options{})
	srv.Throttle("DescribeInstances", 3)
	_, err := e.DescribeInstances(ctx(t), &ec2.DescribeInstancesInput{})
	code, _ := apiCode(t, err)
	assert.Equal(t, "RequestLimitExceeded", code)
	assert.Equal(t, []int{503, 503, 503}, statuses(srv, "DescribeInstances"))

	_, err = e.DescribeInstances(ctx(t), &ec2.DescribeInstancesInput{})
	assert.NoError(t, err, "the fault is used up")
}

func TestThrottle_AutoScalingAnswersThrottling400AndIsRetried(t *testing.T) {
	srv, _, a := newFake(t, awsfake.Options{})
	srv.Throttle("DescribeAutoScalingGroups", 2)
	_, err := a.DescribeAutoScalingGroups(ctx(t), &autoscaling.DescribeAutoScalingGroupsInput{})
	require.NoError(t, err)
	assert.Equal(t, []int{400, 400, 200}, statuses(srv, "DescribeAutoScalingGroups"))

	srv.Throttle("SetDesiredCapacity", 0)
	_, err = a.SetDesiredCapacity(ctx(t), &autoscaling.SetDesiredCapacityInput{AutoScalingGroupName: aws.String("consul"), DesiredCapacity: aws.Int32(1)})
	code, msg := apiCode(t, err)
	assert.Equal(t, "Throttling", code)
	assert.Equal(t, "Rate exceeded", msg)
}

func TestServerError_IsRetriedThenSurfacesTheServiceCode(t *testing.T) {
	srv, e, a := newFake(t, awsfake.Options{})
	srv.AddImage(awsfake.Image{ID: amiOld})
	srv.AddLaunchTemplate("consul", amiOld)

	srv.ServerError("DescribeLaunchTemplateVersions", 1)
	_, err := e.DescribeLaunchTemplateVersions(ctx(t), &ec2.DescribeLaunchTemplateVersionsInput{LaunchTemplateName: aws.String("consul")})
	require.NoError(t, err)
	assert.Equal(t, []int{500, 200}, statuses(srv, "DescribeLaunchTemplateVersions"))

	srv.ServerError("DescribeImages", 0)
	_, err = e.DescribeImages(ctx(t), &ec2.DescribeImagesInput{})
	code, _ := apiCode(t, err)
	assert.Equal(t, "InternalError", code)

	srv.ServerError("*", 3)
	_, err = a.DescribeAutoScalingGroups(ctx(t), &autoscaling.DescribeAutoScalingGroupsInput{})
	code, _ = apiCode(t, err)
	assert.Equal(t, "InternalFailure", code)
	assert.Equal(t, []int{500, 500, 500}, statuses(srv, "DescribeAutoScalingGroups"))
}

func TestInject_ANonRetryableFaultFailsAtOnce(t *testing.T) {
	srv, e, _ := newFake(t, awsfake.Options{})
	srv.Inject("DescribeImages", awsfake.Fault{Code: "UnauthorizedOperation", Status: 403, Message: "You are not authorized", Times: 1})
	_, err := e.DescribeImages(ctx(t), &ec2.DescribeImagesInput{})
	code, msg := apiCode(t, err)
	assert.Equal(t, "UnauthorizedOperation", code)
	assert.Equal(t, "You are not authorized", msg)
	assert.Equal(t, []int{403}, statuses(srv, "DescribeImages"))
}

func TestSlow_DelaysAnswersAndClearRemovesIt(t *testing.T) {
	srv, e, _ := newFake(t, awsfake.Options{})
	// The delay is long beside a loopback call's time even on a loaded CI machine,
	// so that "cleared" below does not hang on how busy the machine is.
	const delay = 2 * time.Second
	srv.Slow("DescribeImages", delay)
	start := time.Now()
	_, err := e.DescribeImages(ctx(t), &ec2.DescribeImagesInput{})
	require.NoError(t, err)
	assert.GreaterOrEqual(t, time.Since(start), delay)

	short, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err = e.DescribeImages(short, &ec2.DescribeImagesInput{})
	assert.ErrorIs(t, err, context.DeadlineExceeded)

	srv.Clear()
	start = time.Now()
	_, err = e.DescribeImages(ctx(t), &ec2.DescribeImagesInput{})
	require.NoError(t, err)
	assert.Less(t, time.Since(start), delay)
}

func TestUnknownActionIsInvalidActionInEachServicesErrorShape(t *testing.T) {
	srv, _, _ := newFake(t, awsfake.Options{})

	status, body := rawPost(t, srv.URL, url.Values{"Action": {"RunInstances"}, "Version": {"2016-11-15"}}, true)
	assert.Equal(t, http.StatusBadRequest, status)
	var ec2Err struct {
		Code      string `xml:"Errors>Error>Code"`
		Message   string `xml:"Errors>Error>Message"`
		RequestID string `xml:"RequestID"`
	}
	require.NoError(t, xml.Unmarshal([]byte(body), &ec2Err), body)
	assert.Equal(t, "InvalidAction", ec2Err.Code)
	assert.Equal(t, "The action RunInstances is not valid for this web service.", ec2Err.Message)
	assert.NotEmpty(t, ec2Err.RequestID)

	status, body = rawPost(t, srv.URL, url.Values{"Action": {"DeleteAutoScalingGroup"}, "Version": {"2011-01-01"}}, true)
	assert.Equal(t, http.StatusBadRequest, status)
	var asgErr struct {
		XMLName   xml.Name
		Type      string `xml:"Error>Type"`
		Code      string `xml:"Error>Code"`
		RequestID string `xml:"RequestId"`
	}
	require.NoError(t, xml.Unmarshal([]byte(body), &asgErr), body)
	assert.Equal(t, "ErrorResponse", asgErr.XMLName.Local)
	assert.Equal(t, "http://autoscaling.amazonaws.com/doc/2011-01-01/", asgErr.XMLName.Space)
	assert.Equal(t, "Sender", asgErr.Type)
	assert.Equal(t, "InvalidAction", asgErr.Code)
	assert.NotEmpty(t, asgErr.RequestID)
}

func TestUnsignedRequestsAreRefused(t *testing.T) {
	srv, _, _ := newFake(t, awsfake.Options{})
	status, body := rawPost(t, srv.URL, url.Values{"Action": {"DescribeImages"}, "Version": {"2016-11-15"}}, false)
	assert.Equal(t, http.StatusUnauthorized, status)
	assert.Contains(t, body, "<Code>AuthFailure</Code>")
}

func TestConcurrentClientsAreSafe(t *testing.T) {
	srv, e, a := newFake(t, awsfake.Options{})
	seedGroup(srv, 0, 10, 1)
	var wg sync.WaitGroup
	for n := range 8 {
		wg.Go(func() {
			for range 5 {
				_, err := a.SetDesiredCapacity(context.Background(), &autoscaling.SetDesiredCapacityInput{
					AutoScalingGroupName: aws.String("consul"), DesiredCapacity: aws.Int32(int32(n%3 + 1)),
				})
				assert.NoError(t, err)
				_, err = a.DescribeAutoScalingGroups(context.Background(), &autoscaling.DescribeAutoScalingGroupsInput{})
				assert.NoError(t, err)
				_, err = e.DescribeInstances(context.Background(), &ec2.DescribeInstancesInput{})
				assert.NoError(t, err)
				_ = srv.Group("consul")
				_ = srv.Instances()
			}
		})
	}
	wg.Wait()
	_, err := a.SetDesiredCapacity(ctx(t), &autoscaling.SetDesiredCapacityInput{AutoScalingGroupName: aws.String("consul"), DesiredCapacity: aws.Int32(2)})
	require.NoError(t, err)
	waitInService(t, a, "consul", 2)
}
