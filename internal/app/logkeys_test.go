package app

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// logMethods are hclog.Logger's methods that take key/value pairs, and where the
// pairs start.
var logMethods = map[string]int{"Trace": 1, "Debug": 1, "Info": 1, "Warn": 1, "Error": 1, "With": 0}

// logKeys returns every literal key passed to a logger method in the Go files under
// dir (tests excluded), as "file:line key".
func logKeys(t *testing.T, dir string) map[string]string {
	t.Helper()
	keys := map[string]string{}
	fset := token.NewFileSet()
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return err
		}
		f, err := parser.ParseFile(fset, path, nil, 0)
		if err != nil {
			return err
		}
		ast.Inspect(f, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok {
				return true
			}
			sel, ok := call.Fun.(*ast.SelectorExpr)
			if !ok {
				return true
			}
			first, ok := logMethods[sel.Sel.Name]
			if !ok || len(call.Args) <= first {
				return true
			}
			// A logger's message is a string literal; t.Error, errors.With… are not
			// called that way.
			if first == 1 {
				if lit, ok := call.Args[0].(*ast.BasicLit); !ok || lit.Kind != token.STRING {
					return true
				}
			}
			for i := first; i < len(call.Args); i += 2 {
				if lit, ok := call.Args[i].(*ast.BasicLit); ok && lit.Kind == token.STRING {
					k, _ := strconv.Unquote(lit.Value)
					keys[fset.Position(lit.Pos()).String()+" "+k] = k
				}
			}
			return true
		})
		return nil
	})
	require.NoError(t, err)
	return keys
}

func TestLogKeys_EveryLogLineUsesTheVocabulary(t *testing.T) {
	var seen int
	for _, dir := range []string{"../../internal", "../../handlers"} {
		for where, k := range logKeys(t, dir) {
			seen++
			_, ok := LogKeys[k]
			assert.True(t, ok, "%s: log key %q is not in app.LogKeys", where, k)
		}
	}
	require.Greater(t, seen, 50, "the scan finds the project's log lines")
}

func TestLogKeys_AreSnakeCase(t *testing.T) {
	for k := range LogKeys {
		assert.Regexp(t, `^[a-z]+(_[a-z]+)*$`, k)
	}
}
