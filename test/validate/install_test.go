package validate

import (
	"archive/zip"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// hashicorpFingerprint is HashiCorp's release signing key, as published at
// https://www.hashicorp.com/.well-known/pgp-key.txt and
// https://www.hashicorp.com/security ("C874 011F 0AB4 0511 0D02 1055 3436 5D94 72D7 468F").
const hashicorpFingerprint = "C874011F0AB405110D02105534365D9472D7468F"

// gnupg is a throwaway GnuPG home with one signing key.
type gnupg struct {
	home string
	t    *testing.T
	// at, if set, is the time gpg believes it is (--faked-system-time, e.g.
	// "20200101T000000!"): keys and signatures made in the past, so that a key can
	// have expired by now without the test waiting.
	at string
}

func newGnuPG(t *testing.T, uid string) *gnupg { return newGnuPGAt(t, uid, "", "never") }

// newGnuPGAt is newGnuPG with a key made at the faked time at ("" for now) that
// expires after expire ("never", "1d", …).
func newGnuPGAt(t *testing.T, uid, at, expire string) *gnupg {
	t.Helper()
	tool(t, "gpg")
	// Not t.TempDir(): gpg-agent's socket path must stay under the kernel's 108 bytes.
	home, err := os.MkdirTemp("", "gpg")
	require.NoError(t, err)
	g := &gnupg{home: home, t: t, at: at}
	t.Cleanup(func() {
		_ = exec.Command("gpgconf", "--homedir", home, "--kill", "all").Run()
		_ = os.RemoveAll(home)
	})
	g.run("--passphrase", "", "--quick-gen-key", uid, "ed25519", "sign", expire)
	return g
}

// revoke imports the revocation certificate gpg made with the key, so that the
// exported public key is revoked.
func (g *gnupg) revoke() {
	g.t.Helper()
	revs, err := filepath.Glob(filepath.Join(g.home, "openpgp-revocs.d", "*.rev"))
	require.NoError(g.t, err)
	require.Len(g.t, revs, 1)
	b, err := os.ReadFile(revs[0])
	require.NoError(g.t, err)
	// gpg prefixes the armor line with ':' so the file is not imported by accident.
	f := filepath.Join(g.t.TempDir(), "rev.asc")
	require.NoError(g.t, os.WriteFile(f, bytes.Replace(b, []byte(":-----BEGIN"), []byte("-----BEGIN"), 1), 0o600))
	g.run("--import", f)
}

func (g *gnupg) run(args ...string) []byte {
	g.t.Helper()
	if g.at != "" {
		args = append([]string{"--faked-system-time", g.at}, args...)
	}
	cmd := exec.Command("gpg", append([]string{"--batch", "--homedir", g.home}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	require.NoError(g.t, err, "gpg %s: %s", strings.Join(args, " "), stderr.String())
	return out
}

func (g *gnupg) publicKey() []byte { return g.run("--armor", "--export") }

// sign returns a detached binary signature of data, as HashiCorp's .sig files are.
func (g *gnupg) sign(data []byte) []byte {
	g.t.Helper()
	f := filepath.Join(g.t.TempDir(), "data")
	require.NoError(g.t, os.WriteFile(f, data, 0o600))
	return g.run("--detach-sign", "--output", "-", f)
}

const fakeVersion = "9.9.9"

// fakeZip is a release zip whose consul prints a version line.
func fakeZip(t *testing.T, say string) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	h := &zip.FileHeader{Name: "consul", Method: zip.Deflate}
	h.SetMode(0o755)
	w, err := zw.CreateHeader(h)
	require.NoError(t, err)
	_, err = w.Write([]byte("#!/bin/sh\necho '" + say + "'\n"))
	require.NoError(t, err)
	require.NoError(t, zw.Close())
	return buf.Bytes()
}

func sums(files map[string][]byte) []byte {
	var b strings.Builder
	for _, name := range []string{"consul_" + fakeVersion + "_darwin_arm64.zip", "consul_" + fakeVersion + "_linux_amd64.zip"} {
		if data, ok := files[name]; ok {
			s := sha256.Sum256(data)
			b.WriteString(hex.EncodeToString(s[:]) + "  " + name + "\n")
		}
	}
	return []byte(b.String())
}

// release is what the fake archive serves under /consul/<version>/.
type release struct {
	zip, sums, sig []byte // nil: not served (404)
}

func serve(t *testing.T, r release) string {
	t.Helper()
	files := map[string][]byte{
		"/consul/" + fakeVersion + "/consul_" + fakeVersion + "_linux_amd64.zip":         r.zip,
		"/consul/" + fakeVersion + "/consul_" + fakeVersion + "_SHA256SUMS":              r.sums,
		"/consul/" + fakeVersion + "/consul_" + fakeVersion + "_SHA256SUMS.72D7468F.sig": r.sig,
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		b, ok := files[req.URL.Path]
		if !ok || b == nil {
			http.NotFound(w, req)
			return
		}
		_, _ = w.Write(b)
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// installConsul runs scripts/install-consul.sh against the archive at url into a new
// ROOT, with the repository as SRC, and returns ROOT and the output.
func installConsul(t *testing.T, url string, env ...string) (root, out string, err error) {
	t.Helper()
	for _, name := range []string{"gpgv", "curl", "unzip", "sha256sum"} {
		tool(t, name)
	}
	src, err := filepath.Abs("../..")
	require.NoError(t, err)
	root = t.TempDir()
	cmd := exec.Command("bash", "../../scripts/install-consul.sh")
	cmd.Env = append(os.Environ(), append([]string{
		"CONSUL_VERSION=" + fakeVersion, "SRC=" + src, "RELEASES_URL=" + url, "ROOT=" + root, "SKIP_SYSTEM=1",
	}, env...)...)
	b, err := cmd.CombinedOutput()
	return root, string(b), err
}

func files(t *testing.T, root string) []string {
	t.Helper()
	var found []string
	require.NoError(t, filepath.Walk(root, func(path string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if !fi.IsDir() {
			rel, _ := filepath.Rel(root, path)
			found = append(found, rel)
		}
		return nil
	}))
	return found
}

// TestInstallConsul_InstallsOnlyAReleaseWhoseSignedSumsMatch runs install-consul.sh
// against a fake release archive on loopback, signed by a throwaway key that the
// test hands it in place of HashiCorp's: the good release installs; a tampered
// SHA256SUMS, a swapped zip, a signature by another key, a missing signature and
// sums that do not list the zip are each refused, and nothing at all is installed.
func TestInstallConsul_InstallsOnlyAReleaseWhoseSignedSumsMatch(t *testing.T) {
	release1 := newGnuPG(t, "release key <release@example.invalid>")
	stranger := newGnuPG(t, "stranger <stranger@example.invalid>")
	keyFile := filepath.Join(t.TempDir(), "release.asc")
	require.NoError(t, os.WriteFile(keyFile, release1.publicKey(), 0o644))

	name := "consul_" + fakeVersion + "_linux_amd64.zip"
	good := fakeZip(t, "Consul v"+fakeVersion)
	evil := fakeZip(t, "pwned")
	goodSums := sums(map[string][]byte{name: good, "consul_" + fakeVersion + "_darwin_arm64.zip": []byte("mac")})
	evilSums := sums(map[string][]byte{name: evil, "consul_" + fakeVersion + "_darwin_arm64.zip": []byte("mac")})
	otherSums := sums(map[string][]byte{"consul_" + fakeVersion + "_darwin_arm64.zip": []byte("mac")})

	t.Run("good release installs", func(t *testing.T) {
		root, out, err := installConsul(t, serve(t, release{good, goodSums, release1.sign(goodSums)}), "HASHICORP_KEY="+keyFile)
		require.NoError(t, err, out)
		assert.Contains(t, out, "Consul v"+fakeVersion)
		assert.Regexp(t, `matches consul_9\.9\.9_SHA256SUMS, signed by key [0-9A-F]{40}`, out)
		fi, err := os.Stat(filepath.Join(root, "usr/local/bin/consul"))
		require.NoError(t, err)
		assert.Equal(t, os.FileMode(0o755), fi.Mode())
	})

	refused := []struct {
		name string
		r    release
		want string
	}{
		{"sums changed after signing", release{evil, evilSums, release1.sign(goodSums)}, "no good signature by the key in " + keyFile},
		{"zip swapped under signed sums", release{evil, goodSums, release1.sign(goodSums)}, name + " does not match its SHA-256 in the signed"},
		{"signed by another key", release{evil, evilSums, stranger.sign(evilSums)}, "no good signature by the key in " + keyFile},
		{"signature is garbage", release{good, goodSums, []byte("not a signature")}, "no good signature"},
		{"no signature", release{good, goodSums, nil}, "download "},
		{"sums without the zip", release{good, otherSums, release1.sign(otherSums)}, "lists no " + name},
	}
	for _, tt := range refused {
		t.Run(tt.name, func(t *testing.T) {
			root, out, err := installConsul(t, serve(t, tt.r), "HASHICORP_KEY="+keyFile)
			require.Error(t, err, out)
			assert.Contains(t, out, tt.want)
			assert.Contains(t, out, "install-consul: ")
			assert.NotContains(t, out, "pwned")
			assert.Empty(t, files(t, root), "a refused release installs nothing")
		})
	}

	// Without HASHICORP_KEY the script checks against the committed HashiCorp key,
	// which did not sign the fake release.
	t.Run("default key is HashiCorp's", func(t *testing.T) {
		root, out, err := installConsul(t, serve(t, release{good, goodSums, release1.sign(goodSums)}))
		require.Error(t, err, out)
		assert.Contains(t, out, "no good signature by the key in ")
		assert.Contains(t, out, "scripts/hashicorp.asc")
		assert.Empty(t, files(t, root))
	})
}

// TestInstallConsul_RefusesAnExpiredOrRevokedKeysSignature: a signature that is
// cryptographically good, by the trusted key, is still refused when that key has
// expired or been revoked since, or when the signature itself has expired. For the
// first two gpgv exits 0 and prints VALIDSIG (the test checks it does, on this
// machine's GnuPG): only the EXPKEYSIG or REVKEYSIG status beside it tells them apart
// from a good signature. Keys and signatures are made in 2020 with
// --faked-system-time, so nothing waits for an expiry.
func TestInstallConsul_RefusesAnExpiredOrRevokedKeysSignature(t *testing.T) {
	tool(t, "gpgv")
	name := "consul_" + fakeVersion + "_linux_amd64.zip"
	good := fakeZip(t, "Consul v"+fakeVersion)
	goodSums := sums(map[string][]byte{name: good})
	const then = "20200101T000000!"
	const later = "20200101T010000!" // an hour on, while a one-day key is valid

	expired := newGnuPGAt(t, "expired key <expired@example.invalid>", then, "1d")
	expired.at = later
	revoked := newGnuPGAt(t, "revoked key <revoked@example.invalid>", then, "never")
	revoked.at = later
	revokedSig := revoked.sign(goodSums)
	revoked.revoke()
	sigExpires := newGnuPGAt(t, "key <key@example.invalid>", then, "never")
	sigExpires.at = later

	for _, tt := range []struct {
		name   string
		key    *gnupg
		sig    []byte
		gpgvOK bool   // gpgv itself exits 0
		status string // the status gpgv reports beside VALIDSIG
		want   string
	}{
		{"key expired since", expired, expired.sign(goodSums), true, "EXPKEYSIG", "signed by an expired key (EXPKEYSIG)"},
		{"key revoked since", revoked, revokedSig, true, "REVKEYSIG", "signed by a revoked key (REVKEYSIG)"},
		{"signature expired", sigExpires, sigExpires.run("--default-sig-expire", "1d", "--detach-sign", "--output", "-", writeTemp(t, goodSums)), false, "EXPSIG", "no good signature by the key in "},
	} {
		t.Run(tt.name, func(t *testing.T) {
			keyFile := filepath.Join(t.TempDir(), "release.asc")
			require.NoError(t, os.WriteFile(keyFile, tt.key.publicKey(), 0o644))

			// What gpgv says of it, as the script runs it.
			dir := t.TempDir()
			keyring := filepath.Join(dir, "key.gpg")
			tt.key.run("--output", keyring, "--export")
			sigFile, sumsFile := filepath.Join(dir, "sums.sig"), filepath.Join(dir, "sums")
			require.NoError(t, os.WriteFile(sigFile, tt.sig, 0o600))
			require.NoError(t, os.WriteFile(sumsFile, goodSums, 0o600))
			status, err := exec.Command("gpgv", "--status-fd", "1", "--keyring", keyring, sigFile, sumsFile).Output()
			if tt.gpgvOK {
				require.NoError(t, err, "gpgv exits 0: its exit status cannot tell\n%s", status)
			}
			assert.Contains(t, string(status), "[GNUPG:] VALIDSIG ", "VALIDSIG cannot tell either")
			assert.Contains(t, string(status), "[GNUPG:] "+tt.status+" ")
			assert.NotContains(t, string(status), "[GNUPG:] GOODSIG ")

			root, out, err := installConsul(t, serve(t, release{good, goodSums, tt.sig}), "HASHICORP_KEY="+keyFile)
			require.Error(t, err, out)
			assert.Contains(t, out, tt.want)
			assert.Contains(t, out, "refusing to install")
			assert.NotContains(t, out, "Consul v"+fakeVersion, "consul never ran")
			assert.Empty(t, files(t, root), "a refused release installs nothing")
		})
	}
}

func writeTemp(t *testing.T, data []byte) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "data")
	require.NoError(t, os.WriteFile(f, data, 0o600))
	return f
}

// TestHashiCorpKey_IsHashiCorpsReleaseKey: scripts/hashicorp.asc is one key, with
// the fingerprint HashiCorp publishes, its self-signatures all good.
func TestHashiCorpKey_IsHashiCorpsReleaseKey(t *testing.T) {
	g := &gnupg{home: t.TempDir(), t: t}
	tool(t, "gpg")
	out := string(g.run("--with-colons", "--show-keys", "../../scripts/hashicorp.asc"))
	var pubs, fprs []string
	lines := strings.Split(out, "\n")
	for i, l := range lines {
		f := strings.Split(l, ":")
		if f[0] == "pub" {
			pubs = append(pubs, l)
			for _, next := range lines[i+1:] {
				if strings.HasPrefix(next, "fpr:") {
					fprs = append(fprs, strings.Split(next, ":")[9])
					break
				}
			}
		}
	}
	require.Len(t, pubs, 1, "exactly one primary key: gpgv trusts every key in the keyring\n%s", out)
	assert.Equal(t, []string{hashicorpFingerprint}, fprs)
	assert.Contains(t, out, "HashiCorp Security (hashicorp.com/security) <security@hashicorp.com>")

	// Import it and check every self-signature: a corrupted copy fails here.
	g.run("--import", "../../scripts/hashicorp.asc")
	sigs := string(g.run("--with-colons", "--check-sigs", hashicorpFingerprint))
	good := regexp.MustCompile(`(?m)^sig:!:`).FindAllString(sigs, -1)
	assert.NotEmpty(t, good, sigs)
	assert.NotRegexp(t, `(?m)^sig:[-%?]:`, sigs, "a bad or unverifiable self-signature")
}

// shippedSecretSetting matches an agent setting that carries a secret or a path to
// one: none may be in what the image bakes (packer/consul-server.pkr.hcl runs the
// same check at the end of the build).
var shippedSecretSetting = regexp.MustCompile(`(?m)^\s*(encrypt|ca_file|cert_file|key_file|agent|default|initial_management)\s*=`)

// TestImage_BakesNoSecret: what install-consul.sh puts into /etc is the shared,
// secret-free configuration only (server.hcl, watches.hcl, acl.hcl, check-roll.hcl): no gossip key,
// no certificate, no token. Those come at boot from the secret store.
func TestImage_BakesNoSecret(t *testing.T) {
	release1 := newGnuPG(t, "release key <release@example.invalid>")
	keyFile := filepath.Join(t.TempDir(), "release.asc")
	require.NoError(t, os.WriteFile(keyFile, release1.publicKey(), 0o644))
	good := fakeZip(t, "Consul v"+fakeVersion)
	s := sums(map[string][]byte{"consul_" + fakeVersion + "_linux_amd64.zip": good})
	root, out, err := installConsul(t, serve(t, release{good, s, release1.sign(s)}), "HASHICORP_KEY="+keyFile)
	require.NoError(t, err, out)

	assert.ElementsMatch(t, []string{
		"etc/consul.d/acl.hcl", "etc/consul.d/server.hcl", "etc/consul.d/watches.hcl", "etc/consul.d/check-roll.hcl",
		"etc/systemd/system/consul.service", "usr/local/bin/consul", "usr/local/sbin/consul-user-data",
	}, files(t, root))
	for _, f := range []string{"acl.hcl", "server.hcl", "watches.hcl", "check-roll.hcl"} {
		b, err := os.ReadFile(filepath.Join(root, "etc/consul.d", f))
		require.NoError(t, err)
		assert.NotRegexp(t, shippedSecretSetting, string(b), f)
		assert.NotContains(t, string(b), "BEGIN", f)
	}
	// The check can fail: it catches what user-data.sh writes at boot.
	assert.Regexp(t, shippedSecretSetting, "encrypt                 = \"x\"")
	assert.Regexp(t, shippedSecretSetting, "    agent = \"x\"")
	assert.NotRegexp(t, shippedSecretSetting, `  default_policy           = "deny"`)

	// The packer template runs the same check on the real image.
	tmpl, err := os.ReadFile("../../packer/consul-server.pkr.hcl")
	require.NoError(t, err)
	assert.Contains(t, string(tmpl), "(encrypt|ca_file|cert_file|key_file|agent|default|initial_management)[[:space:]]*=")
}
