package acl

import (
	"fmt"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	consuld "github.com/consul-rehydrate/consul-rehydrate/consul.d"
)

// rulesOf parses rendered ACL rules (HCL) into one line per rule, sorted:
// `key_prefix "rehydrate/prod/" write`, `operator write`. It fails the test on
// anything that is not a plain rule: a syntax error, an interpolation, a nested block.
func rulesOf(t *testing.T, src string) []string {
	t.Helper()
	f, diags := hclsyntax.ParseConfig([]byte(src), "policy.hcl", hcl.InitialPos)
	require.False(t, diags.HasErrors(), "rendered policy parses: %s", diags.Error())
	body := f.Body.(*hclsyntax.Body)
	literal := func(e hclsyntax.Expression) string {
		v, d := e.Value(nil) // no variables, no functions: only literals evaluate
		require.False(t, d.HasErrors(), "a literal value: %s", d.Error())
		require.Equal(t, "string", v.Type().FriendlyName(), "a string")
		return v.AsString()
	}
	var out []string
	for name, a := range body.Attributes {
		out = append(out, name+" "+literal(a.Expr))
	}
	for _, b := range body.Blocks {
		require.Len(t, b.Labels, 1, "rule %s has one label", b.Type)
		require.Empty(t, b.Body.Blocks, "rule %s has no nested blocks", b.Type)
		require.Len(t, b.Body.Attributes, 1, "rule %s %q has one attribute", b.Type, b.Labels[0])
		p, ok := b.Body.Attributes["policy"]
		require.True(t, ok, "rule %s %q sets policy", b.Type, b.Labels[0])
		out = append(out, fmt.Sprintf("%s %q %s", b.Type, b.Labels[0], literal(p.Expr)))
	}
	sort.Strings(out)
	return out
}

// TestRenderPolicy_RendersExactlyTheScopedRules renders each policy and compares its
// rules, parsed, with the whole list it must grant: nothing more (no session_prefix,
// no key prefix wider than the cluster, node or service) and nothing less.
func TestRenderPolicy_RendersExactlyTheScopedRules(t *testing.T) {
	for _, tc := range []struct {
		name string
		vars consuld.PolicyVars
		want []string
	}{
		{consuld.PolicyRehydrateHandlers, consuld.PolicyVars{Cluster: "prod", Node: "i-0123456789abcdef0", EventName: "consul-rehydrate"}, []string{
			`agent "i-0123456789abcdef0" write`,
			`event "consul-rehydrate" write`,
			`key_prefix "rehydrate/prod/" write`,
			`mesh deny`,
			`node_prefix "" read`,
			`operator write`,
			`peering deny`,
			`service "consul" read`,
			`session "i-0123456789abcdef0" write`,
		}},
		// The shared token's: the same rules, with the two node-exact ones (session,
		// agent) as prefixes, since the token does not know its server.
		{consuld.PolicyRehydrateHandlersShared, consuld.PolicyVars{Cluster: "prod", NodePrefix: "i-", EventName: "consul-rehydrate"}, []string{
			`agent_prefix "i-" write`,
			`event "consul-rehydrate" write`,
			`key_prefix "rehydrate/prod/" write`,
			`mesh deny`,
			`node_prefix "" read`,
			`operator write`,
			`peering deny`,
			`service "consul" read`,
			`session_prefix "i-" write`,
		}},
		{consuld.PolicyDeployHandler, consuld.PolicyVars{Node: "web-3", Service: "web"}, []string{
			`agent "web-3" read`,
			`key "deploy/web/nodes/web-3/desired" read`,
			`key_prefix "deploy/web/nodes/web-3/" write`,
			`node "web-3" read`,
			`service "web" write`,
			`session "web-3" write`,
		}},
		{consuld.PolicyDeployRollout, consuld.PolicyVars{Node: "ci-runner", Service: "web"}, []string{
			`key_prefix "deploy/web/" write`,
			`node_prefix "" read`,
			`service "web" read`,
			`session "ci-runner" write`,
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := consuld.RenderPolicy(tc.name, tc.vars)
			require.NoError(t, err)
			assert.Equal(t, tc.want, rulesOf(t, got))
			// The comments still document the template's placeholders.
			tmpl, err := consuld.PolicyTemplate(tc.name)
			require.NoError(t, err)
			assert.Contains(t, got, "# ")
			assert.Equal(t, strings.Count(tmpl, "\n"), strings.Count(got, "\n"), "line for line")
		})
	}
}

// TestPolicyTemplates_PlaceholdersStandOnlyInsideQuotedRuleLabels keeps the templates
// readable documentation and safe to render: on rule lines every placeholder is inside
// the quoted label of a rule, and there is no placeholder the renderer does not know.
func TestPolicyTemplates_PlaceholdersStandOnlyInsideQuotedRuleLabels(t *testing.T) {
	known := map[string]bool{consuld.ClusterName: true, consuld.NodeName: true, consuld.ServiceName: true, consuld.EventName: true, consuld.NodePrefix: true}
	placeholder := regexp.MustCompile(`\b(?:[A-Z][A-Z_]*_NAME|NODE_PREFIX)\b`)
	label := regexp.MustCompile(`^\s*[a-z_]+ "[^"\\$%]*" \{$`)
	assert.Equal(t, []string{"deploy-handler", "deploy-rollout", "rehydrate-handlers", "rehydrate-handlers-shared"}, consuld.PolicyNames())
	for _, name := range consuld.PolicyNames() {
		src, err := consuld.PolicyTemplate(name)
		require.NoError(t, err)
		for i, line := range strings.Split(src, "\n") {
			for _, p := range placeholder.FindAllString(line, -1) {
				assert.True(t, known[p], "%s line %d: unknown placeholder %s", name, i+1, p)
			}
			if strings.HasPrefix(strings.TrimSpace(line), "#") || !placeholder.MatchString(line) {
				continue
			}
			assert.Regexp(t, label, line, "%s line %d: a placeholder outside a rule's quoted label", name, i+1)
		}
	}
}

// TestRenderPolicy_RefusesEmptyAndHostileValues: a value that is empty (which would
// widen a prefix to every cluster, node or service), or that could close the quoted
// HCL string, interpolate, add a path segment or fall outside Consul's node-name
// grammar, is refused with an error naming the field, and nothing is rendered.
func TestRenderPolicy_RefusesEmptyAndHostileValues(t *testing.T) {
	good := map[string]consuld.PolicyVars{
		consuld.PolicyRehydrateHandlers:       {Cluster: "prod", Node: "i-0123456789abcdef0", EventName: "consul-rehydrate"},
		consuld.PolicyRehydrateHandlersShared: {Cluster: "prod", NodePrefix: "i-", EventName: "consul-rehydrate"},
		consuld.PolicyDeployHandler:           {Node: "web-3", Service: "web"},
		consuld.PolicyDeployRollout:           {Node: "ci-runner", Service: "web"},
	}
	hostile := []string{
		"",                                  // the prefix would cover everything
		`web"` + "\n}\nkey_prefix \"\" {\n", // closes the string, adds a rule
		`a"b`, `a\b`, "a\nb", "web\n", "web ", "a\rb", "a\x00b", "a\tb", "a b",
		"${node}", "%{ if true }x%{ endif }", "$${x}",
		"a/b", "web/", "../x", "..", ".", "/",
		"*", "x*", "a,b", "é", "wеb", // the last has a Cyrillic е
		strings.Repeat("a", 129),
	}
	fields := map[string]func(*consuld.PolicyVars, string){
		"Cluster":    func(v *consuld.PolicyVars, s string) { v.Cluster = s },
		"Node":       func(v *consuld.PolicyVars, s string) { v.Node = s },
		"Service":    func(v *consuld.PolicyVars, s string) { v.Service = s },
		"EventName":  func(v *consuld.PolicyVars, s string) { v.EventName = s },
		"NodePrefix": func(v *consuld.PolicyVars, s string) { v.NodePrefix = s },
	}
	for name, vars := range good {
		_, err := consuld.RenderPolicy(name, vars)
		require.NoError(t, err, "%s renders with good values", name)
		tmpl, _ := consuld.PolicyTemplate(name)
		for field, set := range fields {
			for _, bad := range hostile {
				v := vars
				set(&v, bad)
				unused := !strings.Contains(stripComments(tmpl), placeholderOf(field))
				if bad == "" && unused {
					continue // an unused value may be left out
				}
				out, err := consuld.RenderPolicy(name, v)
				if assert.Error(t, err, "%s %s=%q", name, field, bad) {
					assert.Contains(t, err.Error(), field, "the error names the field")
					assert.Contains(t, err.Error(), name, "the error names the policy")
				}
				assert.Empty(t, out, "nothing rendered")
			}
		}
	}

	// Values only valid elsewhere: config's cluster grammar is lower-case; a node name
	// is a DNS label (Consul warns about any other), so no dots or underscores.
	for _, v := range []consuld.PolicyVars{
		{Cluster: "Prod", Node: "n1", EventName: "e"},
		{Cluster: "prod", Node: "ip-10-0-0-1.ec2.internal", EventName: "e"},
		{Cluster: "prod", Node: "node_1", EventName: "e"},
		{Cluster: "prod", Node: strings.Repeat("n", 64), EventName: "e"},
		{Cluster: strings.Repeat("c", 64), Node: "n1", EventName: "e"},
	} {
		_, err := consuld.RenderPolicy(consuld.PolicyRehydrateHandlers, v)
		assert.Error(t, err, "%+v", v)
	}
	_, err := consuld.RenderPolicy("rehydrate", good[consuld.PolicyRehydrateHandlers])
	assert.ErrorContains(t, err, `unknown ACL policy "rehydrate"`)
	// A value equal to a placeholder is rendered as itself, once: no second pass.
	out, err := consuld.RenderPolicy(consuld.PolicyDeployRollout, consuld.PolicyVars{Node: "n1", Service: "NODE_NAME"})
	require.NoError(t, err)
	assert.Contains(t, rulesOf(t, out), `session "n1" write`)
	assert.Contains(t, rulesOf(t, out), `key_prefix "deploy/NODE_NAME/" write`)
}

func placeholderOf(field string) string {
	return map[string]string{"Cluster": consuld.ClusterName, "Node": consuld.NodeName, "Service": consuld.ServiceName, "EventName": consuld.EventName, "NodePrefix": consuld.NodePrefix}[field]
}

func stripComments(src string) string {
	var b strings.Builder
	for _, l := range strings.Split(src, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "#") {
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}
