package procs

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// TestRemoveCgroupKillsWhatRunsInIt: a process moved into a run's cgroup
// (as kubelet's pods are) is killed by RemoveCgroup, and the directories go
// from every hierarchy; a process outside lives on.
func TestRemoveCgroupKillsWhatRunsInIt(t *testing.T) {
	if os.Geteuid() != 0 || testing.Short() {
		t.Skip("needs root (cgroups)")
	}
	if len(hierarchies()) == 0 {
		t.Skip("no cgroup file system mounted")
	}
	path := CgroupRoot(os.Getpid()) + "/unit-test"
	if err := CreateCgroup(path); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = RemoveCgroup(CgroupRoot(os.Getpid()), 5*time.Second) })
	inside, outside := exec.Command("sleep", "300"), exec.Command("sleep", "300")
	for _, c := range []*exec.Cmd{inside, outside} {
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		go func() { _ = c.Wait() }()
	}
	t.Cleanup(func() { _ = outside.Process.Kill() })
	for _, h := range hierarchies() {
		procs := filepath.Join(h, path, "cgroup.procs")
		if err := os.WriteFile(procs, []byte(strconv.Itoa(inside.Process.Pid)), 0o644); err != nil {
			t.Fatalf("moving the process into %s: %v", procs, err)
		}
	}
	if got := CgroupPids(path); len(got) != 1 || got[0] != inside.Process.Pid {
		t.Fatalf("processes in %s: %v, want [%d]", path, got, inside.Process.Pid)
	}
	if err := RemoveCgroup(path, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if startTime(inside.Process.Pid) != 0 && !zombie(inside.Process.Pid) {
		t.Errorf("the process in the cgroup survived")
	}
	if startTime(outside.Process.Pid) == 0 {
		t.Errorf("the process outside the cgroup was killed")
	}
	for _, h := range hierarchies() {
		if _, err := os.Stat(filepath.Join(h, path)); !os.IsNotExist(err) {
			t.Errorf("%s still there (%v)", filepath.Join(h, path), err)
		}
	}
}

// TestKillMentioning kills the processes naming a directory, and no other.
func TestKillMentioning(t *testing.T) {
	dir := t.TempDir()
	// sh keeps its arguments on its command line ($0 here), as a shim does its socket.
	named := exec.Command("sh", "-c", "sleep 300; :", filepath.Join(dir, "node-1", "containerd.sock"))
	other := exec.Command("sleep", "301")
	for _, c := range []*exec.Cmd{named, other} {
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { _ = other.Process.Kill(); _ = other.Wait() })
	if n := KillMentioning(dir); n != 1 {
		t.Errorf("killed %d processes, want 1", n)
	}
	if err := named.Wait(); err == nil {
		t.Error("the process naming the directory was not killed")
	}
	if startTime(other.Process.Pid) == 0 {
		t.Error("the other process was killed")
	}
}

func zombie(pid int) bool {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	return err == nil && len(data) > 0 && containsState(string(data), 'Z')
}

func containsState(stat string, state byte) bool {
	for i := len(stat) - 1; i > 1; i-- {
		if stat[i-1] == ')' && stat[i] == ' ' {
			return i+1 < len(stat) && stat[i+1] == state
		}
	}
	return false
}
