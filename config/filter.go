package config

import (
	"fmt"
	"regexp"
	"unicode/utf8"

	"github.com/hashicorp/go-bexpr"
)

// maxFilterNesting bounds how deep a node_filter's parentheses nest. go-bexpr
// v0.1.2's parser (Consul 1.22's, so the servers' too) takes time exponential in the
// nesting, about 3.5 times more per level here: 50 ms at 5 levels, 5 s at 9, a minute
// at 11. A deeper filter would stall the program at load and every Consul server the
// rollout sends it to; no real selection of nodes needs more than a few levels.
const maxFilterNesting = 5

// checkFilter reports a Consul filter expression that Consul would refuse to parse,
// so that a broken deploy.<service>.node_filter stops the program at load, with the
// file's position, rather than at the first rollout. It parses with go-bexpr v0.1.2,
// the parser and the version Consul 1.22 filters with, and compiles the regular
// expression of every "matches" operator as Consul does when it creates the filter.
// What it cannot check is whether the selectors name fields of the catalog's entries
// (Node, NodeMeta.<key>, ServiceTags, ...): Consul reports those when the rollout
// asks the catalog, and the rollout then names this setting.
func checkFilter(expr string) error {
	if !utf8.ValidString(expr) {
		return fmt.Errorf("not valid UTF-8")
	}
	if d := nesting(expr); d > maxFilterNesting {
		return fmt.Errorf("nests parentheses %d deep; filters nested more than %d deep are refused (Consul's parser takes time exponential in the depth)", d, maxFilterNesting)
	}
	ast, err := bexpr.Parse("", []byte(expr))
	if err != nil {
		return err
	}
	return matchesCompile(ast)
}

// matchesCompile compiles the pattern of every "matches" in the parsed filter: go-bexpr
// parses any string after "matches" and fails only when the filter is created.
func matchesCompile(n any) error {
	switch e := n.(type) {
	case *bexpr.UnaryExpression:
		return matchesCompile(e.Operand)
	case *bexpr.BinaryExpression:
		if err := matchesCompile(e.Left); err != nil {
			return err
		}
		return matchesCompile(e.Right)
	case *bexpr.MatchExpression:
		if e.Operator == bexpr.MatchMatches || e.Operator == bexpr.MatchNotMatches {
			if e.Value == nil {
				return fmt.Errorf("%s has no pattern", e.Operator)
			}
			if _, err := regexp.Compile(e.Value.Raw); err != nil {
				return fmt.Errorf("pattern %q: %w", e.Value.Raw, err)
			}
		}
	}
	return nil
}

// nesting is the deepest parenthesis nesting in expr outside its quoted strings
// ("…" and `…`, neither with an escaped quote: grammar.peg's DoubleStringChar is
// !'"' .), as go-bexpr's grammar quotes them. It never
// counts less than the parser will meet: an unterminated string ends at the end.
func nesting(expr string) int {
	depth, deepest := 0, 0
	for i := 0; i < len(expr); i++ {
		switch c := expr[i]; c {
		case '"', '`':
			for i++; i < len(expr) && expr[i] != c; i++ {
			}
		case '(':
			depth++
			deepest = max(deepest, depth)
		case ')':
			depth = max(depth-1, 0)
		}
	}
	return deepest
}
