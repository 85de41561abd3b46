package tmplfunc

import (
	"bytes"
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
	"text/template"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// What a catalog writer might put in a tag or a meta value: each must come back
// exactly from the literal the quoting functions make.
var hostile = []string{
	"",
	"plain",
	"x\ntarget evil 203.0.113.66:9090\n# ",
	`a "quoted" \ back\slash`,
	"it's",
	"'; rm -rf / #",
	"$(curl evil) `id` $HOME",
	"${var.secret} %{ if true }x%{ endif } $${ %%{",
	"$$${x}",
	"tab\tcr\rnul\x00bell\abs\bff\fdel\x7fc1\u0085",
	"line\u2028para\u2029sep",
	"<script>&amp;</script>",
	"ünïcødé ✓ 日本",
	"trailing $",
	"trailing %",
}

func TestQuote_IsAJSONStringOfExactlyTheValue(t *testing.T) {
	for _, s := range hostile {
		q := Quote(s)
		require.True(t, strings.HasPrefix(q, `"`) && strings.HasSuffix(q, `"`), q)
		assert.NotContains(t, q[1:len(q)-1], "\n", "one line")
		var got string
		require.NoError(t, json.Unmarshal([]byte(q), &got), q)
		assert.Equal(t, s, got)
	}
	assert.Equal(t, `"<a&b>"`, Quote("<a&b>"), "HTML characters stay readable")
}

func TestJSON_EncodesAnyValueOnOneLine(t *testing.T) {
	got, err := JSON(map[string]string{"b": "x\ny", "a": "<1>"})
	require.NoError(t, err)
	assert.Equal(t, `{"a":"<1>","b":"x\ny"}`, got)
	got, err = JSON([]string{"v1", "a b"})
	require.NoError(t, err)
	assert.Equal(t, `["v1","a b"]`, got)
	_, err = JSON(make(chan int))
	assert.ErrorContains(t, err, "encode as JSON")
}

// A real POSIX shell reads the word back as the string.
func TestShellQuote_IsOneShellWordOfExactlyTheValue(t *testing.T) {
	for _, s := range hostile {
		if strings.ContainsRune(s, 0) {
			continue // no argument of a process can hold NUL; the handler refuses it anyway
		}
		out, err := exec.Command("/bin/sh", "-c", "printf '%s' "+ShellQuote(s)).Output()
		require.NoError(t, err, "%q", s)
		assert.Equal(t, s, string(out))
	}
	assert.Equal(t, `'it'\''s'`, ShellQuote("it's"))
}

// HashiCorp's own HCL parser reads the literal back as the string: no
// interpolation, no directive, no escape it does not know.
func TestHCLQuote_IsAnHCLStringOfExactlyTheValue(t *testing.T) {
	for _, s := range hostile {
		q := HCLQuote(s)
		expr, diags := hclsyntax.ParseExpression([]byte(q), "t.hcl", hcl.InitialPos)
		require.False(t, diags.HasErrors(), "%s: %s", q, diags.Error())
		_, isTemplate := expr.(*hclsyntax.TemplateExpr)
		_, isWrap := expr.(*hclsyntax.TemplateWrapExpr)
		require.False(t, isWrap, "%s: an interpolation", q)
		if isTemplate {
			for _, part := range expr.(*hclsyntax.TemplateExpr).Parts {
				_, lit := part.(*hclsyntax.LiteralValueExpr)
				require.True(t, lit, "%s: a part that is not a literal: %T", q, part)
			}
		}
		v, diags := expr.Value(nil) // no variables, no functions: a literal needs none
		require.False(t, diags.HasErrors(), "%s: %s", q, diags.Error())
		require.Equal(t, "string", v.Type().FriendlyName(), q)
		assert.Equal(t, s, v.AsString(), q)
		assert.NotContains(t, q, "\n", "one line")
	}
	assert.Equal(t, `"$${x} %%{y} $ %"`, HCLQuote("${x} %{y} $ %"))
	assert.Equal(t, "\"\uFFFD\"", HCLQuote("\xff"), "invalid UTF-8 becomes U+FFFD")
}

func TestFuncs_AreUsableFromATemplateAndEachCallGetsItsOwnMap(t *testing.T) {
	tm := template.Must(template.New("t").Funcs(Funcs()).Parse(
		`{{ join .Tags "," }}|{{ quote .S }}|{{ json .Tags }}|{{ shellquote .S }}|{{ hclquote .S }}`))
	var b bytes.Buffer
	require.NoError(t, tm.Execute(&b, map[string]any{"Tags": []string{"a", "b c"}, "S": `it's "x"`}))
	assert.Equal(t, `a,b c|"it's \"x\""|["a","b c"]|'it'\''s "x"'|"it's \"x\""`, b.String())

	f := Funcs()
	delete(f, "join")
	assert.Contains(t, Funcs(), "join")
}
