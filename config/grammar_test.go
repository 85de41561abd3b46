package config

import (
	"math/rand/v2"
	"regexp"
	"strings"
	"testing"
)

// TestGrammarsMatchTheirRegexps checks each hand-written grammar against the regexp
// it replaces, on edge cases and on many random strings over an alphabet of every
// allowed character and some that are not (non-ASCII and invalid UTF-8 included).
func TestGrammarsMatchTheirRegexps(t *testing.T) {
	for _, tc := range []struct {
		name string
		g    grammar
		re   string
	}{
		{"clusterName", clusterName, `^[a-z0-9_-]{1,63}$`},
		{"datacenterName", datacenterName, `^[a-z0-9_-]+$`},
		{"serviceName", serviceName, `^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$`},
		{"artifactPatternChars", artifactPatternChars, `^[A-Za-z0-9._~:/?=&%+*\[\]^!,-]+$`},
		{"hookName", hookName, `^[A-Za-z0-9\-_/]{1,255}$`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			re := regexp.MustCompile(tc.re)
			check := func(s string) {
				t.Helper()
				if got, want := tc.g.match(s), re.MatchString(s); got != want {
					t.Fatalf("match(%q) = %v, the regexp says %v", s, got, want)
				}
			}
			alphabet := []string{"a", "z", "A", "Z", "0", "9", "-", "_", ".", "/", "~", ":", "?", "=", "&", "%", "+",
				"*", "[", "]", "^", "!", ",", " ", "\n", "\\", "\"", "'", "@", "#", "`", "{", "é", "\xff", "\x00", "\u212a"}
			for _, s := range []string{"", "a", "-", "_", "a\n", "\na", strings.Repeat("a", 62), strings.Repeat("a", 63),
				strings.Repeat("a", 64), strings.Repeat("b", 255), strings.Repeat("b", 256), "A" + strings.Repeat("-", 62),
				"-" + strings.Repeat("a", 10), "a-" + strings.Repeat("Z", 61)} {
				check(s)
			}
			rng := rand.New(rand.NewPCG(1, 2))
			for range 20000 {
				n := rng.IntN(8)
				if rng.IntN(10) == 0 {
					n = 60 + rng.IntN(200)
				}
				var b strings.Builder
				for range n {
					// Mostly allowed characters, so that long strings match at times.
					c := alphabet[rng.IntN(len(alphabet))]
					if rng.IntN(4) != 0 {
						c = alphabet[rng.IntN(6)]
					}
					b.WriteString(c)
				}
				check(b.String())
			}
		})
	}
}
