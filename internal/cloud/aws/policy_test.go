package aws

import (
	"encoding/json"
	"os"
	"reflect"
	"sort"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestIAMPolicy_GrantsExactlyTheCallsTheProviderMakes keeps config/iam-policy.json
// least-privilege: every method of the EC2 and AutoScaling interfaces is allowed, and
// nothing else but what AWS checks when a group is pointed at a launch template.
func TestIAMPolicy_GrantsExactlyTheCallsTheProviderMakes(t *testing.T) {
	b, err := os.ReadFile("../../../config/iam-policy.json")
	require.NoError(t, err)
	var policy struct {
		Statement []struct {
			Effect string
			Action any
		}
	}
	require.NoError(t, json.Unmarshal(b, &policy))
	granted := map[string]bool{}
	for _, s := range policy.Statement {
		require.Equal(t, "Allow", s.Effect)
		switch a := s.Action.(type) {
		case string:
			granted[a] = true
		case []any:
			for _, x := range a {
				granted[x.(string)] = true
			}
		}
	}

	want := map[string]bool{
		// Checked by AWS when UpdateAutoScalingGroup names a launch template.
		"ec2:RunInstances": true, "ec2:CreateTags": true, "iam:PassRole": true,
	}
	for _, api := range []struct {
		prefix string
		iface  reflect.Type
	}{
		{"ec2:", reflect.TypeFor[EC2]()},
		{"autoscaling:", reflect.TypeFor[AutoScaling]()},
		// The termination gate's calls (handlers/lifecycle).
		{"autoscaling:", reflect.TypeFor[Lifecycle]()},
	} {
		for i := 0; i < api.iface.NumMethod(); i++ {
			want[api.prefix+api.iface.Method(i).Name] = true
		}
	}
	assert.Equal(t, keys(want), keys(granted))
}

func keys(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
