package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/consul-rehydrate/consul-rehydrate/internal/app"
	"github.com/consul-rehydrate/consul-rehydrate/internal/cloud"
	"github.com/consul-rehydrate/consul-rehydrate/internal/command"
	"github.com/consul-rehydrate/consul-rehydrate/internal/workload"
	"github.com/consul-rehydrate/consul-rehydrate/test/awsfake"
	"github.com/consul-rehydrate/consul-rehydrate/test/testcluster"
)

var (
	bootstrapOnce sync.Once
	bootstrapPath string
	bootstrapErr  error
)

// lambdaBootstrap builds handlers/image-published as Lambda's provided runtimes
// want it: -tags lambda.norpc, named bootstrap.
func lambdaBootstrap(t *testing.T) string {
	t.Helper()
	bootstrapOnce.Do(func() {
		dir, err := os.MkdirTemp("", "rehydrate-lambda-")
		if err != nil {
			bootstrapErr = err
			return
		}
		bootstrapPath = filepath.Join(dir, "bootstrap")
		out, err := exec.Command("go", "build", "-tags", "lambda.norpc", "-o", bootstrapPath, "../../handlers/image-published").CombinedOutput()
		if err != nil {
			bootstrapErr = fmt.Errorf("build the lambda: %v\n%s", err, out)
		}
	})
	require.NoError(t, bootstrapErr)
	return bootstrapPath
}

// lambdaRIE is the function running under the real aws-lambda-rie, on loopback
// ports of its own (its defaults, 0.0.0.0:8080 and 127.0.0.1:9001, are shared).
type lambdaRIE struct {
	url string
	log *testcluster.SyncBuffer // the function's and the emulator's output
}

func startLambda(t *testing.T, env ...string) *lambdaRIE {
	t.Helper()
	rie, err := exec.LookPath("aws-lambda-rie")
	require.NoError(t, err, "aws-lambda-rie not on PATH: run the tests with `make test`, which installs it")
	boot := lambdaBootstrap(t)
	api, rapid := freeLoopbackPort(t), freeLoopbackPort(t)
	cmd := exec.Command(rie, "--runtime-interface-emulator-address", "127.0.0.1:"+api, "--runtime-api-address", "127.0.0.1:"+rapid, boot)
	cmd.Dir = filepath.Dir(boot)
	cmd.Env = append(os.Environ(), env...)
	l := &lambdaRIE{url: "http://127.0.0.1:" + api + "/2015-03-31/functions/function/invocations", log: &testcluster.SyncBuffer{}}
	cmd.Stdout, cmd.Stderr = l.log, l.log
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("lambda log:\n%s", testcluster.Tail(l.logs(), 40))
		}
	})
	testcluster.WaitFor(t, 10*time.Second, "the runtime emulator to listen", func() (bool, string) {
		resp, err := http.Get("http://127.0.0.1:" + api + "/")
		if err != nil {
			return false, err.Error()
		}
		resp.Body.Close()
		return true, ""
	})
	return l
}

func (l *lambdaRIE) logs() string { return l.log.String() }

// mark is where the function's log is now: waitLog counts only what comes after.
func (l *lambdaRIE) mark() int { return l.log.Len() }

// waitLog waits (up to 5 s: the emulator copies the function's output after it
// answers) until the function has logged s n times since mark, and returns the log
// since mark.
func (l *lambdaRIE) waitLog(t *testing.T, mark int, s string, n int) string {
	t.Helper()
	var since string
	testcluster.WaitFor(t, 5*time.Second, fmt.Sprintf("the function to log %q %d times", s, n), func() (bool, string) {
		since = l.logs()[mark:]
		return strings.Count(since, s) >= n, testcluster.Tail(since, 3)
	})
	return since
}

// firedIDs returns the ids of the events the function logged firing in log.
func firedIDs(log string) []string {
	var ids []string
	for _, m := range firedLine.FindAllStringSubmatch(log, -1) {
		ids = append(ids, m[1])
	}
	return ids
}

var firedLine = regexp.MustCompile(`fired the event: event_id=([0-9a-f-]{36})`)

// invoke posts an event as EventBridge's asynchronous invocation would, and returns
// the function's answer: "null" for success, an error object for a failure.
func (l *lambdaRIE) invoke(t *testing.T, event string) string {
	t.Helper()
	c := &http.Client{Timeout: 3 * time.Minute}
	resp, err := c.Post(l.url, "application/json", strings.NewReader(event))
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return strings.TrimSpace(string(b))
}

// amiEvent is an "EC2 AMI State Change" as EventBridge delivers it (EC2 user guide,
// "Monitor AMI events using Amazon EventBridge").
func amiEvent(image, state string) string {
	return fmt.Sprintf(`{"version":"0","id":"7f8b8b2e-5f8e-4e0a-9d2b-1d0b6c7d1e2f","detail-type":"EC2 AMI State Change","source":"aws.ec2","account":"123456789012","time":"2026-11-29T12:00:00Z","region":"us-east-1","resources":["arn:aws:ec2:us-east-1::image/%s"],"detail":{"RequestId":"3b7e1f9a-0c55-4b7c-9a6f-2f1f6f0d3c11","ImageId":%q,"State":%q,"ErrorMessage":""}}`, image, image, state)
}

// triggerToken makes the trigger's Consul token (its documented policy: the roll's
// event, reads of the servers) and stores it as the SSM parameter the function reads.
// rotate replaces it as an operator rotating it would: a new token in the parameter,
// the old one deleted.
func triggerToken(t *testing.T, e *env, fake *awsfake.Server) (name string, rotate func()) {
	t.Helper()
	pol, _, err := e.client.ACL().PolicyCreate(&api.ACLPolicy{Name: "trigger-" + strings.ToLower(t.Name()[len(t.Name())-8:]), Rules: `
event "consul-rehydrate" { policy = "write" }
service "consul" { policy = "read" }
node_prefix "" { policy = "read" }
`}, nil)
	require.NoError(t, err)
	tok, _, err := e.client.ACL().TokenCreate(&api.ACLToken{Policies: []*api.ACLTokenPolicyLink{{ID: pol.ID}}}, nil)
	require.NoError(t, err)
	name = "/consul-rehydrate/e2e-aws/trigger-token"
	fake.AddParameter(awsfake.Parameter{Name: name, Value: tok.SecretID})
	return name, func() {
		t.Helper()
		fresh, _, err := e.client.ACL().TokenCreate(&api.ACLToken{Policies: []*api.ACLTokenPolicyLink{{ID: pol.ID}}}, nil)
		require.NoError(t, err)
		fake.AddParameter(awsfake.Parameter{Name: name, Value: fresh.SecretID})
		_, err = e.client.ACL().TokenDelete(tok.AccessorID, nil)
		require.NoError(t, err)
		// The function's calls are stale reads and a fire any server may serve
		// (AllowStale): wait until every server has applied the deletion, so that
		// whichever serves the function's next call refuses the old token.
		insts, err := e.p.Instances(context.Background())
		require.NoError(t, err)
		for _, in := range insts {
			if in.State != cloud.StateRunning {
				continue
			}
			c, err := api.NewClient(&api.Config{Address: "https://" + in.Address + ":8501", TLSConfig: api.TLSConfig{CAFile: e.p.CAFile()}})
			require.NoError(t, err)
			testcluster.WaitFor(t, time.Minute, in.ID+" to refuse the deleted token", func() (bool, string) {
				_, _, err := c.Catalog().Service("consul", "", &api.QueryOptions{Token: tok.SecretID, AllowStale: true})
				var se api.StatusError
				return errors.As(err, &se) && se.Code == http.StatusForbidden, fmt.Sprint(err)
			})
		}
	}
}

// triggerConfig is the handlers' configuration file as the README packages it with
// the function: the servers' own, whose consul.token_file is not in the zip (the
// function's token comes from SSM), so the function must start without it.
func triggerConfig(t *testing.T, e *env) string {
	t.Helper()
	b, err := os.ReadFile(e.cfgPath)
	require.NoError(t, err)
	path := filepath.Join(t.TempDir(), "config.hcl")
	require.NoError(t, os.WriteFile(path, append(b, "\nconsul {\n  token_file = \"absent.token\"\n}\n"...), 0o644))
	return path
}

// kvAndEvents is the cluster's KV under rehydrate/ (keys and modify indexes) and the
// number of consul-rehydrate events the agent has seen.
func kvAndEvents(t *testing.T, e *env) (string, int) {
	t.Helper()
	kvs, _, err := e.client.KV().List("rehydrate/", &api.QueryOptions{RequireConsistent: true})
	require.NoError(t, err)
	var b strings.Builder
	for _, kv := range kvs {
		fmt.Fprintf(&b, "%s@%d ", kv.Key, kv.ModifyIndex)
	}
	evs, _, err := e.client.Event().List("consul-rehydrate", nil)
	require.NoError(t, err)
	return b.String(), len(evs)
}

// TestTrigger_APublishedImageRollsTheClusterOnce: the image-published Lambda, built
// as `bootstrap` and run by the real runtime interface emulator, against the AWS
// fake and a real local cluster, packaged as the README says (the servers' file,
// whose token_file is not there). An "available" event for an image whose tags
// arrive 5 s later rolls the cluster to it; the same event delivered twice makes one
// roll; a failed image, one outside the filter, one never tagged, an older one and a
// malformed event fire nothing and change nothing, and succeed; the scheduled
// backstop fires one event the handlers answer "up to date"; a rotated token is read
// again by the warm function; with Consul unreachable the invocation fails, having
// changed nothing.
func TestTrigger_APublishedImageRollsTheClusterOnce(t *testing.T) {
	t.Parallel()
	e, fake := newAWSEnv(t)
	param, rotate := triggerToken(t, e, fake)
	cfg := triggerConfig(t, e)
	// The function talks to the cluster through an address that outlives the
	// servers the roll replaces (the local provider's client agent; in a VPC an
	// internal load balancer or DNS name in front of the servers' HTTPS API), with
	// the cluster's CA; its token comes from SSM.
	_, srvEnv := e.asServer()
	env := []string{"REHYDRATE_CONFIG=" + cfg, "REHYDRATE_TOKEN_PARAMETER=" + param, "REHYDRATE_TAG_WAIT=15s",
		"CONSUL_HTTP_ADDR=" + e.httpAddr, srvEnv[0]}
	fn := startLambda(t, env...)

	// 1. Published, tagged 5 s later.
	fake.AddImage(awsfake.Image{ID: amiB, Name: "consul-server-2", CreationDate: time.Now().Add(-time.Hour)})
	go func() {
		time.Sleep(5 * time.Second)
		fake.SetImageTags(amiB, map[string]string{"role": "consul-server"})
	}()
	writer := workload.StartWriter(e.client, "trigger/", 20, 3, 5*time.Second)
	start := time.Now()
	mark := fn.mark()
	got := fn.invoke(t, amiEvent(amiB, "available"))
	triggered := time.Since(start)
	require.Equal(t, "null", got, fn.logs())
	assert.GreaterOrEqual(t, triggered, 5*time.Second, "fired only once the tags were there")
	first := firedIDs(fn.waitLog(t, mark, "fired the event", 1))
	require.Len(t, first, 1)
	e.handledAs("e2e-aws", first[0])
	started := e.rollRecord("e2e-aws")
	require.Equal(t, amiB, started.Target)

	// 2. Delivered again while the roll runs: fired again (the Lambda cannot know),
	// and handled as a trigger of that roll, not another.
	mark = fn.mark()
	require.Equal(t, "null", fn.invoke(t, amiEvent(amiB, "available")), fn.logs())
	second := firedIDs(fn.waitLog(t, mark, "fired the event", 1))
	require.Len(t, second, 1)
	assert.Len(t, firedIDs(fn.logs()), 2, "two \"fired the event\" lines")
	assert.NotEqual(t, first[0], second[0])
	// Taken as a trigger of the roll in progress, one of three ways (which is
	// timing): a handler that got the lock recorded it with the step it took (a
	// hold, a launch, a retire, or a hand-off to another server's handler when its
	// own server is the one to retire); a handler found the lock held by the one
	// taking the roll's steps, and left it to that roll unrecorded; or a handler
	// failed on a Consul error mid-roll and said so, naming the event (a handler on
	// the server just retired finds its lock session invalidated by the leave, and
	// CI once saw only that: the roll went on by its continuations). Never refused,
	// never a request to follow the roll, never "up to date" (the roll takes a
	// minute).
	var rec, how string
	testcluster.WaitFor(t, 3*time.Minute, "a handler to take event "+second[0], func() (bool, string) {
		kv, _, err := e.client.KV().Get("rehydrate/e2e-aws/events/"+second[0], nil)
		if err == nil && kv != nil {
			rec, how = string(kv.Value), "recorded"
			return true, ""
		}
		logs := e.handlersLog()
		switch {
		case countLines(logs, "another handler holds the lock and takes the step", "event_id="+second[0]) > 0:
			how = "left to the lock's holder"
		case countLines(logs, "step failed", "event_id="+second[0]) > 0:
			how = "failed on an error, the roll going on"
		}
		return how != "", fmt.Sprint(err)
	})
	t.Logf("the duplicate's event %s was %s %q", second[0], how, rec)
	for _, not := range []string{"refused", "can follow when it is done", "up to date"} {
		assert.NotContains(t, rec, not, "the duplicate is a trigger of the roll in progress")
	}
	assert.Zero(t, countLines(e.handlersLog(), "step failed", fmt.Sprintf("exit_code=%d", app.ExitRefused), "event_id="+second[0]),
		"no handler refused the duplicate")
	assert.Equal(t, started.Started, e.rollRecord("e2e-aws").Started, "the duplicate started no roll")
	st := e.waitRolled(amiB, 5*time.Minute)
	if kv, _, err := e.client.KV().Get("rehydrate/e2e-aws/events/"+second[0], nil); assert.NoError(t, err) && kv != nil {
		for _, not := range []string{"refused", "can follow when it is done", "up to date"} {
			assert.NotContains(t, string(kv.Value), not, "the duplicate, recorded by the roll's end, is a trigger of that roll")
		}
	}
	res, err := writer.Stop(context.Background())
	require.NoError(t, err)
	// Instances launched, not launch entries: a surge asked for again before it
	// appears launches nothing new, and only a repeat of the newest entry is folded
	// into it (coord.Roll.Add); a hold in between makes it an entry of its own.
	launched, dones := map[string]bool{}, 0
	for _, h := range st.Roll.History {
		switch h.Step {
		case "launch":
			id, _, _ := strings.Cut(strings.TrimPrefix(h.Detail, "launched "), " ")
			launched[id] = true
		case "done":
			dones++
		}
	}
	launches := len(launched)
	// One roll: one done, and a launch per server (one more when the group's
	// placement put a surge beside another: see the README's zones).
	assert.Equal(t, 1, dones, "one roll")
	assert.GreaterOrEqual(t, launches, 3)
	assert.LessOrEqual(t, launches, 4)
	line, _ := json.Marshal(struct {
		command.DemoResult
		TriggerSeconds float64 `json:"trigger_seconds"`
	}{command.DemoResult{
		Servers: 3, Image: amiB, AllOnTarget: true, RollSeconds: time.Since(start).Round(100 * time.Millisecond).Seconds(),
		WritesOK: res.OK, WritesFailed: res.Failed, WritesLost: res.Lost, MaxWriteMS: res.Max.Milliseconds(),
	}, triggered.Round(100 * time.Millisecond).Seconds()})
	fmt.Println(string(line))
	assert.Zero(t, res.Failed)
	assert.Zero(t, res.Lost)

	// 3. Nothing to fire: each succeeds, says why, and changes nothing. (First the
	// roll's last write: restoring the group after "done".)
	testcluster.WaitFor(t, time.Minute, "the group restored after the roll", func() (bool, string) {
		rec := e.rollRecord("e2e-aws")
		return rec.Group != nil && rec.Group.Released, "not yet"
	})
	assert.Equal(t, started.Started, e.rollRecord("e2e-aws").Started, "one roll")
	// And the roll's own trailing continuations, handled (and recorded) as
	// "nothing" once it is done: wait until the KV has been still for 5 s.
	last, _ := kvAndEvents(t, e)
	still := time.Now()
	testcluster.WaitFor(t, time.Minute, "the KV still for 5s", func() (bool, string) {
		now, _ := kvAndEvents(t, e)
		if now != last {
			last, still = now, time.Now()
		}
		return time.Since(still) >= 5*time.Second, kvDiff(last, now)
	})
	// (ami-0ccc…, tagged role=web, is seeded by newAWSEnv; ami-0eee… does not exist;
	// ami-0ddd… is named as the filter wants and never tagged.)
	fake.AddImage(awsfake.Image{ID: "ami-0dddddddddddddddd", Name: "consul-server-3", CreationDate: time.Now()})
	for _, c := range []struct{ name, event, log string }{
		{"already rolled (a late duplicate)", amiEvent(amiB, "available"), "every server already runs the image"},
		{"a failed image", amiEvent("ami-0eeeeeeeeeeeeeeee", "failed"), "not available"},
		{"outside the filter", amiEvent("ami-0cccccccccccccccc", "available"), `does not match the filter's name_pattern \"consul-server-*\"`},
		{"never tagged", amiEvent("ami-0dddddddddddddddd", "available"), `no tag role (the filter wants role = \"consul-server\"`},
		{"older than what runs", amiEvent(amiA, "available"), "older than one a server runs"},
		{"malformed", `{"detail-type":"EC2 AMI State Change","source":"aws.ec2","detail":{"ImageId":"ami-0eeeeeeeeeeeeeeee; rm -rf /","State":"available"}}`, "refusing the invocation's event"},
		{"a case-variant key", strings.Replace(amiEvent(amiB, "available"), `"source"`, `"Source"`, 1), "refusing the invocation's event"},
		{"another source", `{"version":"0","id":"x","detail-type":"EC2 Instance State-change Notification","source":"aws.ec2","account":"1","time":"t","region":"r","resources":[],"detail":{}}`, "not an EC2 AMI State Change"},
		{"not JSON", `{"detail":`, "refusing the invocation's event"},
	} {
		kvBefore, evBefore := kvAndEvents(t, e)
		mark := fn.mark()
		got := fn.invoke(t, c.event)
		assert.Equal(t, "null", got, "%s: the invocation succeeds", c.name)
		fn.waitLog(t, mark, c.log, 1)
		kvAfter, evAfter := kvAndEvents(t, e)
		assert.Equal(t, evBefore, evAfter, "%s: no event fired", c.name)
		assert.Equal(t, kvBefore, kvAfter, "%s: nothing in KV changed: %s", c.name, kvDiff(kvBefore, kvAfter))
	}

	// 4. The scheduled backstop, as EventBridge Scheduler invokes it
	// (config/trigger-schedule.json's input): one event, no image, which the
	// handlers answer "up to date"; no roll starts.
	backstop := func(name string) string {
		t.Helper()
		_, evBefore := kvAndEvents(t, e)
		mark := fn.mark()
		require.Equal(t, "null", fn.invoke(t, `{}`), "%s: the invocation succeeds: %s", name, fn.logs())
		since := fn.waitLog(t, mark, "fired the event", 1)
		ids := firedIDs(since)
		require.Len(t, ids, 1, name)
		assert.Contains(t, e.handledAs("e2e-aws", ids[0]), "nothing: up to date", name)
		// The agent counted from hears of the event by gossip, maybe after the
		// servers handled it.
		testcluster.WaitFor(t, 30*time.Second, "the agent to hear of event "+ids[0], func() (bool, string) {
			evs, _, err := e.client.Event().List("consul-rehydrate", nil)
			if err != nil {
				return false, err.Error()
			}
			for _, ev := range evs {
				if ev.ID == ids[0] {
					return true, ""
				}
			}
			return false, fmt.Sprintf("%d events", len(evs))
		})
		_, evAfter := kvAndEvents(t, e)
		assert.Equal(t, evBefore+1, evAfter, "%s: exactly one event fired", name)
		assert.Equal(t, started.Started, e.rollRecord("e2e-aws").Started, "%s: no roll started", name)
		return since
	}
	backstop("the scheduled backstop")

	// 5. The token rotated while the function is warm: Consul refuses the one it
	// read at cold start, it reads the parameter again and fires once.
	rotate()
	since := backstop("after a rotation")
	assert.Contains(t, since, "Consul refused the token; retrying once with the token read again")

	// 6. Consul unreachable: the invocation fails, so EventBridge retries it.
	down := startLambda(t, "REHYDRATE_CONFIG="+cfg, "REHYDRATE_TOKEN_PARAMETER="+param, "REHYDRATE_TAG_WAIT=5s",
		"CONSUL_HTTP_ADDR=https://127.0.0.1:1", srvEnv[0])
	kvBefore, evBefore := kvAndEvents(t, e)
	got = down.invoke(t, amiEvent(amiB, "available"))
	assert.Contains(t, got, "errorMessage", "the invocation fails")
	assert.Contains(t, got, "consul")
	kvAfter, evAfter := kvAndEvents(t, e)
	assert.Equal(t, evBefore, evAfter)
	assert.Equal(t, kvBefore, kvAfter)
}

// kvDiff names the keys (with their modify index) only one side has.
func kvDiff(before, after string) string {
	b, a := map[string]bool{}, map[string]bool{}
	for _, k := range strings.Fields(before) {
		b[k] = true
	}
	for _, k := range strings.Fields(after) {
		a[k] = true
	}
	var out []string
	for k := range b {
		if !a[k] {
			out = append(out, "-"+k)
		}
	}
	for k := range a {
		if !b[k] {
			out = append(out, "+"+k)
		}
	}
	return strings.Join(out, " ")
}
