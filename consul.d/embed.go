// Package consuld embeds the agent configuration files we ship, so the local provider
// runs its servers with exactly these files, rendered for local paths, and the ACL
// policy templates of consul.d/acl with RenderPolicy, which renders them per cluster,
// node and service.
package consuld

import (
	_ "embed"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"sync"
)

// Paths the shipped files use; the local provider replaces them with its own.
const (
	BinDir     = "/opt/consul-rehydrate/bin"
	ConfigPath = "/etc/consul-rehydrate/config.hcl"
)

// ServerHCL is server.hcl: settings every server shares.
//
//go:embed server.hcl
var ServerHCL string

// WatchesHCL is watches.hcl: the spinup and spindown watches.
//
//go:embed watches.hcl
var WatchesHCL string

// DeployWebHCL is deploy-web.hcl: a service with an HTTP check, and the deploy
// handler's key watch for it.
//
//go:embed deploy-web.hcl
var DeployWebHCL string

// Placeholders of DeployWebHCL.
const (
	DeployConfigPath = "/etc/consul-rehydrate/deploy.hcl"
	NodeName         = "NODE_NAME"
)

// ReconfigureServiceHCL is reconfigure-service.hcl: the watched "monitoring" service
// with its HTTP check.
//
//go:embed reconfigure-service.hcl
var ReconfigureServiceHCL string

// ReconfigureWatchHCL is reconfigure-watch.hcl: the reconfigure handler's service
// watch and its check.
//
//go:embed reconfigure-watch.hcl
var ReconfigureWatchHCL string

// ReconfigureConfigPath is the placeholder of the handler's file in ReconfigureWatchHCL.
const ReconfigureConfigPath = "/etc/consul-rehydrate/reconfigure.hcl"

// ACLHCL is acl.hcl: ACLs on, default deny. The local provider loads it with each
// agent's tokens.
//
//go:embed acl.hcl
var ACLHCL string

// Names of the ACL policy templates in consul.d/acl, for RenderPolicy.
const (
	// PolicyRehydrateHandlers is the spinup and spindown handlers' policy, one per
	// server: it uses Cluster, Node and EventName.
	PolicyRehydrateHandlers = "rehydrate-handlers"
	// PolicyRehydrateHandlersShared is the same job's policy for one token shared by
	// every server of a cluster, where a server's node name is unknown until it runs
	// (AWS): it uses Cluster, NodePrefix and EventName, and reaches the sessions and
	// agents of every node named NodePrefix..., so it is wider than the per-server one.
	PolicyRehydrateHandlersShared = "rehydrate-handlers-shared"
	// PolicyDeployHandler is the deploy handler's policy, one per node and service: it
	// uses Node and Service.
	PolicyDeployHandler = "deploy-handler"
	// PolicyDeployRollout is the rollout's policy, one per service and agent: it uses
	// Node and Service.
	PolicyDeployRollout = "deploy-rollout"
)

// Placeholders of the policy templates, besides NodeName (PolicyVars.Node), which they
// share with DeployWebHCL. Each stands inside the quoted label of a rule; RenderPolicy
// replaces them on rule lines only, so a rendered policy's comments still name them.
const (
	// ClusterName is PolicyVars.Cluster's placeholder.
	ClusterName = "CLUSTER_NAME"
	// ServiceName is PolicyVars.Service's placeholder.
	ServiceName = "SERVICE_NAME"
	// EventName is PolicyVars.EventName's placeholder.
	EventName = "EVENT_NAME"
	// NodePrefix is PolicyVars.NodePrefix's placeholder.
	NodePrefix = "NODE_PREFIX"
)

//go:embed acl/rehydrate-handlers.hcl
var rehydrateHandlersPolicy string

//go:embed acl/rehydrate-handlers-shared.hcl
var rehydrateHandlersSharedPolicy string

//go:embed acl/deploy-handler.hcl
var deployHandlerPolicy string

//go:embed acl/deploy-rollout.hcl
var deployRolloutPolicy string

var policies = map[string]string{
	PolicyRehydrateHandlers:       rehydrateHandlersPolicy,
	PolicyRehydrateHandlersShared: rehydrateHandlersSharedPolicy,
	PolicyDeployHandler:           deployHandlerPolicy,
	PolicyDeployRollout:           deployRolloutPolicy,
}

// PolicyNames returns the names of the policy templates, sorted.
func PolicyNames() []string {
	names := make([]string, 0, len(policies))
	for n := range policies {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// PolicyTemplate returns the source of a policy template, placeholders and all.
func PolicyTemplate(name string) (string, error) {
	src, ok := policies[name]
	if !ok {
		return "", fmt.Errorf("unknown ACL policy %q: want one of %s", name, strings.Join(PolicyNames(), ", "))
	}
	return src, nil
}

// PolicyVars are the values a policy template is rendered with.
type PolicyVars struct {
	// Cluster is the roll configuration's `cluster`: keys under rehydrate/<Cluster>/.
	Cluster string
	// Node is a node_name: the handler's own node, or the node of the agent a rollout
	// talks to. Its sessions, and a deploy handler's keys, are scoped to it.
	Node string
	// Service is the deployed service: keys under deploy/<Service>/.
	Service string
	// EventName is the roll's roll.event_name.
	EventName string
	// NodePrefix is what the node name of every server sharing one token starts with
	// ("i-" for instance ids): their sessions and agents are scoped to it.
	NodePrefix string
}

// The grammar of each value. Every one is a single run of letters, digits, '-' and
// '_' (and '.' in an event name), so none can close the HCL string it is put in ('"',
// '\'), start an interpolation ("${", "%{"), break a line, or add a path segment ('/')
// that would widen a key prefix; and each is non-empty, since key_prefix
// "rehydrate/" + "" + "/" is not what anyone meant and key_prefix "deploy/web/nodes/" +
// "" would cover every node.
var (
	// clusterGrammar is config's (config/grammar.go clusterName).
	clusterGrammar = lazy(`^[a-z0-9_-]{1,63}$`)
	// nodeGrammar is a node name Consul calls valid: letters, digits and dashes, at most
	// 63 characters, a DNS label (Consul agent/config/builder.go warns about any other
	// node_name; internal/dnsutil InvalidNameRe, MaxLabelLength). The instance ids
	// scripts/user-data.sh uses as node names are of this form.
	nodeGrammar = lazy(`^[A-Za-z0-9][A-Za-z0-9-]{0,62}$`)
	// serviceGrammar is config's (config/grammar.go serviceName).
	serviceGrammar = lazy(`^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$`)
	// eventGrammar is a stricter form of config's roll.event_name rule (no spaces, no
	// '/'), which the default "consul-rehydrate" meets.
	eventGrammar = lazy(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$`)
	// nodePrefixGrammar is the start of a node name (nodeGrammar); a prefix of one
	// character or two ("i-") is fine, none at all would cover every node.
	nodePrefixGrammar = nodeGrammar
)

// RenderPolicy renders the policy template name ("rehydrate-handlers",
// "rehydrate-handlers-shared", "deploy-handler" or "deploy-rollout") with v. Every
// value the template uses must be set and match its grammar; a value it does not use
// may be empty, but if set it must match too. Any bad value is refused with an error naming it, and nothing is
// rendered. The result is ACL rules in HCL, for `consul acl policy create -rules`.
func RenderPolicy(name string, v PolicyVars) (string, error) {
	src, err := PolicyTemplate(name)
	if err != nil {
		return "", err
	}
	params := []struct {
		placeholder, field, value string
		grammar                   func() *regexp.Regexp
		want                      string
	}{
		{ClusterName, "Cluster", v.Cluster, clusterGrammar, "1 to 63 characters of a-z, 0-9, - and _"},
		{NodeName, "Node", v.Node, nodeGrammar, "a node name of 1 to 63 letters, digits and -, starting with a letter or digit"},
		{ServiceName, "Service", v.Service, serviceGrammar, "1 to 63 letters, digits, - and _, starting with a letter or digit"},
		{EventName, "EventName", v.EventName, eventGrammar, "1 to 128 letters, digits, -, _ and ., starting with a letter or digit"},
		{NodePrefix, "NodePrefix", v.NodePrefix, nodePrefixGrammar, "the start of a node name: 1 to 63 letters, digits and -, starting with a letter or digit"},
	}
	ruleLines := rules(src)
	var problems, pairs []string
	for _, p := range params {
		used := strings.Contains(ruleLines, p.placeholder)
		switch {
		case p.value == "" && used:
			problems = append(problems, fmt.Sprintf("%s is required (policy %s uses it)", p.field, name))
		case p.value != "" && !p.grammar().MatchString(p.value):
			problems = append(problems, fmt.Sprintf("%s %q must be %s", p.field, p.value, p.want))
		}
		pairs = append(pairs, p.placeholder, p.value)
	}
	if len(problems) > 0 {
		return "", fmt.Errorf("render ACL policy %s: %s", name, strings.Join(problems, "; "))
	}
	// One pass over each rule line: a value is never itself searched for placeholders.
	r := strings.NewReplacer(pairs...)
	lines := strings.SplitAfter(src, "\n")
	for i, l := range lines {
		if !isComment(l) {
			lines[i] = r.Replace(l)
		}
	}
	return strings.Join(lines, ""), nil
}

// rules returns src without its comment lines.
func rules(src string) string {
	var b strings.Builder
	for _, l := range strings.SplitAfter(src, "\n") {
		if !isComment(l) {
			b.WriteString(l)
		}
	}
	return b.String()
}

func isComment(line string) bool {
	return strings.HasPrefix(strings.TrimSpace(line), "#")
}

// lazy compiles expr on first use: a bounded repetition compiles to one copy of its
// class per repeat, and compiling these at package init cost every handler run, most
// of which never render a file, thousands of allocations.
func lazy(expr string) func() *regexp.Regexp {
	return sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(expr) })
}
