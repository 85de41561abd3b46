// Package printable makes strings that hostile writers control (KV values, catalog
// registrations, event payloads) safe to print on a terminal: they are shown, never
// obeyed.
package printable

import (
	"fmt"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// String returns s as it may be printed on a terminal: each rune that is not
// printable (unicode.IsPrint) is escaped as strconv.Quote escapes it (ESC, which
// starts a terminal's escape sequences, becomes \x1b; a newline, which would forge
// a line, \n; a bidirectional override \u202e; a byte that is not UTF-8 \xff).
// Printable text, quotes included, is left as it is.
func String(s string) string {
	if Is(s) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && n <= 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case unicode.IsPrint(r):
			b.WriteRune(r)
		default:
			q := strconv.QuoteRune(r)
			b.WriteString(q[1 : len(q)-1])
		}
		i += n
	}
	return b.String()
}

// Is reports whether every rune of s is printable (unicode.IsPrint) and s is valid
// UTF-8: whether String leaves it as it is.
func Is(s string) bool {
	for _, r := range s {
		if r == utf8.RuneError || !unicode.IsPrint(r) {
			return false
		}
	}
	return true
}
