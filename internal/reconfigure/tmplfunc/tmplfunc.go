// Package tmplfunc holds the functions a reconfigure template may call besides
// text/template's own. It imports nothing of this module, so that the configuration
// (which parses a template to validate it) and the handler (which executes it) use
// the one list.
//
// The quoting functions make a string one literal of the language the file is in,
// whatever it holds. The handler already refuses an instance with a control
// character or invalid UTF-8 in any field and an Address that is not an IP or a
// hostname; quoting is for the other characters that mean something to the reader:
// a space or # in a tag, a " or ' in a meta value. There is no quoting function for
// nginx: nginx interpolates $variables in the arguments of many directives, quoted
// or not, and has no general escape for $ (agentzh's "Nginx variables" tutorial,
// part 1, builds a $dollar variable with geo for that reason). Render only fields of
// known shape (.Address, .Port) into nginx, or test a value in the template first.
package tmplfunc

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"text/template"
	"unicode/utf8"
)

// Funcs returns the functions, a new map each time (a FuncMap is a map: a caller
// adding to its own copy changes no one else's):
//
//	join       strings.Join: {{ join .Tags "," }}
//	quote      a JSON string literal, "…" with ", \ and control characters escaped.
//	           The same text is a YAML double-quoted scalar (YAML 1.2 §5.7 and §7.3.1:
//	           every JSON escape is a YAML escape), so it suits prometheus.yml, a
//	           file_sd JSON file, and any other JSON or YAML.
//	json       any value as compact JSON: a list of tags, a meta map, a number.
//	           {"labels": {{ json .Meta }}} in a Prometheus file_sd target.
//	shellquote a POSIX shell word: '…', each ' written as '\''. Nothing is special
//	           inside single quotes (POSIX.1-2017, Shell Command Language §2.2.2), so
//	           the word is exactly the string, for a script a reload command runs.
//	hclquote   an HCL native-syntax quoted string: "…" with \, " and control
//	           characters escaped, and ${ and %{ doubled so they are not
//	           interpolations (hcl/hclsyntax/spec.md, "Template Literals": "The
//	           ${ sequence is escaped as $${ and the %{ sequence is escaped as
//	           %%{"). The tests read each result back with HCL's own parser.
func Funcs() template.FuncMap {
	return template.FuncMap{
		"join":       strings.Join,
		"quote":      Quote,
		"json":       JSON,
		"shellquote": ShellQuote,
		"hclquote":   HCLQuote,
	}
}

// Quote returns s as a JSON string literal. HTML characters (<, >, &) are not
// escaped: the file is not HTML, and an operator reading it should see them.
func Quote(s string) string {
	b, err := marshal(s)
	if err != nil { // a string always encodes
		panic(fmt.Sprintf("encode a string as JSON: %v", err))
	}
	return b
}

// JSON returns v as compact JSON, HTML characters unescaped; a value JSON cannot
// encode (a channel, a func) is an error, which fails the render.
func JSON(v any) (string, error) {
	return marshal(v)
}

func marshal(v any) (string, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return "", fmt.Errorf("encode as JSON: %w", err)
	}
	return strings.TrimSuffix(b.String(), "\n"), nil // Encode ends with a newline
}

// ShellQuote returns s as one POSIX shell word in single quotes.
func ShellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// HCLQuote returns s as an HCL native-syntax quoted string literal. HCL's escapes
// are \n, \r, \t, \", \\, \uNNNN and \UNNNNNNNN only (so not JSON's \b and \f), so
// this does not reuse Quote. Invalid UTF-8 becomes U+FFFD, as in Quote: an HCL file
// must be UTF-8.
func HCLQuote(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for i, r := range s {
		switch {
		case r == '\\':
			b.WriteString(`\\`)
		case r == '"':
			b.WriteString(`\"`)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\r':
			b.WriteString(`\r`)
		case r == '\t':
			b.WriteString(`\t`)
		case (r == '$' || r == '%') && strings.HasPrefix(s[i+1:], "{"):
			b.WriteRune(r)
			b.WriteRune(r)
		case r == utf8.RuneError:
			b.WriteRune(utf8.RuneError)
		case r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) || r == 0x2028 || r == 0x2029:
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}
