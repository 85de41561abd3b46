//go:build linux

package local

import (
	"bytes"
	"fmt"
	"os"
	"strings"
)

// supported reports whether the local provider can run here: it can, on Linux.
func supported() error { return nil }

// alive reports whether pid is the agent started with cfgPath (see probe).
func alive(pid int, cfgPath string) bool { return probe(pid, cfgPath).ours }

// probe reports whether pid is the agent started with cfgPath, and what /proc
// showed, for the logs. kill(pid, 0) is not enough: PIDs are reused, and an exited
// agent whose launcher never reaps it stays a zombie that still answers signals.
// So the process must be running, not a zombie, and run with cfgPath.
//
// The command line is the agent's only once its exec has finished, which is after
// exec.Cmd.Start has returned: the kernel lets the parent go on as soon as the
// child's close-on-exec files are closed, before the new program's arguments are in
// place, and until then /proc/<pid>/cmdline is empty. start waits for that (see
// waitExec), so a PID in the state is always recognisable.
func probe(pid int, cfgPath string) procView {
	if pid <= 0 {
		return procView{exited: true, desc: "no pid"}
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procView{exited: true, desc: fmt.Sprintf("no process: %v", err)}
	}
	// The state follows the command name, which is in parentheses and may contain any
	// byte, so look after the last ')'.
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 || i+2 >= len(stat) {
		return procView{desc: fmt.Sprintf("unreadable stat %q", stat)}
	}
	comm := string(stat[bytes.IndexByte(stat, '(')+1 : i])
	state := stat[i+2]
	if state == 'Z' || state == 'X' {
		return procView{exited: true, desc: fmt.Sprintf("%s exited (state %c, not reaped yet)", comm, state)}
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return procView{desc: fmt.Sprintf("%s state %c, no cmdline: %v", comm, state, err)}
	}
	args := bytes.Split(bytes.TrimRight(cmdline, "\x00"), []byte{0})
	for _, arg := range args {
		if string(arg) == cfgPath {
			return procView{ours: true, desc: fmt.Sprintf("%s state %c, runs %s", comm, state, cfgPath)}
		}
	}
	if len(cmdline) == 0 {
		return procView{desc: fmt.Sprintf("%s state %c, empty cmdline (mid-exec, or exiting)", comm, state)}
	}
	return procView{other: true, desc: fmt.Sprintf("%s state %c, another program: %q", comm, state, strings.ReplaceAll(string(cmdline), "\x00", " "))}
}
