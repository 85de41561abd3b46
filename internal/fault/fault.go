// Package fault is the crash-injection point the fault tests use to kill a handler at
// a step boundary. It does nothing unless the environment asks for it:
//
//	REHYDRATE_CRASH_AT   comma-separated points, e.g. "locked,acted:launch"
//	REHYDRATE_CRASH_DIR  if set, each point crashes once: the first process to reach it
//	                     creates <dir>/<point> (O_EXCL) and dies; later ones go on
//
// A crash is SIGKILL to the process itself: no deferred call runs, no lock is
// released, exactly as when a machine dies.
package fault

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Environment variables that arm the points.
const (
	EnvCrashAt  = "REHYDRATE_CRASH_AT"
	EnvCrashDir = "REHYDRATE_CRASH_DIR"
)

// Point kills the process if the environment arms this point.
func Point(name string) {
	at := os.Getenv(EnvCrashAt)
	if at == "" || !armed(at, name) {
		return
	}
	if dir := os.Getenv(EnvCrashDir); dir != "" {
		f, err := os.OpenFile(filepath.Join(dir, Marker(name)), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
		if err != nil {
			return // crashed here once already (or the dir is unusable): go on
		}
		fmt.Fprintf(f, "pid %d crashed at %s at %s\n", os.Getpid(), name, time.Now().UTC().Format(time.RFC3339Nano))
		f.Close()
	}
	_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
	select {} // SIGKILL is not deliverable late, but never run past a crash point
}

// Marker is the file name under REHYDRATE_CRASH_DIR that records a crash at point.
func Marker(point string) string {
	return "crashed-" + strings.ReplaceAll(point, ":", "-")
}

func armed(list, name string) bool {
	for _, p := range strings.Split(list, ",") {
		if strings.TrimSpace(p) == name {
			return true
		}
	}
	return false
}
