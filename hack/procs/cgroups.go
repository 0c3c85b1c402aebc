package procs

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The local nodes' kubelets put their pods' cgroups under a private root,
// /kpo-run-<pid>/<node> in every cgroup hierarchy, which this file creates
// and removes: kill what still runs in it, then remove the directories,
// deepest first. Nothing outside that root is created or changed.

// CgroupRoot is a run's private cgroup root (the same path in every hierarchy).
func CgroupRoot(runPid int) string { return fmt.Sprintf("/kpo-run-%d", runPid) }

// hierarchies are the mounted cgroup file systems (v1 controllers and the
// v2 "unified" one of a hybrid host).
func hierarchies() []string {
	f, err := os.Open("/proc/self/mounts")
	if err != nil {
		return nil
	}
	defer func() { _ = f.Close() }()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 3 && (fields[2] == "cgroup" || fields[2] == "cgroup2") && !slices.Contains(out, fields[1]) {
			out = append(out, fields[1])
		}
	}
	return out
}

// CreateCgroup creates path (e.g. /kpo-run-1/node-1) in every hierarchy,
// parents included. cpuset directories get their parent's cpus and memory
// nodes (a new cpuset is empty, and an empty one admits no process).
func CreateCgroup(path string) error {
	for _, h := range hierarchies() {
		parts := strings.Split(strings.Trim(path, "/"), "/")
		dir := h
		for _, p := range parts {
			parent := dir
			dir = filepath.Join(dir, p)
			if err := os.Mkdir(dir, 0o755); err != nil && !os.IsExist(err) {
				return fmt.Errorf("cgroup %s: %w", dir, err)
			}
			for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
				if v, err := os.ReadFile(filepath.Join(parent, f)); err == nil {
					if cur, _ := os.ReadFile(filepath.Join(dir, f)); strings.TrimSpace(string(cur)) == "" {
						if err := os.WriteFile(filepath.Join(dir, f), v, 0o644); err != nil {
							return fmt.Errorf("cgroup %s: %s: %w", dir, f, err)
						}
					}
				}
			}
		}
	}
	return nil
}

// CgroupPids are the processes in path's subtree, in any hierarchy.
func CgroupPids(path string) []int {
	var pids []int
	for _, h := range hierarchies() {
		_ = filepath.WalkDir(filepath.Join(h, path), func(p string, d os.DirEntry, err error) error {
			if err != nil || !d.IsDir() {
				return nil
			}
			data, _ := os.ReadFile(filepath.Join(p, "cgroup.procs"))
			for _, s := range strings.Fields(string(data)) {
				if pid, err := strconv.Atoi(s); err == nil && !slices.Contains(pids, pid) {
					pids = append(pids, pid)
				}
			}
			return nil
		})
	}
	return pids
}

// RemoveCgroup kills every process in path's subtree (until none is left,
// or timeout) and removes the subtree's directories in every hierarchy.
func RemoveCgroup(path string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		pids := CgroupPids(path)
		if len(pids) == 0 {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("cgroup %s: processes %v survive SIGKILL", path, pids)
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(50 * time.Millisecond) // the kernel reaps asynchronously; bounded by the deadline
	}
	var errs []string
	for _, h := range hierarchies() {
		var dirs []string
		_ = filepath.WalkDir(filepath.Join(h, path), func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		slices.Reverse(dirs) // children before parents
		for _, d := range dirs {
			// A cgroup whose last process just exited may be busy for a moment.
			var err error
			for range 50 {
				if err = syscall.Rmdir(d); err == nil || err == syscall.ENOENT {
					break
				}
				time.Sleep(20 * time.Millisecond) // bounded: 50 tries
			}
			if err != nil && err != syscall.ENOENT {
				errs = append(errs, fmt.Sprintf("%s: %v", d, err))
			}
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("removing cgroups: %s", strings.Join(errs, "; "))
	}
	return nil
}

// staleCgroupRoots are the run roots (/kpo-run-<pid>) whose run is gone.
func staleCgroupRoots() []string {
	var roots []string
	for _, h := range hierarchies() {
		entries, _ := os.ReadDir(h)
		for _, e := range entries {
			pidStr, ok := strings.CutPrefix(e.Name(), "kpo-run-")
			owner, err := strconv.Atoi(pidStr)
			if !ok || err != nil || owner == os.Getpid() || syscall.Kill(owner, 0) != syscall.ESRCH {
				continue
			}
			if r := "/" + e.Name(); !slices.Contains(roots, r) {
				roots = append(roots, r)
			}
		}
	}
	return roots
}

// KillMentioning kills every process whose command line mentions dir (a
// run's directory): the containers' shims, which containerd starts detached
// (so no parent-death signal reaches them) with the node's containerd socket,
// inside the run's directory, on their command line. It says how many it killed.
func KillMentioning(dir string) int {
	if dir == "" {
		return 0
	}
	killed := 0
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err == nil && strings.Contains(string(cmdline), dir+"/") && syscall.Kill(pid, syscall.SIGKILL) == nil {
			killed++
		}
	}
	return killed
}
