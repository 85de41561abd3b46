package validate

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// promiseProof matches "`<package dir>` `TestName`" and the further "`TestOther`" names
// that follow it in the same cell.
var (
	proofPackage = regexp.MustCompile("`((?:internal|test|config|handlers)[a-z0-9/]*)`((?:\\s*(?:,|and)?\\s*`Test[A-Za-z0-9_/]+`)+)")
	proofTest    = regexp.MustCompile("`(Test[A-Za-z0-9_]+)(?:/[A-Za-z0-9_]+)?`")
)

// promises returns the rows of the README's "What it promises" table.
func promises(t *testing.T, readme string) []string {
	t.Helper()
	_, section, ok := strings.Cut(readme, "\n## What it promises\n")
	require.True(t, ok, `README.md has no "## What it promises" section`)
	section, _, _ = strings.Cut(section, "\n## ")
	var rows []string
	for _, l := range strings.Split(section, "\n") {
		if strings.HasPrefix(l, "| ") && !strings.HasPrefix(l, "| guarantee") {
			rows = append(rows, l)
		}
	}
	return rows
}

// TestReadme_EveryPromiseNamesATestThatExists keeps "What it promises" honest: every
// guarantee names at least one test, and every test it names exists in the package
// it names.
func TestReadme_EveryPromiseNamesATestThatExists(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	require.NoError(t, err)
	rows := promises(t, string(b))
	require.GreaterOrEqual(t, len(rows), 10)
	for _, row := range rows {
		cells := strings.Split(row, " | ")
		require.Len(t, cells, 2, "a row is | guarantee | proved by |: %s", row)
		proofs := proofPackage.FindAllStringSubmatch(cells[1], -1)
		if !assert.NotEmpty(t, proofs, "the guarantee names no test: %s", row) {
			continue
		}
		for _, p := range proofs {
			src := testSources(t, filepath.Join("../..", p[1]))
			for _, name := range proofTest.FindAllStringSubmatch(p[2], -1) {
				assert.Contains(t, src, "func "+name[1]+"(", "%s names %s in %s, which has no such test", cells[0], name[1], p[1])
			}
		}
	}
}

func testSources(t *testing.T, dir string) string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*_test.go"))
	require.NoError(t, err)
	require.NotEmpty(t, files, "no tests in %s", dir)
	var b strings.Builder
	for _, f := range files {
		data, err := os.ReadFile(f)
		require.NoError(t, err)
		b.Write(data)
	}
	return b.String()
}
