package vm

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestIPVSInVM runs the IPVS backend's real-kernel tests (test/vm/inside)
// inside a VM with Debian's kernel, which has IPVS. KPO_VM_RUN passes a
// -test.run pattern to the inside tests.
func TestIPVSInVM(t *testing.T) {
	if testing.Short() {
		t.Skip("VM test: not run with -short (boots qemu, a few minutes)")
	}
	if os.Geteuid() != 0 {
		t.Skip("VM test: needs root (hack/vm/build.sh runs depmod and apt-get download)")
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("VM test: qemu-system-x86_64 missing; apt-get install qemu-system-x86 busybox-static kmod cpio xz-utils")
	}
	ctx := t.Context()
	root, err := RepoRoot(".")
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(root, "bin/vm")
	start := time.Now()
	var buildLog bytes.Buffer
	if err := EnsureImage(ctx, root, out, &buildLog); err != nil {
		t.Fatalf("%v\n%s", err, buildLog.String())
	}
	bin := filepath.Join(t.TempDir(), "kpo-vm-test")
	if err := BuildTestBinary(ctx, root, "./test/vm/inside", bin, "vmtest"); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	// The inside tests take 1–2 minutes under TCG on shared cores; the bounds
	// leave room for a loaded machine and stay under go test's default 10m.
	args, timeout := "-test.timeout=7m", 8*time.Minute
	if run := os.Getenv("KPO_VM_RUN"); run != "" {
		args += " -test.run=" + run
	}
	if os.Getenv("KPO_VM_BENCH") != "" {
		// The figures of the IPVS issue (BenchmarkSync), not the behaviour tests.
		args, timeout = "-test.timeout=14m -test.run=XXX -test.bench=. -test.benchtime=1x", 15*time.Minute
	}
	overlay := filepath.Join(t.TempDir(), "test.cpio.gz")
	f, err := os.Create(overlay)
	if err != nil {
		t.Fatal(err)
	}
	if err := WriteOverlay(f, []File{
		{Name: "kpo-vm-test", Mode: 0o755, Data: data},
		{Name: "kpo-vm-args", Mode: 0o644, Data: []byte(args)},
	}); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	t.Logf("image and test binary ready in %v", time.Since(start).Round(time.Millisecond))

	res, err := Run(ctx, Options{
		Kernel:  filepath.Join(out, "vmlinuz"),
		Initrds: []string{filepath.Join(out, "base.cpio.gz"), overlay},
		Timeout: timeout,
		Console: func(line string) { t.Log("vm: " + line) },
	})
	t.Logf("VM: boot %v, total %v", res.Boot.Round(time.Millisecond), res.Total.Round(time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	if !res.Passed {
		t.Fatalf("inside tests failed: %s", res.Marker)
	}
	if os.Getenv("KPO_VM_BENCH") != "" {
		figures := ParseBench(res.Output)
		if len(figures) == 0 {
			t.Fatal("no benchmark result from inside the VM")
		}
		for _, f := range figures {
			t.Logf("IPVS in the VM (TCG), %d×%d: cold sync %.2f s (%d netlink ops), partial sync %.1f ms (%d netlink ops)",
				f.Services, f.Endpoints, f.ColdSyncS, f.ColdNetlinkOps, f.PartialSyncMS, f.PartialNetlinkOps)
		}
	} else if !strings.Contains(res.Output, "--- PASS") {
		t.Fatal("no test passed inside the VM (none matched?)")
	}
}

func TestWriteOverlayAlignment(t *testing.T) {
	var b bytes.Buffer
	if err := WriteOverlay(&b, []File{{Name: "a", Mode: 0o644, Data: []byte("xyz")}}); err != nil {
		t.Fatal(err)
	}
	if _, err := exec.LookPath("cpio"); err != nil {
		t.Skip("cpio missing")
	}
	dir := t.TempDir()
	cmd := exec.Command("sh", "-c", "gzip -dc | cpio -i --quiet")
	cmd.Dir, cmd.Stdin = dir, &b
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cpio: %v: %s", err, out)
	}
	got, err := os.ReadFile(filepath.Join(dir, "a"))
	if err != nil || string(got) != "xyz" {
		t.Fatalf("unpacked %q, %v", got, err)
	}
}
