// Package coord keeps the roll's coordination state in Consul KV under
// rehydrate/<cluster>/: the session lock, the roll record, action receipts, handled
// events and bad images.
package coord

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/hashicorp/consul/api"

	"github.com/consul-rehydrate/consul-rehydrate/internal/cloud"
	"github.com/consul-rehydrate/consul-rehydrate/internal/payload"
	"github.com/consul-rehydrate/consul-rehydrate/internal/poll"
)

// Phases of a roll.
const (
	PhaseRolling = "rolling"
	PhaseDone    = "done"
	PhaseFailed  = "failed"
)

// Bounds on what the records keep.
const (
	MaxHistory = 100 // roll history entries
	MaxEvents  = 256 // handled event IDs, as many as an agent's event buffer replays
)

// ErrBadKey is wrapped by the error for a name that may not be part of a key.
var ErrBadKey = errors.New("not a valid key segment")

// CheckKeyPath checks a name (an action ID, an image ID) that becomes the end of
// a key under the cluster's prefix. It may hold "/" (action IDs do, and so may a
// local image's name), but no empty, "." or ".." segment: Consul's HTTP server
// cleans such a path, redirecting the request to another key (agent/http.go serves
// the API from an http.ServeMux, which "takes care of sanitizing the URL request
// path ..., redirecting any request containing . or .. segments or repeated
// slashes to an equivalent, cleaner URL"); and no control characters or invalid
// UTF-8, which would end up in the key's name as it is logged and listed.
// Errors wrap ErrBadKey.
func CheckKeyPath(name string) error {
	if !utf8.ValidString(name) {
		return fmt.Errorf("%w: %q is not valid UTF-8", ErrBadKey, name)
	}
	for i, r := range name {
		if unicode.IsControl(r) {
			return fmt.Errorf("%w: %q has %q at byte %d", ErrBadKey, name, r, i)
		}
	}
	for _, seg := range strings.Split(name, "/") {
		switch seg {
		case "", ".", "..":
			return fmt.Errorf("%w: %q has an empty, \".\" or \"..\" segment", ErrBadKey, name)
		}
	}
	return nil
}

// ErrLockHeld means another handler holds the lock; it will take the step.
var ErrLockHeld = errors.New("lock held by another handler")

// ErrLockLost means a held lock was lost: its session was invalidated or the key
// taken away. A Held's Context ends with a cause that wraps it.
var ErrLockLost = errors.New("lock lost")

// ErrReleased is the cause a Held's Context ends with on Release.
var ErrReleased = errors.New("lock released")

// ErrTimedOut means the holder ran out of time: the context the lock was taken
// under reached its deadline. The lock was not lost; the next invocation resumes.
// An error Stopped wraps with it also wraps context.DeadlineExceeded.
var ErrTimedOut = errors.New("ran out of time")

// Stopped returns nil while ctx goes on. Once ctx has ended it returns err, met
// because it ended, classed by why it ended (context.Cause): it wraps ErrLockLost
// when the lock was lost, ErrTimedOut and context.DeadlineExceeded when a deadline
// passed, and the cause alone otherwise (ErrReleased, an interrupt's
// context.Canceled). A nil err stands for the cause itself.
func Stopped(ctx context.Context, err error) error { return stopped(context.Cause(ctx), err) }

// stopped is Stopped with the cause already read.
func stopped(cause, err error) error {
	switch {
	case cause == nil:
		return nil
	case err == nil:
		err = cause
	case !errors.Is(err, cause):
		// Keep the cause in the chain, so a caller can match it.
		err = fmt.Errorf("%w: %w", cause, err)
	}
	if errors.Is(cause, context.DeadlineExceeded) && !errors.Is(err, ErrTimedOut) {
		return fmt.Errorf("%w: %w", ErrTimedOut, err)
	}
	return err
}

// Store reads and writes one cluster's coordination keys.
type Store struct {
	c      *api.Client
	prefix string
}

// New returns the store for cluster name.
func New(c *api.Client, name string) *Store {
	return &Store{c: c, prefix: "rehydrate/" + name + "/"}
}

// Key returns the full KV key of a name under the cluster's prefix.
func (s *Store) Key(name string) string { return s.prefix + name }

// LockOptions configure the session lock.
type LockOptions struct {
	TTL    time.Duration
	Delay  time.Duration
	Wait   time.Duration
	Holder string // who holds it, stored as the lock's value for `status`
}

// Held is an acquired lock. Its Context ends as soon as the lock is lost (session
// invalidated or the key taken away), so a handler checks it before every
// non-idempotent call.
type Held struct {
	lock    *api.Lock
	kv      *api.KV
	key     string
	session string
	ctx     context.Context
	cancel  context.CancelCauseFunc
}

// Context ends when the lock is lost, with a cause wrapping ErrLockLost; when it is
// released, with ErrReleased; or when the context the lock was taken under ends,
// with that context's cause (context.DeadlineExceeded for a deadline). Stopped
// classes an error by it.
func (h *Held) Context() context.Context { return h.ctx }

// Verify confirms with a consistent read that the lock key is still held by this
// lock's session. The Context learns of a loss from a watch, which may be a moment
// late; a handler calls Verify right before each call it cannot take back. Once
// the Context has ended, Verify returns its cause: ErrLockLost only for a lost
// lock, not for a deadline.
func (h *Held) Verify() error {
	if cause := context.Cause(h.ctx); cause != nil {
		return fmt.Errorf("verify lock %s: %w", h.key, cause)
	}
	kv, _, err := h.kv.Get(h.key, (&api.QueryOptions{RequireConsistent: true}).WithContext(h.ctx))
	if err != nil {
		if cause := context.Cause(h.ctx); cause != nil {
			return fmt.Errorf("verify lock %s: %w", h.key, cause)
		}
		return fmt.Errorf("verify lock %s: %w", h.key, err)
	}
	if kv == nil || kv.Session != h.session {
		lost := fmt.Errorf("%w: %s is no longer held by session %s", ErrLockLost, h.key, h.session)
		h.cancel(lost)
		return lost
	}
	return nil
}

// Release gives the lock up and destroys its session.
func (h *Held) Release() error {
	h.cancel(ErrReleased)
	if err := h.lock.Unlock(); err != nil && !errors.Is(err, api.ErrLockNotHeld) {
		return fmt.Errorf("release lock: %w", err)
	}
	return nil
}

// Lock tries to take the cluster's lock, waiting at most o.Wait. It returns
// ErrLockHeld if another handler keeps it that long.
func (s *Store) Lock(ctx context.Context, o LockOptions) (*Held, error) {
	return LockKey(ctx, s.c, s.Key("lock"), o)
}

// SessionName is the name of the session behind a lock that holder takes.
func SessionName(holder string) string { return "consul-rehydrate " + holder }

// LockKey tries to take the session lock at key, waiting at most o.Wait. It
// returns ErrLockHeld if another holder keeps it that long.
func LockKey(ctx context.Context, c *api.Client, key string, o LockOptions) (*Held, error) {
	ttl := o.TTL.String()
	lock, err := c.LockOpts(&api.LockOptions{
		Key:   key,
		Value: []byte(o.Holder),
		SessionOpts: &api.SessionEntry{
			Name: SessionName(o.Holder), TTL: ttl, LockDelay: o.Delay,
			Behavior: api.SessionBehaviorDelete,
		},
		SessionTTL:   ttl,
		LockWaitTime: o.Wait,
		LockTryOnce:  true,
	})
	if err != nil {
		return nil, fmt.Errorf("prepare lock %s: %w", key, err)
	}
	// lock.Lock stops waiting only when stop closes: close it at the bound, or when
	// ctx ends, whichever is first; and let the sleeper go once Lock has returned.
	stop := make(chan struct{})
	wctx, endWait := context.WithCancel(ctx)
	go func() {
		_ = poll.Sleep(wctx, o.Wait+time.Second)
		close(stop)
	}()
	lost, err := lock.Lock(stop)
	endWait()
	if err != nil {
		return nil, fmt.Errorf("take lock %s: %w", key, err)
	}
	if lost == nil {
		return nil, ErrLockHeld
	}
	// Learn the session the lock took, for Verify.
	kv, _, err := c.KV().Get(key, (&api.QueryOptions{RequireConsistent: true}).WithContext(ctx))
	if err != nil || kv == nil || kv.Session == "" {
		_ = lock.Unlock()
		if err == nil {
			err = errors.New("the key has no session right after acquiring it")
		}
		return nil, fmt.Errorf("read lock %s: %w", key, err)
	}
	hctx, cancel := context.WithCancelCause(ctx)
	go func() {
		select {
		case <-lost:
			cancel(fmt.Errorf("%w: %s: its session %s was invalidated or the key taken away", ErrLockLost, key, kv.Session))
		case <-hctx.Done():
		}
	}()
	return &Held{lock: lock, kv: c.KV(), key: key, session: kv.Session, ctx: hctx, cancel: cancel}, nil
}

// Holder returns who holds the cluster's lock now ("" if nobody).
func (s *Store) Holder(ctx context.Context) (string, error) { return HolderOf(ctx, s.c, s.Key("lock")) }

// HolderOf returns who holds the session lock at key now ("" if nobody).
func HolderOf(ctx context.Context, c *api.Client, key string) (string, error) {
	kv, _, err := c.KV().Get(key, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return "", fmt.Errorf("read %s: %w", key, err)
	}
	if kv == nil || kv.Session == "" {
		return "", nil
	}
	return string(kv.Value), nil
}

// Roll is the record of the current or last roll.
type Roll struct {
	Target string `json:"target_image"`
	// TargetCreated is the target image's creation time as the provider listed it
	// when the roll started: the roll's completion is recorded with it even if the
	// image has left the filter since.
	TargetCreated time.Time `json:"target_created,omitzero"`
	Phase         string    `json:"phase"`
	Started       time.Time `json:"started"`
	Updated       time.Time `json:"updated"`
	Failure       string    `json:"failure,omitempty"`
	History       []Entry   `json:"history"`
	// Completed is the target of the last roll that completed. A new roll's record
	// carries it over, and a failed roll leaves it alone: no request may take the
	// cluster to an older image than this one unless roll.allow_downgrade is set,
	// whatever the image filter lists now.
	Completed *Completed `json:"completed,omitempty"`
	// Group is what the roll changed on the provider's group and restores when it
	// ends (nil for a provider without one, and until the first launch).
	Group *cloud.GroupState `json:"group,omitempty"`
}

// Unreleased reports whether the roll has ended but its changes to the group (the
// suspended processes, the raised MaxSize) are not undone yet.
func (r *Roll) Unreleased() bool {
	return r != nil && !r.InProgress() && r.Group != nil && !r.Group.Released
}

// Completed names the target of a roll that completed.
type Completed struct {
	Image string `json:"image"`
	// Created is the image's creation time; zero if it was never known (a record
	// written before it was kept).
	Created time.Time `json:"image_created,omitzero"`
	Done    time.Time `json:"done"`
}

// LastCompleted returns the target of the last roll that completed, nil if none
// did. A record written before Completed was kept names its target as completed
// only by its phase; its age is then unknown.
func (r *Roll) LastCompleted() *Completed {
	switch {
	case r == nil:
		return nil
	case r.Phase == PhaseDone && (r.Completed == nil || r.Completed.Image != r.Target):
		// A done record whose Completed lags (written by an older version).
		return &Completed{Image: r.Target, Created: r.TargetCreated, Done: r.Updated}
	}
	return r.Completed
}

// Next returns the record of a new roll to target, created at created, starting
// at now: it carries over the last completed target of r, the record it replaces
// (which may be nil).
func (r *Roll) Next(target string, created, now time.Time) *Roll {
	return &Roll{Target: target, TargetCreated: created, Phase: PhaseRolling, Started: now, Completed: r.LastCompleted()}
}

// Complete marks r, a roll in progress, done at now, and its target the last
// completed one.
func (r *Roll) Complete(now time.Time) {
	r.Phase = PhaseDone
	r.Completed = &Completed{Image: r.Target, Created: r.TargetCreated, Done: now}
}

// Entry is one step in a roll's history.
type Entry struct {
	Time     time.Time `json:"time"`
	Step     string    `json:"step"`
	Instance string    `json:"instance,omitempty"`
	Detail   string    `json:"detail"`
}

// InProgress reports whether r is a roll still under way.
func (r *Roll) InProgress() bool { return r != nil && r.Phase == PhaseRolling }

// Add appends a history entry, keeping the newest MaxHistory, and reports whether
// it did. An entry that repeats the newest one (same step, instance and detail) is
// not added: a step taken again idempotently, as a surge that has not appeared yet
// is asked for again, or a hold for the same reason, changed nothing, and would
// crowd older entries out. The newest entry keeps its time: when it first happened.
func (r *Roll) Add(e Entry) bool {
	if n := len(r.History); n > 0 {
		if last := r.History[n-1]; last.Step == e.Step && last.Instance == e.Instance && last.Detail == e.Detail {
			return false
		}
	}
	r.History = append(r.History, e)
	if len(r.History) > MaxHistory {
		r.History = r.History[len(r.History)-MaxHistory:]
	}
	r.Updated = e.Time
	return true
}

// Roll reads the roll record; nil when there has never been a roll.
func (s *Store) Roll(ctx context.Context) (*Roll, error) {
	var r *Roll
	ok, err := s.getJSON(ctx, "roll", &r)
	if err != nil || !ok {
		return nil, err
	}
	return r, nil
}

// PutRoll writes the roll record.
func (s *Store) PutRoll(ctx context.Context, r *Roll) error { return s.putJSON(ctx, "roll", r) }

// Receipt records an action: Intent is written before acting, Result after.
type Receipt struct {
	Intent   string    `json:"intent"`
	Started  time.Time `json:"started"`
	Result   string    `json:"result,omitempty"`
	Finished time.Time `json:"finished,omitzero"`
}

// Receipt reads the receipt of an action; nil if there is none.
func (s *Store) Receipt(ctx context.Context, actionID string) (*Receipt, error) {
	if err := CheckKeyPath(actionID); err != nil {
		return nil, fmt.Errorf("read receipt: action ID: %w", err)
	}
	var r *Receipt
	ok, err := s.getJSON(ctx, "actions/"+actionID, &r)
	if err != nil || !ok {
		return nil, err
	}
	return r, nil
}

// PutReceipt writes the receipt of an action.
func (s *Store) PutReceipt(ctx context.Context, actionID string, r *Receipt) error {
	if err := CheckKeyPath(actionID); err != nil {
		return fmt.Errorf("write receipt: action ID: %w", err)
	}
	return s.putJSON(ctx, "actions/"+actionID, r)
}

// DeleteReceipt removes the receipt of an action that did not happen.
func (s *Store) DeleteReceipt(ctx context.Context, actionID string) error {
	if err := CheckKeyPath(actionID); err != nil {
		return fmt.Errorf("delete receipt: action ID: %w", err)
	}
	if _, err := s.c.KV().Delete(s.Key("actions/"+actionID), (&api.WriteOptions{}).WithContext(ctx)); err != nil {
		return fmt.Errorf("delete receipt %s: %w", actionID, err)
	}
	return nil
}

// Handled reports whether the event was already handled.
func (s *Store) Handled(ctx context.Context, eventID string) (bool, error) {
	if err := payload.CheckEventID(eventID); err != nil {
		return false, fmt.Errorf("read handled event: %w", err)
	}
	kv, _, err := s.c.KV().Get(s.Key("events/"+eventID), (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return false, fmt.Errorf("read %s: %w", s.Key("events/"+eventID), err)
	}
	return kv != nil, nil
}

// MarkHandled records the event as handled and prunes the oldest records beyond
// MaxEvents. One request, unless there is something to prune.
func (s *Store) MarkHandled(ctx context.Context, eventID, result string) error {
	if err := payload.CheckEventID(eventID); err != nil {
		return fmt.Errorf("record event: %w", err)
	}
	resp, err := s.txn(ctx, api.TxnOps{
		{KV: &api.KVTxnOp{Verb: api.KVSet, Key: s.Key("events/" + eventID), Value: []byte(result)}},
		{KV: &api.KVTxnOp{Verb: api.KVGetTree, Key: s.Key("events/")}},
	})
	if err != nil {
		return fmt.Errorf("record event %s: %w", eventID, err)
	}
	var keys []*api.TxnResult // the tree; what the token may not read is left out
	for _, r := range resp.Results[min(1, len(resp.Results)):] {
		if r.KV != nil {
			keys = append(keys, r)
		}
	}
	if len(keys) <= MaxEvents {
		return nil
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i].KV.CreateIndex < keys[j].KV.CreateIndex })
	var del api.TxnOps
	for _, r := range keys[:len(keys)-MaxEvents] {
		del = append(del, &api.TxnOp{KV: &api.KVTxnOp{Verb: api.KVDelete, Key: r.KV.Key}})
	}
	for len(del) > 0 { // Consul takes at most 64 operations a transaction
		n := min(len(del), 64)
		if _, err := s.txn(ctx, del[:n]); err != nil {
			return fmt.Errorf("prune handled events: %w", err)
		}
		del = del[n:]
	}
	return nil
}

// Peek reads, in one request, what a handler needs to decide whether it has a step
// to take at all: the roll record, whether eventID was handled, and the bad images.
func (s *Store) Peek(ctx context.Context, eventID string) (*Roll, bool, map[string]string, error) {
	if err := payload.CheckEventID(eventID); err != nil {
		return nil, false, nil, fmt.Errorf("read %s: %w", s.prefix, err)
	}
	resp, err := s.txn(ctx, api.TxnOps{
		{KV: &api.KVTxnOp{Verb: api.KVGetOrEmpty, Key: s.Key("roll")}},
		{KV: &api.KVTxnOp{Verb: api.KVGetOrEmpty, Key: s.Key("events/" + eventID)}},
		{KV: &api.KVTxnOp{Verb: api.KVGetTree, Key: s.Key("bad-images/")}},
	})
	if err != nil {
		return nil, false, nil, fmt.Errorf("read %s: %w", s.prefix, err)
	}
	// Consul filters out of a transaction's results what the token may not read, so
	// the results are matched by key, and a missing one is a permission problem, not
	// an absent key (get-or-empty answers for absent keys too).
	var (
		r                 *Roll
		sawRoll, sawEvent bool
		handled           bool
		bad               = map[string]string{}
		rollKey, eventKey = s.Key("roll"), s.Key("events/" + eventID)
		badPrefix         = s.Key("bad-images/")
	)
	for _, res := range resp.Results {
		kv := res.KV
		switch {
		case kv == nil:
		case kv.Key == rollKey:
			sawRoll = true
			if kv.ModifyIndex != 0 {
				if err := json.Unmarshal(kv.Value, &r); err != nil {
					return nil, false, nil, fmt.Errorf("decode %s: %w", kv.Key, err)
				}
			}
		case kv.Key == eventKey:
			sawEvent, handled = true, kv.ModifyIndex != 0
		case strings.HasPrefix(kv.Key, badPrefix):
			bad[strings.TrimPrefix(kv.Key, badPrefix)] = string(kv.Value)
		}
	}
	if !sawRoll || !sawEvent {
		return nil, false, nil, fmt.Errorf("read %s: Permission denied: the ACL token may not read it", s.prefix)
	}
	return r, handled, bad, nil
}

func (s *Store) txn(ctx context.Context, ops api.TxnOps) (*api.TxnResponse, error) {
	ok, resp, _, err := s.c.Txn().Txn(ops, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, err
	}
	if !ok {
		var errs []string
		for _, e := range resp.Errors {
			errs = append(errs, fmt.Sprintf("op %d: %s", e.OpIndex, e.What))
		}
		return nil, fmt.Errorf("transaction failed: %s", strings.Join(errs, "; "))
	}
	return resp, nil
}

// BadImages returns the images marked bad, with the reason each was marked.
func (s *Store) BadImages(ctx context.Context) (map[string]string, error) {
	kvs, _, err := s.c.KV().List(s.Key("bad-images/"), (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("list bad images: %w", err)
	}
	out := make(map[string]string, len(kvs))
	for _, kv := range kvs {
		out[strings.TrimPrefix(kv.Key, s.Key("bad-images/"))] = string(kv.Value)
	}
	return out, nil
}

// MarkBad marks an image bad so that no roll uses it again.
func (s *Store) MarkBad(ctx context.Context, image, reason string) error {
	if err := CheckKeyPath(image); err != nil {
		return fmt.Errorf("mark image bad: image ID: %w", err)
	}
	_, err := s.c.KV().Put(&api.KVPair{Key: s.Key("bad-images/" + image), Value: []byte(reason)}, (&api.WriteOptions{}).WithContext(ctx))
	if err != nil {
		return fmt.Errorf("mark image %s bad: %w", image, err)
	}
	return nil
}

func (s *Store) getJSON(ctx context.Context, name string, v any) (bool, error) {
	kv, _, err := s.c.KV().Get(s.Key(name), (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return false, fmt.Errorf("read %s: %w", s.Key(name), err)
	}
	if kv == nil {
		return false, nil
	}
	if err := json.Unmarshal(kv.Value, v); err != nil {
		return false, fmt.Errorf("decode %s: %w", s.Key(name), err)
	}
	return true, nil
}

func (s *Store) putJSON(ctx context.Context, name string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode %s: %w", s.Key(name), err)
	}
	if _, err := s.c.KV().Put(&api.KVPair{Key: s.Key(name), Value: b}, (&api.WriteOptions{}).WithContext(ctx)); err != nil {
		return fmt.Errorf("write %s: %w", s.Key(name), err)
	}
	return nil
}
