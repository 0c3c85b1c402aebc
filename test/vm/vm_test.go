package vm

import (
	"bytes"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"kpo.dev/kpo/hack/apiserver"
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
	files := []File{
		{Name: "kpo-vm-test", Mode: 0o755, Data: data},
		{Name: "kpo-vm-args", Mode: 0o644, Data: []byte(args)},
	}
	var forwards []string
	if os.Getenv("KPO_VM_BENCH") == "" {
		agentFiles, fwd, err := agentSetup(t, root)
		if err != nil {
			// The inside tests that run agents skip, saying so.
			t.Logf("no API server for the in-VM agents: %v", err)
		}
		files, forwards = append(files, agentFiles...), fwd
	}
	overlay := filepath.Join(t.TempDir(), "test.cpio")
	f, err := os.Create(overlay)
	if err != nil {
		t.Fatal(err)
	}
	if err := WriteOverlay(f, files); err != nil {
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
		// The test binary, kpo-agent and the agents' processes live in it.
		MemoryMB: 1536,
		Console:  func(line string) { t.Log("vm: " + line) },
		Forwards: forwards,
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

// agentSetup starts a real API server on the host for the in-VM agents (the
// mode-switch tests) and builds kpo-agent: the overlay's files (the agent, a
// kubeconfig whose server is the VM's local forward, 127.0.0.1:6443) and the
// qemu forward to the API server. The API server stops when the test ends.
func agentSetup(t *testing.T, root string) ([]File, []string, error) {
	if _, err := apiserver.Binary("kube-apiserver"); err != nil {
		return nil, nil, err
	}
	api, err := apiserver.Start()
	if err != nil {
		return nil, nil, err
	}
	t.Cleanup(func() { _ = api.Stop() })
	files, fwd, err := apiOverlay(api)
	if err != nil {
		return nil, nil, err
	}
	bin := filepath.Join(t.TempDir(), "kpo-agent")
	if err := BuildAgent(t.Context(), root, bin); err != nil {
		return nil, nil, err
	}
	agent, err := os.ReadFile(bin)
	if err != nil {
		return nil, nil, err
	}
	return append(files, File{Name: AgentFile, Mode: 0o755, Data: agent}), fwd, nil
}

// apiOverlay is the overlay's kubeconfig for api (its server the VM's local
// relay, 127.0.0.1:6443, a name the API server's certificate holds) and the
// qemu forward that relay reaches.
func apiOverlay(api *apiserver.Env) ([]File, []string, error) {
	u, err := url.Parse(api.Config.Host)
	if err != nil {
		return nil, nil, err
	}
	fwd, err := APIForward(u.Host)
	if err != nil {
		return nil, nil, err
	}
	kc, err := os.ReadFile(api.Kubeconfig)
	if err != nil {
		return nil, nil, err
	}
	kc = regexp.MustCompile(`server: \S+`).ReplaceAll(kc, []byte("server: https://127.0.0.1:6443"))
	return []File{{Name: KubeconfigFile, Mode: 0o600, Data: kc}}, []string{fwd}, nil
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
	cmd := exec.Command("cpio", "-i", "--quiet")
	cmd.Dir, cmd.Stdin = dir, &b
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cpio: %v: %s", err, out)
	}
	got, err := os.ReadFile(filepath.Join(dir, "a"))
	if err != nil || string(got) != "xyz" {
		t.Fatalf("unpacked %q, %v", got, err)
	}
}
