package command

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/consul-rehydrate/consul-rehydrate/internal/coord"
)

// Every string status prints may come from a KV, catalog or event writer; none may
// reach the terminal with a control character in it.
func TestPrintStatus_EscapesTerminalControlsInEveryWriterControlledString(t *testing.T) {
	const esc = "\x1b]0;pwned\x07\x1b[2J"
	now := time.Now()
	st := &Status{
		Servers: []ServerStatus{{Node: "n" + esc, Instance: "i" + esc, Image: "img" + esc, State: "running" + esc}},
		Roll: &coord.Roll{Target: "t" + esc, Phase: "rolling" + esc, Started: now, Failure: "f" + esc,
			History: []coord.Entry{{Time: now, Step: "launch" + esc, Detail: "d\nforged line"}}},
		BadImages: map[string]string{"bad" + esc: "why" + esc},
		LockedBy:  "holder" + esc,
		Next:      NextStep{Kind: "wait" + esc, Reason: "r" + esc},
	}
	var out bytes.Buffer
	printStatus(&out, st, now)
	s := out.String()
	assert.NotContains(t, s, "\x1b", "an escape sequence reached the terminal")
	assert.NotContains(t, s, "\x07")
	assert.Contains(t, s, `d\nforged line`, "a line break is shown escaped, not as a forged line")
	for _, line := range strings.Split(s, "\n") {
		assert.NotEqual(t, "forged line", strings.TrimSpace(line))
	}
	assert.Contains(t, s, `\x1b]0;pwned\a\x1b[2J`, "the escaped value is still readable")
}
