package payload

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"unicode"
	"unicode/utf8"

	"github.com/hashicorp/consul/api"
)

// MaxRequestBytes is the largest rehydrate event payload accepted. It is
// Serf's user event size limit as Consul configures it; that limit counts the
// event name and Consul's own encoding too, so a payload that actually
// arrives is smaller still.
const MaxRequestBytes = 512

// MaxImageIDLen is the most characters (runes) an image_id may have.
const MaxImageIDLen = 128

// Request is the payload of the rehydrate event. It is one of three kinds:
//
//	{"image_id":"ami-0abc"}  a request: roll to that image (it must be allowed)
//	empty, or {}             a request: roll to the newest allowed image
//	                         (`rehydrate fire`, the image-published Lambda)
//	{"continue":true}        a continuation: requests nothing, asks some handler
//	                         to take the step due in the roll in progress
//
// The handlers fire a continuation after a launch, after a retire, when they
// give up waiting and when they hand a step to another server: the roll in
// progress, not the event, names the target then. A handler that finds a
// newer image once a roll is done fires a plain request instead, since that
// starts a roll. The zero Request asks for the newest allowed image.
type Request struct {
	// ImageID names the image to roll to. Empty means the newest image the
	// configured filter allows; a named image must also be allowed.
	ImageID string `json:"image_id,omitempty"`
	// Continue marks a continuation, which requests nothing; it names no image.
	Continue bool `json:"continue,omitempty"`
}

// Requests reports whether r asks for a roll (to a named image or to the newest
// allowed one), as opposed to a continuation of the roll in progress.
func (r Request) Requests() bool { return !r.Continue }

// ParseRequest returns the request carried by ev, a rehydrate event.
//
// ev.ID must be a UUID (see CheckEventID): it becomes a KV key segment.
// ev.Name must equal wantName. An empty Payload yields the zero Request.
// Otherwise the payload must be at most MaxRequestBytes of valid UTF-8 holding
// exactly one JSON object whose fields (each spelled exactly so, at most once)
// may be "image_id", a non-empty string of at most MaxImageIDLen printable
// characters without whitespace, or "continue", which must be true and comes
// alone. Every error wraps ErrBadPayload.
func ParseRequest(ev *api.UserEvent, wantName string) (Request, error) {
	if ev == nil {
		return Request{}, mark(errors.New("parse rehydrate request: no event"))
	}
	req, err := parseRequest(ev, wantName)
	if err != nil {
		return Request{}, mark(fmt.Errorf("parse rehydrate request in event %q: %w", ev.ID, err))
	}
	if err := CheckEventID(ev.ID); err != nil {
		return Request{}, mark(fmt.Errorf("parse rehydrate request: %w", err))
	}
	return req, nil
}

// NewRequestPayload returns the event payload that asks for imageID, as
// `consul event` or the HTTP API should send it. An empty imageID yields an
// empty payload, which asks for the newest allowed image. The payload is
// checked with the same rules ParseRequest applies, so the operator CLI can
// never send what the handlers reject. Errors wrap ErrBadPayload.
func NewRequestPayload(imageID string) ([]byte, error) {
	if imageID == "" {
		return nil, nil
	}
	if err := checkImageID(imageID); err != nil {
		return nil, mark(fmt.Errorf("build rehydrate request: %w", err))
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false) // fewer bytes; the payload is never embedded in HTML
	if err := enc.Encode(Request{ImageID: imageID}); err != nil {
		return nil, fmt.Errorf("build rehydrate request: %w", err)
	}
	payload := bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
	if _, err := parseRequest(&api.UserEvent{Payload: payload}, ""); err != nil {
		return nil, mark(fmt.Errorf("build rehydrate request: %w", err))
	}
	return payload, nil
}

func parseRequest(ev *api.UserEvent, wantName string) (Request, error) {
	if ev.Name != wantName {
		return Request{}, fmt.Errorf("event name %q, want %q", ev.Name, wantName)
	}
	p := ev.Payload
	switch {
	case len(p) == 0:
		return Request{}, nil
	case len(p) > MaxRequestBytes:
		return Request{}, &badPayload{
			err:  fmt.Errorf("payload is %d bytes, exceeds %d bytes", len(p), MaxRequestBytes),
			kind: ErrTooLarge,
		}
	case !utf8.Valid(p):
		return Request{}, errors.New("payload is not valid UTF-8")
	case len(trimSpace(p)) == 0:
		return Request{}, errors.New("payload is only whitespace; send none to ask for the newest allowed image")
	}

	// The object is walked token by token rather than decoded into a struct:
	// encoding/json matches field names case-insensitively and lets a
	// duplicate field override the first, and neither is acceptable in a
	// request that selects the image a whole cluster is rebuilt from.
	dec := json.NewDecoder(bytes.NewReader(p))
	tok, err := dec.Token()
	if err != nil {
		return Request{}, syntaxError(err)
	}
	if tok != json.Delim('{') {
		return Request{}, fmt.Errorf("expected JSON object, got %s", kindOf(trimSpace(p)))
	}
	var req Request
	seen := map[string]bool{}
	for dec.More() {
		tok, err := next(dec)
		if err != nil {
			return Request{}, syntaxError(err)
		}
		key, _ := tok.(string) // inside an object, Token returns keys as strings
		if key != "image_id" && key != "continue" {
			return Request{}, fmt.Errorf("unknown field %q at offset %d", key, dec.InputOffset())
		}
		if seen[key] {
			return Request{}, fmt.Errorf("duplicate field %q at offset %d", key, dec.InputOffset())
		}
		seen[key] = true
		tok, err = next(dec)
		if err != nil {
			return Request{}, syntaxError(err)
		}
		switch key {
		case "image_id":
			id, ok := tok.(string)
			if !ok {
				return Request{}, fmt.Errorf("field \"image_id\": expected string, got %s", tokenKind(tok))
			}
			if err := checkImageID(id); err != nil {
				return Request{}, err
			}
			req.ImageID = id
		case "continue":
			// Only true: a false continuation would read as a request to an
			// operator and as nothing to the handlers.
			if b, ok := tok.(bool); !ok || !b {
				got := tokenKind(tok)
				if ok {
					got = "false"
				}
				return Request{}, fmt.Errorf("field \"continue\": expected true, got %s; omit the field to request a roll", got)
			}
			req.Continue = true
		}
	}
	if req.Continue && req.ImageID != "" {
		return Request{}, errors.New("a continuation (\"continue\") names no image; send \"image_id\" alone to request one")
	}
	tok, err = next(dec)
	if err != nil {
		return Request{}, syntaxError(err)
	}
	if tok != json.Delim('}') { // unreachable: Token checks nesting
		return Request{}, fmt.Errorf("invalid JSON: unexpected %v", tok)
	}
	end := dec.InputOffset()
	if _, err := dec.Token(); err != io.EOF {
		return Request{}, fmt.Errorf("trailing data after JSON object at offset %d", nextNonSpace(p, end))
	}
	return req, nil
}

// next returns the next token of a value that has begun, so that the end
// of the input is an unexpected EOF.
func next(dec *json.Decoder) (json.Token, error) {
	tok, err := dec.Token()
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return tok, err
}

// checkImageID checks an explicitly given image ID.
func checkImageID(id string) error {
	if id == "" {
		return errors.New("image_id is empty; omit it to ask for the newest allowed image")
	}
	if !utf8.ValidString(id) {
		return errors.New("image_id is not valid UTF-8")
	}
	if n := utf8.RuneCountInString(id); n > MaxImageIDLen {
		return fmt.Errorf("image_id has %d characters, more than %d", n, MaxImageIDLen)
	}
	for i, r := range id {
		if !unicode.IsPrint(r) || unicode.IsSpace(r) {
			return fmt.Errorf("image_id has %q at byte %d; want printable characters without whitespace", r, i)
		}
	}
	return nil
}

// tokenKind names the JSON type of a token from json.Decoder.Token.
func tokenKind(tok json.Token) string {
	switch tok := tok.(type) {
	case json.Delim:
		if tok == '{' {
			return "object"
		}
		return "array"
	case bool:
		return "boolean"
	case float64, json.Number:
		return "number"
	case nil:
		return "null"
	default:
		return fmt.Sprintf("%T", tok)
	}
}
