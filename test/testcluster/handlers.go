package testcluster

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// BuildHandlers builds the project's executables (handlers/...) into a new temporary
// directory, for a test package's TestMain. root is the repository root relative to
// the package ("../.." from test/e2e). The caller removes the directory when done.
func BuildHandlers(root string) (string, error) {
	dir, err := os.MkdirTemp("", "rehydrate-bin-")
	if err != nil {
		return "", err
	}
	out, err := exec.Command("go", "build", "-o", dir+"/", filepath.Join(root, "handlers")+"/...").CombinedOutput()
	if err != nil {
		os.RemoveAll(dir)
		return "", fmt.Errorf("build handlers: %v\n%s", err, out)
	}
	return dir, nil
}
