package local

import (
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/consul-rehydrate/consul-rehydrate/internal/agentsec"
	"github.com/consul-rehydrate/consul-rehydrate/test/testcluster"
)

// rogue is an agent that is not the provider's: an attacker on the network.
type rogue struct {
	name, addr, dir string
	done            chan struct{}
}

// startRogue starts an agent at the cluster's last address, joining the cluster's
// servers, with the HCL extra; its API is plain HTTP on its own address, for the
// test to ask what it sees. It is killed when the test ends.
func startRogue(t *testing.T, p *Provider, cfg Config, ins []string, extra string) *rogue {
	t.Helper()
	bin, err := testcluster.ConsulBinary()
	require.NoError(t, err)
	r := &rogue{name: "rogue", addr: p.addrs.at(p.addrs.count - 1), dir: t.TempDir(), done: make(chan struct{})}
	joins := make([]string, len(ins))
	for i, a := range ins {
		joins[i] = fmt.Sprintf("%q", a)
	}
	hcl := fmt.Sprintf(`node_name = %q
datacenter = %q
data_dir = %q
bind_addr = %q
client_addr = %q
advertise_addr = %q
retry_join = [%s]
retry_interval = "1s"
ports {
  http = 8500
  https = -1
  grpc = -1
  grpc_tls = -1
  serf_wan = -1
  dns = -1
}
%s
`, r.name, cfg.Datacenter, filepath.Join(r.dir, "data"), r.addr, r.addr, r.addr, strings.Join(joins, ", "), extra)
	path := filepath.Join(r.dir, "rogue.hcl")
	require.NoError(t, os.WriteFile(path, []byte(hcl), 0o600))
	logf, err := os.Create(filepath.Join(r.dir, "agent.log"))
	require.NoError(t, err)
	cmd := exec.Command(bin, "agent", "-config-file", path)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	require.NoError(t, cmd.Start())
	go func() {
		_ = cmd.Wait()
		logf.Close()
		close(r.done)
	}()
	t.Cleanup(func() {
		select {
		case <-r.done: // exited and reaped: its pid may be another process's now
		default:
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		}
		select {
		case <-r.done:
		case <-time.After(stopTimeout):
			t.Errorf("rogue agent %d survived SIGKILL", cmd.Process.Pid)
		}
		if t.Failed() {
			t.Logf("rogue agent.log, last lines:\n%s", tail(filepath.Join(r.dir, "agent.log"), 30))
		}
	})
	return r
}

func (r *rogue) client(t *testing.T) *api.Client {
	t.Helper()
	c := api.DefaultNonPooledConfig()
	c.Address, c.Scheme, c.Token, c.TokenFile = r.addr+":8500", "http", "", ""
	c.HttpClient = &http.Client{Timeout: 5 * time.Second}
	cl, err := api.NewClient(c)
	require.NoError(t, err)
	return cl
}

func (r *rogue) log(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(r.dir, "agent.log"))
	require.NoError(t, err)
	return string(b)
}

func startSecureCluster(t *testing.T) (*Provider, Config, []string, *api.Client) {
	t.Helper()
	p, cfg, ins := startCluster(t, 3)
	var addrs []string
	for _, in := range ins {
		addrs = append(addrs, in.Address)
	}
	return p, cfg, addrs, consulClient(t, p)
}

// An agent without the gossip key cannot join, so an event it fires (gossip user
// events carry no ACL check) reaches no agent of the cluster.
func TestSecureCluster_WithoutTheGossipKeyNoAgentJoinsAndNoEventGetsIn(t *testing.T) {
	t.Parallel()
	p, cfg, servers, cl := startSecureCluster(t)
	// A server of its own one-server cluster, so that it can fire events.
	r := startRogue(t, p, cfg, servers, "server = true\nbootstrap_expect = 1\n")
	rc := r.client(t)

	// Its join is refused: serf's push/pull with an encrypted cluster fails on both
	// sides (memberlist: "Encryption is configured but remote state is not encrypted"
	// on the servers, and the rogue cannot read their encrypted replies).
	testcluster.WaitFor(t, wait, "the rogue's join to fail", func() (bool, string) {
		l := r.log(t)
		return strings.Contains(l, "couldn't join") || strings.Contains(l, "Join cluster failed") ||
			strings.Contains(l, "failed to join"), tail(filepath.Join(r.dir, "agent.log"), 3)
	})
	// It fires the roll's event on its own agent, as anyone on the network could.
	testcluster.WaitFor(t, wait, "the rogue to lead itself", func() (bool, string) {
		l, err := rc.Status().Leader()
		return err == nil && l != "", fmt.Sprint(err)
	})
	ev, _, err := rc.Event().Fire(&api.UserEvent{Name: "consul-rehydrate", Payload: []byte(`{"image_id":"evil"}`)}, nil)
	require.NoError(t, err)
	require.NotEmpty(t, ev)

	members, err := cl.Agent().Members(false)
	require.NoError(t, err)
	for _, m := range members {
		assert.NotEqual(t, r.name, m.Name, "the rogue is a member of the cluster")
	}
	// Events reach every agent within a second or so of gossip; give it five.
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		evs, _, err := cl.Event().List("consul-rehydrate", nil)
		require.NoError(t, err)
		for _, e := range evs {
			assert.NotEqual(t, ev, e.ID, "the rogue's event reached the cluster")
		}
		time.Sleep(500 * time.Millisecond)
	}
	rms, err := rc.Agent().Members(false)
	require.NoError(t, err)
	assert.Len(t, rms, 1, "the rogue sees only itself")
}

// A server that has the gossip key (stolen, say) but no certificate signed by the
// cluster's CA gossips, but never gets into Raft: every server's RPC requires a
// certificate from the CA (verify_incoming) for server.<dc>.consul
// (verify_server_hostname), so it never receives the log, KV and ACL secrets
// included.
func TestSecureCluster_AServerWithoutACASignedCertificateCannotJoinRaft(t *testing.T) {
	t.Parallel()
	p, cfg, servers, cl := startSecureCluster(t)
	key, err := readSecret(filepath.Join(p.secretsDir(), gossipKeyName))
	require.NoError(t, err)

	// Its own CA and a server certificate from it, made as the cluster's are.
	bin, err := testcluster.ConsulBinary()
	require.NoError(t, err)
	own := t.TempDir()
	require.NoError(t, agentsec.MakeCA(t.Context(), bin, own, 30))
	require.NoError(t, agentsec.MakeCert(t.Context(), bin, filepath.Join(own, "tls"), own, cfg.Datacenter, p.addrs.at(p.addrs.count-1), true, 30))
	r := startRogue(t, p, cfg, servers, fmt.Sprintf(`server = true
encrypt = %q
tls {
  defaults {
    ca_file   = %q
    cert_file = %q
    key_file  = %q
    verify_incoming = true
    verify_outgoing = true
  }
  internal_rpc { verify_server_hostname = true }
}
`, key, filepath.Join(own, agentsec.CACertName), filepath.Join(own, "tls", agentsec.CertName),
		filepath.Join(own, "tls", agentsec.KeyName)))
	rc := r.client(t)

	// With the key, it gossips: the cluster sees it as a server.
	testcluster.WaitFor(t, wait, "the rogue to gossip with the cluster", func() (bool, string) {
		ms, err := cl.Agent().Members(false)
		if err != nil {
			return false, err.Error()
		}
		return slices.ContainsFunc(ms, func(m *api.AgentMember) bool { return m.Name == r.name }), fmt.Sprintf("%d members", len(ms))
	})
	_, err = cl.KV().Put(&api.KVPair{Key: "secret", Value: []byte("s3cret")}, nil)
	require.NoError(t, err)

	// Autopilot adds a joining server within a reconcile or two (server_stabilization_time
	// 3s, reconcile every 10s in server.hcl's settings): watch it for longer than that.
	deadline := time.Now().Add(25 * time.Second)
	for time.Now().Before(deadline) {
		leader, err := rc.Status().Leader()
		if err == nil {
			assert.Empty(t, leader, "the rogue learned the leader: it is in Raft")
		}
		if kv, _, err := rc.KV().Get("secret", &api.QueryOptions{AllowStale: true}); err == nil && kv != nil {
			t.Fatalf("the rogue read %q from its own state: it got the log", kv.Key)
		}
		if h, err := cl.Operator().AutopilotServerHealth(nil); err == nil {
			for _, s := range h.Servers {
				if s.Name == r.name {
					assert.False(t, s.Healthy && s.Voter, "the rogue is a healthy voter")
				}
			}
		}
		time.Sleep(time.Second)
	}
	rcfg, err := cl.Operator().RaftGetConfiguration(nil)
	require.NoError(t, err)
	for _, s := range rcfg.Servers {
		assert.False(t, s.Node == r.name && s.Voter, "the rogue became a voter")
	}
	assert.Contains(t, r.log(t), "certificate", "the rogue's RPC failed on the certificate")
}

// The API answers only HTTPS, verified with the cluster's CA; plain HTTP finds no
// listener on the HTTP port and an error on the HTTPS one, and an HTTPS request
// without a token reads nothing (default deny).
func TestSecureCluster_ThePlainHTTPAPIIsRefused(t *testing.T) {
	t.Parallel()
	p, _, _, cl := startSecureCluster(t)
	_, err := cl.KV().Put(&api.KVPair{Key: "k", Value: []byte("v")}, nil)
	require.NoError(t, err)
	addr, err := p.ClientAddr()
	require.NoError(t, err)
	host, _, _ := strings.Cut(addr, ":")
	hc := &http.Client{Timeout: 5 * time.Second}

	_, err = hc.Get("http://" + net.JoinHostPort(host, "8500") + "/v1/kv/k")
	require.Error(t, err, "plain HTTP on 8500")
	assert.Contains(t, err.Error(), "connection refused")

	resp, err := hc.Get("http://" + addr + "/v1/kv/k")
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	assert.Equal(t, http.StatusBadRequest, resp.StatusCode, "plain HTTP to the HTTPS port: %s", body)
	assert.NotContains(t, string(body), "dg==", "the value came back")

	// HTTPS with another CA's view: the certificate is not trusted.
	_, err = (&http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{}}}).Get("https://" + addr + "/v1/kv/k")
	require.Error(t, err)
	assert.Contains(t, err.Error(), "certificate")

	// HTTPS, verified, without a token: default deny.
	c, err := p.APIConfig()
	require.NoError(t, err)
	c.Token = ""
	anon, err := api.NewClient(c)
	require.NoError(t, err)
	kv, _, err := anon.KV().Get("k", nil)
	if err == nil {
		assert.Nil(t, kv, "an anonymous request read the key")
	}
	_, err = anon.KV().Put(&api.KVPair{Key: "k", Value: []byte("evil")}, nil)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "Permission denied")
}

// The secrets behind the cluster are readable by the state dir's owner alone, and
// the state file, which every handler reads, names none.
func TestSecureCluster_SecretsArePrivate(t *testing.T) {
	t.Parallel()
	p, cfg, _ := startCluster(t, 3)
	for _, f := range []string{p.ManagementTokenFile(), filepath.Join(p.secretsDir(), gossipKeyName), filepath.Join(p.secretsDir(), agentsec.CAKeyName)} {
		fi, err := os.Stat(f)
		require.NoError(t, err)
		assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm(), f)
	}
	fi, err := os.Stat(p.secretsDir())
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o700), fi.Mode().Perm())
	secure, err := filepath.Glob(filepath.Join(cfg.StateDir, "instances", "*", secureConfigName))
	require.NoError(t, err)
	require.Len(t, secure, 3)
	for _, f := range secure {
		fi, err := os.Stat(f)
		require.NoError(t, err)
		assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm(), f)
	}
	// The state file names no secret.
	st := readFile(t, filepath.Join(cfg.StateDir, "state.json"))
	mgmt, err := readSecret(p.ManagementTokenFile())
	require.NoError(t, err)
	assert.NotContains(t, st, mgmt)
}
