package framework

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Process is a child of the plane (or of make run). Its output goes to a log file that a
// failing test prints the tail of.
type Process struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}
	waitErr error
	once    sync.Once
}

// StartProcess starts bin in its own process group, logging to logDir/name.log.
func StartProcess(name, logDir string, bin string, args ...string) (*Process, error) {
	logPath := filepath.Join(logDir, name+".log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("creating log for %s: %w", name, err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{
		// Its own group, so stopping it also stops what it started (kwok's
		// exec'd shells), and a Ctrl-C in a terminal reaches only us.
		Setpgid: true,
		// Should the test binary be killed (go test -timeout), the kernel
		// ends the plane too: no process is ever left behind.
		Pdeathsig: syscall.SIGKILL,
	}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("starting %s (%s): %w", name, bin, err)
	}
	p := &Process{name: name, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		logFile.Close()
		close(p.done)
	}()
	return p, nil
}

// Exited reports whether the process has ended (and was reaped).
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Stop sends SIGTERM to the process group, and SIGKILL after grace.
func (p *Process) Stop(grace time.Duration) error {
	var err error
	p.once.Do(func() {
		if p.Exited() {
			return
		}
		pgid := -p.cmd.Process.Pid
		_ = syscall.Kill(pgid, syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(grace):
			_ = syscall.Kill(pgid, syscall.SIGKILL)
			select {
			case <-p.done:
			case <-time.After(10 * time.Second):
				err = fmt.Errorf("%s (pid %d) did not die after SIGKILL", p.name, p.cmd.Process.Pid)
				return
			}
		}
		// Whatever the leader left in its group goes too.
		_ = syscall.Kill(pgid, syscall.SIGKILL)
	})
	return err
}

// LogTail returns the last n lines of the process's log.
func (p *Process) LogTail(n int) string {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// waitFor polls check until it succeeds, ctx ends, or p exits.
func waitFor(ctx context.Context, p *Process, what string, check func(context.Context) error) error {
	var last error
	for {
		if p != nil && p.Exited() {
			return fmt.Errorf("%s exited while waiting for %s: %v\n%s", p.name, what, p.waitErr, p.LogTail(30))
		}
		if last = check(ctx); last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			msg := fmt.Sprintf("timed out waiting for %s: %v", what, last)
			if p != nil {
				msg += "\n" + p.LogTail(30)
			}
			return errors.New(msg)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// PID is the process's ID (and its process group's).
func (p *Process) PID() int { return p.cmd.Process.Pid }

// Done is closed when the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }
