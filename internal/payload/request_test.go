package payload

import (
	"strings"
	"testing"

	"github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const eventName = "consul-rehydrate"

// evID is a well-formed event ID, as Consul makes them.
const evID = "2ac2ac71-4be1-989d-1ac5-3c5dd0e61b63"

// requestCases are rehydrate event payloads; FuzzParseRequest seeds from them.
var requestCases = []struct {
	name    string
	payload []byte
	want    Request // checked when wantErr is empty
	wantErr string
}{
	{name: "absent payload asks for newest", payload: nil},
	{name: "empty payload asks for newest", payload: []byte{}},
	{name: "empty object asks for newest", payload: []byte(`{}`)},
	{name: "image id", payload: []byte(`{"image_id":"ami-0a1b2c3d4e5f60718"}`), want: Request{ImageID: "ami-0a1b2c3d4e5f60718"}},
	{name: "surrounding whitespace", payload: []byte(" {\n \"image_id\" : \"ami-1\" }\n"), want: Request{ImageID: "ami-1"}},
	{name: "escaped key", payload: []byte(`{"image\u005fid":"ami-1"}`), want: Request{ImageID: "ami-1"}},
	{name: "local image name", payload: []byte(`{"image_id":"consul-1.21.4+ent/2"}`), want: Request{ImageID: "consul-1.21.4+ent/2"}},
	{name: "printable unicode", payload: []byte(`{"image_id":"образ-1"}`), want: Request{ImageID: "образ-1"}},
	{name: "continuation", payload: []byte(`{"continue":true}`), want: Request{Continue: true}},
	{name: "longest image id", payload: []byte(`{"image_id":"` + strings.Repeat("a", MaxImageIDLen) + `"}`), want: Request{ImageID: strings.Repeat("a", MaxImageIDLen)}},

	{name: "whitespace only", payload: []byte(" \n"), wantErr: "payload is only whitespace"},
	{name: "not json", payload: []byte("ami-1"), wantErr: "invalid JSON at offset 1"},
	{name: "null", payload: []byte("null"), wantErr: "expected JSON object, got null"},
	{name: "array", payload: []byte(`[{"image_id":"ami-1"}]`), wantErr: "expected JSON object, got array"},
	{name: "bare string", payload: []byte(`"ami-1"`), wantErr: "expected JSON object, got string"},
	{name: "truncated", payload: []byte(`{"image_id":"ami-1"`), wantErr: "truncated JSON"},
	{name: "truncated after key", payload: []byte(`{"image_id"`), wantErr: "truncated JSON"},
	{name: "trailing data", payload: []byte(`{"image_id":"ami-1"} x`), wantErr: "trailing data after JSON object"},
	{name: "two objects", payload: []byte(`{}{}`), wantErr: "trailing data after JSON object at offset 2"},
	{name: "unknown field", payload: []byte(`{"image_id":"ami-1","force":true}`), wantErr: `unknown field "force"`},
	{name: "field case differs", payload: []byte(`{"Image_ID":"ami-1"}`), wantErr: `unknown field "Image_ID"`},
	{name: "duplicate field", payload: []byte(`{"image_id":"ami-1","image_id":"ami-2"}`), wantErr: `duplicate field "image_id"`},
	{name: "empty image id", payload: []byte(`{"image_id":""}`), wantErr: "image_id is empty"},
	{name: "null image id", payload: []byte(`{"image_id":null}`), wantErr: `field "image_id": expected string, got null`},
	{name: "numeric image id", payload: []byte(`{"image_id":1}`), wantErr: `field "image_id": expected string, got number`},
	{name: "object image id", payload: []byte(`{"image_id":{"id":"ami-1"}}`), wantErr: `field "image_id": expected string, got object`},
	{name: "space in image id", payload: []byte(`{"image_id":"ami 1"}`), wantErr: `image_id has ' ' at byte 3`},
	{name: "newline in image id", payload: []byte(`{"image_id":"ami-1\n"}`), wantErr: `image_id has '\n' at byte 5`},
	{name: "nul in image id", payload: []byte(`{"image_id":"ami\u0000"}`), wantErr: `image_id has '\x00' at byte 3`},
	{name: "no-break space in image id", payload: []byte("{\"image_id\":\"ami\u00a01\"}"), wantErr: `image_id has '\u00a0' at byte 3`},
	{name: "image id too long", payload: []byte(`{"image_id":"` + strings.Repeat("a", MaxImageIDLen+1) + `"}`), wantErr: "image_id has 129 characters, more than 128"},
	{name: "continue false", payload: []byte(`{"continue":false}`), wantErr: `field "continue": expected true, got false`},
	{name: "continue as string", payload: []byte(`{"continue":"yes"}`), wantErr: `field "continue": expected true, got string`},
	{name: "continue null", payload: []byte(`{"continue":null}`), wantErr: `field "continue": expected true, got null`},
	{name: "duplicate continue", payload: []byte(`{"continue":true,"continue":true}`), wantErr: `duplicate field "continue"`},
	{name: "continuation naming an image", payload: []byte(`{"continue":true,"image_id":"ami-1"}`), wantErr: `a continuation ("continue") names no image`},
	{name: "image then continuation", payload: []byte(`{"image_id":"ami-1","continue":true}`), wantErr: `a continuation ("continue") names no image`},
	{name: "invalid utf-8", payload: []byte("{\"image_id\":\"ami-\xff\"}"), wantErr: "payload is not valid UTF-8"},
	{name: "over size limit", payload: []byte(`{"image_id":"ami-1"}` + strings.Repeat(" ", MaxRequestBytes)), wantErr: "payload is 532 bytes, exceeds 512 bytes"},
}

func TestParseRequest(t *testing.T) {
	for _, tc := range requestCases {
		t.Run(tc.name, func(t *testing.T) {
			ev := &api.UserEvent{ID: evID, Name: eventName, Payload: tc.payload}
			got, err := ParseRequest(ev, eventName)
			if tc.wantErr != "" {
				require.Error(t, err)
				assert.ErrorIs(t, err, ErrBadPayload)
				assert.Contains(t, err.Error(), `parse rehydrate request in event "`+evID+`": `+tc.wantErr)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
		})
	}
}

func TestParseRequest_RejectsOtherEventName(t *testing.T) {
	ev := &api.UserEvent{ID: evID, Name: "deploy", Payload: []byte(`{}`)}
	_, err := ParseRequest(ev, eventName)
	require.ErrorIs(t, err, ErrBadPayload)
	assert.Equal(t, `parse rehydrate request in event "`+evID+`": event name "deploy", want "consul-rehydrate"`, err.Error())
}

func TestParseRequest_RejectsNilEvent(t *testing.T) {
	_, err := ParseRequest(nil, eventName)
	assert.ErrorIs(t, err, ErrBadPayload)
}

func TestParseRequest_OverLimitIsTooLarge(t *testing.T) {
	ev := &api.UserEvent{ID: evID, Name: eventName, Payload: make([]byte, MaxRequestBytes+1)}
	_, err := ParseRequest(ev, eventName)
	assert.ErrorIs(t, err, ErrTooLarge)
	assert.ErrorIs(t, err, ErrBadPayload)
}

func TestNewRequestPayload(t *testing.T) {
	for _, id := range []string{"ami-0a1b2c3d4e5f60718", "a<b>&c", `quote"back\slash`, "образ-1", strings.Repeat("x", MaxImageIDLen)} {
		p, err := NewRequestPayload(id)
		require.NoError(t, err, id)
		got, err := ParseRequest(&api.UserEvent{ID: evID, Name: eventName, Payload: p}, eventName)
		require.NoError(t, err, id)
		assert.Equal(t, Request{ImageID: id}, got)
	}
	p, err := NewRequestPayload("ami-1")
	require.NoError(t, err)
	assert.Equal(t, `{"image_id":"ami-1"}`, string(p))
}

func TestNewRequestPayload_EmptyIDMeansEmptyPayload(t *testing.T) {
	p, err := NewRequestPayload("")
	require.NoError(t, err)
	assert.Empty(t, p)
}

func TestNewRequestPayload_RejectsInvalidID(t *testing.T) {
	for id, wantErr := range map[string]string{
		"ami 1":                              "image_id has ' ' at byte 3",
		"ami-\xff":                           "image_id is not valid UTF-8",
		strings.Repeat("a", MaxImageIDLen+1): "image_id has 129 characters",
		// 128 four-byte characters are valid one by one but do not fit an event.
		strings.Repeat("😀", MaxImageIDLen): "payload is 527 bytes, exceeds 512 bytes",
	} {
		_, err := NewRequestPayload(id)
		require.Error(t, err, id)
		assert.ErrorIs(t, err, ErrBadPayload)
		assert.Contains(t, err.Error(), "build rehydrate request: "+wantErr)
	}
}
