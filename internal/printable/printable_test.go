package printable

import (
	"testing"
	"unicode"

	"github.com/stretchr/testify/assert"
)

func TestString_EscapesOnlyWhatIsNotPrintable(t *testing.T) {
	for in, want := range map[string]string{
		"":                      "",
		"v1.2.3":                "v1.2.3",
		"déjà vu ✓":             "déjà vu ✓",
		"a\x1b[2Jb":             `a\x1b[2Jb`,
		"x\ntarget evil":        `x\ntarget evil`,
		"cr\r":                  `cr\r`,
		"c1\u0085":              `c1\u0085`,
		"ls\u2028":              `ls\u2028`,
		"bidi\u202e":            `bidi\u202e`,
		"bad\xff":               `bad\xff`,
		"del\x7f":               `del\x7f`,
		"tab\t":                 `tab\t`,
		`quote " is plain text`: `quote " is plain text`,
	} {
		got := String(in)
		assert.Equal(t, want, got, "String(%q)", in)
		for _, r := range got {
			assert.True(t, unicode.IsPrint(r), "String(%q) holds %U", in, r)
		}
	}
}
