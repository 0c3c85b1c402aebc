package cluster

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/go-logr/logr"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	"kpo.dev/kpo/hack/apiserver"
	"kpo.dev/kpo/hack/netns"
	"kpo.dev/kpo/hack/procs"
)

// crashChild makes the test binary the crashing run (see TestCrashedRunLeavesNothing).
const crashChild = "KPO_CLUSTER_CRASH_CHILD"

// TestCrashedRunLeavesNothing starts a one-node cluster with running pods
// in a child process, kills that process with SIGKILL (no teardown runs),
// checks that its containers outlived it (what the cleanup is for), and then
// runs what the next start runs: afterwards nothing of the crashed run is on
// the machine (processes, cgroups, mounts, namespaces, files).
func TestCrashedRunLeavesNothing(t *testing.T) {
	netns.Skip(t)
	root := filepath.Join(t.TempDir(), "runs")
	if os.Getenv(crashChild) != "" {
		crashingRun(t, os.Getenv(crashChild))
		return
	}
	if _, err := os.Stat(filepath.Join(ImagesDir(), "kpo", "index.json")); err != nil {
		t.Skip("no images: run 'make images' (make test does)")
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashedRunLeavesNothing$", "-test.v", "-test.timeout=5m")
	cmd.Env = append(os.Environ(), crashChild+"="+root)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	child := cmd.Process.Pid
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	ready := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			t.Log("child: " + sc.Text())
			if strings.Contains(sc.Text(), "READY") {
				ready <- nil
			}
		}
		ready <- fmt.Errorf("the child ended before its pods ran")
	}()
	select {
	case err := <-ready:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(4 * time.Minute):
		t.Fatal("the child's cluster did not come up in 4 minutes")
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()

	// Parent-death signals end kubelet, containerd and the control plane; the
	// pods' processes are not their children and live on until cleaned up.
	cg := procs.CgroupRoot(child)
	if n := len(procs.CgroupPids(cg)); n == 0 {
		t.Fatalf("no process in %s after the crash: the test would prove nothing", cg)
	}
	// What the next run's Start does: its ledger's CleanStale, and netns.New's RemoveStale.
	for _, msg := range procs.CleanStale(root) {
		t.Log("cleanup: " + msg)
	}
	netns.RemoveStale()
	apiserver.Eventually(t, 30*time.Second, func() error {
		if left := Leftovers(root, child); len(left) > 0 {
			return fmt.Errorf("left by the crashed run:\n  %s", strings.Join(left, "\n  "))
		}
		return nil
	})
}

// crashingRun is the child: a one-node cluster, the demo app running, then
// it waits to be killed.
func crashingRun(t *testing.T, root string) {
	ctrllog.SetLogger(logr.Discard())
	ctx := context.Background()
	c, err := Start(ctx, Options{Nodes: 1, Root: root})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.WaitNodesReady(ctx, 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	if _, err := c.DeployEcho(ctx, 3, 2*time.Minute); err != nil {
		t.Fatalf("%v\n%s", err, c.DescribePods(ctx))
	}
	fmt.Println("READY")
	select {} // killed by the parent
}
