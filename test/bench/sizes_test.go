package bench

import (
	"encoding/json"

	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"kpo.dev/kpo/test/vm"
)

// The loader cannot delete Services: sizes must come in ascending order of
// Services, and the short variant must include 1k × 50.
func TestSizesOrder(t *testing.T) {
	for _, c := range []struct {
		in   string
		want [][2]int
	}{
		{defaultSizes, [][2]int{{1000, 2}, {1000, 50}, {10000, 2}}},
		{defaultSizes + ",5000x50", [][2]int{{1000, 2}, {1000, 50}, {5000, 50}, {10000, 2}}},
		{defaultSizes + "," + strings.Join(largeSizes, ","), [][2]int{{1000, 2}, {1000, 50}, {5000, 50}, {10000, 2}, {50000, 2}}},
		{"10000x2,1000x50,1000x2,1000x50", [][2]int{{1000, 50}, {1000, 2}, {10000, 2}}},
		{"200x2, 200x20", [][2]int{{200, 2}, {200, 20}}},
	} {
		got, err := parseSizes(strings.Split(c.in, ","))
		if err != nil || !reflect.DeepEqual(got, c.want) {
			t.Errorf("%s: got %v, %v; want %v", c.in, got, err, c.want)
		}
	}
	for _, bad := range []string{"1000", "x2", "0x2", "1000x-1", "ax2"} {
		if _, err := parseSizes([]string{bad}); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

// The IPVS figures from the VM land in the summary table with the note, and
// a run without them says why.
func TestIPVSInReport(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("KPO_BENCH_DOCS_DIR", dir)
	res := func(impl string) result {
		return result{Impl: impl, Mode: "nftables", Services: 1000, Endpoints: 50, ColdSyncS: 2, ColdCPUS: 1,
			PartialSyncS: 0.01, PartialLatencyS: 0.02, RSSMiB: 50, PeakRSSMiB: 60, Rules: 100}
	}
	rep := report{Command: "cmd", Results: []result{res("kube-proxy"), res("kpo")},
		IPVSVM: &ipvsVMReport{Kernel: "6.1.0-56-amd64", WallS: 90, Figures: []vm.BenchFigures{
			{Services: 1000, Endpoints: 2, ColdSyncS: 3.37, ColdNetlinkOps: 4003, PartialSyncMS: 94, PartialNetlinkOps: 4},
			{Services: 10000, Endpoints: 2, ColdSyncS: 32, ColdNetlinkOps: 40003, PartialSyncMS: 294, PartialNetlinkOps: 4},
		}}}
	if err := writeSummary(rep); err != nil {
		t.Fatal(err)
	}
	if err := writeMarkdown(rep); err != nil {
		t.Fatal(err)
	}
	summary := read(t, filepath.Join(dir, "benchmarks.md"))
	for _, want := range []string{
		"| 1k × 50 | nftables | cold sync (s) | 2.00 | 2.00 | 1.0× |",
		"| 1k × 2 | ipvs (VM, TCG) | full sync, backend only (s) | not run | 3.37 | — |",
		"| 10k × 2 | ipvs (VM, TCG) | netlink ops per partial sync | not run | 4 | — |",
		"| 10k × 2 | ipvs (VM, TCG) | partial sync, one endpoint (ms) | not run | 294.0 | — |",
		"**TCG emulation**", "not comparable in absolute terms", "kube-proxy's IPVS mode is not run",
		"6.1.0-56-amd64",
	} {
		if !strings.Contains(summary, want) {
			t.Errorf("benchmarks.md lacks %q:\n%s", want, summary)
		}
	}
	if md := read(t, filepath.Join(dir, "kube-proxy-comparison.md")); !strings.Contains(md, "| 10k × 2 | 32.00 | 40003 | 294.0 | 4 |") {
		t.Errorf("kube-proxy-comparison.md lacks the IPVS table:\n%s", md)
	}
	raw, err := json.Marshal(rep)
	if err != nil || !strings.Contains(string(raw), `"ipvsVM":{"kernel":"6.1.0-56-amd64","figures":[{"services":1000`) {
		t.Errorf("JSON: %s, %v", raw, err)
	}

	// No qemu: a note, no rows; the section is rewritten in place.
	rep.IPVSVM = &ipvsVMReport{Note: "qemu-system-x86_64 is missing"}
	if err := writeSummary(rep); err != nil {
		t.Fatal(err)
	}
	summary = read(t, filepath.Join(dir, "benchmarks.md"))
	if strings.Contains(summary, "ipvs (VM, TCG)") || !strings.Contains(summary, "no figures in this run: qemu-system-x86_64 is missing.") {
		t.Errorf("without the VM:\n%s", summary)
	}
	if n := strings.Count(summary, summaryBegin); n != 1 {
		t.Errorf("%d sections", n)
	}
}

func read(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// The VM benchmark runs only where it can and when asked (or when writing).
func TestVMSkipReason(t *testing.T) {
	root := t.TempDir() // no bin/vm/cache
	t.Setenv("KPO_BENCH_IPVS_VM", "0")
	if got := vmSkipReason(root); got != "KPO_BENCH_IPVS_VM=0" {
		t.Errorf("disabled: %q", got)
	}
	t.Setenv("KPO_BENCH_IPVS_VM", "")
	t.Setenv("KPO_BENCH_WRITE", "")
	if got := vmSkipReason(root); !strings.Contains(got, "only with KPO_BENCH_WRITE=1") {
		t.Errorf("not writing: %q", got)
	}
	t.Setenv("KPO_BENCH_WRITE", "1")
	t.Setenv("PATH", t.TempDir())
	if got := vmSkipReason(root); !strings.Contains(got, "qemu-system-x86_64 is missing") {
		t.Errorf("no qemu: %q", got)
	}
	qemu := filepath.Join(os.Getenv("PATH"), "qemu-system-x86_64")
	if err := os.WriteFile(qemu, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if got := vmSkipReason(root); !strings.Contains(got, "no VM kernel in bin/vm/cache") {
		t.Errorf("no kernel cache: %q", got)
	}
	if err := os.MkdirAll(filepath.Join(root, "bin/vm/cache/6.1.0-56-amd64"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "bin/vm/cache/6.1.0-56-amd64/.done"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if got := vmSkipReason(root); got != "" {
		t.Errorf("all there: %q", got)
	}
}
