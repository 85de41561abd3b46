package cluster

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A stand-in agent (pure logic: read's retry, not Consul) whose catalog answers the
// first consistent read as a follower does mid hand-off: 500 "node is not the leader".
func TestObserve_RidesOutALeaderHandOff(t *testing.T) {
	var catalogCalls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/v1/operator/autopilot/health":
			_, _ = w.Write([]byte(`{"Healthy":true,"FailureTolerance":1,"Servers":[{"ID":"a","Name":"s1","Leader":true,"Voter":true,"Healthy":true}]}`))
		case "/v1/catalog/service/consul":
			if catalogCalls.Add(1) == 1 {
				http.Error(w, "rpc error making call: node is not the leader", http.StatusInternalServerError)
				return
			}
			_, _ = w.Write([]byte(`[{"Node":"s1","NodeMeta":{"image_id":"img-A","instance_id":"i-1"}}]`))
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	c, err := api.NewClient(&api.Config{Address: srv.Listener.Addr().String()})
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	obs, err := Observe(ctx, c)
	require.NoError(t, err)
	assert.Equal(t, int32(2), catalogCalls.Load())
	require.Len(t, obs.Servers, 1)
	assert.Equal(t, "img-A", obs.Servers[0].ImageID)
}

func TestObserve_DoesNotRetryARefusal(t *testing.T) {
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		http.Error(w, "Permission denied", http.StatusForbidden)
	}))
	defer srv.Close()
	c, err := api.NewClient(&api.Config{Address: srv.Listener.Addr().String()})
	require.NoError(t, err)
	_, err = Observe(context.Background(), c)
	require.ErrorContains(t, err, "Permission denied")
	assert.Equal(t, int32(1), calls.Load())
}
