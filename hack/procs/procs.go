// Package procs runs the local cluster's processes (control plane, and the
// containers of the node runtime) and makes sure none outlives its run: each
// is killed with its parent (PR_SET_PDEATHSIG), and each is written to the
// run's ledger so that the next run can remove what a crashed one left.
package procs

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"syscall"
	"time"
)

// Proc is a running process.
type Proc struct {
	Name string
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

// Start starts cmd with its output appended to logPath. The process gets its
// own process group (a Ctrl-C on the terminal reaches the parent, which tears
// down in order, not every child at once) and is killed if the parent dies.
func Start(ledger *Ledger, name string, cmd *exec.Cmd, logPath string) (*Proc, error) {
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	if err := spawn(cmd); err != nil {
		_ = logFile.Close()
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	p := &Proc{Name: name, cmd: cmd, done: make(chan struct{})}
	if ledger != nil {
		ledger.recordProcess(cmd.Process.Pid, name)
	}
	go func() {
		p.err = cmd.Wait()
		_ = logFile.Close()
		close(p.done)
	}()
	return p, nil
}

// spawner is a goroutine locked to an OS thread that never exits: every
// process is forked from it. PR_SET_PDEATHSIG fires when the parent *thread*
// exits, and Go ends threads (a goroutine that exits while locked to its
// thread, as netns.NS.Do's do, takes the thread with it), so a child forked
// from an arbitrary thread could be killed at any moment.
var spawner = make(chan func())

func init() {
	go func() {
		runtime.LockOSThread()
		for fn := range spawner {
			fn()
		}
	}()
}

func spawn(cmd *exec.Cmd) error {
	errc := make(chan error, 1)
	spawner <- func() { errc <- cmd.Start() }
	return <-errc
}

// Pid is the process ID.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has exited.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// ExitCode is the exit code once Done is closed (-1 if killed by a signal) and
// the signal that ended it, if any.
func (p *Proc) ExitCode() (int, syscall.Signal) {
	var exit *exec.ExitError
	if errors.As(p.err, &exit) {
		if ws, ok := exit.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return -1, ws.Signal()
		}
		return exit.ExitCode(), 0
	}
	if p.err != nil {
		return -1, 0
	}
	return 0, 0
}

// Signal sends sig to the process's whole group (the process and anything it
// started: nsenter and sh exec into it, but a shell script may fork).
func (p *Proc) Signal(sig syscall.Signal) {
	_ = syscall.Kill(-p.cmd.Process.Pid, sig)
}

// Stop sends SIGTERM, waits up to grace, then SIGKILL, and waits for the exit.
func (p *Proc) Stop(grace time.Duration) {
	if p.Exited() {
		return
	}
	p.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return
	case <-time.After(grace):
	}
	p.Signal(syscall.SIGKILL)
	<-p.done
}
