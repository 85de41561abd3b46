package payload

import (
	"testing"

	"github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestCheckEventID(t *testing.T) {
	for _, id := range []string{
		evID,
		"00000000-0000-0000-0000-00000000e001",
		"6c3d8f2e-0b7a-4c1e-9a55-2f0d3c4b5a61", // RFC 4122 version 4
	} {
		assert.NoError(t, CheckEventID(id), id)
	}
	for id, wantErr := range map[string]string{
		"":                                        "0 bytes, want 36",
		"e1":                                      "2 bytes, want 36",
		"../../lock":                              "10 bytes, want 36",
		evID + "0":                                "37 bytes, want 36",
		"2AC2AC71-4BE1-989D-1AC5-3C5DD0E61B63":    "byte 1 is 'A', want a lowercase hex digit",
		"2ac2ac71-4be1-989d-1ac5-3c5dd0e61b6/":    "byte 35 is '/', want a lowercase hex digit",
		"2ac2ac71-4be1-989d-1ac5-../../../loc":    "byte 24 is '.', want a lowercase hex digit",
		"2ac2ac71x4be1-989d-1ac5-3c5dd0e61b63":    "byte 8 is 'x', want '-'",
		"2ac2ac714be1-989d-1ac5-3c5dd0e61b63-":    "byte 8 is '4', want '-'",
		"{2ac2ac71-4be1-989d-1ac5-3c5dd0e61b6}":   "37 bytes",
		"2ac2ac71-4be1-989d-1ac5-3c5dd0e61b6\x00": "byte 35 is '\\x00'",
	} {
		err := CheckEventID(id)
		require.Error(t, err, "%q", id)
		assert.ErrorIs(t, err, ErrBadPayload)
		assert.Contains(t, err.Error(), "is not a UUID: "+wantErr, "%q", id)
	}
}

func TestParseRequest_RefusesAnEventIDThatIsNotAUUID(t *testing.T) {
	_, err := ParseRequest(&api.UserEvent{ID: "../roll", Name: eventName}, eventName)
	require.ErrorIs(t, err, ErrBadPayload)
	assert.Equal(t, `parse rehydrate request: event ID "../roll" is not a UUID: 7 bytes, want 36`, err.Error())
}

func TestNewContinuePayload_ParsesAsAContinuation(t *testing.T) {
	req, err := ParseRequest(&api.UserEvent{ID: evID, Name: eventName, Payload: NewContinuePayload()}, eventName)
	require.NoError(t, err)
	assert.Equal(t, Request{Continue: true}, req)
	assert.False(t, req.Requests())
	assert.True(t, Request{}.Requests(), "an empty payload requests the newest allowed image")
	assert.True(t, Request{ImageID: "ami-1"}.Requests())
}

func TestPick(t *testing.T) {
	const (
		image    = `{"image_id":"ami-1"}`
		image2   = `{"image_id":"ami-2"}`
		plain    = ``
		cont     = `{"continue":true}`
		badJSON  = `not json`
		badIDTag = "!badid"
	)
	id := func(n int) string { return "00000000-0000-0000-0000-00000000000" + string(rune('0'+n)) }
	tests := []struct {
		name    string
		batch   []string // payloads, oldest first; badIDTag gives the event a bad ID
		want    int      // index of the picked event, -1 for none
		refused int
	}{
		{"one request", []string{image}, 0, 0},
		{"one continuation", []string{cont}, 0, 0},
		{"a later request wins over an older one", []string{image, image2}, 1, 0},
		{"a later plain request wins over an older image request", []string{image, plain}, 1, 0},
		{"a later image request wins over an older plain one", []string{plain, image}, 1, 0},
		{"a later continuation does not cancel a request", []string{image, cont}, 0, 0},
		{"nor do several", []string{cont, image, cont, cont}, 1, 0},
		{"a later continuation does not cancel a plain request", []string{plain, cont}, 0, 0},
		{"a request after a continuation wins", []string{cont, image}, 1, 0},
		{"the newest of continuations alone", []string{cont, cont}, 1, 0},
		{"a malformed event does not hide an earlier request", []string{image, badJSON}, 0, 1},
		{"nor a later one", []string{badJSON, image}, 1, 1},
		{"an event with a bad ID is refused and hides nothing", []string{image, badIDTag}, 0, 1},
		{"nothing well-formed", []string{badJSON, badIDTag}, -1, 2},
		{"empty batch", nil, -1, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var events []*api.UserEvent
			for i, p := range tt.batch {
				e := &api.UserEvent{ID: id(i), Name: eventName, Payload: []byte(p)}
				if p == badIDTag {
					e.ID, e.Payload = "forged/../../lock", nil
				}
				events = append(events, e)
			}
			got, ok, refused := Pick(events, eventName)
			assert.Len(t, refused, tt.refused)
			for _, r := range refused {
				assert.ErrorIs(t, r.Err, ErrBadPayload)
				assert.Contains(t, events, r.Event)
			}
			if tt.want < 0 {
				assert.False(t, ok)
				return
			}
			require.True(t, ok)
			assert.Same(t, events[tt.want], got.Event)
			want, err := ParseRequest(events[tt.want], eventName)
			require.NoError(t, err)
			assert.Equal(t, want, got.Request)
		})
	}
}
