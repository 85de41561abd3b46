package config

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/hashicorp/hcl/v2"
)

// Error lists every problem found in a configuration, in file order. Its
// message has one line per problem: "file:line:column: message", or just the
// message when the problem has no position (Validate of a Config built in code).
type Error struct {
	// Diagnostics holds one error per problem; Subject, when set, is where
	// in the file the problem is.
	Diagnostics hcl.Diagnostics
}

// Error returns one line per problem.
func (e *Error) Error() string {
	lines := make([]string, len(e.Diagnostics))
	for i, d := range e.Diagnostics {
		lines[i] = describe(d)
	}
	return strings.Join(lines, "\n")
}

// newError returns an *Error of the error diagnostics in diags, sorted by
// position, or nil when there are none.
func newError(diags hcl.Diagnostics) error {
	var errs hcl.Diagnostics
	for _, d := range diags {
		if d.Severity == hcl.DiagError {
			errs = append(errs, d)
		}
	}
	if len(errs) == 0 {
		return nil
	}
	slices.SortStableFunc(errs, func(a, b *hcl.Diagnostic) int {
		if a.Subject == nil || b.Subject == nil {
			return cmp.Compare(boolInt(a.Subject != nil), boolInt(b.Subject != nil))
		}
		return cmp.Or(
			cmp.Compare(a.Subject.Filename, b.Subject.Filename),
			cmp.Compare(a.Subject.Start.Byte, b.Subject.Start.Byte),
		)
	})
	return &Error{Diagnostics: errs}
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// describe renders d on one line, in Go's lowercase error style.
func describe(d *hcl.Diagnostic) string {
	msg := lowerFirst(d.Summary)
	if d.Detail != "" {
		msg += ": " + lowerFirst(strings.TrimSuffix(d.Detail, "."))
	}
	msg = strings.ReplaceAll(msg, "\n", " ")
	if d.Subject == nil {
		return msg
	}
	return fmt.Sprintf("%s: %s", position(*d.Subject), msg)
}

// position renders where r starts as file:line:column.
func position(r hcl.Range) string {
	return fmt.Sprintf("%s:%d:%d", r.Filename, r.Start.Line, r.Start.Column)
}

// lowerFirst lowercases a sentence's first letter but leaves acronyms alone.
func lowerFirst(s string) string {
	r, n := utf8.DecodeRuneInString(s)
	next, _ := utf8.DecodeRuneInString(s[n:])
	if n == 0 || unicode.IsUpper(next) {
		return s
	}
	return string(unicode.ToLower(r)) + s[n:]
}
