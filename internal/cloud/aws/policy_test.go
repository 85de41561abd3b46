package aws

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/consul-rehydrate/consul-rehydrate/internal/cloud"
	"github.com/consul-rehydrate/consul-rehydrate/test/awsfake"
)

const policyPath = "../../../config/iam-policy.json"

// TestIAMPolicy_GrantsExactlyTheCallsTheProviderMakes keeps config/iam-policy.json
// least-privilege: every method of the EC2 and AutoScaling interfaces is allowed, and
// nothing else but what AWS checks when a group is pointed at a launch template.
func TestIAMPolicy_GrantsExactlyTheCallsTheProviderMakes(t *testing.T) {
	granted := map[string]bool{}
	for _, s := range readPolicy(t, nil) {
		require.Equal(t, "Allow", s.Effect)
		for _, a := range s.Action {
			granted[a] = true
		}
	}
	assert.Equal(t, keys(providerActions()), keys(granted))
}

// providerActions are the IAM actions of every call the provider and the
// termination gate can make, and those AWS checks when UpdateAutoScalingGroup
// names a launch template.
func providerActions() map[string]bool {
	want := map[string]bool{"ec2:RunInstances": true, "ec2:CreateTags": true, "iam:PassRole": true}
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
	return want
}

// TestIAMPolicy_AllowsEveryRequestTheProviderSendsAndNoWiderOne evaluates the
// policy's conditions, not just its action names, against the requests the provider
// really sends: a failed roll and a successful one (through a termination hook) on
// the wire fake, which records every call, each call turned into the request
// context IAM would see. Every one must be allowed. Then requests the policy exists
// to refuse must be denied: MaxSize above the cap, a MinSize change, another group,
// a group or template without the cluster tag.
func TestIAMPolicy_AllowsEveryRequestTheProviderSendsAndNoWiderOne(t *testing.T) {
	ctx := context.Background()
	fake := awsfake.New(awsfake.Options{})
	t.Cleanup(fake.Close)
	fake.AddImage(awsfake.Image{ID: imgA, Name: "consul-server-1", CreationDate: time.Now().Add(-48 * time.Hour)})
	fake.AddImage(awsfake.Image{ID: imgB, Name: "consul-server-2", CreationDate: time.Now().Add(-time.Hour)})
	ltID := fake.AddLaunchTemplate("consul-server", imgA)
	fake.AddLaunchTemplateVersion("consul-server", awsfake.LaunchTemplateData{ImageID: imgA, UserData: "bGF0ZXN0"}, false)
	fake.AddGroup(awsfake.Group{Name: "consul-servers", LaunchTemplate: "consul-server", Version: "$Latest", Min: 3, Max: 3, Desired: 3,
		AZs: []string{"us-east-1a", "us-east-1b", "us-east-1c"}})
	cfg := fake.Config()
	as := autoscaling.NewFromConfig(cfg)
	p := New(ec2.NewFromConfig(cfg), as, Config{
		Group: "consul-servers", LaunchTemplate: "consul-server", Servers: 3, Owners: []string{"self"}, NamePattern: "consul-server-*",
		LaunchWait: 5 * time.Second,
	})
	live := func(n int) []cloud.Instance {
		t.Helper()
		var insts []cloud.Instance
		require.Eventually(t, func() bool {
			all, err := p.Instances(ctx)
			insts = nil
			for _, i := range all {
				if i.State == cloud.StateRunning {
					insts = append(insts, i)
				}
			}
			return err == nil && len(insts) == n && len(all) == n
		}, 10*time.Second, 20*time.Millisecond)
		return insts
	}
	live(3)

	// A roll that fails after its surge: the group goes back on $Latest.
	_, err := p.Images(ctx)
	require.NoError(t, err)
	_, err = p.Survey(ctx, time.Now().Add(-time.Minute), time.Hour)
	require.NoError(t, err)
	st, err := p.Prepare(ctx)
	require.NoError(t, err)
	require.NoError(t, p.Begin(ctx, st))
	bad, err := p.Launch(ctx, imgB, "launch/b/1", st)
	require.NoError(t, err)
	require.NoError(t, p.End(ctx, st, true))
	require.NoError(t, p.Terminate(ctx, bad.ID, "fail/"+bad.ID))
	old := live(3)
	require.Equal(t, "$Latest", fake.Group("consul-servers").Version)

	// A roll that succeeds, its retire held by a termination hook the gate completes.
	fake.AddLifecycleHook("consul-servers", awsfake.LifecycleHook{Name: "drain", Transition: "autoscaling:EC2_INSTANCE_TERMINATING"})
	st, err = p.Prepare(ctx)
	require.NoError(t, err)
	require.NoError(t, p.Begin(ctx, st))
	_, err = p.Launch(ctx, imgB, "launch/b/2", st)
	require.NoError(t, err)
	require.NoError(t, p.Terminate(ctx, old[0].ID, "retire/"+old[0].ID))
	gate := &LifecycleAction{Client: as, Group: "consul-servers", Hook: "drain", InstanceID: old[0].ID}
	_, err = gate.HeartbeatTimeout(ctx)
	require.NoError(t, err)
	require.NoError(t, gate.Heartbeat(ctx))
	require.NoError(t, gate.Complete(ctx))
	live(3)
	require.NoError(t, p.End(ctx, st, false))

	// A failed roll's End with nothing to restore but the version: no MaxSize.
	require.NoError(t, p.End(ctx, &cloud.GroupState{MaxSize: 3, TemplateVersion: "2", GroupVersion: "$Latest"}, true))

	groups, err := as.DescribeAutoScalingGroups(ctx, &autoscaling.DescribeAutoScalingGroupsInput{AutoScalingGroupNames: []string{"consul-servers"}})
	require.NoError(t, err)
	w := world{
		groupARN:    aws.ToString(groups.AutoScalingGroups[0].AutoScalingGroupARN),
		templateARN: "arn:aws:ec2:us-east-1:123456789012:launch-template/" + ltID,
		tags:        map[string]string{"consul-cluster": "prod"},
	}
	policy := readPolicy(t, strings.NewReplacer("REGION", "us-east-1", "ACCOUNT_ID", "123456789012",
		"LAUNCH_TEMPLATE_ID", ltID, "CLUSTER_TAG", "prod", "MAX_SIZE", "4"))

	made := map[string]bool{}
	shapes := map[string]bool{}
	for _, c := range fake.Calls() {
		require.Equal(t, 200, c.Status, "%s failed on the fake", c.Action)
		for _, r := range w.requests(c) {
			made[r.action] = true
			ok, err := allowed(policy, r)
			require.NoError(t, err)
			assert.True(t, ok, "denied: %s", r)
			shapes[r.String()] = true
		}
	}
	assert.Equal(t, keys(providerActions()), keys(made), "the scenario made every call the provider can make")
	for _, must := range []string{
		"autoscaling:UpdateAutoScalingGroup {autoscaling:ResourceTag/consul-cluster=prod}",                                                                        // Begin: NewInstancesProtectedFromScaleIn
		"autoscaling:UpdateAutoScalingGroup {autoscaling:LaunchTemplateVersionSpecified=false autoscaling:ResourceTag/consul-cluster=prod}",                       // End(failed): back on $Latest
		"autoscaling:UpdateAutoScalingGroup {autoscaling:LaunchTemplateVersionSpecified=true autoscaling:MaxSize=4 autoscaling:ResourceTag/consul-cluster=prod}",  // Launch
		"autoscaling:UpdateAutoScalingGroup {autoscaling:LaunchTemplateVersionSpecified=false autoscaling:MaxSize=3 autoscaling:ResourceTag/consul-cluster=prod}", // End(failed) after a surge
		"autoscaling:UpdateAutoScalingGroup {autoscaling:MaxSize=3 autoscaling:ResourceTag/consul-cluster=prod}",                                                  // End(done)
		"ec2:CreateLaunchTemplateVersion {ec2:ResourceTag/consul-cluster=prod}",
	} {
		assert.True(t, shapes[must], "the scenario sent %s; it sent %v", must, keys(shapes))
	}

	// What the policy exists to refuse.
	update := func(keys map[string]string) request {
		ctx := map[string]string{"autoscaling:ResourceTag/consul-cluster": "prod"}
		for k, v := range keys {
			ctx[k] = v
		}
		return request{action: "autoscaling:UpdateAutoScalingGroup", resource: w.groupARN, context: ctx}
	}
	for _, r := range []request{
		update(map[string]string{"autoscaling:MaxSize": "5"}),
		update(map[string]string{"autoscaling:MaxSize": "4", "autoscaling:MinSize": "0"}),
		update(map[string]string{"autoscaling:VPCZoneIdentifiers": "subnet-1"}),
		{action: "autoscaling:UpdateAutoScalingGroup", resource: w.groupARN, context: map[string]string{"autoscaling:ResourceTag/consul-cluster": "other"}},
		{action: "autoscaling:SetDesiredCapacity", resource: w.groupARN, context: map[string]string{}},
		{action: "autoscaling:TerminateInstanceInAutoScalingGroup", resource: strings.Replace(w.groupARN, "/consul-servers", "/web", 1),
			context: map[string]string{"autoscaling:ResourceTag/consul-cluster": "prod"}},
		{action: "ec2:CreateLaunchTemplateVersion", resource: w.templateARN, context: map[string]string{}},
		{action: "ec2:CreateLaunchTemplateVersion", resource: "arn:aws:ec2:us-east-1:123456789012:launch-template/lt-0other", context: map[string]string{"ec2:ResourceTag/consul-cluster": "prod"}},
		{action: "ec2:ModifyLaunchTemplate", resource: w.templateARN, context: map[string]string{"ec2:ResourceTag/consul-cluster": "prod"}},
		{action: "iam:PassRole", resource: "arn:aws:iam::123456789012:role/admin", context: map[string]string{"iam:PassedToService": "ec2.amazonaws.com"}},
	} {
		ok, err := allowed(policy, r)
		require.NoError(t, err)
		assert.False(t, ok, "allowed: %s", r)
	}
}

// TestConditionEvaluator_FollowsIAMsDocumentedSemantics pins the evaluator to the
// IAM User Guide, "IAM JSON policy elements: Condition operators": a key absent
// from the request context fails every operator but Null and the ...IfExists ones
// (the Important box: "If the key that you specify in a policy condition is not
// present in the request context, the values do not match and the condition is
// false"); ...IfExists: "If the key is not present, evaluate the condition element
// as true". It is the bug the shipped policy had: NumericLessThanEquals on
// autoscaling:MaxSize denied every UpdateAutoScalingGroup that leaves MaxSize alone.
func TestConditionEvaluator_FollowsIAMsDocumentedSemantics(t *testing.T) {
	none := map[string]string{}
	max4 := map[string]string{"autoscaling:MaxSize": "4"}
	for _, tc := range []struct {
		op    string
		want  []string
		ctx   map[string]string
		holds bool
	}{
		{"NumericLessThanEquals", []string{"4"}, none, false},
		{"NumericLessThanEqualsIfExists", []string{"4"}, none, true},
		{"NumericLessThanEqualsIfExists", []string{"4"}, max4, true},
		{"NumericLessThanEqualsIfExists", []string{"3"}, max4, false},
		{"NumericLessThan", []string{"4"}, max4, false},
		{"StringEquals", []string{"4"}, none, false},
		{"StringEquals", []string{"3", "4"}, max4, true}, // values of one key: OR
		{"StringEqualsIfExists", []string{"3"}, none, true},
		{"StringLike", []string{"?"}, max4, true},
		{"Null", []string{"true"}, none, true},
		{"Null", []string{"true"}, max4, false},
		{"Null", []string{"false"}, max4, true},
		{"Bool", []string{"true"}, none, false},
		{"BoolIfExists", []string{"true"}, none, true},
	} {
		got, err := conditionHolds(tc.op, "autoscaling:MaxSize", tc.want, tc.ctx)
		require.NoError(t, err)
		assert.Equal(t, tc.holds, got, "%s %v against %v", tc.op, tc.want, tc.ctx)
	}
	_, err := conditionHolds("DateGreaterThan", "aws:CurrentTime", []string{"x"}, none)
	assert.Error(t, err, "an operator the evaluator does not know fails the test, never passes it")
}

// world is what the recorded calls act on: the ARNs and the tags AWS would find on
// the group and the template.
type world struct {
	groupARN, templateARN string
	tags                  map[string]string
}

// request is one authorization IAM makes: an action on a resource with the
// condition keys present in its request context.
type request struct {
	action, resource string
	context          map[string]string
}

func (r request) String() string {
	var kv []string
	for k, v := range r.context {
		kv = append(kv, k+"="+v)
	}
	sort.Strings(kv)
	return r.action + " {" + strings.Join(kv, " ") + "}"
}

const ec2APIVersion = "2016-11-15"

// requests turns a recorded call into what IAM authorizes for it. Which condition
// keys an action has comes from the Service Authorization Reference ("Actions,
// resources, and condition keys for Amazon EC2 Auto Scaling" and "… for Amazon
// EC2"); a request key such as autoscaling:MaxSize is in the context only when the
// request carries that parameter. Describe* calls support no resource-level
// permissions (resource "*"). UpdateAutoScalingGroup naming a launch template also
// checks ec2:RunInstances, iam:PassRole for its instance profile and ec2:CreateTags
// for its tag specifications (EC2 Auto Scaling user guide, "Control Amazon EC2
// launch template usage in Auto Scaling groups"; ../shared/AWS.md).
func (w world) requests(c awsfake.Call) []request {
	if strings.HasPrefix(c.Action, "Describe") {
		svc := "autoscaling:"
		if c.Params.Get("Version") == ec2APIVersion {
			svc = "ec2:"
		}
		return []request{{action: svc + c.Action, resource: "*", context: map[string]string{}}}
	}
	if c.Params.Get("Version") == ec2APIVersion {
		ctx := map[string]string{}
		for k, v := range w.tags {
			ctx["ec2:ResourceTag/"+k] = v
		}
		return []request{{action: "ec2:" + c.Action, resource: w.templateARN, context: ctx}}
	}
	ctx := map[string]string{}
	for k, v := range w.tags {
		ctx["autoscaling:ResourceTag/"+k] = v
	}
	out := []request{{action: "autoscaling:" + c.Action, resource: w.groupARN, context: ctx}}
	if c.Action != "UpdateAutoScalingGroup" {
		return out
	}
	for param, key := range map[string]string{
		"MaxSize": "autoscaling:MaxSize", "MinSize": "autoscaling:MinSize",
		"LaunchConfigurationName": "autoscaling:LaunchConfigurationName", "VPCZoneIdentifier": "autoscaling:VPCZoneIdentifiers",
	} {
		if c.Params.Has(param) {
			ctx[key] = c.Params.Get(param)
		}
	}
	if c.Params.Has("LaunchTemplate.Version") {
		_, err := strconv.ParseInt(c.Params.Get("LaunchTemplate.Version"), 10, 64)
		ctx["autoscaling:LaunchTemplateVersionSpecified"] = strconv.FormatBool(err == nil)
	}
	if c.Params.Has("LaunchTemplate.LaunchTemplateName") || c.Params.Has("LaunchTemplate.LaunchTemplateId") {
		account := strings.Split(w.groupARN, ":")[4]
		out = append(out,
			request{action: "ec2:RunInstances", resource: "arn:aws:ec2:us-east-1:" + account + ":instance/*", context: map[string]string{"ec2:LaunchTemplate": w.templateARN}},
			request{action: "iam:PassRole", resource: "arn:aws:iam::" + account + ":role/consul-server", context: map[string]string{"iam:PassedToService": "ec2.amazonaws.com"}},
			request{action: "ec2:CreateTags", resource: "arn:aws:ec2:us-east-1:" + account + ":instance/i-0123456789abcdef0", context: map[string]string{"ec2:CreateAction": "RunInstances"}},
		)
	}
	return out
}

// statement is one statement of the policy; Action, Resource and each condition
// value may be a string or a list in IAM's grammar.
type statement struct {
	Sid       string
	Effect    string
	Action    stringList
	Resource  stringList
	Condition map[string]map[string]stringList
}

type stringList []string

func (l *stringList) UnmarshalJSON(b []byte) error {
	var one string
	if err := json.Unmarshal(b, &one); err == nil {
		*l = []string{one}
		return nil
	}
	return json.Unmarshal(b, (*[]string)(l))
}

// readPolicy reads config/iam-policy.json, its placeholders filled in by fill.
func readPolicy(t *testing.T, fill *strings.Replacer) []statement {
	t.Helper()
	b, err := os.ReadFile(policyPath)
	require.NoError(t, err)
	text := string(b)
	if fill != nil {
		text = fill.Replace(text)
	}
	var policy struct{ Statement []statement }
	require.NoError(t, json.Unmarshal([]byte(text), &policy))
	return policy.Statement
}

// allowed says whether an Allow statement of the policy matches r: its action,
// its resource, and every condition (operators ANDed, keys within one ANDed).
func allowed(policy []statement, r request) (bool, error) {
	for _, s := range policy {
		if s.Effect != "Allow" || !anyMatch(s.Action, r.action) || !anyMatch(s.Resource, r.resource) {
			continue
		}
		holds := true
		for op, conds := range s.Condition {
			for key, want := range conds {
				ok, err := conditionHolds(op, key, want, r.context)
				if err != nil {
					return false, fmt.Errorf("statement %s: %w", s.Sid, err)
				}
				holds = holds && ok
			}
		}
		if holds {
			return true, nil
		}
	}
	return false, nil
}

// conditionHolds evaluates one operator on one key against the request context,
// for the operators the policy uses (IAM User Guide, "IAM JSON policy elements:
// Condition operators"): the values listed for a key are ORed; a key absent from
// the context fails the condition unless the operator ends in IfExists, and Null
// tests exactly that absence ("true": absent). Any other operator is an error.
func conditionHolds(op, key string, want []string, ctx map[string]string) (bool, error) {
	got, present := ctx[key]
	if op == "Null" {
		return len(want) == 1 && want[0] == strconv.FormatBool(!present), nil
	}
	base, ifExists := strings.CutSuffix(op, "IfExists")
	var match func(w string) bool
	switch base {
	case "StringEquals":
		match = func(w string) bool { return got == w }
	case "StringLike", "ArnLike":
		match = func(w string) bool { return globMatch(w, got) }
	case "Bool":
		match = func(w string) bool { return strings.EqualFold(got, w) }
	case "NumericLessThanEquals", "NumericLessThan":
		match = func(w string) bool {
			g, err1 := strconv.ParseFloat(got, 64)
			n, err2 := strconv.ParseFloat(w, 64)
			return err1 == nil && err2 == nil && (g < n || g == n && base == "NumericLessThanEquals")
		}
	default:
		return false, fmt.Errorf("condition operator %s is not modelled by this test: add it", op)
	}
	if !present {
		return ifExists, nil
	}
	for _, w := range want {
		if match(w) {
			return true, nil
		}
	}
	return false, nil
}

func anyMatch(patterns []string, s string) bool {
	for _, p := range patterns {
		if globMatch(p, s) {
			return true
		}
	}
	return false
}

// globMatch matches IAM's wildcards: * any run of characters, ? any one.
func globMatch(pattern, s string) bool {
	re := "^" + strings.NewReplacer(`\*`, ".*", `\?`, ".").Replace(regexp.QuoteMeta(pattern)) + "$"
	return regexp.MustCompile(re).MatchString(s)
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
