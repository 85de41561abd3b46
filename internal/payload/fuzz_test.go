package payload

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"strings"
	"testing"

	"github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/require"
)

// The fuzz targets run their seeds in every `go test`; fuzz one with e.g.
//
//	go test -run x -fuzz FuzzEvents -fuzztime 20s ./internal/payload/

func FuzzEvents(f *testing.F) {
	for _, tc := range eventCases {
		f.Add([]byte(tc.in))
	}
	seedWatch(f, "event")
	fuzzWatch(f, "event", Decoder.Events)
}

func FuzzServices(f *testing.F) {
	for _, tc := range serviceCases {
		f.Add([]byte(tc.in))
	}
	seedWatch(f, "service")
	fuzzWatch(f, "service", Decoder.Services)
}

func FuzzChecks(f *testing.F) {
	for _, tc := range checksCases {
		f.Add([]byte(tc.in))
	}
	seedWatch(f, "checks")
	fuzzWatch(f, "checks", Decoder.Checks)
}

func FuzzKey(f *testing.F) {
	for _, tc := range keyCases {
		f.Add([]byte(tc.in))
	}
	seedWatch(f, "key")
	fuzzWatch(f, "key", Decoder.Key)
}

func FuzzKeyPrefix(f *testing.F) {
	for _, tc := range keyPrefixCases {
		f.Add([]byte(tc.in))
	}
	seedWatch(f, "keyprefix")
	fuzzWatch(f, "keyprefix", Decoder.KeyPrefix)
}

func FuzzParseRequest(f *testing.F) {
	for _, tc := range requestCases {
		f.Add(tc.payload)
	}
	// The payloads of the golden events.
	for _, path := range goldenFiles(f, "event") {
		data, err := os.ReadFile(path)
		require.NoError(f, err)
		events, err := Events(bytes.NewReader(data))
		require.NoError(f, err)
		for _, ev := range events {
			f.Add(ev.Payload)
		}
	}
	f.Fuzz(func(t *testing.T, p []byte) {
		req, err := ParseRequest(&api.UserEvent{ID: evID, Name: eventName, Payload: p}, eventName)
		if err != nil {
			require.ErrorIs(t, err, ErrBadPayload)
			require.True(t, strings.HasPrefix(err.Error(), `parse rehydrate request in event "`+evID+`": `), err.Error())
			return
		}
		require.LessOrEqual(t, len(p), MaxRequestBytes)
		require.False(t, req.Continue && req.ImageID != "", "a continuation names no image")
		if req.ImageID == "" {
			return
		}
		require.NoError(t, checkImageID(req.ImageID))
		// What the CLI would build for this request parses back to it.
		built, err := NewRequestPayload(req.ImageID)
		require.NoError(t, err)
		again, err := ParseRequest(&api.UserEvent{ID: evID, Name: eventName, Payload: built}, eventName)
		require.NoError(t, err)
		require.Equal(t, req, again)
	})
}

// seedWatch adds the inputs every decoder rejects and the golden payloads
// of watch type typ as seeds.
func seedWatch(f *testing.F, typ string) {
	for _, tc := range commonBad(typ) {
		f.Add([]byte(tc.in))
	}
	for _, path := range goldenFiles(f, typ) {
		data, err := os.ReadFile(path)
		require.NoError(f, err)
		f.Add(data)
	}
}

// fuzzWatch checks that decode never panics, that every error is a bad
// payload, and that a decoded value survives encoding/json (what the agent
// uses) and decoding again. The encodings are compared, not the values:
// Consul's omitempty fields turn an empty slice or map into an absent one,
// which decodes as nil.
func fuzzWatch[T any](f *testing.F, typ string, decode func(Decoder, io.Reader) (T, error)) {
	f.Fuzz(func(t *testing.T, data []byte) {
		v, err := decode(Decoder{}, bytes.NewReader(data))
		if err != nil {
			require.ErrorIs(t, err, ErrBadPayload)
			require.True(t, strings.HasPrefix(err.Error(), "decode "+typ+" watch payload: "), err.Error())
			if errors.Is(err, ErrTooLarge) {
				require.Greater(t, len(data), DefaultMaxBytes)
			}
			return
		}
		enc, err := json.Marshal(v)
		require.NoError(t, err)
		// Re-encoding fills in every field, so allow it to outgrow the limit.
		v2, err := decode(Decoder{MaxBytes: int64(len(enc))}, bytes.NewReader(enc))
		require.NoError(t, err, "re-decoding %s", enc)
		enc2, err := json.Marshal(v2)
		require.NoError(t, err)
		require.Equal(t, string(enc), string(enc2))
	})
}
