// Package imdsmock runs the real ec2-metadata-mock (installed by `make test`) for a
// test: on a free loopback port, IMDSv2 only, stopped when the test ends.
package imdsmock

import (
	"net"
	"net/http"
	"os/exec"
	"strconv"
	"testing"
	"time"
)

// Defaults the mock serves, for assertions.
const (
	InstanceID = "i-1234567890abcdef0"
	Region     = "us-east-1"
)

// Start runs the mock and returns its endpoint, e.g. http://127.0.0.1:41234. It fails
// the test if the mock is missing or answers IMDSv1.
func Start(t testing.TB) string {
	t.Helper()
	bin, err := exec.LookPath("ec2-metadata-mock")
	if err != nil {
		t.Fatal("ec2-metadata-mock not on PATH: run the tests with `make test`, which installs it")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
	l.Close()

	cmd := exec.Command(bin, "--hostname", "127.0.0.1", "--port", port, "--imdsv2")
	cmd.Dir = t.TempDir() // it may write its config file to the working directory
	if err := cmd.Start(); err != nil {
		t.Fatalf("start ec2-metadata-mock: %v", err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	endpoint := "http://127.0.0.1:" + port
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get(endpoint + "/latest/meta-data/instance-id")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode != http.StatusUnauthorized {
				t.Fatalf("ec2-metadata-mock answered IMDSv1 with %d; want 401", resp.StatusCode)
			}
			return endpoint
		}
		if time.Now().After(deadline) {
			t.Fatalf("ec2-metadata-mock did not start: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
