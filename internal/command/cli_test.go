package command

import (
	"bytes"
	"flag"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/consul-rehydrate/consul-rehydrate/internal/app"
)

// ownFlags is every command's own flags, besides -config and -http-addr: the table
// the CLI must match, written out so that a flag added or lost shows here.
var ownFlags = map[string][]string{
	"fire":                 {"image"},
	"status":               {"json"},
	"plan":                 {"json"},
	"check":                nil,
	"leave":                nil,
	"local up":             {"image", "servers"},
	"local image register": {"consul-binary", "extra-hcl"},
	"local down":           nil,
	"local demo":           {"servers"},
	"deploy start":         {"artifact", "batch", "max-unavailable", "node-filter", "node-timeout", "service", "sha256", "version"},
	"deploy status":        {"json", "service"},
	"spindown":             nil,
}

func TestCommands_HaveTheirOwnFlagsOnly(t *testing.T) {
	require.Len(t, commands, len(ownFlags), "every command is in the table above")
	for _, c := range commands {
		t.Run(c.name, func(t *testing.T) {
			f := app.NewFlags("rehydrate "+c.name, app.Env{Stderr: &bytes.Buffer{}, Getenv: func(string) string { return "" }})
			c.flags(f)
			var got []string
			f.VisitAll(func(fl *flag.Flag) {
				if fl.Name != "config" && fl.Name != "http-addr" {
					got = append(got, fl.Name)
				}
			})
			sort.Strings(got)
			assert.Equal(t, ownFlags[c.name], got)
		})
	}
}

func TestRehydrate_AFlagOfAnotherCommandIsAUsageErrorNamingIt(t *testing.T) {
	cfg := writeConfig(t, unreachableConfig)
	all := map[string]bool{}
	for _, fl := range ownFlags {
		for _, f := range fl {
			all[f] = true
		}
	}
	for _, c := range commands {
		for f := range all {
			if slices.Contains(ownFlags[c.name], f) {
				continue
			}
			t.Run(c.name+" --"+f, func(t *testing.T) {
				args := append([]string{"-config", cfg}, strings.Fields(c.name)...)
				args = append(args, c.args...)
				code, out := run(Rehydrate, append(args, "--"+f, "1"), "")
				assert.Equal(t, app.ExitUsage, code, out)
				assert.Contains(t, out, "flag provided but not defined: -"+f)
			})
		}
	}
}

func TestRehydrate_Help(t *testing.T) {
	tests := []struct {
		name      string
		args      []string
		want      []string
		wantNot   []string
		wantUsage bool
	}{
		{name: "-h lists the commands", args: []string{"-h"},
			want:    []string{"usage: rehydrate", "fire", "status", "plan", "local up", "local image register NAME", "local down", "local demo", "deploy start", "deploy status", "rehydrate COMMAND -h"},
			wantNot: []string{"spindown", "-json", "-servers"}},
		{name: "no command lists them too", args: nil, want: []string{"usage: rehydrate", "local demo"}},
		{name: "a command's -h shows its flags only", args: []string{"status", "-h"},
			want: []string{"usage: rehydrate status", "-json", "-config", "-http-addr"}, wantNot: []string{"-image", "-servers", "-service"}},
		{name: "local image register -h", args: []string{"local", "image", "register", "-h"},
			want: []string{"usage: rehydrate local image register [flags] NAME", "-extra-hcl", "-consul-binary"}, wantNot: []string{"-json"}},
		{name: "a group lists its commands", args: []string{"local"},
			want: []string{"local up", "local down", "local demo"}, wantNot: []string{"fire", "deploy start"}},
		{name: "an unknown command of a group", args: []string{"deploy", "restart"},
			want: []string{`unknown command "deploy restart"`, "deploy start", "deploy status"}, wantNot: []string{"local up"}},
		{name: "an unknown command", args: []string{"explode"}, want: []string{`unknown command "explode"`, "fire"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out := run(Rehydrate, tt.args, "")
			assert.Equal(t, app.ExitUsage, code, out)
			for _, w := range tt.want {
				assert.Contains(t, out, w)
			}
			for _, w := range tt.wantNot {
				assert.NotContains(t, out, w)
			}
		})
	}
}

func TestFind_TakesTheLongestName(t *testing.T) {
	c, rest := find([]string{"local", "image", "register", "B", "--extra-hcl", "x"})
	require.NotNil(t, c)
	assert.Equal(t, "local image register", c.name)
	assert.Equal(t, []string{"B", "--extra-hcl", "x"}, rest)
	c, _ = find([]string{"local"})
	assert.Nil(t, c)
	assert.Equal(t, 2, groupLen([]string{"local", "image", "x"}))
	assert.Equal(t, 1, groupLen([]string{"deploy", "x"}))
	assert.Equal(t, 0, groupLen([]string{"fire2"}))
}
