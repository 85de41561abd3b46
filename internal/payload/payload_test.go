package payload

import (
	"bytes"
	"errors"
	"io"
	"strconv"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// watchTypes are the watch types, named as in Consul's watch "type" and in
// testdata/golden/<type>.
var watchTypes = []string{"event", "service", "checks", "key", "keyprefix"}

// decodeAs decodes data with the decoder for watch type typ.
func decodeAs(d Decoder, typ string, r io.Reader) (any, error) {
	switch typ {
	case "event":
		return d.Events(r)
	case "service":
		return d.Services(r)
	case "checks":
		return d.Checks(r)
	case "key":
		return d.Key(r)
	case "keyprefix":
		return d.KeyPrefix(r)
	}
	panic("unknown watch type " + typ)
}

// validMinimal is a smallest valid payload of each watch type.
var validMinimal = map[string]string{
	"event": "[]", "service": "[]", "checks": "[]", "key": "{}", "keyprefix": "[]",
}

// badCase is an input every decoder must reject, with a part of the message.
type badCase struct {
	name, in, wantErr string
}

// commonBad returns inputs that every watch type rejects; typ picks a valid
// value to build trailing-data cases from.
func commonBad(typ string) []badCase {
	valid := validMinimal[typ]
	return []badCase{
		{"empty", "", "empty payload"},
		{"whitespace", " \n\t\r\n", "empty payload"},
		{"not json", "hello", "invalid JSON at offset 1"},
		{"truncated", "[{\"ID\":", "truncated JSON"},
		{"unterminated string", "\"abc", "truncated JSON"},
		{"byte order mark", "\ufeff" + valid, "invalid JSON"},
		{"vertical tab is not json space", "\v" + valid, "invalid JSON"},
		{"trailing garbage", valid + " x", "trailing data after JSON value at offset " + strconv.Itoa(len(valid)+1)},
		{"second value", valid + "\n" + valid + "\n", "trailing data after JSON value"},
		{"trailing bracket", valid + "]", "trailing data"},
		{"string", `"[]"`, "got string"},
		{"number", "42", "got number"},
		{"boolean", "true", "got boolean"},
	}
}

func TestDecoders_RejectMalformedInput(t *testing.T) {
	for _, typ := range watchTypes {
		for _, tc := range commonBad(typ) {
			t.Run(typ+"/"+tc.name, func(t *testing.T) {
				v, err := decodeAs(Decoder{}, typ, strings.NewReader(tc.in))
				require.Error(t, err, "decoded %#v", v)
				assert.ErrorIs(t, err, ErrBadPayload)
				assert.NotErrorIs(t, err, ErrTooLarge)
				assert.True(t, strings.HasPrefix(err.Error(), "decode "+typ+" watch payload: "), err.Error())
				assert.Contains(t, err.Error(), tc.wantErr)
			})
		}
	}
}

func TestDecoders_AcceptTrailingNewlineAsTheAgentWritesIt(t *testing.T) {
	for _, typ := range watchTypes {
		_, err := decodeAs(Decoder{}, typ, strings.NewReader(" "+validMinimal[typ]+"\n"))
		assert.NoError(t, err, typ)
	}
}

// eventCases are event watch payloads; the fuzz target seeds from them.
var eventCases = []struct {
	name, in string
	want     []*api.UserEvent // checked when wantErr is empty
	wantErr  string
}{
	{name: "empty array", in: "[]\n", want: []*api.UserEvent{}},
	{
		name: "event with payload",
		in:   `[{"ID":"b8e0f6a1-3d42-4f7c-8e19-5a6b7c8d9e0f","Name":"consul-rehydrate","Payload":"eyJpbWFnZV9pZCI6ImFtaS0xIn0=","NodeFilter":"","ServiceFilter":"","TagFilter":"","Version":1,"LTime":2}]`,
		want: []*api.UserEvent{{ID: "b8e0f6a1-3d42-4f7c-8e19-5a6b7c8d9e0f", Name: "consul-rehydrate", Payload: []byte(`{"image_id":"ami-1"}`), Version: 1, LTime: 2}},
	},
	{
		name: "null payload and buffer order kept",
		in:   `[{"ID":"a","Name":"n","Payload":null,"LTime":7},{"ID":"b","Name":"n","LTime":3}]`,
		want: []*api.UserEvent{{ID: "a", Name: "n", LTime: 7}, {ID: "b", Name: "n", LTime: 3}},
	},
	{
		name: "unknown fields from a newer consul are allowed",
		in:   `[{"ID":"a","Name":"n","Partition":"default","Future":{"x":[1,2]}}]`,
		want: []*api.UserEvent{{ID: "a", Name: "n"}},
	},
	{name: "null", in: "null", wantErr: "expected array, got null"},
	{name: "object", in: `{"ID":"a"}`, wantErr: "expected array, got object"},
	{name: "null element", in: "[null]", wantErr: "element 0 (offset 1): expected object, got null"},
	{name: "later null element", in: `[{"ID":"a"}, null]`, wantErr: "element 1 (offset 13): expected object, got null"},
	{name: "nested array element", in: `[[{"ID":"a"}]]`, wantErr: "element 0 (offset 1): expected object, got array"},
	{name: "invalid base64 payload", in: `[{"ID":"a","Payload":"not base64!"}]`, wantErr: "element 0 (offset 1): illegal base64 data"},
	{name: "payload an object", in: `[{"ID":"a","Payload":{"a":1}}]`, wantErr: "element 0 (offset 22): json: cannot unmarshal object"},
	{name: "version as string", in: `[{}, {"ID":"a","Version":"1"}]`, wantErr: "element 1 (offset 28): json: cannot unmarshal string into Go struct field UserEvent.Version of type int"},
	{name: "negative ltime", in: `[{"LTime":-1}]`, wantErr: "element 0 (offset 12): json: cannot unmarshal number -1"},
}

func TestEvents(t *testing.T) {
	for _, tc := range eventCases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Events(strings.NewReader(tc.in))
			if tc.wantErr != "" {
				require.Error(t, err)
				assert.ErrorIs(t, err, ErrBadPayload)
				assert.Contains(t, err.Error(), "decode event watch payload: "+tc.wantErr)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
		})
	}
}

// serviceCases are service watch payloads; the fuzz target seeds from them.
var serviceCases = []struct {
	name, in string
	wantErr  string
}{
	{name: "empty array", in: "[]"},
	{name: "entry", in: `[{"Node":{"Node":"n1","Meta":{"image_id":"ami-1"}},"Service":{"ID":"consul","Service":"consul","Tags":[],"Port":8300},"Checks":[{"CheckID":"serfHealth","Status":"passing"}]}]`},
	{name: "null inner fields are go zero values", in: `[{"Node":null,"Service":null,"Checks":null}]`},
	{name: "unknown nested fields allowed", in: `[{"Node":{"Node":"n1","Shiny":true},"Service":{"Service":"web","Ports":[{"Name":"http","Port":80}]}}]`},
	{name: "null", in: "null", wantErr: "expected array, got null"},
	{name: "object", in: `{"Node":{}}`, wantErr: "expected array, got object"},
	{name: "null element", in: `[{}, null]`, wantErr: "element 1 (offset 5): expected object, got null"},
	{name: "port as string", in: `[{"Service":{"Port":"8300"}}]`, wantErr: "element 0 (offset 26): json: cannot unmarshal string into Go struct field AgentService.Service.Port of type int"},
	{name: "meta value not a string", in: `[{"Node":{"Meta":{"image_id":1}}}]`, wantErr: "element 0 (offset 30): json: cannot unmarshal number"},
	{name: "check definition null", in: `[{"Checks":[{"Definition":null}]}]`, wantErr: "element 0 (offset 1): value rejected by consul api decoder"},
	{name: "check interval not a duration", in: `[{"Checks":[{"Definition":{"Interval":"soon"}}]}]`, wantErr: "element 0 (offset 1): time: invalid duration"},
}

func TestServices(t *testing.T) {
	for _, tc := range serviceCases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Services(strings.NewReader(tc.in))
			if tc.wantErr != "" {
				require.Error(t, err)
				assert.ErrorIs(t, err, ErrBadPayload)
				assert.Contains(t, err.Error(), "decode service watch payload: "+tc.wantErr)
				return
			}
			require.NoError(t, err)
			require.NotNil(t, got)
			for _, e := range got {
				require.NotNil(t, e)
			}
		})
	}
}

func TestServices_DecodesFields(t *testing.T) {
	got, err := Services(strings.NewReader(serviceCases[1].in))
	require.NoError(t, err)
	require.Len(t, got, 1)
	assert.Equal(t, "ami-1", got[0].Node.Meta["image_id"])
	assert.Equal(t, 8300, got[0].Service.Port)
	assert.Equal(t, api.HealthPassing, got[0].Checks.AggregatedStatus())
}

// checksCases are checks watch payloads; the fuzz target seeds from them.
var checksCases = []struct {
	name, in string
	wantErr  string
}{
	{name: "empty array", in: "[]"},
	{name: "checks", in: `[{"Node":"n1","CheckID":"serfHealth","Status":"passing","ServiceTags":[]},{"CheckID":"service:web","Status":"critical","Definition":{"Interval":"10s","Timeout":"2s","HTTP":"http://x/health"}}]`},
	{name: "unknown fields allowed", in: `[{"CheckID":"c","Status":"passing","Newer":{"a":1}}]`},
	{name: "duration fields as consul's api decodes them", in: `[{"Definition":{"IntervalDuration":"1h","Interval":"5s","TimeoutDuration":1e300,"DeregisterCriticalServiceAfter":90000000000}}]`},
	{name: "duration of the wrong type is ignored by consul's api", in: `[{"Definition":{"IntervalDuration":true}}]`},
	{name: "null", in: "null", wantErr: "expected array, got null"},
	{name: "object", in: "{}", wantErr: "expected array, got object"},
	{name: "null element", in: "[null]", wantErr: "element 0 (offset 1): expected object, got null"},
	{name: "status not a string", in: `[{"Status":0}]`, wantErr: "element 0 (offset 12): json: cannot unmarshal number"},
	{name: "definition null", in: `[{"Definition":null}]`, wantErr: "element 0 (offset 1): value rejected by consul api decoder"},
	{name: "interval null", in: `[{"Definition":{"Interval":null}}]`, wantErr: "element 0"},
	{name: "interval duration not a duration", in: `[{"Definition":{"IntervalDuration":"soon"}}]`, wantErr: "element 0 (offset 1): time: invalid duration"},
}

func TestChecks(t *testing.T) {
	for _, tc := range checksCases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Checks(strings.NewReader(tc.in))
			if tc.wantErr != "" {
				require.Error(t, err)
				assert.ErrorIs(t, err, ErrBadPayload)
				assert.Contains(t, err.Error(), "decode checks watch payload: "+tc.wantErr)
				return
			}
			require.NoError(t, err)
			require.NotNil(t, got)
		})
	}
}

func TestChecks_DecodesDurations(t *testing.T) {
	got, err := Checks(strings.NewReader(checksCases[1].in))
	require.NoError(t, err)
	require.Len(t, got, 2)
	assert.Equal(t, "10s", got[1].Definition.IntervalDuration.String())
	assert.Equal(t, "critical", got[1].Status)

	got, err = Checks(strings.NewReader(checksCases[3].in))
	require.NoError(t, err)
	require.Len(t, got, 1)
	assert.Equal(t, "1h0m0s", got[0].Definition.IntervalDuration.String(), "IntervalDuration wins over Interval")
	assert.Equal(t, "1m30s", got[0].Definition.DeregisterCriticalServiceAfterDuration.String())
}

// keyCases are key watch payloads; the fuzz target seeds from them.
var keyCases = []struct {
	name, in string
	want     *api.KVPair // checked when wantErr is empty
	wantErr  string
}{
	{name: "missing key is null", in: "null\n", want: nil},
	{
		name: "pair",
		in:   `{"Key":"deploy/web/nodes/n1/desired","CreateIndex":5,"ModifyIndex":9,"LockIndex":0,"Flags":0,"Value":"MS40LjI=","Session":""}`,
		want: &api.KVPair{Key: "deploy/web/nodes/n1/desired", CreateIndex: 5, ModifyIndex: 9, Value: []byte("1.4.2")},
	},
	{name: "null value", in: `{"Key":"k","Value":null}`, want: &api.KVPair{Key: "k"}},
	{name: "unknown fields allowed", in: `{"Key":"k","Namespace":"default","Later":1}`, want: &api.KVPair{Key: "k", Namespace: "default"}},
	{name: "array", in: `[{"Key":"k"}]`, wantErr: "expected object or null, got array"},
	{name: "invalid base64 value", in: `{"Key":"k","Value":"%%%"}`, wantErr: "value (offset 0): illegal base64 data"},
	{name: "flags as string", in: ` {"Key":"k","Flags":"1"}`, wantErr: "value (offset 23): json: cannot unmarshal string"},
}

func TestKey(t *testing.T) {
	for _, tc := range keyCases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Key(strings.NewReader(tc.in))
			if tc.wantErr != "" {
				require.Error(t, err)
				assert.ErrorIs(t, err, ErrBadPayload)
				assert.Contains(t, err.Error(), "decode key watch payload: "+tc.wantErr)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
		})
	}
}

// keyPrefixCases are keyprefix watch payloads; the fuzz target seeds from them.
var keyPrefixCases = []struct {
	name, in string
	want     api.KVPairs // checked when wantErr is empty
	wantErr  string
}{
	{name: "no key under prefix is null", in: "null\n", want: nil},
	{name: "empty array", in: "[]", want: api.KVPairs{}},
	{
		name: "pairs",
		in:   `[{"Key":"deploy/web/","Value":null},{"Key":"deploy/web/a","Value":"YQ==","LockIndex":1,"Session":"s"}]`,
		want: api.KVPairs{{Key: "deploy/web/"}, {Key: "deploy/web/a", Value: []byte("a"), LockIndex: 1, Session: "s"}},
	},
	{name: "object", in: `{"Key":"k"}`, wantErr: "expected array, got object"},
	{name: "null element", in: `[{"Key":"a"},null]`, wantErr: "element 1 (offset 13): expected object, got null"},
	{name: "string element", in: `["deploy/web/a"]`, wantErr: "element 0 (offset 1): expected object, got string"},
	{name: "invalid base64 value", in: `[{"Key":"a","Value":"Y"}]`, wantErr: "element 0 (offset 1): illegal base64 data"},
}

func TestKeyPrefix(t *testing.T) {
	for _, tc := range keyPrefixCases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := KeyPrefix(strings.NewReader(tc.in))
			if tc.wantErr != "" {
				require.Error(t, err)
				assert.ErrorIs(t, err, ErrBadPayload)
				assert.Contains(t, err.Error(), "decode keyprefix watch payload: "+tc.wantErr)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
		})
	}
}

func TestDecoder_AcceptsExactlyMaxBytes(t *testing.T) {
	for _, typ := range watchTypes {
		in := validMinimal[typ] + strings.Repeat(" ", 62)
		require.Len(t, in, 64)
		_, err := decodeAs(Decoder{MaxBytes: 64}, typ, strings.NewReader(in))
		assert.NoError(t, err, typ)
	}
}

func TestDecoder_RejectsOverLimitPayload(t *testing.T) {
	for _, typ := range watchTypes {
		in := validMinimal[typ] + strings.Repeat(" ", 63)
		_, err := decodeAs(Decoder{MaxBytes: 64}, typ, strings.NewReader(in))
		require.Error(t, err, typ)
		assert.ErrorIs(t, err, ErrTooLarge)
		assert.ErrorIs(t, err, ErrBadPayload)
		assert.Equal(t, "decode "+typ+" watch payload: payload exceeds 64 bytes", err.Error())
	}
}

func TestDecoder_ZeroMaxBytesMeansDefault(t *testing.T) {
	big := bytes.Repeat([]byte(" "), DefaultMaxBytes)
	_, err := Events(io.MultiReader(strings.NewReader("[]"), bytes.NewReader(big)))
	require.ErrorIs(t, err, ErrTooLarge)
	assert.Contains(t, err.Error(), "payload exceeds 4194304 bytes")

	_, err = Decoder{MaxBytes: -1}.Events(io.MultiReader(strings.NewReader("[]"), bytes.NewReader(big[2:])))
	assert.NoError(t, err, "exactly DefaultMaxBytes is allowed")
}

func TestDecoder_StopsReadingPastLimit(t *testing.T) {
	// An endless stream must not be read to its end.
	_, err := Decoder{MaxBytes: 1 << 10}.Services(endless{})
	assert.ErrorIs(t, err, ErrTooLarge)
}

type endless struct{}

func (endless) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = ' '
	}
	return len(p), nil
}

func TestDecoder_ReadErrorIsNotBadPayload(t *testing.T) {
	boom := errors.New("boom")
	_, err := Checks(iotest.ErrReader(boom))
	require.ErrorIs(t, err, boom)
	assert.NotErrorIs(t, err, ErrBadPayload)
	assert.Equal(t, "decode checks watch payload: read payload: boom", err.Error())
}

func TestErrTooLarge_IsBadPayload(t *testing.T) {
	assert.ErrorIs(t, ErrTooLarge, ErrBadPayload)
	assert.NotErrorIs(t, ErrBadPayload, ErrTooLarge)
}
