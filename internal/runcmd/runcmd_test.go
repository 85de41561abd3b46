package runcmd

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestTail_KeepsTheEndOfTheOutput(t *testing.T) {
	tl := &Tail{N: 8}
	_, _ = tl.Write([]byte("0123"))
	assert.Equal(t, "0123", tl.String())
	_, _ = tl.Write([]byte("456789ab"))
	assert.Equal(t, "…456789ab", tl.String())
}

func TestRun_ReportsExitAndOutputAndPassesTheEnvironment(t *testing.T) {
	out, err := Run(context.Background(), Spec{What: "reload command", Argv: []string{"/bin/sh", "-c", `echo "v=$V"; exit 3`},
		Env: []string{"V=7"}, Timeout: 10 * time.Second})
	require.Error(t, err)
	assert.Equal(t, "reload command /bin/sh: exit status 3", err.Error())
	assert.Equal(t, "v=7\n", out)

	out, err = Run(context.Background(), Spec{What: "x", Argv: []string{"/bin/sh", "-c", "echo ok"}, Timeout: 10 * time.Second})
	require.NoError(t, err)
	assert.Equal(t, "ok\n", out)
}

func TestRun_NamesTheTimeoutAndTheParentsEnd(t *testing.T) {
	start := time.Now()
	_, err := Run(context.Background(), Spec{What: "reload command", Argv: []string{"/bin/sh", "-c", "sleep 30"}, Timeout: 200 * time.Millisecond})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "killed after its timeout of 200ms")
	assert.Less(t, time.Since(start), 5*time.Second)

	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err = Run(ctx, Spec{What: "reload command", Argv: []string{"/bin/sh", "-c", "sleep 30"}, Timeout: time.Minute})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "the handler is out of time")
}
