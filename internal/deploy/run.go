package deploy

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Environment the deploy and rollback commands get, besides the handler's own.
const (
	EnvVersion         = "REHYDRATE_DEPLOY_VERSION"
	EnvID              = "REHYDRATE_DEPLOY_ID"
	EnvArtifact        = "REHYDRATE_DEPLOY_ARTIFACT"
	EnvPreviousVersion = "REHYDRATE_DEPLOY_PREVIOUS_VERSION"
	EnvRollback        = "REHYDRATE_DEPLOY_ROLLBACK"
	EnvService         = "REHYDRATE_DEPLOY_SERVICE"
)

// OutputTail is how much of a command's output a status keeps: the end, where
// the error usually is.
const OutputTail = 2048

// waitDelay bounds the wait for a command's output once it has exited or been
// killed: a server it started in the background may hold the pipe open.
const waitDelay = 2 * time.Second

// runSpec is one run of a command.
type runSpec struct {
	argv     []string
	env      []string // added to the handler's environment
	timeout  time.Duration
	rollback bool
}

// tail keeps the last n bytes written to it.
type tail struct {
	mu  sync.Mutex
	n   int
	buf []byte
	cut bool
}

func (t *tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if over := len(t.buf) - t.n; over > 0 {
		t.buf, t.cut = append(t.buf[:0], t.buf[over:]...), true
	}
	return len(p), nil
}

func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := strings.ToValidUTF8(string(t.buf), "")
	if t.cut {
		s = "…" + s
	}
	return s
}

// run runs a command in its own process group, which is killed whole when the
// timeout passes or ctx ends. It returns the tail of stdout and stderr together.
func run(parent context.Context, s runSpec) (string, error) {
	ctx, cancel := context.WithTimeout(parent, s.timeout)
	defer cancel()
	out := &tail{n: OutputTail}
	cmd := exec.CommandContext(ctx, s.argv[0], s.argv[1:]...)
	cmd.Env = append(os.Environ(), s.env...)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = waitDelay
	err := cmd.Run()
	what := "deploy command"
	if s.rollback {
		what = "rollback command"
	}
	switch {
	case err == nil:
		return out.String(), nil
	case errors.Is(ctx.Err(), context.DeadlineExceeded) && parent.Err() == nil && cmd.ProcessState != nil && !cmd.ProcessState.Success():
		return out.String(), fmt.Errorf("%s %s: killed after its timeout of %s", what, s.argv[0], s.timeout)
	case parent.Err() != nil:
		return out.String(), fmt.Errorf("%s %s: killed, the handler is out of time: %w", what, s.argv[0], context.Cause(parent))
	case errors.Is(err, exec.ErrWaitDelay):
		// It succeeded; something it left running kept its output open.
		return out.String(), nil
	default:
		return out.String(), fmt.Errorf("%s %s: %w", what, s.argv[0], err)
	}
}
