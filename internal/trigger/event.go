// Package trigger is the image-published Lambda's logic (handlers/image-published):
// an EventBridge "EC2 AMI State Change" with State "available", or a scheduled
// invocation with no image, becomes the consul-rehydrate event, once the image
// matches the same image filter the handlers use.
package trigger

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"strings"
	"unicode/utf8"

	"github.com/consul-rehydrate/consul-rehydrate/internal/printable"
)

// MaxEvent bounds an invocation's payload. EventBridge events are at most 256 KB
// (EventBridge user guide, "Amazon EventBridge quotas": PutEvents entry size); an
// AMI state change is well under 2 KB, so anything larger is refused unread.
const MaxEvent = 256 << 10

// What an invocation asks for.
const (
	KindImage    = "image"    // roll to Image
	KindNewest   = "newest"   // the scheduled backstop: the newest allowed image
	KindIgnored  = "ignored"  // another source, type or state: nothing to do
	KindRejected = "rejected" // malformed: nothing to do, said loudly
)

// Request is what Decode made of an invocation.
type Request struct {
	Kind  string
	Image string // for KindImage
	// Why says, for KindIgnored and KindRejected, what the event was.
	Why string
}

// envelope is an EventBridge event (EventBridge user guide, "Amazon EventBridge
// events": the top-level fields are fixed; "replay-name" is added to replayed ones).
type envelope struct {
	Version    string          `json:"version"`
	ID         string          `json:"id"`
	DetailType string          `json:"detail-type"`
	Source     string          `json:"source"`
	Account    string          `json:"account"`
	Time       string          `json:"time"`
	Region     string          `json:"region"`
	Resources  []string        `json:"resources"`
	Detail     json.RawMessage `json:"detail"`
	ReplayName string          `json:"replay-name,omitempty"`
}

// amiStateChange is the detail of "EC2 AMI State Change" (EC2 user guide,
// "Monitor AMI events using Amazon EventBridge").
type amiStateChange struct {
	RequestID    string `json:"RequestId"`
	ImageID      string `json:"ImageId"`
	State        string `json:"State"`
	ErrorMessage string `json:"ErrorMessage"`
}

// amiID is an AMI id: "ami-" and 8 or 17 hex digits.
var amiID = regexp.MustCompile(`^ami-([0-9a-f]{8}|[0-9a-f]{17})$`)

// ErrTooLarge is returned for a payload over MaxEvent.
var ErrTooLarge = errors.New("event larger than 256 KB")

// Decode reads an invocation's payload strictly: an EventBridge event with only
// the envelope's fields, an AMI state change's detail with only its fields and a
// well-formed image id; or an empty object (the schedule's input, "{}"), which asks
// for the newest allowed image. A scheduled EventBridge rule's own event ("Scheduled
// Event" from aws.events) asks for the same. Anything else is KindIgnored (a
// well-formed event of another kind) or KindRejected (malformed), with the reason.
//
// Stricter than encoding/json: a key that matches a field only in case ("Source"),
// a key given twice and nesting deeper than MaxDepth are refused, so a
// payload has one reading, the one EventBridge's pattern matched (case-sensitive).
func Decode(b []byte) Request {
	if len(b) > MaxEvent {
		return Request{Kind: KindRejected, Why: ErrTooLarge.Error()}
	}
	trimmed := bytes.TrimSpace(b)
	if bytes.Equal(trimmed, []byte("{}")) {
		return Request{Kind: KindNewest}
	}
	var ev envelope
	if err := strict(trimmed, &ev); err != nil {
		return Request{Kind: KindRejected, Why: "not an EventBridge event: " + cut(err.Error(), maxErr)}
	}
	switch {
	case ev.Source == "aws.events" && ev.DetailType == "Scheduled Event":
		return Request{Kind: KindNewest}
	case ev.Source != "aws.ec2" || ev.DetailType != "EC2 AMI State Change":
		return Request{Kind: KindIgnored, Why: fmt.Sprintf("source \"%s\", detail-type \"%s\": not an EC2 AMI State Change", cut(ev.Source, maxValue), cut(ev.DetailType, maxValue))}
	}
	var d amiStateChange
	if err := strict(ev.Detail, &d); err != nil {
		return Request{Kind: KindRejected, Why: "EC2 AMI State Change with a malformed detail: " + cut(err.Error(), maxErr)}
	}
	if !amiID.MatchString(d.ImageID) {
		return Request{Kind: KindRejected, Why: fmt.Sprintf("EC2 AMI State Change with image id \"%s\", not ami- and 8 or 17 hex digits", cut(d.ImageID, maxValue))}
	}
	if d.State != "available" {
		return Request{Kind: KindIgnored, Image: d.ImageID, Why: fmt.Sprintf("image %s is \"%s\", not available", d.ImageID, cut(d.State, maxValue))}
	}
	return Request{Kind: KindImage, Image: d.ImageID}
}

// MaxDepth bounds the nesting of an event: an AMI state change is 2 deep, and the
// scan that checks keys must not recurse as far as an attacker likes.
const MaxDepth = 8

// strict decodes one JSON object into v, a struct: after a scan (scan) of the whole
// value, refusing unknown fields and trailing data.
func strict(b []byte, v any) error {
	if err := scan(b, fields(v)); err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("data after the object")
	}
	return nil
}

// scan walks b's tokens (json.Decoder.Token, so its memory is bounded by the
// payload, itself bounded by MaxEvent) and refuses what encoding/json would accept
// silently: a top level that is not an object (null decodes into nothing), a key of
// the top-level object that is not exactly one of want (encoding/json matches keys
// case-insensitively: "SOURCE" would set Source), a key twice in any object (the
// last would win), and nesting deeper than MaxDepth. A null below the top level is
// let through: it leaves its field empty, which the checks after decoding refuse
// where a value is required, and AWS may send one where it documents "" (the AMI
// State Change's ErrorMessage); refusing it would drop a real image's event.
func scan(b []byte, want map[string]bool) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	if tok != json.Delim('{') {
		return fmt.Errorf("want a JSON object, got %s", tokenKind(tok))
	}
	type frame struct {
		object bool
		keys   map[string]bool
	}
	stack := []frame{{object: true, keys: map[string]bool{}}}
	expectKey := true // in an object, whether the next token is a key
	for len(stack) > 0 {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		top := &stack[len(stack)-1]
		if top.object && expectKey {
			if tok == json.Delim('}') {
				stack = stack[:len(stack)-1]
				expectKey = len(stack) > 0 && stack[len(stack)-1].object
				continue
			}
			key := tok.(string) // the decoder yields only strings in key position
			if top.keys[key] {
				return fmt.Errorf("key \"%s\" given twice", cut(key, maxValue))
			}
			top.keys[key] = true
			if len(stack) == 1 && !want[key] {
				for w := range want {
					if strings.EqualFold(w, key) {
						return fmt.Errorf("key \"%s\": the field is \"%s\" (keys are case-sensitive)", cut(key, maxValue), w)
					}
				}
			}
			expectKey = false
			continue
		}
		switch tok {
		case json.Delim('{'), json.Delim('['):
			if len(stack) >= MaxDepth {
				return fmt.Errorf("nested deeper than %d", MaxDepth)
			}
			stack = append(stack, frame{object: tok == json.Delim('{'), keys: map[string]bool{}})
			expectKey = true
			continue
		case json.Delim(']'):
			stack = stack[:len(stack)-1]
		}
		// A value (or the end of an array) was read: in an object, a key is next.
		expectKey = len(stack) > 0 && stack[len(stack)-1].object
	}
	return nil
}

// tokenKind names a top-level token that is not an object.
func tokenKind(tok json.Token) string {
	switch tok.(type) {
	case nil:
		return "null"
	case json.Delim:
		return "an array"
	case string:
		return "a string"
	case float64:
		return "a number"
	case bool:
		return "a boolean"
	}
	return "something else"
}

// fields returns the JSON keys of struct v's fields: what scan holds the top-level
// keys to, taken from the tags strict decodes with so the two cannot drift.
func fields(v any) map[string]bool {
	t := reflect.TypeOf(v)
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	out := map[string]bool{}
	for f := range t.Fields() {
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "" {
			name = f.Name
		}
		out[name] = true
	}
	return out
}

// Bounds of what a reason quotes from a payload: a value, an error of
// encoding/json (which quotes an unknown key whole).
const (
	maxValue = 64
	maxErr   = 200
)

// cut makes a hostile string fit for a log line: escaped to printable
// (printable.String), then at most n bytes and "...".
func cut(s string, n int) string {
	s = printable.String(s)
	if len(s) <= n {
		return s
	}
	i := n
	for i > 0 && !utf8.RuneStart(s[i]) {
		i--
	}
	return s[:i] + "..."
}
