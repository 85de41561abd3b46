package reconfigure

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestAddressProblem(t *testing.T) {
	for _, ok := range []string{
		"10.0.0.1", "203.0.113.66", "::1", "2001:db8::1", "::ffff:10.0.0.1",
		"localhost", "web-1", "ip-10-0-0-1.eu-west-1.compute.internal", "example.com.", "a.b2", "0a.example",
		strings.Repeat("a", 63) + ".example", strings.Repeat("a.", 126) + "b", // 253 characters
	} {
		assert.Empty(t, AddressProblem(ok), "%q is an address", ok)
	}
	for _, tc := range []struct{ addr, problem string }{
		{"", `"" is neither an IP address nor a hostname`},
		{"1.2.3.4\n", `"1.2.3.4\n" holds the control character U+000A at byte 7`},
		{"10.0.0.1\r", `"10.0.0.1\r" holds the control character U+000D at byte 8`},
		{"\x00", `"\x00" holds the control character U+0000 at byte 0`},
		{"10.0.0.1\xff", `"10.0.0.1\xff" is not valid UTF-8`},
		{"$(x)", `"$(x)" is neither an IP address nor a hostname`},
		{"a b", `"a b" is neither an IP address nor a hostname`},
		{"a;b", `"a;b" is neither an IP address nor a hostname`},
		{"`id`", "\"`id`\" is neither an IP address nor a hostname"},
		{"10.0.0.1:8080", `"10.0.0.1:8080" is neither an IP address nor a hostname`},
		{"fe80::1%eth0", `"fe80::1%eth0" has an IPv6 zone`},
		{"fe80::1%$(x)", `"fe80::1%$(x)" has an IPv6 zone`},
		{"-web.example", `"-web.example" is neither an IP address nor a hostname`},
		{"web-.example", `"web-.example" is neither an IP address nor a hostname`},
		{"a..b", `"a..b" is neither an IP address nor a hostname`},
		{".", `"." is neither an IP address nor a hostname`},
		{"example.com..", `"example.com.." is neither an IP address nor a hostname`},
		{"under_score.example", `"under_score.example" is neither an IP address nor a hostname`},
		{"ünïcødé.example", `"ünïcødé.example" is neither an IP address nor a hostname`},
		{strings.Repeat("a", 64) + ".example", `"` + strings.Repeat("a", 63) + "… is neither an IP address nor a hostname"},
		// 255 characters; 253 and a trailing dot.
		{strings.Repeat("a.", 127) + "b", `"` + strings.Repeat("a.", 31) + "a… is neither an IP address nor a hostname"},
		{strings.Repeat("a.", 127), ""},
		// All-numeric last label: read as an IPv4 address by inet_aton, not a name.
		{"010.0.0.1", `"010.0.0.1" is neither an IP address nor a hostname`},
		{"127.1", `"127.1" is neither an IP address nor a hostname`},
		{"1.2.3.999", `"1.2.3.999" is neither an IP address nor a hostname`},
		{"12345", `"12345" is neither an IP address nor a hostname`},
	} {
		assert.Equal(t, tc.problem, AddressProblem(tc.addr), "%q", tc.addr)
	}
}

func TestScreen_RefusesAnInstanceForAnyFieldATemplateReaches(t *testing.T) {
	base := func() Instance {
		return Instance{Node: "n1", Address: "10.0.0.1", Port: 8080, ID: "web-1", Tags: []string{"v1", "primary"},
			Meta: map[string]string{"version": "1", "weight": "5"}, NodeMeta: map[string]string{"rack": "r1"}, Datacenter: "dc1"}
	}
	tests := []struct {
		name         string
		change       func(*Instance)
		key, field   string
		problemStart string
	}{
		{"a tag adding a line", func(i *Instance) { i.Tags[1] = "x\ntarget evil 203.0.113.66:9090\n# " },
			"n0/web-0", "Tags[1]", `"x\ntarget evil 203.0.113.66:9090\n# " holds the control character U+000A`},
		{"a tab in a tag", func(i *Instance) { i.Tags[0] = "a\tb" }, "n0/web-0", "Tags[0]", `"a\tb" holds the control character U+0009`},
		{"DEL", func(i *Instance) { i.Tags[0] = "a\x7f" }, "n0/web-0", "Tags[0]", `"a\x7f" holds the control character U+007F`},
		{"NEL (C1)", func(i *Instance) { i.Tags[0] = "a\u0085b" }, "n0/web-0", "Tags[0]", `"a\u0085b" holds the control character U+0085`},
		{"a line separator", func(i *Instance) { i.Tags[0] = "a\u2028b" }, "n0/web-0", "Tags[0]", `"a\u2028b" holds the control character U+2028`},
		{"a paragraph separator", func(i *Instance) { i.Tags[0] = "a\u2029b" }, "n0/web-0", "Tags[0]", `"a\u2029b" holds the control character U+2029`},
		{"invalid UTF-8 in a tag", func(i *Instance) { i.Tags[0] = "a\xc3(" }, "n0/web-0", "Tags[0]", `"a\xc3(" is not valid UTF-8`},
		{"a meta value", func(i *Instance) { i.Meta["weight"] = "5\r\n" }, "n0/web-0", `Meta["weight"]`, `"5\r\n" holds the control character U+000D`},
		{"a meta key", func(i *Instance) { i.Meta["a\nb"] = "1" }, "n0/web-0", `Meta["a\nb"]`, `key "a\nb" holds the control character U+000A`},
		{"a node meta value", func(i *Instance) { i.NodeMeta["rack"] = "r1\x1b[2J" }, "n0/web-0", `NodeMeta["rack"]`, `"r1\x1b[2J" holds the control character U+001B`},
		{"a node name", func(i *Instance) { i.Node = "n0\nevil" }, `"n0\nevil/web-0"`, "Node", `"n0\nevil" holds the control character U+000A`},
		{"a service ID", func(i *Instance) { i.ID = "web-0\x00" }, `"n0/web-0\x00"`, "ID", `"web-0\x00" holds the control character U+0000`},
		{"a datacenter", func(i *Instance) { i.Datacenter = "dc1\n" }, "n0/web-0", "Datacenter", `"dc1\n" holds the control character U+000A`},
		{"an address with a line break", func(i *Instance) { i.Address = "1.2.3.4\n" }, "n0/web-0", "Address", `"1.2.3.4\n" holds the control character`},
		{"a command as an address", func(i *Instance) { i.Address = "$(x)" }, "n0/web-0", "Address", `"$(x)" is neither an IP address nor a hostname`},
		{"an address with a space", func(i *Instance) { i.Address = "a b" }, "n0/web-0", "Address", `"a b" is neither an IP address nor a hostname`},
		{"the first bad field is named: Node before Tags", func(i *Instance) { i.Node, i.Tags[0] = "n\x01", "\x02" }, `"n\x01/web-0"`, "Node", `"n\x01"`},
		{"the first bad meta key in order", func(i *Instance) { i.Meta["b"], i.Meta["a"] = "\n", "\n" }, "n0/web-0", `Meta["a"]`, `"\n"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			good := base()
			bad := base()
			bad.Node, bad.ID = "n0", "web-0" // sorts first, as Healthy would put it
			tc.change(&bad)
			ok, refused := Screen([]Instance{bad, good})
			assert.Equal(t, []Instance{base()}, ok, "the other instance is rendered")
			if assert.Len(t, refused, 1) {
				r := refused[0]
				assert.Equal(t, tc.key, r.Instance)
				assert.Equal(t, tc.field, r.Field)
				assert.True(t, strings.HasPrefix(r.Problem, tc.problemStart), "problem %q, want it to start %q", r.Problem, tc.problemStart)
				assert.Equal(t, -1, strings.IndexFunc(r.String(), func(c rune) bool { return c < 0x20 || c == 0x7f }), "printable: %q", r.String())
			}
		})
	}
}

func TestScreen_PlainInstancesPassInOrder(t *testing.T) {
	in := []Instance{
		{Node: "n1", Address: "10.0.0.1", ID: "web-1", Tags: []string{"a b", `q"uote`, "ünïcødé ✓", "$(not a command here)"},
			Meta: map[string]string{"k": "v with spaces # and ;"}},
		{Node: "n2", Address: "web.example", ID: "web-2"},
		{Node: "n3", Address: "::1", ID: "web-3", Meta: nil, NodeMeta: nil, Tags: nil},
	}
	ok, refused := Screen(in)
	assert.Equal(t, in, ok, "quoting is the template's job: only control characters and bad addresses are refused")
	assert.Empty(t, refused)
}

// A refused value is shown escaped and cut, so that neither a control character
// nor a flood of text reaches the check's output.
func TestScreen_ShowsALongValueCut(t *testing.T) {
	_, refused := Screen([]Instance{{Node: "n1", Address: "10.0.0.1", ID: "web-1", Tags: []string{strings.Repeat("é", 100) + "\n"}}})
	if assert.Len(t, refused, 1) {
		p := refused[0].Problem
		assert.True(t, strings.HasPrefix(p, `"éééé`), p)
		assert.Contains(t, p, "…"+" holds the control character U+000A at byte 200")
		assert.LessOrEqual(t, len(p), maxShown+len("… holds the control character U+000A at byte 200"))
	}
}
