package procs

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Ledger records what a run created outside its own directory and
// namespaces, so that the next run can remove the leftovers of a run that
// crashed (SIGKILL, power loss): processes (by PID and start time, so that a
// reused PID is never killed) and mount-point paths created on the host.
//
// A run's ledger lives in <root>/run-<pid>.
type Ledger struct {
	Dir string
	mu  sync.Mutex
}

const (
	processesFile = "processes"
	pathsFile     = "created-paths"
)

// NewLedger removes the leftovers of dead runs under root and opens this run's ledger.
func NewLedger(root string) (*Ledger, []string, error) {
	cleaned := CleanStale(root)
	dir := filepath.Join(root, fmt.Sprintf("run-%d", os.Getpid()))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, cleaned, err
	}
	return &Ledger{Dir: dir}, cleaned, nil
}

func (l *Ledger) appendLine(file, line string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	f, err := os.OpenFile(filepath.Join(l.Dir, file), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return
	}
	defer func() { _ = f.Close() }()
	_, _ = fmt.Fprintln(f, line)
}

func (l *Ledger) recordProcess(pid int, name string) {
	l.appendLine(processesFile, fmt.Sprintf("%d %d %s", pid, startTime(pid), name))
}

// RecordCreatedPath notes a file or directory created on the host (a mount
// point), to be removed at teardown if still empty.
func (l *Ledger) RecordCreatedPath(path string) {
	l.appendLine(pathsFile, path)
}

// RemoveCreatedPaths removes the recorded paths that are empty, deepest first.
func (l *Ledger) RemoveCreatedPaths() {
	removeCreatedPaths(l.Dir)
}

func removeCreatedPaths(dir string) {
	paths := readLines(filepath.Join(dir, pathsFile))
	slices.SortFunc(paths, func(a, b string) int { return strings.Count(b, "/") - strings.Count(a, "/") })
	for _, p := range slices.Compact(paths) {
		if st, err := os.Stat(p); err == nil && (st.IsDir() || st.Size() == 0) {
			_ = os.Remove(p) // fails, as it should, on a non-empty directory
		}
	}
}

// CleanStale kills the recorded processes of runs whose owner is gone, the
// containers of their local nodes (cgroups, shims), removes their created
// paths and their directories, and says what it did.
func CleanStale(root string) []string {
	var did []string
	var dead []string
	entries, _ := os.ReadDir(root)
	for _, e := range entries {
		pidStr, ok := strings.CutPrefix(e.Name(), "run-")
		owner, err := strconv.Atoi(pidStr)
		if !ok || err != nil || owner == os.Getpid() || syscall.Kill(owner, 0) != syscall.ESRCH {
			continue
		}
		dir := filepath.Join(root, e.Name())
		dead = append(dead, dir)
		for _, line := range readLines(filepath.Join(dir, processesFile)) {
			f := strings.SplitN(line, " ", 3)
			if len(f) < 3 {
				continue
			}
			pid, _ := strconv.Atoi(f[0])
			started, _ := strconv.ParseUint(f[1], 10, 64)
			if pid > 0 && started != 0 && startTime(pid) == started {
				_ = syscall.Kill(pid, syscall.SIGKILL)
				did = append(did, fmt.Sprintf("killed %s (pid %d) of crashed run %d", f[2], pid, owner))
			}
		}
		if n := KillMentioning(dir); n > 0 {
			did = append(did, fmt.Sprintf("killed %d container shims of crashed run %d", n, owner))
		}
	}
	// The local nodes' cgroups (their pods' processes), of any run that is
	// gone, also one whose directory went already.
	for _, cg := range staleCgroupRoots() {
		n := len(CgroupPids(cg))
		if err := RemoveCgroup(cg, 10*time.Second); err != nil {
			did = append(did, err.Error())
			continue
		}
		did = append(did, fmt.Sprintf("removed cgroup %s of a crashed run (%d processes killed)", cg, n))
	}
	for _, dir := range dead {
		removeCreatedPaths(dir)
		_ = os.RemoveAll(dir)
	}
	return did
}

// startTime is the process's start time in clock ticks since boot (field 22
// of /proc/<pid>/stat), 0 if it does not exist.
func startTime(pid int) uint64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The command name (field 2) may hold spaces; fields after ") " are plain.
	s := string(data)
	i := strings.LastIndex(s, ") ")
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+2:])
	if len(f) < 20 {
		return 0
	}
	v, _ := strconv.ParseUint(f[19], 10, 64)
	return v
}

func readLines(path string) []string {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer func() { _ = f.Close() }()
	var lines []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if line := strings.TrimSpace(sc.Text()); line != "" {
			lines = append(lines, line)
		}
	}
	return lines
}
