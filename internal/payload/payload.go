// Package payload decodes what a Consul agent writes on a watch handler's
// stdin, strictly and within a size limit.
//
// The agent JSON-encodes the watch result with encoding/json (see
// makeWatchHandler in Consul's agent/watch_handler.go) and writes it, followed
// by a newline, on the handler's stdin:
//
//	event      []*api.UserEvent   always an array
//	service    []*api.ServiceEntry always an array
//	checks     []*api.HealthCheck  always an array
//	key        *api.KVPair        null when the key does not exist
//	keyprefix  api.KVPairs        null when no key has the prefix
//
// Every decoding error wraps ErrBadPayload, so a handler can map it to its
// exit code with errors.Is; an over-limit payload also wraps ErrTooLarge.
package payload

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"

	"github.com/hashicorp/consul/api"
)

// DefaultMaxBytes is the largest payload the package-level decoders read.
//
// The biggest payloads this project expects are service watches: an entry
// with its node, service and checks encodes to about 1.5–2 KB, so 4 MiB holds
// some two thousand instances. An event watch holds at most the agent's
// buffer of 256 events of at most 512 bytes each (well under 1 MiB). A
// keyprefix watch over large values may need a Decoder with a larger
// MaxBytes.
const DefaultMaxBytes = 4 << 20

// ErrBadPayload is wrapped by every error that reports a payload that is
// malformed, of the wrong shape, or too large. A bad payload never changes
// anything; handlers exit with their bad-payload code.
var ErrBadPayload = errors.New("bad payload")

// ErrTooLarge is wrapped by errors for payloads over the size limit. It wraps
// ErrBadPayload, so errors.Is(err, ErrBadPayload) holds for these errors too.
var ErrTooLarge = fmt.Errorf("payload too large: %w", ErrBadPayload)

// badPayload marks err as being of kind (ErrBadPayload or ErrTooLarge)
// without repeating the sentinel's text in the message.
type badPayload struct {
	err  error
	kind error
}

func (e *badPayload) Error() string   { return e.err.Error() }
func (e *badPayload) Unwrap() []error { return []error{e.kind, e.err} }

// Decoder decodes watch payloads read from an io.Reader.
// The zero value is ready to use and reads at most DefaultMaxBytes.
type Decoder struct {
	// MaxBytes is the largest payload accepted; reading more is an error
	// wrapping ErrTooLarge, never a silent truncation. Zero or negative
	// means DefaultMaxBytes.
	MaxBytes int64
}

// Events decodes an event watch payload using DefaultMaxBytes.
func Events(r io.Reader) ([]*api.UserEvent, error) { return Decoder{}.Events(r) }

// Services decodes a service watch payload using DefaultMaxBytes.
func Services(r io.Reader) ([]*api.ServiceEntry, error) { return Decoder{}.Services(r) }

// Checks decodes a checks watch payload using DefaultMaxBytes.
func Checks(r io.Reader) ([]*api.HealthCheck, error) { return Decoder{}.Checks(r) }

// Key decodes a key watch payload using DefaultMaxBytes.
func Key(r io.Reader) (*api.KVPair, error) { return Decoder{}.Key(r) }

// KeyPrefix decodes a keyprefix watch payload using DefaultMaxBytes.
func KeyPrefix(r io.Reader) (api.KVPairs, error) { return Decoder{}.KeyPrefix(r) }

// Events decodes an event watch payload: a JSON array of user events in the
// agent's buffer order, oldest first. The array may be empty (an event watch
// fires once when the agent starts, with whatever its buffer holds). A null
// array or element is an error: the agent's /v1/event/list always returns an
// array, so Consul never writes null here.
func (d Decoder) Events(r io.Reader) ([]*api.UserEvent, error) {
	return decodeList[api.UserEvent](d, "event", r, false)
}

// Services decodes a service watch payload: a JSON array of service entries.
// The array may be empty (no instance matches). A null array or element is an
// error: the agent's /v1/health/service endpoint replaces a nil result with an
// empty array, so Consul never writes null here.
func (d Decoder) Services(r io.Reader) ([]*api.ServiceEntry, error) {
	return decodeList[api.ServiceEntry](d, "service", r, false)
}

// Checks decodes a checks watch payload: a JSON array of health checks. The
// array may be empty. A null array or element is an error: the agent's
// /v1/health/state and /v1/health/checks endpoints replace a nil result with
// an empty array, so Consul never writes null here.
func (d Decoder) Checks(r io.Reader) ([]*api.HealthCheck, error) {
	return decodeList[api.HealthCheck](d, "checks", r, false)
}

// Key decodes a key watch payload: a JSON object, or null when the key does
// not exist, for which Key returns nil and no error. Consul writes null then
// because the watch passes an untyped nil result to the handler.
func (d Decoder) Key(r io.Reader) (*api.KVPair, error) {
	const watch = "key"
	raw, off, err := d.value(watch, r)
	if err != nil {
		return nil, err
	}
	switch kind := kindOf(raw); kind {
	case "null":
		return nil, nil
	case "object":
	default:
		return nil, bad(watch, fmt.Errorf("expected object or null, got %s", kind))
	}
	pair := new(api.KVPair)
	if err := unmarshal(raw, pair); err != nil {
		return nil, bad(watch, located("value", err, off))
	}
	return pair, nil
}

// KeyPrefix decodes a keyprefix watch payload: a JSON array of key/value
// pairs, or null when no key has the prefix, for which KeyPrefix returns nil
// and no error. Consul writes null then because the /v1/kv endpoint answers
// 404, api.KV.List returns a nil KVPairs, and encoding/json encodes a nil
// slice as null. A null element is an error: Consul never writes one.
func (d Decoder) KeyPrefix(r io.Reader) (api.KVPairs, error) {
	return decodeList[api.KVPair](d, "keyprefix", r, true)
}

// decodeList decodes a payload that must be one JSON array of objects of
// type T, or null if nullOK (then the result is nil). Null elements are
// errors: Consul never writes them, and a nil entry would crash callers.
func decodeList[T any](d Decoder, watch string, r io.Reader, nullOK bool) ([]*T, error) {
	raw, off, err := d.value(watch, r)
	if err != nil {
		return nil, err
	}
	switch kind := kindOf(raw); {
	case kind == "array":
	case kind == "null" && nullOK:
		return nil, nil
	default:
		return nil, bad(watch, fmt.Errorf("expected array, got %s", kind))
	}

	// raw is known to be a valid array, so the decoder below cannot fail on
	// syntax; it is used to find each element and its offset.
	dec := json.NewDecoder(bytes.NewReader(raw))
	if _, err := dec.Token(); err != nil {
		return nil, bad(watch, err)
	}
	out := []*T{}
	for i := 0; dec.More(); i++ {
		var elem json.RawMessage
		if err := dec.Decode(&elem); err != nil {
			return nil, bad(watch, fmt.Errorf("element %d: %w", i, err))
		}
		start := off + dec.InputOffset() - int64(len(elem))
		if kind := kindOf(elem); kind != "object" {
			return nil, bad(watch, fmt.Errorf("element %d (offset %d): expected object, got %s", i, start, kind))
		}
		v := new(T)
		if err := unmarshal(elem, v); err != nil {
			return nil, bad(watch, located(fmt.Sprintf("element %d", i), err, start))
		}
		out = append(out, v)
	}
	return out, nil
}

// value reads the payload and returns its single JSON value (without
// surrounding whitespace) and the offset at which it starts.
func (d Decoder) value(watch string, r io.Reader) (json.RawMessage, int64, error) {
	data, err := read(r, d.MaxBytes)
	if err != nil {
		return nil, 0, fmt.Errorf("decode %s watch payload: %w", watch, err)
	}
	raw, off, err := single(data)
	if err != nil {
		return nil, 0, bad(watch, err)
	}
	return raw, off, nil
}

// read reads all of r, at most limit bytes (DefaultMaxBytes if limit <= 0).
// More than limit bytes is an error wrapping ErrTooLarge. An error from r
// itself is returned wrapped but is not a bad payload.
func read(r io.Reader, limit int64) ([]byte, error) {
	if limit <= 0 {
		limit = DefaultMaxBytes
	}
	n := limit
	if n < math.MaxInt64 {
		n++ // read one byte more than allowed to tell "exactly limit" from "more"
	}
	data, err := io.ReadAll(io.LimitReader(r, n))
	if err != nil {
		return nil, fmt.Errorf("read payload: %w", err)
	}
	if int64(len(data)) > limit {
		return nil, &badPayload{err: fmt.Errorf("payload exceeds %d bytes", limit), kind: ErrTooLarge}
	}
	return data, nil
}

// single returns the one JSON value in data and the offset where it starts.
// Empty input, invalid JSON and data after the value are errors.
func single(data []byte) (json.RawMessage, int64, error) {
	if len(trimSpace(data)) == 0 {
		return nil, 0, errors.New("empty payload")
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	var raw json.RawMessage
	if err := dec.Decode(&raw); err != nil {
		return nil, 0, syntaxError(err)
	}
	end := dec.InputOffset()
	if _, err := dec.Token(); err != io.EOF {
		return nil, 0, fmt.Errorf("trailing data after JSON value at offset %d", nextNonSpace(data, end))
	}
	return raw, end - int64(len(raw)), nil
}

// nextNonSpace returns the offset of the first non-whitespace byte in data
// at or after off.
func nextNonSpace(data []byte, off int64) int64 {
	return off + int64(len(data[off:])-len(bytes.TrimLeft(data[off:], jsonSpace)))
}

// syntaxError describes an error from decoding the top-level value.
func syntaxError(err error) error {
	var se *json.SyntaxError
	switch {
	case errors.As(err, &se):
		return fmt.Errorf("invalid JSON at offset %d: %w", se.Offset, err)
	case errors.Is(err, io.ErrUnexpectedEOF):
		return fmt.Errorf("truncated JSON: %w", err)
	default:
		return fmt.Errorf("invalid JSON: %w", err)
	}
}

// unmarshal decodes data into one of Consul's api structs.
//
// Unknown fields are allowed on purpose: a newer Consul adds fields to these
// structs, and a handler built against an older api module must keep working
// during exactly the upgrade it is there to perform. Type mismatches are
// still errors (encoding/json reports them after decoding the rest).
//
// Some api types have their own UnmarshalJSON that can panic on input Consul
// never writes (api.HealthCheckDefinition dereferences a nil pointer for a
// "Definition": null); such a panic becomes an error, because a handler must
// fail with "bad payload", not crash.
func unmarshal(data []byte, v any) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("value rejected by consul api decoder: %v", p)
		}
	}()
	return json.Unmarshal(data, v)
}

// located wraps err from decoding what (a value starting at offset off).
// For a type error it reports encoding/json's offset instead, which points
// at or just past the offending value.
func located(what string, err error, off int64) error {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		off += te.Offset
	}
	return fmt.Errorf("%s (offset %d): %w", what, off, err)
}

// bad wraps err as a bad payload of the given watch type.
func bad(watch string, err error) error {
	return mark(fmt.Errorf("decode %s watch payload: %w", watch, err))
}

// mark makes err a bad payload unless it already is one (e.g. ErrTooLarge).
func mark(err error) error {
	if errors.Is(err, ErrBadPayload) {
		return err
	}
	return &badPayload{err: err, kind: ErrBadPayload}
}

// kindOf names the JSON type of raw, which must be a valid JSON value without
// leading whitespace.
func kindOf(raw []byte) string {
	if len(raw) == 0 {
		return "nothing"
	}
	switch raw[0] {
	case '{':
		return "object"
	case '[':
		return "array"
	case '"':
		return "string"
	case 't', 'f':
		return "boolean"
	case 'n':
		return "null"
	default:
		return "number"
	}
}

// jsonSpace is JSON's whitespace (RFC 8259). bytes.TrimSpace would also
// drop characters such as a vertical tab that make the JSON invalid.
const jsonSpace = " \t\n\r"

// trimSpace trims JSON whitespace from both ends of b.
func trimSpace(b []byte) []byte {
	return bytes.Trim(b, jsonSpace)
}
