package config

// grammar is a name's grammar: the ASCII characters its first byte may be, those
// the others may be, and its length. Each is what a regexp of the form
// ^[first][rest]{min-1,max-1}$ says, checked by hand: a bounded repetition compiles
// to one copy of its class per repeat, and compiling these at package init cost
// every invocation of every handler (almost all of them with nothing to do) some
// 5,000 allocations and milliseconds of CPU before it read its configuration.
type grammar struct {
	first, rest *[256]bool
	min, max    int // max 0: no limit
}

// match says whether s is in the grammar. Every allowed character is ASCII, so a
// string that matches has as many bytes as runes, and a non-ASCII byte (part of a
// multi-byte rune, or invalid UTF-8) never matches, as with the regexp.
func (g grammar) match(s string) bool {
	if len(s) < g.min || (g.max > 0 && len(s) > g.max) {
		return false
	}
	for i := range len(s) {
		set := g.rest
		if i == 0 {
			set = g.first
		}
		if !set[s[i]] {
			return false
		}
	}
	return true
}

// chars returns a set of ASCII characters: the letters ("a-z": the lower case
// ones, "a-zA-Z": both cases, "": none), the digits if digits, and the bytes of
// extra.
func chars(letters string, digits bool, extra string) *[256]bool {
	var set [256]bool
	for c := byte('a'); c <= 'z'; c++ {
		set[c] = letters != ""
		set[c-'a'+'A'] = letters == "a-zA-Z"
	}
	for c := byte('0'); c <= '9'; c++ {
		set[c] = digits
	}
	for i := range len(extra) {
		set[extra[i]] = true
	}
	return &set
}

var (
	lowerDigitDashUnder = chars("a-z", true, "-_")
	alnum               = chars("a-zA-Z", true, "")
	alnumDashUnder      = chars("a-zA-Z", true, "-_")

	// clusterName keeps the name safe in a KV path, a log line and a tag:
	// ^[a-z0-9_-]{1,63}$.
	clusterName = grammar{first: lowerDigitDashUnder, rest: lowerDigitDashUnder, min: 1, max: 63}
	// datacenterName is what Consul accepts for a datacenter: ^[a-z0-9_-]+$.
	datacenterName = grammar{first: lowerDigitDashUnder, rest: lowerDigitDashUnder, min: 1}
	// serviceName keeps a deployed service's name safe in a KV path:
	// ^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$.
	serviceName = grammar{first: alnum, rest: alnumDashUnder, min: 1, max: 63}
	// artifactPatternChars are the characters an artifact pattern may have: a URL's
	// or a path's, and path.Match's wildcards: ^[A-Za-z0-9._~:/?=&%+*\[\]^!,-]+$.
	artifactPatternChars = func() grammar {
		set := chars("a-zA-Z", true, "._~:/?=&%+*[]^!,-")
		return grammar{first: set, rest: set, min: 1}
	}()
	// hookName is the grammar of a lifecycle hook's name: ^[A-Za-z0-9\-_/]{1,255}$.
	hookName = func() grammar {
		set := chars("a-zA-Z", true, "-_/")
		return grammar{first: set, rest: set, min: 1, max: 255}
	}()
)
