// Package userdata runs scripts/user-data.sh as an instance would at boot, against
// the real ec2-metadata-mock, and validates what it renders with the real consul.
package userdata

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/consul-rehydrate/consul-rehydrate/test/imdsmock"
	"github.com/consul-rehydrate/consul-rehydrate/test/testcluster"
)

func runUserData(t *testing.T, env ...string) (root, out string, err error) {
	t.Helper()
	root = t.TempDir()
	cmd := exec.Command("bash", "../../scripts/user-data.sh")
	cmd.Env = append(os.Environ(), append([]string{"ROOT=" + root, "SKIP_SYSTEMD=1"}, env...)...)
	b, err := cmd.CombinedOutput()
	return root, string(b), err
}

func TestUserData_RendersValidServerConfigWithNodeMetaAndAutoJoin(t *testing.T) {
	endpoint := imdsmock.Start(t)
	root, out, err := runUserData(t, "IMDS_ENDPOINT="+endpoint, "CONSUL_SERVERS=5", "JOIN_TAG_KEY=consul-cluster", "JOIN_TAG_VALUE=prod")
	require.NoError(t, err, out)

	b, err := os.ReadFile(filepath.Join(root, "etc/consul.d/node.hcl"))
	require.NoError(t, err)
	node := string(b)
	assert.Contains(t, node, `node_name        = "`+imdsmock.InstanceID+`"`)
	assert.Contains(t, node, `instance_id = "`+imdsmock.InstanceID+`"`)
	assert.Regexp(t, `image_id    = "ami-[0-9a-f]+"`, node)
	assert.Contains(t, node, "bootstrap_expect = 5")
	assert.Contains(t, node, `retry_join       = ["provider=aws region=us-east-1 tag_key=consul-cluster tag_value=prod"]`)

	// Together with the shipped server.hcl and watches.hcl it is a valid server config.
	for _, f := range []string{"server.hcl", "watches.hcl"} {
		b, err := os.ReadFile(filepath.Join("../../consul.d", f))
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(filepath.Join(root, "etc/consul.d", f), b, 0o644))
	}
	consul, err := testcluster.ConsulBinary()
	require.NoError(t, err)
	v, err := exec.Command(consul, "validate", filepath.Join(root, "etc/consul.d")).CombinedOutput()
	require.NoError(t, err, string(v))
	assert.Contains(t, string(v), "Configuration is valid!")
}

func TestUserData_FailsClearlyAndWritesNothing(t *testing.T) {
	endpoint := imdsmock.Start(t)
	tests := []struct {
		name string
		env  []string
		want string
	}{
		{"no metadata service", []string{"IMDS_ENDPOINT=http://127.0.0.1:1"}, "no IMDSv2 token from http://127.0.0.1:1"},
		{"server count not a number", []string{"IMDS_ENDPOINT=" + endpoint, "CONSUL_SERVERS=three"}, "CONSUL_SERVERS must be a number"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root, out, err := runUserData(t, tt.env...)
			require.Error(t, err)
			assert.Contains(t, out, tt.want)
			_, statErr := os.Stat(filepath.Join(root, "etc/consul.d/node.hcl"))
			assert.True(t, os.IsNotExist(statErr), "no config written")
			assert.False(t, strings.Contains(out, "configured"))
		})
	}
}
