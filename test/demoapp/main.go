// Command demoapp is a demo service for the deploy end-to-end tests, and an example of
// a deploy command for the node-by-node deployment.
//
//	demoapp serve  -addr IP:PORT -version V -pidfile FILE [-watch-pid PID]
//	demoapp deploy -dir DIR -name NAME -addr IP:PORT [-watch-pid PID]
//	demoapp stop   -dir DIR -name NAME
//
// serve answers GET / and /version with "V\n" and GET /health with "ok V\n" until
// SIGTERM, SIGINT, or until the -watch-pid process is gone (so that a detached server
// never outlives the test that started it).
//
// deploy is what the Consul watch handler runs on each node. It reads the deployment from
// the environment: REHYDRATE_DEPLOY_VERSION (required), REHYDRATE_DEPLOY_ID,
// REHYDRATE_DEPLOY_PREVIOUS_VERSION, REHYDRATE_DEPLOY_ROLLBACK and
// REHYDRATE_DEPLOY_ARTIFACT (only printed; the demo's artifact is DIR/artifacts/<version>).
// It stops the server in DIR/NAME.pid, starts a detached serve of that version that logs
// to DIR/NAME.log, and waits until it serves the version. An artifact containing
// "fail-after-stop" stops the server and then fails, like a deploy that breaks midway.
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr, os.Getenv)) }

// usageError is an error that exits with status 2.
type usageError struct{ error }

func run(args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	if len(args) == 0 {
		fmt.Fprintln(stderr, "usage: demoapp serve|deploy|stop [flags]")
		return 2
	}
	var err error
	switch args[0] {
	case "serve":
		err = serve(args[1:], stderr)
	case "deploy":
		err = deploy(args[1:], stdout, stderr, getenv)
	case "stop":
		err = stop(args[1:], stderr)
	default:
		err = usageError{fmt.Errorf("unknown subcommand %q", args[0])}
	}
	if err == nil {
		return 0
	}
	fmt.Fprintf(stderr, "demoapp %s: %v\n", args[0], err)
	if errors.As(err, new(usageError)) {
		return 2
	}
	return 1
}

// parse parses a subcommand's flags and checks that the required ones are set.
func parse(fset *flag.FlagSet, stderr io.Writer, args []string, required ...string) error {
	fset.SetOutput(stderr)
	if err := fset.Parse(args); err != nil {
		return usageError{err}
	}
	if fset.NArg() > 0 {
		return usageError{fmt.Errorf("unexpected arguments %q", fset.Args())}
	}
	for _, name := range required {
		if fset.Lookup(name).Value.String() == "" {
			return usageError{fmt.Errorf("missing -%s", name)}
		}
	}
	return nil
}

func serve(args []string, stderr io.Writer) error {
	fset := flag.NewFlagSet("demoapp serve", flag.ContinueOnError)
	addr := fset.String("addr", "", "listen address IP:PORT")
	version := fset.String("version", "", "version to serve")
	pidfile := fset.String("pidfile", "", "file to write the pid to")
	watchPID := fset.Int("watch-pid", 0, "exit when this process is gone")
	if err := parse(fset, stderr, args, "addr", "version", "pidfile"); err != nil {
		return err
	}

	mux := http.NewServeMux()
	body := func(s string) http.HandlerFunc {
		return func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, s) }
	}
	mux.Handle("GET /{$}", body(*version+"\n"))
	mux.Handle("GET /version", body(*version+"\n"))
	mux.Handle("GET /health", body("ok "+*version+"\n"))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", *addr, err)
	}
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer cancel()
	if *watchPID > 0 {
		go watch(ctx, *watchPID, cancel)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()

	own := strconv.Itoa(os.Getpid())
	if err := writeFileAtomic(*pidfile, own+"\n"); err != nil {
		srv.Close()
		return fmt.Errorf("write pidfile: %w", err)
	}
	defer func() {
		if b, err := os.ReadFile(*pidfile); err == nil && strings.TrimSpace(string(b)) == own {
			os.Remove(*pidfile)
		}
	}()

	select {
	case err := <-served:
		return fmt.Errorf("serve http on %s: %w", *addr, err)
	case <-ctx.Done():
	}
	shutdownCtx, cancelShutdown := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancelShutdown()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		return fmt.Errorf("shut down http server: %w", err)
	}
	return nil
}

// watch calls stop once process pid is gone, checking every 500ms until ctx is done.
func watch(ctx context.Context, pid int, stop func()) {
	for ctx.Err() == nil {
		time.Sleep(500 * time.Millisecond)
		if !alive(pid) {
			stop()
		}
	}
}

// writeFileAtomic writes path through a temporary file, so readers never see it partial.
func writeFileAtomic(path, content string) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func deploy(args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	fset := flag.NewFlagSet("demoapp deploy", flag.ContinueOnError)
	dir := fset.String("dir", "", "directory with artifacts/, the pidfile and the log")
	name := fset.String("name", "", "server name (NAME.pid, NAME.log)")
	addr := fset.String("addr", "", "server address IP:PORT")
	watchPID := fset.Int("watch-pid", 0, "passed to serve")
	if err := parse(fset, stderr, args, "dir", "name", "addr"); err != nil {
		return err
	}
	version := getenv("REHYDRATE_DEPLOY_VERSION")
	if version == "" {
		return usageError{errors.New("REHYDRATE_DEPLOY_VERSION is not set")}
	}
	if strings.Contains(version, "/") || strings.Contains(version, "..") {
		return usageError{fmt.Errorf("invalid version %q", version)}
	}
	fmt.Fprintf(stdout, "deploying %s (id %s, previous %s, rollback=%s)\n", version,
		getenv("REHYDRATE_DEPLOY_ID"), getenv("REHYDRATE_DEPLOY_PREVIOUS_VERSION"), getenv("REHYDRATE_DEPLOY_ROLLBACK"))
	if ref := getenv("REHYDRATE_DEPLOY_ARTIFACT"); ref != "" {
		fmt.Fprintf(stdout, "artifact reference %s\n", ref)
	}

	artifact := filepath.Join(*dir, "artifacts", version)
	content, err := os.ReadFile(artifact)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("no artifact for version %s: %s", version, artifact)
	} else if err != nil {
		return fmt.Errorf("read artifact: %w", err)
	}
	pidfile := filepath.Join(*dir, *name+".pid")
	if err := stopServer(pidfile); err != nil {
		return err
	}
	if strings.TrimSpace(string(content)) == "fail-after-stop" {
		return fmt.Errorf("artifact %s is broken", version)
	}

	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find own executable: %w", err)
	}
	logfile, err := os.OpenFile(filepath.Join(*dir, *name+".log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("open server log: %w", err)
	}
	defer logfile.Close()
	cmd := exec.Command(exe, "serve", "-addr", *addr, "-version", version, "-pidfile", pidfile)
	if *watchPID > 0 {
		cmd.Args = append(cmd.Args, "-watch-pid", strconv.Itoa(*watchPID))
	}
	cmd.Stdout, cmd.Stderr = logfile, logfile // Stdin stays nil: /dev/null
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start server: %w", err)
	}
	pid := cmd.Process.Pid
	cmd.Process.Release()

	client := &http.Client{Timeout: time.Second}
	url := "http://" + *addr + "/version"
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if resp, err := client.Get(url); err == nil {
			got, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err == nil && resp.StatusCode == http.StatusOK && string(got) == version+"\n" {
				break
			}
		}
		if !alive(pid) {
			return fmt.Errorf("server %s exited before serving version %s (see %s)", *name, version, logfile.Name())
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("server %s did not serve version %s on %s within 10s (see %s)", *name, version, url, logfile.Name())
		}
	}
	fmt.Fprintf(stdout, "deployed %s\n", version)
	return nil
}

func stop(args []string, stderr io.Writer) error {
	fset := flag.NewFlagSet("demoapp stop", flag.ContinueOnError)
	dir := fset.String("dir", "", "directory with the pidfile")
	name := fset.String("name", "", "server name (NAME.pid)")
	if err := parse(fset, stderr, args, "dir", "name"); err != nil {
		return err
	}
	return stopServer(filepath.Join(*dir, *name+".pid"))
}

// stopServer stops the process in pidfile: SIGTERM, then SIGKILL if it is still there
// after 10s. No pidfile or a process that is already gone means nothing to stop.
func stopServer(pidfile string) error {
	b, err := os.ReadFile(pidfile)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	} else if err != nil {
		return fmt.Errorf("read pidfile: %w", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return fmt.Errorf("pidfile %s holds no valid pid: %q", pidfile, b)
	}
	for _, s := range []struct {
		sig  syscall.Signal
		wait time.Duration
	}{{syscall.SIGTERM, 10 * time.Second}, {syscall.SIGKILL, 2 * time.Second}} {
		// A server that died left its pidfile, and its pid may since belong to
		// another process (a Consul agent of a test running beside this one, once):
		// signal only a process whose command line names this pidfile.
		if !serving(pid, pidfile) {
			os.Remove(pidfile)
			return nil
		}
		if err := syscall.Kill(pid, s.sig); err != nil && !errors.Is(err, syscall.ESRCH) {
			return fmt.Errorf("send %v to server %d: %w", s.sig, pid, err)
		}
		for deadline := time.Now().Add(s.wait); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
			if !alive(pid) {
				os.Remove(pidfile) // the server removes it itself unless it was killed
				return nil
			}
		}
	}
	return fmt.Errorf("server %d from %s did not exit after SIGKILL", pid, pidfile)
}

// serving reports whether process pid is alive and is the server of pidfile: its
// command line (/proc/<pid>/cmdline) names the pidfile.
func serving(pid int, pidfile string) bool {
	if !alive(pid) {
		return false
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false // gone since, or no /proc: never signal what we cannot tell apart
	}
	return slices.Contains(strings.Split(string(cmdline), "\x00"), pidfile)
}

// alive reports whether process pid exists. A zombie counts as gone: a detached
// server's parent has exited, and the process that inherits it may never reap it.
func alive(pid int) bool {
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		return false
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true // no /proc: trust kill
	}
	i := bytes.LastIndexByte(stat, ')') // the state follows the parenthesised command name
	return i < 0 || i+2 >= len(stat) || stat[i+2] != 'Z'
}
