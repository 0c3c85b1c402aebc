package procs

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// TestCleanStaleKillsACrashedRunsProcesses: a run whose owner died leaves a
// process and a created path; the next ledger kills the one and removes the
// other, and leaves a live run's ledger alone.
func TestCleanStaleKillsACrashedRunsProcesses(t *testing.T) {
	root := t.TempDir()
	// A dead owner: a process that has exited (its PID is free, or reused by a
	// process that is not ours: startTime guards that).
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	crashed := &Ledger{Dir: filepath.Join(root, fmt.Sprintf("run-%d", dead.Process.Pid))}
	if err := os.MkdirAll(crashed.Dir, 0o755); err != nil {
		t.Fatal(err)
	}
	orphan := exec.Command("sleep", "300")
	if err := orphan.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = orphan.Wait(); close(exited) }()
	t.Cleanup(func() { _ = orphan.Process.Kill() })
	crashed.recordProcess(orphan.Process.Pid, "sleep")
	mountPoint := filepath.Join(t.TempDir(), "var", "run", "secrets")
	if err := os.MkdirAll(mountPoint, 0o755); err != nil {
		t.Fatal(err)
	}
	crashed.RecordCreatedPath(mountPoint)

	ledger, did, err := NewLedger(root)
	if err != nil {
		t.Fatal(err)
	}
	if len(did) != 1 {
		t.Errorf("cleaned %q, want one killed process", did)
	}
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		t.Fatal("the crashed run's process is still running")
	}
	if _, err := os.Stat(mountPoint); !os.IsNotExist(err) {
		t.Errorf("the crashed run's mount point is still there (%v)", err)
	}
	if _, err := os.Stat(crashed.Dir); !os.IsNotExist(err) {
		t.Errorf("the crashed run's ledger is still there (%v)", err)
	}
	// Our own (live) ledger survives another clean-up.
	CleanStale(root)
	if _, err := os.Stat(ledger.Dir); err != nil {
		t.Errorf("a live run's ledger was removed: %v", err)
	}
}

// TestStopEscalates: Stop sends SIGTERM, then SIGKILL after the grace period.
func TestStopEscalates(t *testing.T) {
	cmd := exec.Command("sh", "-c", "trap '' TERM; echo ready; sleep 300")
	log := filepath.Join(t.TempDir(), "log")
	p, err := Start(nil, "stubborn", cmd, log)
	if err != nil {
		t.Fatal(err)
	}
	// Stop only once the shell ignores SIGTERM.
	for deadline := time.Now().Add(10 * time.Second); ; {
		if out, _ := os.ReadFile(log); string(out) == "ready\n" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the shell did not start")
		}
		time.Sleep(10 * time.Millisecond) // polling the log, bounded by the deadline
	}
	began := time.Now()
	p.Stop(500 * time.Millisecond)
	if _, sig := p.ExitCode(); sig != syscall.SIGKILL {
		t.Errorf("ended by %v, want SIGKILL after the grace period", sig)
	}
	if d := time.Since(began); d < 500*time.Millisecond {
		t.Errorf("stopped after %v, before the grace period", d)
	}
}
