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
	"regexp"

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
		return Request{Kind: KindRejected, Why: "not an EventBridge event: " + err.Error()}
	}
	switch {
	case ev.Source == "aws.events" && ev.DetailType == "Scheduled Event":
		return Request{Kind: KindNewest}
	case ev.Source != "aws.ec2" || ev.DetailType != "EC2 AMI State Change":
		return Request{Kind: KindIgnored, Why: fmt.Sprintf("source %q, detail-type %q: not an EC2 AMI State Change", ev.Source, ev.DetailType)}
	}
	var d amiStateChange
	if err := strict(ev.Detail, &d); err != nil {
		return Request{Kind: KindRejected, Why: "EC2 AMI State Change with a malformed detail: " + err.Error()}
	}
	if !amiID.MatchString(d.ImageID) {
		return Request{Kind: KindRejected, Why: fmt.Sprintf("EC2 AMI State Change with image id \"%s\", not ami- and 8 or 17 hex digits", cut(d.ImageID))}
	}
	if d.State != "available" {
		return Request{Kind: KindIgnored, Image: d.ImageID, Why: fmt.Sprintf("image %s is \"%s\", not available", d.ImageID, cut(d.State))}
	}
	return Request{Kind: KindImage, Image: d.ImageID}
}

// strict decodes one JSON object into v, refusing unknown fields and trailing data.
func strict(b []byte, v any) error {
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

// cut makes a hostile string fit for a log line: printable, at most 64 bytes.
func cut(s string) string {
	if len(s) > 64 {
		s = s[:64] + "..."
	}
	return printable.String(s)
}
