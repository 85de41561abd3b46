package testcluster

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// BuildHandlers builds the project's executables (handlers/...), and any extra
// packages (paths from the repository root, such as "test/demoapp"), into a new
// temporary directory, for a test package's TestMain. root is the repository root
// relative to the package ("../.." from test/e2e). The caller removes the directory
// when done.
func BuildHandlers(root string, extra ...string) (string, error) {
	dir, err := os.MkdirTemp("", "rehydrate-bin-")
	if err != nil {
		return "", err
	}
	pkgs := []string{filepath.Join(root, "handlers") + "/..."}
	for _, p := range extra {
		pkgs = append(pkgs, "./"+filepath.Join(root, p))
	}
	out, err := exec.Command("go", append([]string{"build", "-o", dir + "/"}, pkgs...)...).CombinedOutput()
	if err != nil {
		os.RemoveAll(dir)
		return "", fmt.Errorf("build handlers: %v\n%s", err, out)
	}
	return dir, nil
}
