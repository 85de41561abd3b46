package reconfigure

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Every field of an instance comes from whoever may register a service or a node
// in the catalog, and is written into a file another program parses. A line break
// in a tag would add a line to that file (issue 15: a tag
// "x\ntarget evil 203.0.113.66:9090\n# " added a target to the shipped example's
// output). So an instance is rendered only if every field a template can reach is
// plain text, and its address is an address: otherwise it is refused, left out of
// the file, and named, with the field, in the handler's log and the check's note.
// Refusing one instance, not the render, keeps a single bad registration from
// freezing the file for every other instance.

// Refusal is a healthy instance left out of the render, and why. Every string in it
// is printable: the refused values are escaped, as in a Go string literal.
type Refusal struct {
	// Instance is the instance's key, node/service-id.
	Instance string `json:"instance"`
	// Field names the refused field: Node, ID, Address, Datacenter, Tags[i],
	// Meta["key"] or NodeMeta["key"].
	Field string `json:"field"`
	// Problem says what is wrong with it.
	Problem string `json:"problem"`
}

func (r Refusal) String() string { return fmt.Sprintf("%s (%s %s)", r.Instance, r.Field, r.Problem) }

// Screen splits instances into those a template may render and the refusals of
// the others, keeping their order.
func Screen(instances []Instance) (ok []Instance, refused []Refusal) {
	for _, in := range instances {
		if field, problem := screen(in); field != "" {
			refused = append(refused, Refusal{Instance: printable(in.Key()), Field: field, Problem: problem})
			continue
		}
		ok = append(ok, in)
	}
	return ok, refused
}

// screen returns the first refused field of in and its problem, or "" and "".
func screen(in Instance) (field, problem string) {
	for _, f := range []struct{ name, value string }{
		{"Node", in.Node}, {"ID", in.ID}, {"Datacenter", in.Datacenter},
	} {
		if p := textProblem(f.value); p != "" {
			return f.name, p
		}
	}
	if p := AddressProblem(in.Address); p != "" {
		return "Address", p
	}
	for i, tag := range in.Tags {
		if p := textProblem(tag); p != "" {
			return fmt.Sprintf("Tags[%d]", i), p
		}
	}
	for _, m := range []struct {
		name string
		m    map[string]string
	}{{"Meta", in.Meta}, {"NodeMeta", in.NodeMeta}} {
		keys := make([]string, 0, len(m.m))
		for k := range m.m {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			field := fmt.Sprintf("%s[%s]", m.name, short(strconv.Quote(k)))
			if p := textProblem(k); p != "" {
				return field, "key " + p
			}
			if p := textProblem(m.m[k]); p != "" {
				return field, p
			}
		}
	}
	return "", ""
}

// textProblem says why s may not be rendered, or returns "": invalid UTF-8, or a
// control character (unicode.IsControl: C0, DEL and C1, which includes NEL), or a
// line or paragraph separator (U+2028, U+2029), which YAML 1.1 and JavaScript read
// as line breaks.
func textProblem(s string) string {
	if !utf8.ValidString(s) {
		return fmt.Sprintf("%s is not valid UTF-8", short(strconv.Quote(s)))
	}
	for i, r := range s {
		if unicode.IsControl(r) || r == '\u2028' || r == '\u2029' {
			return fmt.Sprintf("%s holds the control character %U at byte %d", short(strconv.Quote(s)), r, i)
		}
	}
	return ""
}

// AddressProblem says why addr is not an address a template may render, or
// returns "": it must be an IP address without an IPv6 zone (net/netip), or a
// hostname as RFC 1123 §2.1 allows (RFC 952 labels: letters, digits and hyphens,
// 1 to 63 characters, not starting or ending with a hyphen; 253 characters in all;
// one trailing dot allowed), whose last label is not all digits (RFC 3696 §2), so
// that no hostname reads as an IPv4 address in another notation (010.0.0.1,
// 127.1).
//
// Consul checks neither address's shape: its catalog register endpoint requires
// only that a node's is not empty and that a service's is not 0.0.0.0 or ::
// (agent/consul/catalog_endpoint.go: "Must provide address if SkipNodeUpdate is
// not set", "Invalid service address"); test/reconfigure registers the hostile ones.
func AddressProblem(addr string) string {
	if p := textProblem(addr); p != "" {
		return p
	}
	if a, err := netip.ParseAddr(addr); err == nil {
		if a.Zone() != "" {
			return fmt.Sprintf("%s has an IPv6 zone", short(strconv.Quote(addr)))
		}
		return ""
	}
	if !isHostname(addr) {
		return fmt.Sprintf("%s is neither an IP address nor a hostname", short(strconv.Quote(addr)))
	}
	return ""
}

func isHostname(s string) bool {
	s = strings.TrimSuffix(s, ".")
	if s == "" || len(s) > 253 {
		return false
	}
	labels := strings.Split(s, ".")
	for _, l := range labels {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return false
		}
		for i := 0; i < len(l); i++ {
			c := l[i]
			if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-') {
				return false
			}
		}
	}
	last := labels[len(labels)-1]
	return strings.Trim(last, "0123456789") != ""
}

// maxShown bounds a refused value in a note: the check's output is kept to 4 KiB by
// default (the agent's check_output_max_size), and one refusal must not fill it.
// maxError bounds an error the same way.
const (
	maxShown = 64
	maxError = 1024
)

// short cuts s, already escaped, to maxShown bytes.
func short(s string) string { return cut(s, maxShown) }

// cut cuts s to n bytes at a character boundary and marks the cut.
func cut(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}

// printable returns s as it is if it is plain text, else escaped as a Go string
// literal; cut to maxShown bytes either way.
func printable(s string) string {
	if textProblem(s) == "" {
		return short(s)
	}
	return short(strconv.Quote(s))
}

// printableError is err's message for the check's note: escaped if it holds a
// control character (a template function's error may quote a value), cut to
// maxError bytes.
func printableError(err error) string {
	s := err.Error()
	if textProblem(s) != "" {
		s = strconv.Quote(s)
	}
	return cut(s, maxError)
}
