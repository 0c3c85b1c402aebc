package vm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"kpo.dev/kpo/hack/apiserver"
	"kpo.dev/kpo/test/proxystats"
	"kpo.dev/kpo/test/testnet"
)

// BenchmarkIPVSComparison runs upstream kube-proxy v1.37.1 in IPVS mode and
// kpo's agent in IPVS mode side by side inside the VM (the same TCG
// emulation, one run): the host starts a real kube-apiserver and etcd, loads
// each data set with test/testnet's loader (as test/bench), and boots the VM
// once per size with both proxies in its overlay; the inside TestCompareIPVS
// runs them one after the other on fresh node namespaces and prints their
// figures. make bench-ipvs; with KPO_BENCH_WRITE=1 the figures go to
// docs/ipvs-kube-proxy-comparison.md (KPO_BENCH_DOCS_DIR elsewhere).
//
//	KPO_BENCH_WRITE=1 nice -n 5 go test ./test/vm/ -run XXX -bench IPVSComparison -benchtime 1x -timeout 90m
//
// KPO_VM_COMPARE_SIZES (default "1000x2,10000x2", ascending: the loader cannot
// delete Services), KPO_BENCH_CAP (default 5m: each proxy's cold sync bound).
func BenchmarkIPVSComparison(b *testing.B) {
	if reason := compareSkipReason(); reason != "" {
		b.Skip(reason)
	}
	root, err := RepoRoot(".")
	if err != nil {
		b.Fatal(err)
	}
	sizes, err := compareSizes(os.Getenv("KPO_VM_COMPARE_SIZES"))
	if err != nil {
		b.Fatalf("KPO_VM_COMPARE_SIZES: %v", err)
	}
	capDur := 5 * time.Minute
	if v := os.Getenv("KPO_BENCH_CAP"); v != "" {
		if capDur, err = time.ParseDuration(v); err != nil {
			b.Fatalf("KPO_BENCH_CAP: %v", err)
		}
	}
	t0 := time.Now()
	api, err := apiserver.Start()
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = api.Stop() }()
	overlay, forwards := compareOverlay(b, root, api)
	cfg := rest.CopyConfig(api.Config)
	// The loader is 16 workers: client-go's default 5 QPS would take an hour.
	cfg.QPS, cfg.Burst = 1000, 2000
	loader := testnet.NewLoader(kubernetes.NewForConfigOrDie(cfg))
	var all []CompareFigures
	var vmKernel string
	if v, err := os.ReadFile(filepath.Join(root, "bin/vm/kernel-version")); err == nil {
		vmKernel = strings.TrimSpace(string(v))
	}
	for _, sz := range sizes {
		b.Run(fmt.Sprintf("%dx%d", sz[0], sz[1]), func(b *testing.B) {
			loader.Ensure(b, sz[0], sz[1])
			for range b.N {
				figs := runCompare(b, root, overlay, forwards, sz, capDur)
				all = append(all, figs...)
				for _, f := range figs {
					b.ReportMetric(f.ColdSyncS, f.Impl+"-cold-s")
					b.ReportMetric(f.ColdCPUS, f.Impl+"-cold-cpu-s")
					b.ReportMetric(f.PartialSyncS*1000, f.Impl+"-partial-ms")
				}
			}
		})
	}
	doc := compareMarkdown(all, compareCommand(), vmKernel, time.Since(t0))
	b.Log("\n" + doc)
	if os.Getenv("KPO_BENCH_WRITE") == "1" && len(all) > 0 {
		dir := os.Getenv("KPO_BENCH_DOCS_DIR")
		if dir == "" {
			dir = filepath.Join(root, "docs")
		}
		if err := os.WriteFile(filepath.Join(dir, "ipvs-kube-proxy-comparison.md"), []byte(doc), 0o644); err != nil {
			b.Fatal(err)
		}
	}
}

// compareSkipReason says why the comparison cannot run here ("" when it can).
func compareSkipReason() string {
	if os.Geteuid() != 0 {
		return "needs root (the VM image's depmod, the test networks in the VM)"
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		return "qemu-system-x86_64 missing; apt-get install qemu-system-x86 busybox-static kmod cpio xz-utils"
	}
	for _, bin := range []string{"kube-proxy", "kube-apiserver", "etcd"} {
		if _, err := apiserver.Binary(bin); err != nil {
			return err.Error()
		}
	}
	return ""
}

// compareSizes parses SERVICESxENDPOINTS items; Services must not go down
// (the loader cannot delete them).
func compareSizes(v string) ([][2]int, error) {
	if v == "" {
		v = "1000x2,10000x2"
	}
	var out [][2]int
	for _, s := range strings.Split(v, ",") {
		a, e, ok := strings.Cut(strings.TrimSpace(s), "x")
		n, err1 := strconv.Atoi(a)
		m, err2 := strconv.Atoi(e)
		if !ok || err1 != nil || err2 != nil || n <= 0 || m <= 0 {
			return nil, fmt.Errorf("%q is not SERVICESxENDPOINTS (both positive)", s)
		}
		if len(out) > 0 && n < out[len(out)-1][0] {
			return nil, fmt.Errorf("%q after %dx%d: Services only grow", s, out[len(out)-1][0], out[len(out)-1][1])
		}
		out = append(out, [2]int{n, m})
	}
	return out, nil
}

// compareOverlay builds what every VM run of the comparison shares: the image,
// the inside test binary, kpo-agent, kube-proxy (stripped: 113 MB less to
// unpack under TCG) and the API server's kubeconfig, as one overlay archive,
// and the qemu forward to the API server.
func compareOverlay(b *testing.B, root string, api *apiserver.Env) (string, []string) {
	ctx := context.Background()
	var buildLog strings.Builder
	if err := EnsureImage(ctx, root, filepath.Join(root, "bin/vm"), &buildLog); err != nil {
		b.Fatalf("%v\n%s", err, buildLog.String())
	}
	dir := b.TempDir()
	test, agent, kubeProxy := filepath.Join(dir, "kpo-vm-test"), filepath.Join(dir, AgentFile), filepath.Join(dir, KubeProxyFile)
	if err := BuildTestBinary(ctx, root, "./test/vm/inside", test, "vmtest"); err != nil {
		b.Fatal(err)
	}
	if err := BuildAgent(ctx, root, agent); err != nil {
		b.Fatal(err)
	}
	src, err := apiserver.Binary("kube-proxy")
	if err != nil {
		b.Fatal(err)
	}
	if out, err := exec.Command("strip", "-o", kubeProxy, src).CombinedOutput(); err != nil {
		b.Logf("strip kube-proxy: %v: %s; the VM gets it unstripped", err, out)
		kubeProxy = src
	}
	files, forwards, err := apiOverlay(api)
	if err != nil {
		b.Fatal(err)
	}
	for _, f := range []struct {
		name, path string
	}{{"kpo-vm-test", test}, {AgentFile, agent}, {KubeProxyFile, kubeProxy}} {
		data, err := os.ReadFile(f.path)
		if err != nil {
			b.Fatal(err)
		}
		files = append(files, File{Name: f.name, Mode: 0o755, Data: data})
	}
	path := filepath.Join(dir, "overlay.cpio")
	if err := writeOverlayFile(path, files); err != nil {
		b.Fatal(err)
	}
	return path, forwards
}

func writeOverlayFile(path string, files []File) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	err = WriteOverlay(f, files)
	return errors.Join(err, f.Close())
}

// runCompare boots the VM for one size and returns both proxies' figures,
// each with the host's load average when it arrived.
func runCompare(b *testing.B, root, overlay string, forwards []string, sz [2]int, capDur time.Duration) []CompareFigures {
	// Each proxy: start, cold sync (≤ cap), quiet, partial; plus boot and the
	// namespaces. The inside binary ends a minute earlier, with its report.
	timeout := 2*capDur + 10*time.Minute
	spec := filepath.Join(b.TempDir(), "spec.cpio")
	if err := writeOverlayFile(spec, []File{
		{Name: CompareFile, Mode: 0o644, Data: fmt.Appendf(nil, "%dx%d %s", sz[0], sz[1], capDur)},
		{Name: "kpo-vm-args", Mode: 0o644, Data: []byte(CompareArgs((timeout - time.Minute).String()))},
	}); err != nil {
		b.Fatal(err)
	}
	var mu sync.Mutex
	var figs []CompareFigures
	var parseErr error
	out := filepath.Join(root, "bin/vm")
	res, err := Run(context.Background(), Options{
		Kernel:  filepath.Join(out, "vmlinuz"),
		Initrds: []string{filepath.Join(out, "base.cpio.gz"), overlay, spec},
		Timeout: timeout,
		// ~250 MB of binaries unpacked into the initramfs, both proxies (at
		// 10k Services, 100–200 MB each) and the test binary.
		MemoryMB: 3072,
		Forwards: forwards,
		Console: func(line string) {
			f, ok, err := ParseCompareLine(line)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err != nil:
				parseErr = err
			case ok:
				f.HostLoadAvg = proxystats.LoadAverage()
				figs = append(figs, f)
				b.Logf("%s %dx%d: cold sync %.2f s (CPU %.2f s), sync after one endpoint change %.1f ms (%s), change → synced %.0f ms; host load %.1f",
					f.Impl, f.Services, f.Endpoints, f.ColdSyncS, f.ColdCPUS, f.PartialSyncS*1000, f.PartialType,
					f.PartialLatencyS*1000, f.HostLoadAvg)
			case strings.HasPrefix(line, "KPO-VM") || strings.Contains(line, "--- ") ||
				strings.Contains(line, "_test.go:") || strings.Contains(line, "panic"):
				b.Log("vm: " + line)
			}
		},
	})
	b.Logf("VM %dx%d: boot %v, total %v", sz[0], sz[1], res.Boot.Round(time.Second), res.Total.Round(time.Second))
	// The whole console, for a look at the proxies' logs afterwards (not in
	// bin/vm: that is the machine's shared cache).
	console := filepath.Join(os.TempDir(), fmt.Sprintf("kpo-vm-compare-%dx%d.console", sz[0], sz[1]))
	if werr := os.WriteFile(console, []byte(res.Output), 0o644); werr == nil {
		b.Logf("console: %s", console)
	}
	switch {
	case err != nil:
		b.Errorf("VM run: %v", err)
	case !res.Passed:
		b.Errorf("inside comparison failed: %s", res.Marker)
	case parseErr != nil:
		b.Error(parseErr)
	case len(figs) != 2:
		b.Errorf("%d proxies reported, want 2", len(figs))
	}
	return figs
}

// compareCommand is this run's command line, for the report.
func compareCommand() string {
	return proxystats.Command("./test/vm/", "KPO_VM_COMPARE_SIZES", "KPO_BENCH_CAP")
}
