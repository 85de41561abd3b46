package aws

import (
	"context"
	"net"
	"net/http"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// startMetadataMock runs the real ec2-metadata-mock (installed by `make test`) on a
// free loopback port, IMDSv2 only, and returns its endpoint.
func startMetadataMock(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("ec2-metadata-mock")
	require.NoError(t, err, "ec2-metadata-mock not on PATH: run the tests with `make test`, which installs it")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	port := l.Addr().(*net.TCPAddr).Port
	require.NoError(t, l.Close())

	cmd := exec.Command(bin, "--hostname", "127.0.0.1", "--port", itoa(port), "--imdsv2")
	cmd.Dir = t.TempDir()
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	endpoint := "http://127.0.0.1:" + itoa(port)
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get(endpoint + "/latest/meta-data/instance-id")
		if err == nil {
			resp.Body.Close()
			require.Equal(t, http.StatusUnauthorized, resp.StatusCode, "IMDSv1 must be refused")
			return endpoint
		}
		require.True(t, time.Now().Before(deadline), "ec2-metadata-mock did not start: %v", err)
		time.Sleep(50 * time.Millisecond)
	}
}

func TestSelfIdentity_ReadsInstanceRegionAndAMIOverIMDSv2(t *testing.T) {
	endpoint := startMetadataMock(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	id, err := SelfIdentity(ctx, NewIMDS(endpoint))
	require.NoError(t, err)
	// The mock's documented defaults.
	assert.Equal(t, "i-1234567890abcdef0", id.InstanceID)
	assert.Equal(t, "us-east-1", id.Region)
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

func itoa(i int) string { return strconv.Itoa(i) }
