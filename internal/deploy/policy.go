package deploy

import (
	"fmt"
	"path"
	"strings"

	"github.com/consul-rehydrate/consul-rehydrate/config"
)

// Whoever writes a node's desired key picks the version, artifact and digest its
// deploy command runs with: that is running code on the node. CheckVersion keeps the
// version a plain token; Allowed narrows the artifact and digest to what the node's
// own deploy block says.

// Allowed reports, as an ErrRefused, a desired value that dc does not allow: an
// artifact outside dc.Artifacts (when set), or no sha256 when dc.RequireSHA256.
// d has passed Desired.Check.
func Allowed(dc *config.DeployConfig, d Desired) error {
	name := config.KeyDeploy + "." + dc.Service + "."
	if dc.RequireSHA256 && d.SHA256 == "" {
		return fmt.Errorf("%w: no sha256, and %s%s is set: the desired value must pin its artifact's SHA-256 (64 hex digits)",
			ErrRefused, name, config.AttrDeployRequireSHA256)
	}
	if len(dc.Artifacts) == 0 {
		return nil
	}
	if d.Artifact == "" {
		return fmt.Errorf("%w: no artifact, and %s%s is set: the desired value must name an artifact it allows",
			ErrRefused, name, config.AttrDeployArtifacts)
	}
	if err := artifactShape(d.Artifact); err != nil {
		return fmt.Errorf("%w: artifact %q %v", ErrRefused, d.Artifact, err)
	}
	for _, p := range dc.Artifacts {
		// path.Match: "*" never matches a "/", so "https://host/web/*" allows files
		// of that directory only. The patterns are valid (config checked them).
		if ok, _ := path.Match(p, d.Artifact); ok {
			return nil
		}
	}
	return fmt.Errorf("%w: artifact %q matches none of %s%s (%s)",
		ErrRefused, d.Artifact, name, config.AttrDeployArtifacts, strings.Join(dc.Artifacts, ", "))
}

// artifactShape refuses what could make an artifact that matches a pattern name
// something else once a client or server resolves it: a ".." segment (curl and
// most servers remove dot segments, RFC 3986 5.2.4), a "\" (some servers take it
// for "/"), the percent-encoded forms of those, and "@" and "#", which move where a
// URL's host or path ends.
func artifactShape(a string) error {
	if strings.Contains(a, "..") {
		return fmt.Errorf(`has ".."`)
	}
	if i := strings.IndexAny(a, `\@#`); i >= 0 {
		return fmt.Errorf("has %q", a[i])
	}
	lower := strings.ToLower(a)
	for _, enc := range []string{"%2e", "%2f", "%5c"} {
		if strings.Contains(lower, enc) {
			return fmt.Errorf("has %q: an encoded \".\", \"/\" or \"\\\"", enc)
		}
	}
	for _, r := range a {
		if r <= ' ' || r >= 0x7f {
			return fmt.Errorf("has a space or a character outside printable ASCII")
		}
	}
	return nil
}
