// Package runcmd runs the commands operators configure (deploy, rollback, reload): in
// a process group of their own, killed whole at their timeout, keeping the tail of
// their output, with a scrubbed environment.
package runcmd

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

// OutputTail is how much of a command's output Run keeps: the end, where the error
// usually is.
const OutputTail = 2048

// waitDelay bounds the wait for a command's output once it has exited or been
// killed: a server it started in the background may hold the pipe open.
const waitDelay = 2 * time.Second

// Spec is one run of a command.
type Spec struct {
	// What names the command in errors ("deploy command").
	What string
	Argv []string
	// Env is the command's own variables (REHYDRATE_…), added to what Environ
	// keeps of this process's environment.
	Env     []string
	Timeout time.Duration
}

// Allowed are the variables of this process's environment a command inherits; every
// other one is left out. The handlers run with the agent's environment, which may
// hold CONSUL_HTTP_TOKEN, AWS credentials, a Vault token, systemd's NOTIFY_SOCKET
// and LISTEN_FDS, LD_PRELOAD: none is the command's to use. What is kept says where
// things are and how to speak, and is no secret:
//
//	PATH                        where programs are: the command's own children
//	                            find theirs
//	HOME, USER, LOGNAME         who the command runs as, and where that user's
//	                            files are (a tool reading ~/.config)
//	LANG, LANGUAGE, LC_*, TZ    the language, character set and time zone of its
//	                            messages and timestamps
//	TMPDIR                      where its temporary files go (a unit with its own
//	                            temporary directory)
//	SSL_CERT_FILE, SSL_CERT_DIR which CA certificates to trust, for a command that
//	                            downloads an artifact over HTTPS (OpenSSL and Go
//	                            read them)
//
// SHELL is left out: a command is argv, never run by a shell, and a script names
// its interpreter in its #! line. Proxies (HTTPS_PROXY…) are left out: their URLs
// may hold credentials. A command that needs another variable is given it in its
// argv: ["/usr/bin/env", "HTTPS_PROXY=http://proxy:3128", "/opt/web/deploy"].
var Allowed = []string{
	"PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "LC_*", "TZ", "TMPDIR",
	"SSL_CERT_FILE", "SSL_CERT_DIR",
}

// Environ returns the environment a command runs with: the variables of parent
// (KEY=value entries, as os.Environ returns) that Allowed names, then add.
func Environ(parent, add []string) []string {
	var env []string
	for _, kv := range parent {
		key, _, ok := strings.Cut(kv, "=")
		if ok && allowed(key) {
			env = append(env, kv)
		}
	}
	return append(env, add...)
}

func allowed(key string) bool {
	for _, a := range Allowed {
		if prefix, ok := strings.CutSuffix(a, "*"); (ok && strings.HasPrefix(key, prefix)) || a == key {
			return true
		}
	}
	return false
}

// Tail keeps the last N bytes written to it.
type Tail struct {
	N   int
	mu  sync.Mutex
	buf []byte
	cut bool
}

func (t *Tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if over := len(t.buf) - t.N; over > 0 {
		t.buf, t.cut = append(t.buf[:0], t.buf[over:]...), true
	}
	return len(p), nil
}

// String returns what was kept, marked with … when the start was cut.
func (t *Tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := strings.ToValidUTF8(string(t.buf), "")
	if t.cut {
		s = "…" + s
	}
	return s
}

// Run runs a command in its own process group, which is killed whole when the
// timeout passes or parent ends, with the environment Environ makes of this
// process's and s.Env. It returns the tail of stdout and stderr together.
func Run(parent context.Context, s Spec) (string, error) {
	ctx, cancel := context.WithTimeout(parent, s.Timeout)
	defer cancel()
	out := &Tail{N: OutputTail}
	cmd := exec.CommandContext(ctx, s.Argv[0], s.Argv[1:]...)
	cmd.Env = Environ(os.Environ(), s.Env)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = waitDelay
	err := cmd.Run()
	switch {
	case err == nil:
		return out.String(), nil
	case errors.Is(ctx.Err(), context.DeadlineExceeded) && parent.Err() == nil && cmd.ProcessState != nil && !cmd.ProcessState.Success():
		return out.String(), fmt.Errorf("%s %s: killed after its timeout of %s", s.What, s.Argv[0], s.Timeout)
	case parent.Err() != nil:
		return out.String(), fmt.Errorf("%s %s: killed, the handler is out of time: %w", s.What, s.Argv[0], context.Cause(parent))
	case errors.Is(err, exec.ErrWaitDelay):
		// It succeeded; something it left running kept its output open.
		return out.String(), nil
	default:
		return out.String(), fmt.Errorf("%s %s: %w", s.What, s.Argv[0], err)
	}
}
