package cluster

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Leftovers lists what a run (by its process ID) left on the machine: its
// directory under root, its network namespaces, its cgroups in any
// hierarchy, processes whose command line names its directory, mounts of
// the root namespace under its directory. Empty after Close, and after the
// next Start cleaned up a crashed run.
func Leftovers(root string, runPid int) []string {
	if root == "" {
		root = filepath.Join(os.TempDir(), "kpo-cluster")
	}
	dir := filepath.Join(root, fmt.Sprintf("run-%d", runPid))
	var left []string
	if _, err := os.Stat(dir); err == nil {
		left = append(left, "directory "+dir)
	}
	nets, _ := filepath.Glob(fmt.Sprintf("/var/run/netns/kpot%d-*", runPid))
	for _, n := range nets {
		left = append(left, "network namespace "+filepath.Base(n))
	}
	cgroups, _ := filepath.Glob(fmt.Sprintf("/sys/fs/cgroup/*/kpo-run-%d", runPid))
	for _, cg := range cgroups {
		left = append(left, "cgroup "+cg)
	}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		if cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); err == nil && strings.Contains(string(cmdline), dir+"/") {
			left = append(left, fmt.Sprintf("process %d: %s", pid, strings.ReplaceAll(string(cmdline), "\x00", " ")))
		}
	}
	if mounts, err := os.ReadFile("/proc/self/mountinfo"); err == nil {
		for _, line := range strings.Split(string(mounts), "\n") {
			if strings.Contains(line, dir) {
				left = append(left, "mount "+line)
			}
		}
	}
	return left
}
