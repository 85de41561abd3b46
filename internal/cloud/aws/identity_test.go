package aws

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/consul-rehydrate/consul-rehydrate/test/imdsmock"
)

func TestSelfIdentity_ReadsInstanceRegionAndAMIOverIMDSv2(t *testing.T) {
	endpoint := imdsmock.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	id, err := SelfIdentity(ctx, NewIMDS(endpoint))
	require.NoError(t, err)
	// The mock's documented defaults.
	assert.Equal(t, imdsmock.InstanceID, id.InstanceID)
	assert.Equal(t, imdsmock.Region, id.Region)
	assert.Equal(t, "ami-0b69ea66ff7391e80", id.ImageID)
	assert.NotEmpty(t, id.PrivateIP)
}

func TestSelfIdentity_FailsClearlyWithoutMetadataService(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := SelfIdentity(ctx, NewIMDS("http://127.0.0.1:1"))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "read instance identity document")
}
