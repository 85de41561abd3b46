// Package acl proves that the handlers' ACL policy (consul.d/acl/rehydrate-handlers.hcl)
// is enough for a roll step on a cluster with ACLs on and default deny
// (consul.d/acl.hcl), and that a token without it is refused and changes nothing.
package acl

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/consul-rehydrate/consul-rehydrate/internal/app"
	"github.com/consul-rehydrate/consul-rehydrate/internal/command"
	"github.com/consul-rehydrate/consul-rehydrate/test/awsfake"
	"github.com/consul-rehydrate/consul-rehydrate/test/testcluster"
)

const management = "6b0f0d33-0c7a-4ad0-9a69-3c2d1f1b7e01" // this test's own cluster only

// machines hand the fake's group the IDs of the test cluster's servers first, so the
// group's instances and Consul's servers are the same three. The fake boots
// concurrently.
type machines struct {
	mu  sync.Mutex
	ids []string
}

func (m *machines) Boot(_ context.Context, _ string) (string, string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.ids) > 0 {
		id := m.ids[0]
		m.ids = m.ids[1:]
		return id, "192.0.2.10", nil
	}
	return fmt.Sprintf("i-%017d", time.Now().UnixNano()%1e17), "192.0.2.20", nil
}

func (m *machines) Shutdown(context.Context, string) error { return nil }

func TestHandlerPolicy_IsEnoughForARollStepAndNothingLessIs(t *testing.T) {
	aclHCL, err := os.ReadFile("../../consul.d/acl.hcl")
	require.NoError(t, err)
	policy, err := os.ReadFile("../../consul.d/acl/rehydrate-handlers.hcl")
	require.NoError(t, err)

	ids := []string{"i-00000000000000001", "i-00000000000000002", "i-00000000000000003"}
	c := testcluster.Start(t, testcluster.Options{
		Servers: 3,
		Token:   management,
		NodeMeta: func(name string) map[string]string {
			n := name[len(name)-1:]
			return map[string]string{"image_id": "ami-0aaaaaaaaaaaaaaaa", "instance_id": "i-0000000000000000" + n}
		},
		Files: func(*testcluster.Agent) map[string]string {
			return map[string]string{
				"acl.hcl":        string(aclHCL), // as shipped
				"acl-tokens.hcl": fmt.Sprintf("acl { tokens { initial_management = %q\nagent = %q } }\n", management, management),
			}
		},
	})
	admin := c.Client(t)
	testcluster.WaitFor(t, 30*time.Second, "every server's node meta in the catalog", func() (bool, string) {
		svcs, _, err := admin.Catalog().Service("consul", "", nil)
		if err != nil {
			return false, err.Error()
		}
		n := 0
		for _, s := range svcs {
			if s.NodeMeta["instance_id"] != "" {
				n++
			}
		}
		return n == 3, fmt.Sprintf("%d of 3", n)
	})

	created, _, err := admin.ACL().PolicyCreate(&api.ACLPolicy{Name: "rehydrate-handlers", Rules: string(policy)}, nil)
	require.NoError(t, err, "the policy file parses as Consul ACL rules")
	good, _, err := admin.ACL().TokenCreate(&api.ACLToken{Description: "handlers", Policies: []*api.ACLTokenPolicyLink{{ID: created.ID}}}, nil)
	require.NoError(t, err)
	bare, _, err := admin.ACL().TokenCreate(&api.ACLToken{Description: "no policy"}, nil)
	require.NoError(t, err)

	fake := awsfake.New(awsfake.Options{Machines: &machines{ids: ids}})
	t.Cleanup(fake.Close)
	fake.AddImage(awsfake.Image{ID: "ami-0aaaaaaaaaaaaaaaa", Name: "consul-server-1", CreationDate: time.Now().Add(-48 * time.Hour)})
	fake.AddImage(awsfake.Image{ID: "ami-0bbbbbbbbbbbbbbbb", Name: "consul-server-2", CreationDate: time.Now().Add(-time.Hour)})
	fake.AddLaunchTemplate("consul-server", "ami-0aaaaaaaaaaaaaaaa")
	fake.AddGroup(awsfake.Group{Name: "consul-servers", LaunchTemplate: "consul-server", Version: "1", Min: 3, Max: 3, Desired: 3})
	testcluster.WaitFor(t, 10*time.Second, "the group to be in service", func() (bool, string) {
		n := 0
		for _, i := range fake.Group("consul-servers").Instances {
			if i.LifecycleState == "InService" {
				n++
			}
		}
		return n == 3, fmt.Sprint(n)
	})
	for k, v := range map[string]string{
		"AWS_ACCESS_KEY_ID": "AKIDFAKEFAKEFAKEFAKE", "AWS_SECRET_ACCESS_KEY": "fake-secret",
		"AWS_CONFIG_FILE": os.DevNull, "AWS_SHARED_CREDENTIALS_FILE": os.DevNull, "AWS_EC2_METADATA_DISABLED": "true",
	} {
		t.Setenv(k, v)
	}

	spinup := func(token string) (int, string) {
		dir := t.TempDir()
		tokenFile := filepath.Join(dir, "token")
		require.NoError(t, os.WriteFile(tokenFile, []byte(token+"\n"), 0o600))
		cfg := filepath.Join(dir, "rehydrate.hcl")
		require.NoError(t, os.WriteFile(cfg, []byte(fmt.Sprintf(`cluster = "acl"
servers = 3
consul {
  address    = %q
  token_file = %q
}
provider "aws" {
  region            = "us-east-1"
  autoscaling_group = "consul-servers"
  launch_template   = "consul-server"
  endpoint_url      = %q
  max_attempts      = 2
  image {
    name_pattern = "consul-server-*"
  }
}
`, c.Servers[0].HTTPAddr(), tokenFile, fake.URL)), 0o644))
		var out strings.Builder
		code := command.Spinup([]string{"-config", cfg}, app.Env{
			Stdin:  strings.NewReader(`[{"ID":"00000000-0000-0000-0000-0000000ac1e1","Name":"consul-rehydrate","Version":1,"LTime":1}]`),
			Stdout: &out, Stderr: &out, Getenv: func(k string) string {
				if strings.HasPrefix(k, "CONSUL_HTTP_") {
					return ""
				}
				return os.Getenv(k)
			},
		})
		assert.NotContains(t, out.String(), token, "the token is never printed")
		return code, out.String()
	}

	// Without the policy: refused by Consul, and nothing changed anywhere.
	code, out := spinup(bare.SecretID)
	assert.Equal(t, app.ExitConsul, code, out)
	assert.Contains(t, out, "Permission denied")
	keys, _, err := admin.KV().Keys("rehydrate/", "", nil)
	require.NoError(t, err)
	assert.Empty(t, keys)
	assert.Equal(t, 3, fake.Group("consul-servers").Desired)

	// With it: the step is taken — lock, roll record, receipt, event records, the
	// launch through the group, and the event fired again.
	code, out = spinup(good.SecretID)
	require.Equal(t, app.ExitOK, code, out)
	assert.Contains(t, out, "step taken: step=launch")
	assert.Equal(t, 4, fake.Group("consul-servers").Desired, "surged to N+1")
	roll, _, err := admin.KV().Get("rehydrate/acl/roll", nil)
	require.NoError(t, err)
	require.NotNil(t, roll)
	assert.Contains(t, string(roll.Value), `"phase":"rolling"`)
	events, _, err := admin.Event().List("consul-rehydrate", nil)
	require.NoError(t, err)
	assert.NotEmpty(t, events, "the handler fired the event again")
}
