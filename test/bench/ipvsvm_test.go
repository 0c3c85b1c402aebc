package bench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"kpo.dev/kpo/hack/apiserver"
	"kpo.dev/kpo/test/vm"
)

// IPVS cannot run on this machine's kernel: kpo's IPVS figures come from the
// inside benchmark of test/vm (BenchmarkSync), in a qemu VM under TCG
// emulation, and only for kpo (kube-proxy's IPVS mode would need an API
// server and a node inside the VM).
//
// KPO_BENCH_IPVS_VM: "0" never, "1" always (when possible); unset: only when
// the report is written (KPO_BENCH_WRITE=1), so that the CI smoke run stays
// short. KPO_BENCH_IPVS_VM_SIZES (default all of vm.BenchSizes, "1000x2,10000x2"),
// KPO_BENCH_IPVS_VM_TIMEOUT (default 6m: the whole VM run, boot included).
const defaultVMTimeout = 6 * time.Minute

// ipvsVMReport is the report's IPVS part: the figures, or why there are none.
type ipvsVMReport struct {
	// Note says why the VM benchmark did not run or did not finish ("" when
	// it did).
	Note    string            `json:"note,omitempty"`
	Kernel  string            `json:"kernel,omitempty"`
	Figures []vm.BenchFigures `json:"figures,omitempty"`
	// WallS is the whole VM run (image check, build, boot, benchmark).
	WallS float64 `json:"wallSeconds,omitempty"`
}

// vmReport is this run's IPVS part (nil when the comparison benchmark did not
// get to it).
var vmReport *ipvsVMReport

// vmSkipReason says why the VM benchmark cannot or should not run here, ""
// when it can.
func vmSkipReason(root string) string {
	switch os.Getenv("KPO_BENCH_IPVS_VM") {
	case "0":
		return "KPO_BENCH_IPVS_VM=0"
	case "1":
	default:
		if os.Getenv("KPO_BENCH_WRITE") != "1" {
			return "the VM benchmark runs only with KPO_BENCH_WRITE=1 or KPO_BENCH_IPVS_VM=1"
		}
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		return "qemu-system-x86_64 is missing (apt-get install qemu-system-x86 busybox-static kmod cpio xz-utils)"
	}
	if !vm.KernelCached(filepath.Join(root, "bin/vm")) {
		return "no VM kernel in bin/vm/cache (`go test -run TestIPVSInVM ./test/vm/` downloads it once)"
	}
	return ""
}

// benchIPVSInVM runs kpo's IPVS benchmark in the VM, after the host
// measurements (so that qemu's two busy threads do not disturb them), and
// keeps its figures, or the reason there are none, for the report.
func benchIPVSInVM(b *testing.B) {
	root := apiserver.RepoRoot()
	rep := &ipvsVMReport{}
	defer func() {
		resultsMu.Lock()
		vmReport = rep
		resultsMu.Unlock()
	}()
	if rep.Note = vmSkipReason(root); rep.Note != "" {
		b.Logf("IPVS in the VM: %s", rep.Note)
		return
	}
	sizes := vm.BenchSizes
	if v := os.Getenv("KPO_BENCH_IPVS_VM_SIZES"); v != "" {
		sizes = strings.Split(v, ",")
	}
	timeout := envDuration(b, "KPO_BENCH_IPVS_VM_TIMEOUT", defaultVMTimeout)
	rep.Note = "the VM benchmark (ipvs-vm/kpo) did not match -bench"
	b.Run("ipvs-vm/kpo", func(b *testing.B) {
		for range b.N {
			rep.Note = ""
			t0 := time.Now()
			run, err := vm.RunBench(context.Background(), root, sizes, timeout, func(line string) {
				if strings.HasPrefix(line, "BenchmarkSync/") || strings.HasPrefix(line, "KPO-VM") ||
					strings.Contains(line, "FAIL") || strings.Contains(line, "panic") {
					b.Log("vm: " + line)
				}
			})
			rep.Kernel, rep.Figures, rep.WallS = run.Kernel, run.Figures, time.Since(t0).Seconds()
			b.Logf("IPVS in the VM: %d of %d sizes in %v (boot %v)", len(run.Figures), len(sizes),
				time.Since(t0).Round(time.Second), run.Boot.Round(time.Second))
			if err != nil {
				rep.Note = fmt.Sprintf("the VM run failed: %s", firstLine(err.Error()))
				b.Errorf("IPVS in the VM: %v", err)
			} else if len(run.Figures) < len(sizes) {
				rep.Note = fmt.Sprintf("%d of the %d sizes (%s) reported", len(run.Figures), len(sizes), strings.Join(sizes, ", "))
			}
			for _, f := range run.Figures {
				if f.Services == 1000 {
					// One set of metrics per sub-benchmark: the smallest size's.
					b.ReportMetric(f.ColdSyncS, "vm-cold-s")
					b.ReportMetric(f.PartialSyncMS, "vm-partial-ms")
					b.ReportMetric(float64(f.PartialNetlinkOps), "vm-partial-netlink-ops")
				}
			}
		}
	})
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}

// ipvsNote is what the report says about the IPVS figures.
func ipvsNote(r *ipvsVMReport) string {
	kernel := "Debian's stock kernel"
	if r.Kernel != "" {
		kernel += " " + r.Kernel
	}
	return "kpo's IPVS backend alone, in a qemu VM (" + kernel + ": this machine's kernel has no IPVS) under **TCG " +
		"emulation** (no KVM: every instruction emulated, 2 emulated CPUs on the 2 shared cores), so several times " +
		"slower than hardware and **not comparable in absolute terms** with the figures measured on the host. *Full sync* there is one " +
		"backend sync of a prebuilt snapshot into an empty kernel (N ClusterIP Services × 2 endpoints; no API server, " +
		"no process start, unlike *cold sync* above); *partial sync* follows one endpoint change. kube-proxy's IPVS " +
		"mode is not run (it would need an API server and a node inside the VM). Source: test/vm/inside BenchmarkSync, " +
		"see [ipvs-vm-tests.md](ipvs-vm-tests.md)."
}

// ipvsRows writes the IPVS rows of the summary table (columns: size, mode,
// figure, kube-proxy, kpo, ratio).
func ipvsRows(w func(string, ...any), r *ipvsVMReport) {
	if r == nil {
		return
	}
	for _, f := range r.Figures {
		size := fmt.Sprintf("%s × %d", short(f.Services), f.Endpoints)
		row := func(name, value string) {
			w("| %s | ipvs (VM, TCG) | %s | not run | %s | — |\n", size, name, value)
		}
		row("full sync, backend only (s)", fmt.Sprintf("%.2f", f.ColdSyncS))
		row("netlink ops, full sync", fmt.Sprint(f.ColdNetlinkOps))
		row("partial sync, one endpoint (ms)", fmt.Sprintf("%.1f", f.PartialSyncMS))
		row("netlink ops per partial sync", fmt.Sprint(f.PartialNetlinkOps))
	}
}

// ipvsSummaryNote writes the paragraph under the summary table.
func ipvsSummaryNote(w func(string, ...any), r *ipvsVMReport) {
	switch {
	case r == nil:
		w("IPVS (kpo only, in a TCG-emulated VM): not measured in this run (the VM benchmark was not reached).\n\n")
	case len(r.Figures) == 0:
		w("IPVS (kpo only, in a TCG-emulated VM): no figures in this run: %s.\n\n", r.Note)
	default:
		w("*ipvs (VM, TCG)* rows: %s", ipvsNote(r))
		if r.Note != "" {
			w(" This run: %s.", r.Note)
		}
		w("\n\n")
	}
}

// ipvsSection writes the IPVS section of kube-proxy-comparison.md.
func ipvsSection(w func(string, ...any), r *ipvsVMReport) {
	w("## IPVS (kpo only, in a VM)\n\n")
	switch {
	case r == nil:
		w("Not measured in this run (the VM benchmark was not reached).\n\n")
		return
	case len(r.Figures) == 0:
		w("No figures in this run: %s.\n\n", r.Note)
		return
	}
	w("%s\n\n", ipvsNote(r))
	w("| size | full sync, backend only (s) | netlink ops (full) | partial sync, one endpoint (ms) | netlink ops (partial) |\n")
	w("|---|---:|---:|---:|---:|\n")
	for _, f := range r.Figures {
		w("| %s × %d | %.2f | %d | %.1f | %d |\n", short(f.Services), f.Endpoints, f.ColdSyncS, f.ColdNetlinkOps,
			f.PartialSyncMS, f.PartialNetlinkOps)
	}
	w("\nThe VM run took %.1f min in all (image check, test binary build, boot, benchmark).", r.WallS/60)
	if r.Note != "" {
		w(" %s.", r.Note)
	}
	w("\n\n")
}
