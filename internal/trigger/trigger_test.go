package trigger

import (
	"context"
	"errors"
	"testing"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestWithToken_ReadsARotatedTokenAgainOnceWhenConsulRefusesIt: a warm container
// whose token was rotated (Consul answers 403 "ACL not found") reads the token again
// and retries the call once, then keeps the new token; anything else is not retried.
func TestWithToken_ReadsARotatedTokenAgainOnceWhenConsulRefusesIt(t *testing.T) {
	denied := api.StatusError{Code: 403, Body: "ACL not found"}
	for _, tc := range []struct {
		name      string
		answers   map[string]error // the call's answer by token
		source    string           // what Token returns
		sourceErr error
		calls     []string // the tokens the call was made with
		reads     int      // Token calls
		err       string
		after     string // the token in use afterwards
	}{
		{"rotated: read again, retried, kept", map[string]error{"old": denied}, "new", nil, []string{"old", "new"}, 1, "", "new"},
		{"an event fire's 500 from a server that does not know the token", map[string]error{"old": api.StatusError{Code: 500, Body: "rpc error making call: ACL not found"}}, "new", nil, []string{"old", "new"}, 1, "", "new"},
		{"401 too", map[string]error{"old": api.StatusError{Code: 401}}, "new", nil, []string{"old", "new"}, 1, "", "new"},
		{"the new one refused too: no second retry", map[string]error{"old": denied, "new": denied}, "new", nil, []string{"old", "new"}, 1, "403", "new"},
		{"the same token: no retry", map[string]error{"old": denied}, "old", nil, []string{"old"}, 1, "ACL not found", "old"},
		{"the parameter unreadable", map[string]error{"old": denied}, "", errors.New("AccessDeniedException"), []string{"old"}, 1, "AccessDeniedException", "old"},
		{"not a refusal: not read again", map[string]error{"old": api.StatusError{Code: 500, Body: "rpc error"}}, "new", nil, []string{"old"}, 0, "500", "old"},
		{"unreachable: not read again", map[string]error{"old": errors.New("connection refused")}, "new", nil, []string{"old"}, 0, "connection refused", "old"},
		{"accepted: not read again", map[string]error{}, "new", nil, []string{"old"}, 0, "", "old"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reads := 0
			tr := &Trigger{Log: hclog.NewNullLogger(), Token: func(context.Context) (string, error) {
				reads++
				return tc.source, tc.sourceErr
			}}
			tr.SetToken("old")
			var calls []string
			err := tr.withToken(context.Background(), func(token string) error {
				calls = append(calls, token)
				return tc.answers[token]
			})
			if tc.err == "" {
				require.NoError(t, err)
			} else {
				require.ErrorContains(t, err, tc.err)
			}
			assert.Equal(t, tc.calls, calls)
			assert.Equal(t, tc.reads, reads)
			assert.Equal(t, tc.after, tr.currentToken())
		})
	}
}
