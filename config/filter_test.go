package config

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
)

// The expressions below were checked against go-bexpr v0.1.2's own parser (the
// version Consul 1.22 uses): checkFilter must accept what it accepts and refuse
// what it refuses. (An empty filter is no filter: DeployConfig.validate does not
// call checkFilter for one.)
func TestCheckFilter_FollowsConsulsGrammar(t *testing.T) {
	accepted := []string{
		`Node == "web-1"`, `Node == web`, `Node==web`, ` ( Node == "x" ) `, `(Node == "x") and (Node != "y")`,
		`not Node == "a"`, `not not Node == "a"`, `notNode == "a"`, `Node matches "^web-"`, `Node not matches "^db-"`,
		`NodeMeta.pool == "blue"`, `NodeMeta["pool"] == "blue"`, `NodeMeta[ "pool" ] == "blue"`,
		`"web" in ServiceTags`, `"web" not in ServiceTags`, `ServiceTags contains "web"`, `ServiceTags not contains "web"`,
		`ServiceTags is empty`, `ServiceTags is not empty`, `ServicePort == 8080`, `ServicePort == -1.5`,
		`Node == "a" or Node == "b" and Node == "c"`, `((Node == "a"))`, "Node == `raw\\string`",
		`Node == "a" or (Node == "b" and not (Node == "c"))`, "Node ==\n\"a\"", `a["x"]["y"] == 1`,
		`Node !="a"`, `Node is  empty`, "(\tNode == \"a\"\n)",
	}
	for _, e := range accepted {
		assert.NoError(t, checkFilter(e), "%q", e)
	}
	refused := []string{
		` `, `()`, `Node contains"x"`, `Node ===`, `Node ===""`, `NodeMeta[pool] == "blue"`, `NodeMeta["pool" == "x"`,
		`ServicePort == 007`, `ServicePort == 1.`, `ServicePort == 1x`, `Node == "a\q"`, `Node == "a`, "Node == `a",
		`(Node == "a"`, `Node == "a")`, `Node == "a"and Node == "b"`, `Node == "a" and`, `"x" in 5`, `5 in Tags == 1`,
		"Node == \"a\nb\"", `Node matches "("`, `Node matches "[" `, `Node isempty`, `Node == "a" AND Node == "b"`,
		"Node == \"\xff\"",
	}
	for _, e := range refused {
		assert.Error(t, checkFilter(e), "%q", e)
	}
}

// A nesting deep enough to stall Consul's parser is refused before it is parsed;
// parentheses inside strings do not count, and side by side they do not nest.
func TestCheckFilter_DeepNestingIsRefusedBeforeParsing(t *testing.T) {
	nest := func(n int) string { return strings.Repeat("(", n) + `Node == "a"` + strings.Repeat(")", n) }
	assert.NoError(t, checkFilter(nest(maxFilterNesting)))
	assert.ErrorContains(t, checkFilter(nest(maxFilterNesting+1)), "nested more than")
	assert.ErrorContains(t, checkFilter(nest(10000)), "nested more than")
	assert.ErrorContains(t, checkFilter(strings.Repeat("(", 10000)), "nested more than")
	assert.NoError(t, checkFilter(`Node == "((((((((" and Node != `+"`))))))((((((((`"))
	assert.Error(t, checkFilter(`Node == "\"((((((((("`), "a backslash escapes no quote: the string ends after it")
	assert.NoError(t, checkFilter(strings.TrimSuffix(strings.Repeat(`(Node == "a") or `, 20), " or ")))
	assert.Equal(t, 7, nesting(`Node == ")))" and `+nest(7)), "a string's ) does not unnest")
}
