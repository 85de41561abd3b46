package awsfake_test

import (
	"context"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"
	astypes "github.com/aws/aws-sdk-go-v2/service/autoscaling/types"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/smithy-go"
	"github.com/stretchr/testify/require"

	"github.com/consul-rehydrate/consul-rehydrate/test/awsfake"
)

const (
	amiOld = "ami-0aaaaaaaaaaaaaaa1"
	amiNew = "ami-0bbbbbbbbbbbbbbb2"
)

// newFake starts a fake closed at the end of the test and real SDK clients for it.
func newFake(t *testing.T, opts awsfake.Options) (*awsfake.Server, *ec2.Client, *autoscaling.Client) {
	t.Helper()
	srv := awsfake.New(opts)
	t.Cleanup(srv.Close)
	cfg := srv.Config()
	return srv, ec2.NewFromConfig(cfg), autoscaling.NewFromConfig(cfg)
}

// seedGroup adds the two AMIs, template "consul" on amiOld and group "consul".
func seedGroup(srv *awsfake.Server, min, max, desired int) {
	created := time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)
	srv.AddImage(awsfake.Image{ID: amiOld, Name: "consul-1.20.0", CreationDate: created})
	srv.AddImage(awsfake.Image{ID: amiNew, Name: "consul-1.21.0", CreationDate: created.Add(24 * time.Hour)})
	srv.AddLaunchTemplate("consul", amiOld)
	srv.AddGroup(awsfake.Group{Name: "consul", LaunchTemplate: "consul", Version: "1", Min: min, Max: max, Desired: desired})
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return c
}

// apiCode asserts err is an API error and returns its code and message.
func apiCode(t *testing.T, err error) (code, message string) {
	t.Helper()
	var ae smithy.APIError
	require.ErrorAs(t, err, &ae)
	return ae.ErrorCode(), ae.ErrorMessage()
}

// describeGroup describes one group through the SDK.
func describeGroup(t *testing.T, a *autoscaling.Client, name string) astypes.AutoScalingGroup {
	t.Helper()
	out, err := a.DescribeAutoScalingGroups(ctx(t), &autoscaling.DescribeAutoScalingGroupsInput{AutoScalingGroupNames: []string{name}})
	require.NoError(t, err)
	require.Len(t, out.AutoScalingGroups, 1)
	return out.AutoScalingGroups[0]
}

// lifecycles maps instance ID to lifecycle state, as the SDK decodes them.
func lifecycles(g astypes.AutoScalingGroup) map[string]astypes.LifecycleState {
	m := map[string]astypes.LifecycleState{}
	for _, i := range g.Instances {
		m[aws.ToString(i.InstanceId)] = i.LifecycleState
	}
	return m
}

// waitInService waits until the group has exactly n instances, all InService.
func waitInService(t *testing.T, a *autoscaling.Client, name string, n int) astypes.AutoScalingGroup {
	t.Helper()
	var g astypes.AutoScalingGroup
	require.Eventually(t, func() bool {
		g = describeGroup(t, a, name)
		if len(g.Instances) != n {
			return false
		}
		for _, i := range g.Instances {
			if i.LifecycleState != astypes.LifecycleStateInService {
				return false
			}
		}
		return true
	}, 10*time.Second, 10*time.Millisecond)
	return g
}

// describeInstance describes one instance through the SDK.
func describeInstance(t *testing.T, e *ec2.Client, id string) ec2types.Instance {
	t.Helper()
	out, err := e.DescribeInstances(ctx(t), &ec2.DescribeInstancesInput{InstanceIds: []string{id}})
	require.NoError(t, err)
	require.Len(t, out.Reservations, 1)
	require.Len(t, out.Reservations[0].Instances, 1)
	return out.Reservations[0].Instances[0]
}

// rawPost sends a form the way the SDK would, minus the signature's validity.
func rawPost(t *testing.T, endpoint string, form url.Values, signed bool) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, endpoint, strings.NewReader(form.Encode()))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if signed {
		req.Header.Set("Authorization", "AWS4-HMAC-SHA256 Credential=AKIDFAKE/20240101/us-east-1/ec2/aws4_request, SignedHeaders=host, Signature=00")
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(body)
}
