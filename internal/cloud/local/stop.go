package local

import (
	"context"
	"fmt"
	"syscall"
	"time"
)

// Shutdown stops the instance's server as an EC2 instance shutdown does when nothing
// but Consul's own configuration is on its stop path: systemd sends SIGTERM, which
// leave_on_terminate (server.hcl) turns into a graceful leave, a leader's included,
// with no hand-off of leadership first. Terminate adds that hand-off, as the roll's
// stop path (`rehydrate leave`) does; the benchmark's baseline, an Auto Scaling
// instance refresh, must not have it.
//
// It returns once the process has exited, as an Auto Scaling group waits for an
// instance to be terminated. A server still running after bound is SIGKILLed, as
// systemd kills a unit still running after its TimeoutStopSec (90 s by default), and
// killed says so. The instance is shutting-down meanwhile, then terminated.
// Shutting down a terminated instance does nothing; an ID never launched is
// ErrUnknownInstance.
func (p *Provider) Shutdown(ctx context.Context, instanceID string, bound time.Duration) (killed bool, err error) {
	rec, done, err := p.shuttingDown(instanceID)
	if err != nil || done {
		if err != nil {
			err = fmt.Errorf("shut down instance %q: %w", instanceID, err)
		}
		return false, err
	}
	a := agentProc{rec.PID, configPath(p.instanceDir(rec.ID))}
	p.log.Info("shutting down instance (SIGTERM, no hand-off)", "instance_id", instanceID, "pid", rec.PID)
	if alive(a.pid, a.cfg) {
		// Only the agent, as leave does: its watch handlers are its own business.
		if err := syscall.Kill(a.pid, syscall.SIGTERM); err != nil {
			return false, fmt.Errorf("shut down instance %q: signal server %d: %w", instanceID, a.pid, err)
		}
	}
	exited, err := waitExit(ctx, bound, a)
	if err != nil {
		return false, fmt.Errorf("shut down instance %q: %w", instanceID, err)
	}
	if !exited {
		p.log.Warn("server did not stop in time, killing it", "instance_id", instanceID, "pid", a.pid)
		if err := p.stop(ctx, a, syscall.SIGKILL); err != nil {
			return true, fmt.Errorf("shut down instance %q: %w", instanceID, err)
		}
		killed = true
	}
	if err := p.settle(instanceID); err != nil {
		return killed, fmt.Errorf("shut down instance %q: %w", instanceID, err)
	}
	p.log.Info("instance shut down", "instance_id", instanceID)
	return killed, nil
}

// PID returns the process ID of the instance's server while it runs, and 0 once it
// has exited: the benchmark reads each server's peak memory from /proc/<pid>/status.
func (p *Provider) PID(instanceID string) (int, error) {
	rec, err := p.record(instanceID)
	if err != nil {
		return 0, fmt.Errorf("pid of instance %q: %w", instanceID, err)
	}
	if !alive(rec.PID, configPath(p.instanceDir(rec.ID))) {
		return 0, nil
	}
	return rec.PID, nil
}
