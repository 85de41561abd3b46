// Package validate runs the real tools over what we ship for the image and the agents:
// shellcheck on scripts/, consul validate on consul.d/ with the per-server file that
// user-data.sh renders, and packer validate and fmt on packer/. Each check is also run
// on a broken fixture and must fail there, so a check that cannot fail is caught.
package validate

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/consul-rehydrate/consul-rehydrate/test/testcluster"
)

func tool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	require.NoError(t, err, "%s not on PATH: run `make validate` or `make test`, which install it", name)
	return p
}

func run(t *testing.T, bin string, args ...string) (string, error) {
	t.Helper()
	out, err := exec.Command(bin, args...).CombinedOutput()
	return string(out), err
}

func TestShellcheck_PassesOnScriptsAndCatchesABrokenOne(t *testing.T) {
	sc := tool(t, "shellcheck")
	scripts, err := filepath.Glob("../../scripts/*.sh")
	require.NoError(t, err)
	require.GreaterOrEqual(t, len(scripts), 3, "install-consul.sh, install-handlers.sh, user-data.sh")
	scripts = append(scripts, "../../scripts/fresh-check", "../../.ci/run")
	out, err := run(t, sc, append([]string{"--severity=style"}, scripts...)...)
	assert.NoError(t, err, out)

	out, err = run(t, sc, "testdata/broken.sh")
	require.Error(t, err, "shellcheck must reject the broken fixture")
	assert.Contains(t, out, "SC2086", "unquoted variable")
}

// TestScripts_NoEarlyExitingReaderUnderPipefail: under pipefail, a reader that
// exits before its writer is done (head, grep -q, awk's exit) SIGPIPEs the writer
// and fails the pipeline, but only when the writer still had output to write, so
// it passes on one machine and fails on the next. It failed every fresh machine's
// first make demo (`consul version | head -1`). Read to the end instead
// (sed -n 1p, grep without -q).
func TestScripts_NoEarlyExitingReaderUnderPipefail(t *testing.T) {
	files, err := filepath.Glob("../../scripts/*.sh")
	require.NoError(t, err)
	files = append(files, "../../scripts/fresh-check", "../../.ci/run", "../../Makefile")
	early := regexp.MustCompile(`\|\s*(head\b|grep\s+(-\w*q|--quiet)|awk\b.*\bexit\b)`)
	for _, f := range files {
		b, err := os.ReadFile(f)
		require.NoError(t, err)
		for i, line := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(strings.TrimSpace(line), "#") {
				continue
			}
			assert.False(t, early.MatchString(line), "%s:%d: an early-exiting reader under pipefail: %s", f, i+1, line)
		}
	}
	assert.True(t, early.MatchString("\t@$@ version | head -1"), "the check catches the line that failed")
	assert.True(t, early.MatchString("x | grep -q y"))
}

// A server's full configuration: the shipped files plus a node.hcl as user-data.sh
// renders it (test/userdata runs the script itself against the metadata mock).
func serverConfigDir(t *testing.T, extra map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for _, f := range []string{"server.hcl", "watches.hcl", "acl.hcl", "check-roll.hcl"} {
		b, err := os.ReadFile(filepath.Join("../../consul.d", f))
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(filepath.Join(dir, f), b, 0o644))
	}
	node := `node_name = "i-0123456789abcdef0"
data_dir = "` + filepath.Join(dir, "data") + `"
bind_addr = "127.0.0.1"
bootstrap_expect = 3
retry_join = ["provider=aws region=us-east-1 tag_key=consul-cluster tag_value=main"]
node_meta { image_id = "ami-0123456789abcdef0", instance_id = "i-0123456789abcdef0" }
`
	require.NoError(t, os.WriteFile(filepath.Join(dir, "node.hcl"), []byte(node), 0o644))
	for name, content := range extra {
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644))
	}
	return dir
}

func TestConsulValidate_PassesOnShippedConfigAndCatchesABrokenOne(t *testing.T) {
	consul, err := testcluster.ConsulBinary()
	require.NoError(t, err)
	out, err := run(t, consul, "validate", serverConfigDir(t, nil))
	require.NoError(t, err, out)
	assert.Contains(t, out, "Configuration is valid!")

	broken, err := os.ReadFile("testdata/broken-server.hcl")
	require.NoError(t, err)
	out, err = run(t, consul, "validate", serverConfigDir(t, map[string]string{"zz-broken.hcl": string(broken)}))
	require.Error(t, err, "consul validate must reject the broken fixture")
	assert.Contains(t, out, "cleanup_dead_servers")
}

// packerTree lays out a scratch copy of the repository as the template sees it from
// ${path.root}: packer/, with the handlers built into bin/, and consul.d/ and scripts/.
func packerTree(t *testing.T, template string) string {
	t.Helper()
	root := t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(root, "packer"), 0o755))
	b, err := os.ReadFile(template)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(root, "packer", "image.pkr.hcl"), b, 0o644))
	for _, d := range []string{"consul.d", "scripts"} {
		abs, err := filepath.Abs(filepath.Join("../..", d))
		require.NoError(t, err)
		require.NoError(t, os.Symlink(abs, filepath.Join(root, d)))
	}
	out, err := exec.Command("go", "build", "-o", filepath.Join(root, "bin")+"/", "../../handlers/...").CombinedOutput()
	require.NoError(t, err, string(out))
	return filepath.Join(root, "packer", "image.pkr.hcl")
}

func TestPacker_ValidatesTheTemplateOfflineAndCatchesABrokenOne(t *testing.T) {
	packer := tool(t, "packer")
	require.NotEmpty(t, os.Getenv("PACKER_PLUGIN_PATH"), "PACKER_PLUGIN_PATH unset: run `make validate` or `make test`, which install the amazon plugin")

	out, err := run(t, packer, "fmt", "-check", "-diff", "-recursive", "../../packer/")
	assert.NoError(t, err, "packer fmt -check: %s", out)

	out, err = run(t, packer, "validate", packerTree(t, "../../packer/consul-server.pkr.hcl"))
	require.NoError(t, err, out)
	assert.Contains(t, out, "The configuration is valid.")

	out, err = run(t, packer, "validate", packerTree(t, "../../packer/testdata/broken.pkr.hcl"))
	require.Error(t, err, "packer validate must reject the broken fixture")
	assert.Contains(t, out, `"region"`)
}

// validateClient writes a client node's configuration with files (name -> content)
// into a new directory and runs consul validate there: it must pass. Then it
// replaces old with broken in file, and consul validate must fail saying want, so
// the check is seen to be able to fail.
func validateClient(t *testing.T, files map[string]string, file, old, broken, want string) {
	t.Helper()
	consul, err := testcluster.ConsulBinary()
	require.NoError(t, err)
	dir := t.TempDir()
	files["node.hcl"] = `node_name = "app-1"
data_dir = "` + filepath.Join(dir, "data") + `"
bind_addr = "127.0.0.1"
retry_join = ["provider=aws region=us-east-1 tag_key=consul-cluster tag_value=main"]
`
	for name, content := range files {
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644))
	}
	out, err := run(t, consul, "validate", dir)
	require.NoError(t, err, out)
	assert.Contains(t, out, "Configuration is valid!")

	bad := strings.Replace(files[file], old, broken, 1)
	require.NotEqual(t, files[file], bad, "%s has no %q to break", file, old)
	require.NoError(t, os.WriteFile(filepath.Join(dir, file), []byte(bad), 0o644))
	out, err = run(t, consul, "validate", dir)
	require.Error(t, err, "consul validate must reject %s with %s", file, broken)
	assert.Contains(t, out, want)
}

func shipped(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("../../consul.d", name))
	require.NoError(t, err)
	return string(b)
}

// A client node's configuration with the deploy example, NODE_NAME rendered as
// user-data would.
func TestConsulValidate_PassesOnTheDeployExample(t *testing.T) {
	web := shipped(t, "deploy-web.hcl")
	require.Contains(t, web, "NODE_NAME")
	validateClient(t, map[string]string{"deploy-web.hcl": strings.ReplaceAll(web, "NODE_NAME", "app-1")},
		"deploy-web.hcl", `interval = "1s"`, `interval = "soon"`, "soon")
}

// A client node's configuration with both reconfigure examples, as shipped.
func TestConsulValidate_PassesOnTheReconfigureExamples(t *testing.T) {
	validateClient(t, map[string]string{
		"reconfigure-service.hcl": shipped(t, "reconfigure-service.hcl"),
		"reconfigure-watch.hcl":   shipped(t, "reconfigure-watch.hcl"),
	}, "reconfigure-watch.hcl", `interval = "10s"`, `interval = "sometimes"`, "sometimes")
}
