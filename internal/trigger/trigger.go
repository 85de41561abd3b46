package trigger

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/consul-rehydrate/consul-rehydrate/internal/cloud"
	"github.com/consul-rehydrate/consul-rehydrate/internal/cluster"
	"github.com/consul-rehydrate/consul-rehydrate/internal/poll"
)

// Images lists the images the handlers' filter allows: the aws provider's Images,
// the one code path both use.
type Images interface {
	Images(ctx context.Context) ([]cloud.Image, error)
}

// Trigger turns an invocation into the consul-rehydrate event.
type Trigger struct {
	Images    Images
	Consul    *api.Client
	EventName string
	// TagWait bounds how long an image that does not match the filter yet is
	// looked at again: Packer tags an AMI only after it is available, so at the
	// "available" event its tags may not be there (../shared/AWS.md).
	TagWait time.Duration
	// FirstRetry is the first wait between looks; it doubles up to a minute.
	FirstRetry time.Duration
	// Explain, when set, says why an image the filter does not list is not
	// among the allowed ones (which part of the filter it fails), for the log.
	Explain func(ctx context.Context, id string) (string, error)
	// Token reads the Consul token from its source (the SSM parameter). FromEnv
	// reads it at cold start; when Consul refuses it (refused: the token was
	// rotated or revoked since) it is read again once and the call retried once,
	// so a warm container follows a rotation instead of failing until recycled.
	Token func(ctx context.Context) (string, error)
	Log   hclog.Logger

	mu    sync.Mutex
	token string // the token in use: Token's last answer
}

// SetToken sets the Consul token the calls send (each call names it, overriding
// the client's own).
func (t *Trigger) SetToken(tok string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.token = tok
}

func (t *Trigger) currentToken() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.token
}

// withToken runs a Consul call with the token in use; if Consul refuses the token
// (refused), it reads the token again (Token) and, when that is a different
// one, runs the call once more with it. A refused call changed nothing, so the
// retry cannot double an event.
func (t *Trigger) withToken(ctx context.Context, call func(token string) error) error {
	tok := t.currentToken()
	err := call(tok)
	if err == nil || t.Token == nil || !refused(err) {
		return err
	}
	fresh, rerr := t.Token(ctx)
	if rerr != nil {
		return fmt.Errorf("%w (and reading the token again: %w)", err, rerr)
	}
	if fresh == tok {
		return err
	}
	t.Log.Info("Consul refused the token; retrying once with the token read again", "error", err)
	t.SetToken(fresh)
	return call(fresh)
}

// refused reports whether Consul refused the token: 401 or 403 (a token it does
// not know, rotated or deleted, or one without the permission), or the 500 an agent
// answers an event fire with when the server it forwards to does not know the token
// (the agent maps only "Permission denied" to 403; the body keeps the server's
// "ACL not found").
func refused(err error) bool {
	var se api.StatusError
	if !errors.As(err, &se) {
		return false
	}
	switch se.Code {
	case http.StatusUnauthorized, http.StatusForbidden:
		return true
	case http.StatusInternalServerError:
		return strings.Contains(se.Body, "ACL not found")
	}
	return false
}

// ErrConsul means the event could not be fired: the invocation fails, so that
// EventBridge's asynchronous invocation retries it. Nothing was changed.
var ErrConsul = errors.New("consul")

// Handle handles one invocation. It fails only when Consul cannot be reached or
// refuses: every event it will not act on (another kind, a malformed one, an image
// the filter does not allow or older than what the servers run) is logged with the
// reason and succeeds, so nothing retries it.
func (t *Trigger) Handle(ctx context.Context, payload []byte) error {
	req := Decode(payload)
	switch req.Kind {
	case KindRejected:
		t.Log.Error("refusing the invocation's event", "reason", req.Why)
		return nil
	case KindIgnored:
		t.Log.Info("ignoring the event", "reason", req.Why)
		return nil
	case KindNewest:
		// The handlers choose the newest allowed image themselves (and refuse a
		// downgrade): a plain event asks for exactly that.
		return t.fire(ctx, nil, "the scheduled backstop: the newest allowed image")
	}
	img, imgs, ok, err := t.await(ctx, req.Image)
	if err != nil {
		return err
	}
	if !ok {
		why := "not among the allowed images"
		if t.Explain != nil {
			if w, err := t.Explain(ctx, req.Image); err != nil {
				why += " (could not say why: " + cut(err.Error(), maxErr) + ")"
			} else {
				why = w
			}
		}
		t.Log.Info("not firing: the image does not match the image filter", "image_id", req.Image, "took", t.TagWait, "reason", why)
		return nil
	}
	running, err := t.running(ctx, imgs)
	if err != nil {
		return err
	}
	all := len(running) > 0
	for id, r := range running {
		all = all && id == img.ID
		if r.Created.After(img.Created) {
			t.Log.Info("not firing: the image is older than one a server runs", "image_id", img.ID, "running", id, "servers", r.count)
			return nil
		}
	}
	if all {
		// A duplicate delivery after the roll (EventBridge delivers at least once):
		// nothing to ask for. One during the roll asks for the roll's own target,
		// which the handlers treat as a trigger of the roll in progress.
		t.Log.Info("not firing: every server already runs the image", "image_id", img.ID)
		return nil
	}
	body, _ := json.Marshal(map[string]string{"image_id": img.ID})
	return t.fire(ctx, body, "image "+img.ID+" was published")
}

// await looks for id among the allowed images until it is there or TagWait has
// passed; it returns the image and the allowed images it was found among.
func (t *Trigger) await(ctx context.Context, id string) (cloud.Image, []cloud.Image, bool, error) {
	var found cloud.Image
	delay := t.FirstRetry
	if delay <= 0 {
		delay = time.Second
	}
	deadline := time.Now().Add(t.TagWait)
	for {
		imgs, err := t.Images.Images(ctx)
		if err != nil {
			// The invocation fails: a transient AWS error is EventBridge's to retry.
			return found, nil, false, fmt.Errorf("list images: %w", err)
		}
		for _, img := range imgs {
			if img.ID == id {
				return img, imgs, true, nil
			}
		}
		if time.Now().Add(delay).After(deadline) {
			return found, nil, false, nil
		}
		t.Log.Info("the image does not match the filter yet; looking again", "image_id", id, "took", delay)
		if err := poll.Sleep(ctx, delay); err != nil {
			return found, nil, false, err
		}
		delay = min(2*delay, time.Minute)
	}
}

type runningImage struct {
	cloud.Image
	count int
}

// running returns the images the servers run (their node meta image_id), with
// their creation time from imgs, the allowed images await just listed (zero if the
// filter no longer lists them).
func (t *Trigger) running(ctx context.Context, imgs []cloud.Image) (map[string]runningImage, error) {
	var svcs []*api.CatalogService
	err := t.withToken(ctx, func(token string) error {
		var err error
		svcs, _, err = t.Consul.Catalog().Service("consul", "", (&api.QueryOptions{Token: token}).WithContext(ctx))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("%w: read the servers' images: %w", ErrConsul, err)
	}
	out := map[string]runningImage{}
	for _, s := range svcs {
		id := s.NodeMeta[cluster.MetaImageID]
		if id == "" {
			continue
		}
		r := out[id]
		r.ID = id
		r.count++
		for _, img := range imgs {
			if img.ID == id {
				r.Created = img.Created
			}
		}
		out[id] = r
	}
	return out, nil
}

// fire sends the event through the agent or server the client talks to.
func (t *Trigger) fire(ctx context.Context, body []byte, why string) error {
	var id string
	err := t.withToken(ctx, func(token string) error {
		var err error
		id, _, err = t.Consul.Event().Fire(&api.UserEvent{Name: t.EventName, Payload: body}, (&api.WriteOptions{Token: token}).WithContext(ctx))
		return err
	})
	if err != nil {
		return fmt.Errorf("%w: fire %s: %w", ErrConsul, t.EventName, err)
	}
	t.Log.Info("fired the event", "event_id", id, "reason", why)
	return nil
}
