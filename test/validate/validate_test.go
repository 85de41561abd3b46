// Package validate runs the real tools over what we ship for the image and the agents:
// shellcheck on scripts/, consul validate on consul.d/ with the per-server file that
// user-data.sh renders, and packer validate and fmt on packer/. Each check is also run
// on a broken fixture and must fail there, so a check that cannot fail is caught.
package validate

import (
	"os"
	"os/exec"
	"path/filepath"
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
	out, err := run(t, sc, append([]string{"--severity=style"}, scripts...)...)
	assert.NoError(t, err, out)

	out, err = run(t, sc, "testdata/broken.sh")
	require.Error(t, err, "shellcheck must reject the broken fixture")
	assert.Contains(t, out, "SC2086", "unquoted variable")
}

// A server's full configuration: the shipped files plus a node.hcl as user-data.sh
// renders it (test/userdata runs the script itself against the metadata mock).
func serverConfigDir(t *testing.T, extra map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for _, f := range []string{"server.hcl", "watches.hcl", "acl.hcl"} {
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

// A client node's configuration with the deploy example, NODE_NAME rendered as
// user-data would.
func TestConsulValidate_PassesOnTheDeployExample(t *testing.T) {
	consul, err := testcluster.ConsulBinary()
	require.NoError(t, err)
	b, err := os.ReadFile("../../consul.d/deploy-web.hcl")
	require.NoError(t, err)
	require.Contains(t, string(b), "NODE_NAME")
	dir := t.TempDir()
	node := `node_name = "web-1"
data_dir = "` + filepath.Join(dir, "data") + `"
bind_addr = "127.0.0.1"
retry_join = ["provider=aws region=us-east-1 tag_key=consul-cluster tag_value=main"]
`
	require.NoError(t, os.WriteFile(filepath.Join(dir, "node.hcl"), []byte(node), 0o644))
	rendered := strings.ReplaceAll(string(b), "NODE_NAME", "web-1")
	require.NoError(t, os.WriteFile(filepath.Join(dir, "deploy-web.hcl"), []byte(rendered), 0o644))
	out, err := run(t, consul, "validate", dir)
	require.NoError(t, err, out)
	assert.Contains(t, out, "Configuration is valid!")

	// The same check catches a broken service definition.
	broken := strings.Replace(rendered, `interval = "1s"`, `interval = "soon"`, 1)
	require.NotEqual(t, rendered, broken)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "deploy-web.hcl"), []byte(broken), 0o644))
	out, err = run(t, consul, "validate", dir)
	require.Error(t, err, "consul validate must reject a bad check interval")
	assert.Contains(t, out, "soon")
}

// A client node's configuration with both reconfigure examples, as shipped.
func TestConsulValidate_PassesOnTheReconfigureExamples(t *testing.T) {
	consul, err := testcluster.ConsulBinary()
	require.NoError(t, err)
	dir := t.TempDir()
	node := `node_name = "app-1"
data_dir = "` + filepath.Join(dir, "data") + `"
bind_addr = "127.0.0.1"
retry_join = ["provider=aws region=us-east-1 tag_key=consul-cluster tag_value=main"]
`
	require.NoError(t, os.WriteFile(filepath.Join(dir, "node.hcl"), []byte(node), 0o644))
	for _, f := range []string{"reconfigure-service.hcl", "reconfigure-watch.hcl"} {
		b, err := os.ReadFile(filepath.Join("../../consul.d", f))
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(filepath.Join(dir, f), b, 0o644))
	}
	out, err := run(t, consul, "validate", dir)
	require.NoError(t, err, out)
	assert.Contains(t, out, "Configuration is valid!")

	// The same check catches a broken check definition.
	b, err := os.ReadFile(filepath.Join(dir, "reconfigure-watch.hcl"))
	require.NoError(t, err)
	broken := strings.Replace(string(b), `interval = "10s"`, `interval = "sometimes"`, 1)
	require.NotEqual(t, string(b), broken)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "reconfigure-watch.hcl"), []byte(broken), 0o644))
	out, err = run(t, consul, "validate", dir)
	require.Error(t, err, "consul validate must reject a bad check interval")
	assert.Contains(t, out, "sometimes")
}
