package validate

// What starts a roll when an image is published, outside the Lambda itself: Packer's
// optional fire-after-build step, and the deployable files in config/ (the EventBridge
// rule's pattern, the roles' policies, the daily backstop schedule).

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclwrite"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const (
	serverTemplate = "../../packer/consul-server.pkr.hcl"
	fireScript     = "../../packer/fire-after-build.sh"
)

// packerEnv is the environment packer runs in here: no $REHYDRATE_CONFIG from the
// caller (the template defaults rehydrate_config to it), no checkpoint call home.
func packerEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "REHYDRATE_CONFIG=") && !strings.HasPrefix(kv, "CHECKPOINT_DISABLE=") {
			env = append(env, kv)
		}
	}
	return append(append(env, "CHECKPOINT_DISABLE=1"), extra...)
}

func runIn(t *testing.T, dir string, env []string, bin string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Dir, cmd.Env = dir, env
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// fireTree is packerTree with the fire step's script beside the template, as in the
// repository. It returns the tree's root (packer runs there, as `make` would) and the
// template's path relative to it.
func fireTree(t *testing.T, templateText []byte) (root, tmpl string) {
	t.Helper()
	abs := packerTree(t, serverTemplate)
	root = filepath.Dir(filepath.Dir(abs))
	if templateText != nil {
		require.NoError(t, os.WriteFile(abs, templateText, 0o644))
	}
	b, err := os.ReadFile(fireScript)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(root, "packer", "fire-after-build.sh"), b, 0o644))
	return root, filepath.Join("packer", filepath.Base(abs))
}

// TestPacker_FireAfterBuild_ValidatesOffAndOn: `packer validate` passes with the fire
// step off (the default) and on, `packer inspect` shows the step only when on, and
// a missing or misspelt configuration fails before any build.
func TestPacker_FireAfterBuild_ValidatesOffAndOn(t *testing.T) {
	packer := tool(t, "packer")
	require.NotEmpty(t, os.Getenv("PACKER_PLUGIN_PATH"), "PACKER_PLUGIN_PATH unset: run `make validate` or `make test`, which install the amazon plugin")
	root, tmpl := fireTree(t, nil)
	src, err := os.ReadFile(serverTemplate)
	require.NoError(t, err)
	offline, offlineTmpl := fireTree(t, withNullSource(t, src))
	cfg := filepath.Join(t.TempDir(), "rehydrate.hcl")
	require.NoError(t, os.WriteFile(cfg, []byte("cluster = \"main\"\n"), 0o644))

	for _, c := range []struct {
		name string
		env  []string
		args []string
		fire bool
	}{
		{"default", nil, nil, false},
		{"off", nil, []string{"-var", "fire_after_build=false"}, false},
		{"on", nil, []string{"-var", "fire_after_build=true", "-var", "rehydrate_config=" + cfg}, true},
		{"on, configuration from the environment", []string{"REHYDRATE_CONFIG=" + cfg}, []string{"-var", "fire_after_build=true"}, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			out, err := runIn(t, root, packerEnv(c.env...), packer, append(append([]string{"validate"}, c.args...), tmpl)...)
			require.NoError(t, err, out)
			assert.Contains(t, out, "The configuration is valid.")

			// packer inspect lists no build whose source needs a data source it does
			// not run: inspect the offline variant, whose post-processors are the same.
			out, err = runIn(t, offline, packerEnv(c.env...), packer, append(append([]string{"inspect"}, c.args...), offlineTmpl)...)
			require.NoError(t, err, out)
			_, pps, ok := strings.Cut(out, "post-processors:")
			require.True(t, ok, out)
			assert.Contains(t, pps, "manifest")
			assert.Equal(t, c.fire, strings.Contains(pps, "shell-local"), "the fire step is there exactly when fire_after_build is true:\n%s", pps)
		})
	}

	for _, c := range []struct {
		name string
		args []string
		want string
	}{
		{"on without a configuration", []string{"-var", "fire_after_build=true"}, "fire_after_build=true needs rehydrate_config"},
		{"a configuration that is not there", []string{"-var", "fire_after_build=true", "-var", "rehydrate_config=" + cfg + ".missing"}, "rehydrate_config must name an existing file"},
		{"not a bool", []string{"-var", "fire_after_build=yes please", "-var", "rehydrate_config=" + cfg}, "fire_after_build"},
	} {
		t.Run(c.name, func(t *testing.T) {
			out, err := runIn(t, root, packerEnv(), packer, append(append([]string{"validate"}, c.args...), tmpl)...)
			require.Error(t, err, "packer validate must refuse %v", c.args)
			assert.Contains(t, out, c.want)
		})
	}
}

// withNullSource is the template with its build made runnable offline: the AWS source
// and the base-image data source replaced by a null source, and the provisioners (which
// need the instance) dropped. Variables, locals and the post-processor chain are kept
// exactly as written, so a real `packer build` runs the real chain.
func withNullSource(t *testing.T, src []byte) []byte {
	t.Helper()
	f, diags := hclwrite.ParseConfig(src, "consul-server.pkr.hcl", hcl.InitialPos)
	require.False(t, diags.HasErrors(), diags.Error())
	snippet, diags := hclwrite.ParseConfig([]byte("source \"null\" \"consul\" {\n  communicator = \"none\"\n}\nsources = [\"source.null.consul\"]\n"), "null.pkr.hcl", hcl.InitialPos)
	require.False(t, diags.HasErrors(), diags.Error())

	body := f.Body()
	var build *hclwrite.Block
	for _, b := range body.Blocks() {
		switch b.Type() {
		case "data", "source":
			body.RemoveBlock(b)
		case "build":
			build = b
		}
	}
	require.NotNil(t, build, "the template has no build block")
	body.AppendBlock(snippet.Body().Blocks()[0])
	build.Body().SetAttributeRaw("sources", snippet.Body().GetAttribute("sources").Expr().BuildTokens(nil))
	chains := 0
	for _, b := range build.Body().Blocks() {
		switch b.Type() {
		case "provisioner":
			build.Body().RemoveBlock(b)
		case "post-processors":
			chains++
		}
	}
	require.Equal(t, 1, chains, "the manifest and the fire step are one post-processor chain")
	return f.Bytes()
}

// fakeRehydrate replaces bin/rehydrate with a script that records its arguments, one a
// line, and exits with code.
func fakeRehydrate(t *testing.T, root, code string) (argvFile string) {
	t.Helper()
	argvFile = filepath.Join(root, "rehydrate.argv")
	script := "#!/bin/sh\nprintf '%s\\n' \"$@\" >'" + argvFile + "'\nexit " + code + "\n"
	require.NoError(t, os.WriteFile(filepath.Join(root, "bin", "rehydrate"), []byte(script), 0o755))
	return argvFile
}

type manifest struct {
	Builds []struct {
		ArtifactID string `json:"artifact_id"`
		RunUUID    string `json:"packer_run_uuid"`
	} `json:"builds"`
	LastRunUUID string `json:"last_run_uuid"`
}

func readManifest(t *testing.T, path string) (manifest, map[string]any) {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	var m manifest
	require.NoError(t, json.Unmarshal(b, &m))
	var raw map[string]any
	require.NoError(t, json.Unmarshal(b, &raw))
	return m, raw
}

// TestPacker_FireAfterBuild_RunsRehydrateFireWithTheBuildsAMI runs the real template's
// post-processor chain with a real `packer build` (null source): off, nothing is fired;
// on, the fire step finds this run's build in the manifest packer has just written and
// refuses the null builder's artifact id ("Null"), which is not an AMI, naming the
// region it looked for: every input the template passes reached it. The same script then
// runs on that manifest with amazon-ebs's artifact id ("<region>:<ami>,...") and calls
// rehydrate with exactly `-config FILE fire --image AMI`, which the real rehydrate
// parses (it goes on to fail reaching Consul, on a closed loopback port).
func TestPacker_FireAfterBuild_RunsRehydrateFireWithTheBuildsAMI(t *testing.T) {
	packer := tool(t, "packer")
	sh := tool(t, "sh")
	require.NotEmpty(t, os.Getenv("PACKER_PLUGIN_PATH"), "PACKER_PLUGIN_PATH unset: run `make validate` or `make test`, which install the amazon plugin")

	src, err := os.ReadFile(serverTemplate)
	require.NoError(t, err)
	root, tmpl := fireTree(t, withNullSource(t, src))
	realRehydrate := filepath.Join(t.TempDir(), "rehydrate")
	require.NoError(t, os.Rename(filepath.Join(root, "bin", "rehydrate"), realRehydrate))
	argvFile := fakeRehydrate(t, root, "0")
	cfg := filepath.Join(root, "rehydrate.hcl")
	require.NoError(t, os.WriteFile(cfg, []byte(`cluster = "main"
servers = 3
consul {
  address = "127.0.0.1:1"
}
provider "local" {
  state_dir = "`+filepath.Join(root, "state")+`"
}
`), 0o644))
	manifestPath := filepath.Join(root, "packer", "packer-manifest.json")

	out, err := runIn(t, root, packerEnv(), packer, "build", "-var", "region=us-west-2", tmpl)
	require.NoError(t, err, out)
	m, _ := readManifest(t, manifestPath)
	require.Len(t, m.Builds, 1, "the manifest records the build")
	require.NoFileExists(t, argvFile, "off by default: rehydrate must not run")

	out, err = runIn(t, root, packerEnv(), packer, "build", "-var", "region=us-west-2", "-var", "fire_after_build=true", "-var", "rehydrate_config=rehydrate.hcl", tmpl)
	require.Error(t, err, "the null build has no AMI to fire: the step must fail the build\n%s", out)
	assert.Contains(t, out, "fire-after-build.sh")
	assert.Regexp(t, `the artifact of this run, "Null", has no AMI for region us-west-2`, strings.ReplaceAll(out, "%!(PACKER_COMMA)", ","))
	assert.NoFileExists(t, argvFile, "no AMI, no fire")
	m, raw := readManifest(t, manifestPath)
	require.Len(t, m.Builds, 2, "the earlier run's build stays in the manifest")
	thisRun := m.Builds[1].RunUUID
	require.Equal(t, thisRun, m.LastRunUUID)
	require.NotEqual(t, m.Builds[0].RunUUID, thisRun)

	// The manifest as an amazon-ebs build that copied its image to a second region
	// would leave it; the earlier run's build names another image.
	builds := raw["builds"].([]any)
	builds[0].(map[string]any)["artifact_id"] = "us-west-2:ami-0aaaaaaaaaaaaaaaa"
	builds[1].(map[string]any)["artifact_id"] = "eu-west-1:ami-0123456789abcdef0,us-west-2:ami-0fedcba9876543210"
	b, err := json.MarshalIndent(raw, "", "  ")
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(manifestPath, b, 0o644))

	script := filepath.Join(root, "packer", "fire-after-build.sh")
	env := func(over ...string) []string {
		base := map[string]string{
			"PATH": os.Getenv("PATH"), "PACKER_RUN_UUID": thisRun, "BUILD_REGION": "us-west-2",
			"REHYDRATE_BIN": "bin/rehydrate", "REHYDRATE_CONFIG": "rehydrate.hcl", "MANIFEST": manifestPath,
		}
		for _, kv := range over {
			k, v, _ := strings.Cut(kv, "=")
			base[k] = v
		}
		var out []string
		for k, v := range base {
			out = append(out, k+"="+v)
		}
		return out
	}
	// The names the template passes are the ones the script is run with here.
	for _, name := range []string{"REHYDRATE_BIN", "REHYDRATE_CONFIG", "MANIFEST", "BUILD_REGION"} {
		assert.Contains(t, string(src), `"`+name+`=${`, "the template passes %s", name)
	}

	out, err = runIn(t, root, env(), sh, script)
	require.NoError(t, err, out)
	argv, err := os.ReadFile(argvFile)
	require.NoError(t, err)
	assert.Equal(t, "-config\nrehydrate.hcl\nfire\n--image\nami-0fedcba9876543210\n", string(argv), "this run's image, in the build's region")
	assert.Contains(t, out, "asking the cluster to roll to ami-0fedcba9876543210")

	t.Run("refuses", func(t *testing.T) {
		for _, c := range []struct {
			name string
			env  []string
			want string
		}{
			{"another run", []string{"PACKER_RUN_UUID=00000000-0000-0000-0000-000000000000"}, "has no build of this run"},
			{"a region the image is not in", []string{"BUILD_REGION=ap-south-1"}, "has no AMI for region ap-south-1"},
			{"a region that is not a name", []string{"BUILD_REGION=.*"}, "is not a region name"},
			{"a run id that is not one", []string{"PACKER_RUN_UUID=."}, "is not a packer run id"},
			{"no configuration", []string{"REHYDRATE_CONFIG="}, "pass -var rehydrate_config=FILE"},
			{"a missing configuration", []string{"REHYDRATE_CONFIG=nope.hcl"}, "nope.hcl: no such file"},
			{"no rehydrate", []string{"REHYDRATE_BIN=bin/nope"}, "run make build"},
			{"no manifest", []string{"MANIFEST=" + manifestPath + ".gone"}, "not written"},
		} {
			t.Run(c.name, func(t *testing.T) {
				require.NoError(t, os.RemoveAll(argvFile))
				out, err := runIn(t, root, env(c.env...), sh, script)
				require.Error(t, err, out)
				assert.Contains(t, out, c.want)
				assert.NoFileExists(t, argvFile, "nothing is fired")
			})
		}
	})

	t.Run("a value that is not an AMI id", func(t *testing.T) {
		for _, bad := range []string{"ami-0123;touch pwned", "ami-XYZ45678", "ami-0123", "snap-0123456789abcdef0"} {
			builds[1].(map[string]any)["artifact_id"] = "us-west-2:" + bad
			b, err := json.MarshalIndent(raw, "", "  ")
			require.NoError(t, err)
			require.NoError(t, os.WriteFile(manifestPath, b, 0o644))
			require.NoError(t, os.RemoveAll(argvFile))
			out, err := runIn(t, root, env(), sh, script)
			require.Error(t, err, "%s: %s", bad, out)
			assert.NoFileExists(t, argvFile, "%s: nothing is fired", bad)
			assert.NoFileExists(t, filepath.Join(root, "pwned"))
		}
		builds[1].(map[string]any)["artifact_id"] = "us-west-2:ami-0fedcba9876543210"
		b, err := json.MarshalIndent(raw, "", "  ")
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(manifestPath, b, 0o644))
	})

	t.Run("rehydrate fails", func(t *testing.T) {
		fakeRehydrate(t, root, "14")
		out, err := runIn(t, root, env(), sh, script)
		require.Error(t, err, out)
		assert.Contains(t, out, "rehydrate fire failed (exit 14)")
		assert.Contains(t, out, "fire --image ami-0fedcba9876543210", "the message says how to fire by hand")
	})

	t.Run("the real rehydrate parses the command", func(t *testing.T) {
		require.NoError(t, os.Rename(realRehydrate, filepath.Join(root, "bin", "rehydrate")))
		out, err := runIn(t, root, env(), sh, script) // no $CONSUL_HTTP_*: the file's address only
		require.Error(t, err, out)
		assert.Contains(t, out, "rehydrate fire failed (exit 14)", "Consul unreachable (app.ExitConsul): the flags and image were accepted")
		assert.Contains(t, out, "127.0.0.1:1")
		assert.NotContains(t, out, "flag provided but not defined")
	})
}

func TestPacker_FireAfterBuildScript_PassesShellcheck(t *testing.T) {
	sc := tool(t, "shellcheck")
	out, err := run(t, sc, "--severity=style", fireScript)
	assert.NoError(t, err, out)
}

func readJSON(t *testing.T, path string) map[string]any {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	dec := json.NewDecoder(strings.NewReader(string(b)))
	var v map[string]any
	require.NoError(t, dec.Decode(&v), path)
	_, err = dec.Token()
	require.ErrorIs(t, err, io.EOF, "%s: one JSON object and nothing after it", path)
	return v
}

// matches is the part of EventBridge's event pattern matching the rule uses
// (https://docs.aws.amazon.com/eventbridge/latest/userguide/eb-event-patterns.html):
// every field the pattern names must be in the event; a pattern's value is an array of
// values, and matches when the event's value is one of them (for an event array, when
// any of its values is); an object matches the event's object at that field, field by
// field. Matching is exact and case-sensitive. Content filters (prefix, anything-but,
// numeric, exists, ...) are not implemented: a pattern using one fails the test rather
// than being matched wrongly.
func matches(t *testing.T, pattern, event map[string]any) bool {
	t.Helper()
	for field, want := range pattern {
		got, ok := event[field]
		if !ok {
			return false
		}
		switch w := want.(type) {
		case map[string]any:
			sub, ok := got.(map[string]any)
			if !ok || !matches(t, w, sub) {
				return false
			}
		case []any:
			values := []any{got}
			if g, ok := got.([]any); ok {
				values = g
			}
			found := false
			for _, v := range w {
				_, filter := v.(map[string]any)
				require.False(t, filter, "content filters are not implemented here: %v", v)
				found = found || slices.Contains(values, v)
			}
			if !found {
				return false
			}
		default:
			require.Failf(t, "not an event pattern", "field %q: %v is neither an array nor an object", field, want)
		}
	}
	return true
}

// TestTriggerEventPattern_MatchesOnlyAnAvailableImage: the rule's pattern selects EC2's
// "EC2 AMI State Change" with State "available" and nothing else. The events are AWS's
// examples (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/monitor-ami-events.html);
// the instance event is the EC2 user guide's state-change example with its state set to
// "available", so only its detail-type and key case tell it apart.
func TestTriggerEventPattern_MatchesOnlyAnAvailableImage(t *testing.T) {
	pattern := readJSON(t, "../../config/trigger-event-pattern.json")
	assert.Equal(t, map[string]any{
		"source":      []any{"aws.ec2"},
		"detail-type": []any{"EC2 AMI State Change"},
		"detail":      map[string]any{"State": []any{"available"}},
	}, pattern)

	assert.True(t, matches(t, pattern, readJSON(t, "testdata/ami-state-change-available.json")), "an available image")
	for _, f := range []string{"ami-state-change-failed.json", "ami-state-change-deregistered.json", "instance-state-change.json"} {
		assert.False(t, matches(t, pattern, readJSON(t, "testdata/"+f)), f)
	}
	other := readJSON(t, "testdata/ami-state-change-available.json")
	other["source"] = "my.app"
	assert.False(t, matches(t, pattern, other), "the same event from anyone but EC2")

	// The matcher itself: exact, case-sensitive, arrays as any-of, missing is no match.
	ev := map[string]any{"a": "x", "b": []any{"p", "q"}, "c": map[string]any{"d": "Y"}}
	assert.True(t, matches(t, map[string]any{"a": []any{"z", "x"}, "b": []any{"q"}}, ev))
	assert.False(t, matches(t, map[string]any{"c": map[string]any{"d": []any{"y"}}}, ev))
	assert.False(t, matches(t, map[string]any{"e": []any{"x"}}, ev))
	assert.False(t, matches(t, map[string]any{"a": map[string]any{"x": []any{"x"}}}, ev))
}

type statement struct {
	Sid       string
	Effect    string
	Action    any
	Resource  any
	Condition map[string]map[string]any
}

func readPolicy(t *testing.T, path string) []statement {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields() // NotAction, NotResource, Principal: none belongs here
	var p struct {
		Version   string
		Statement []statement
	}
	require.NoError(t, dec.Decode(&p), path)
	require.Equal(t, "2012-10-17", p.Version, path)
	require.NotEmpty(t, p.Statement, path)
	return p.Statement
}

func strs(v any) []string {
	switch x := v.(type) {
	case string:
		return []string{x}
	case []any:
		var out []string
		for _, e := range x {
			s, _ := e.(string)
			out = append(out, s)
		}
		return out
	}
	return nil
}

const (
	triggerToken    = "arn:aws:ssm:REGION:ACCOUNT_ID:parameter/consul-rehydrate/CLUSTER/trigger-token"
	triggerFunction = "arn:aws:lambda:REGION:ACCOUNT_ID:function:consul-rehydrate-CLUSTER-image-published"
)

// TestTriggerLambdaPolicy_GrantsOnlyWhatTheTriggerNeeds keeps the Lambda's role
// least-privilege: every statement allows, and the actions are exactly these:
// DescribeImages (no resource-level permissions: "*"), the token's one parameter, its
// key only through SSM and only for that parameter (Parameter Store's encryption
// context is PARAMETER_ARN,
// https://docs.aws.amazon.com/kms/latest/developerguide/services-parameter-store.html),
// its own log group's streams, and the network interfaces Lambda creates to put the
// function in the servers' VPC (the EC2 part of AWSLambdaVPCAccessExecutionRole,
// https://docs.aws.amazon.com/lambda/latest/dg/configuration-vpc.html): Consul's API
// listens on the servers' private addresses. Not DescribeInstances: the function
// reaches the servers through a configured address, never by their join tag.
func TestTriggerLambdaPolicy_GrantsOnlyWhatTheTriggerNeeds(t *testing.T) {
	want := map[string]string{
		"ec2:DescribeImages":             "*",
		"ssm:GetParameter":               triggerToken,
		"kms:Decrypt":                    "arn:aws:kms:REGION:ACCOUNT_ID:key/KMS_KEY_ID",
		"logs:CreateLogStream":           "arn:aws:logs:REGION:ACCOUNT_ID:log-group:/aws/lambda/consul-rehydrate-CLUSTER-image-published:*",
		"logs:PutLogEvents":              "arn:aws:logs:REGION:ACCOUNT_ID:log-group:/aws/lambda/consul-rehydrate-CLUSTER-image-published:*",
		"ec2:CreateNetworkInterface":     "*",
		"ec2:DescribeNetworkInterfaces":  "*",
		"ec2:DescribeSubnets":            "*",
		"ec2:DeleteNetworkInterface":     "*",
		"ec2:AssignPrivateIpAddresses":   "*",
		"ec2:UnassignPrivateIpAddresses": "*",
	}
	got := map[string]string{}
	for _, s := range readPolicy(t, "../../config/trigger-lambda-iam-policy.json") {
		require.Equal(t, "Allow", s.Effect, s.Sid)
		res := strs(s.Resource)
		require.Len(t, res, 1, "%s: one resource", s.Sid)
		for _, a := range strs(s.Action) {
			assert.NotContains(t, a, "*", "%s: no wildcard actions", s.Sid)
			_, dup := got[a]
			assert.False(t, dup, "%s: %s granted twice", s.Sid, a)
			got[a] = res[0]
			if a == "kms:Decrypt" {
				assert.Equal(t, map[string]map[string]any{"StringEquals": {
					"kms:ViaService":                      "ssm.REGION.amazonaws.com",
					"kms:EncryptionContext:PARAMETER_ARN": triggerToken,
				}}, s.Condition, "the key only through SSM, only for the token")
			} else {
				assert.Empty(t, s.Condition, s.Sid)
			}
		}
	}
	assert.Equal(t, want, got)
}

// TestTriggerSchedulerPolicies_InvokeOnlyTheTrigger: the schedule's role may invoke the
// trigger and nothing else; the roles trust only their service (the scheduler's only
// for this account, as AWS advises against the confused deputy:
// https://docs.aws.amazon.com/scheduler/latest/UserGuide/setting-up.html#setting-up-execution-role).
func TestTriggerSchedulerPolicies_InvokeOnlyTheTrigger(t *testing.T) {
	sts := readPolicy(t, "../../config/trigger-scheduler-iam-policy.json")
	require.Len(t, sts, 1)
	assert.Equal(t, "Allow", sts[0].Effect)
	assert.Equal(t, []string{"lambda:InvokeFunction"}, strs(sts[0].Action))
	assert.Equal(t, []string{triggerFunction}, strs(sts[0].Resource))

	for file, want := range map[string]any{
		"trigger-lambda-trust-policy.json": map[string]any{"Version": "2012-10-17", "Statement": []any{map[string]any{
			"Effect": "Allow", "Principal": map[string]any{"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole",
		}}},
		"trigger-scheduler-trust-policy.json": map[string]any{"Version": "2012-10-17", "Statement": []any{map[string]any{
			"Effect": "Allow", "Principal": map[string]any{"Service": "scheduler.amazonaws.com"}, "Action": "sts:AssumeRole",
			"Condition": map[string]any{"StringEquals": map[string]any{"aws:SourceAccount": "ACCOUNT_ID"}},
		}}},
	} {
		assert.Equal(t, want, readJSON(t, "../../config/"+file), file)
	}
}

// substitute fills in the placeholders as the README tells the operator to.
func substitute(s string) string {
	return strings.NewReplacer("REGION", "eu-west-1", "ACCOUNT_ID", "123456789012", "CLUSTER", "main",
		"KMS_KEY_ID", "1234abcd-12ab-34cd-56ef-1234567890ab").Replace(s)
}

// TestTriggerFiles_PlaceholdersAreTheDocumentedOnes: after the README's substitution of
// REGION, ACCOUNT_ID, CLUSTER and KMS_KEY_ID, no placeholder is left and every ARN in
// the trigger's files is well formed, so a typo'd placeholder cannot reach AWS.
func TestTriggerFiles_PlaceholdersAreTheDocumentedOnes(t *testing.T) {
	files, err := filepath.Glob("../../config/trigger-*.json")
	require.NoError(t, err)
	require.Len(t, files, 6)
	arn := regexp.MustCompile(`^arn:aws:(ssm|kms|logs|lambda|iam):(eu-west-1)?:(123456789012):[A-Za-z0-9/_.:*+=,@-]+$`)
	leftover := regexp.MustCompile(`\b[A-Z][A-Z_]{3,}\b`)
	values := map[string]bool{"ENABLED": true} // the Scheduler API's own words
	for _, f := range files {
		b, err := os.ReadFile(f)
		require.NoError(t, err)
		s := substitute(string(b))
		var v any
		require.NoError(t, json.Unmarshal([]byte(s), &v), f)
		var walk func(any)
		walk = func(x any) {
			switch y := x.(type) {
			case map[string]any:
				for _, e := range y {
					walk(e)
				}
			case []any:
				for _, e := range y {
					walk(e)
				}
			case string:
				if strings.HasPrefix(y, "arn:") {
					assert.Regexp(t, arn, y, f)
				}
				for _, w := range leftover.FindAllString(y, -1) {
					assert.True(t, values[w], "%s: %s in %q is a placeholder the README does not substitute", f, w, y)
				}
			}
		}
		walk(v)
	}
	assert.Regexp(t, leftover, "arn:aws:iam::ACOUNT_ID:role/x", "the check catches a typo'd placeholder")
}

// TestTriggerSchedule_IsWhatTheAWSCLISends: the real aws CLI reads
// config/trigger-schedule.json as `aws scheduler create-schedule --cli-input-json`
// input (botocore checks every key and type against the service model before sending)
// and sends a daily schedule that invokes the trigger with "{}", no image: the newest
// allowed one. It is sent to a recorder on loopback, unsigned. A schedule with a wrong
// type is refused by the CLI and nothing is sent.
func TestTriggerSchedule_IsWhatTheAWSCLISends(t *testing.T) {
	aws := tool(t, "aws")
	var mu sync.Mutex
	var requests []string
	var body map[string]any
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		mu.Lock()
		defer mu.Unlock()
		requests = append(requests, r.Method+" "+r.URL.Path)
		body = nil
		_ = json.Unmarshal(b, &body)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"ScheduleArn":"arn:aws:scheduler:eu-west-1:123456789012:schedule/default/consul-rehydrate-main-backstop"}`))
	}))
	defer srv.Close()

	dir := t.TempDir()
	b, err := os.ReadFile("../../config/trigger-schedule.json")
	require.NoError(t, err)
	good := filepath.Join(dir, "schedule.json")
	require.NoError(t, os.WriteFile(good, []byte(substitute(string(b))), 0o644))
	env := []string{
		"PATH=" + os.Getenv("PATH"), "HOME=" + dir,
		"AWS_CONFIG_FILE=" + filepath.Join(dir, "none"), "AWS_SHARED_CREDENTIALS_FILE=" + filepath.Join(dir, "none"),
		"AWS_DEFAULT_REGION=eu-west-1", "AWS_MAX_ATTEMPTS=1", "AWS_RETRY_MODE=standard", "AWS_EC2_METADATA_DISABLED=true",
	}
	create := func(file string) (string, error) {
		return runIn(t, dir, env, aws, "scheduler", "create-schedule", "--cli-input-json", "file://"+file,
			"--endpoint-url", srv.URL, "--no-sign-request", "--output", "json")
	}

	out, err := create(good)
	require.NoError(t, err, out)
	assert.Contains(t, out, "ScheduleArn")
	mu.Lock()
	require.Equal(t, []string{"POST /schedules/consul-rehydrate-main-backstop"}, requests)
	sent := body
	mu.Unlock()
	assert.Equal(t, "cron(0 10 * * ? *)", sent["ScheduleExpression"], "daily")
	assert.Equal(t, "UTC", sent["ScheduleExpressionTimezone"])
	assert.Equal(t, map[string]any{"Mode": "OFF"}, sent["FlexibleTimeWindow"])
	assert.Equal(t, "ENABLED", sent["State"])
	target, _ := sent["Target"].(map[string]any)
	require.NotNil(t, target, "%v", sent)
	assert.Equal(t, "{}", target["Input"], "no image: the newest allowed one")
	assert.Equal(t, substitute(triggerFunction), target["Arn"])
	assert.Equal(t, "arn:aws:iam::123456789012:role/consul-rehydrate-main-scheduler", target["RoleArn"])

	var bad map[string]any
	require.NoError(t, json.Unmarshal([]byte(substitute(string(b))), &bad))
	bad["Target"].(map[string]any)["Input"] = map[string]any{}
	nb, err := json.Marshal(bad)
	require.NoError(t, err)
	broken := filepath.Join(dir, "broken.json")
	require.NoError(t, os.WriteFile(broken, nb, 0o644))
	out, err = create(broken)
	require.Error(t, err, out)
	assert.Contains(t, out, "Target.Input")
	mu.Lock()
	assert.Len(t, requests, 1, "the CLI sent nothing for the broken schedule")
	mu.Unlock()
}
