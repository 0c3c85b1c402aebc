package vm

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// The IPVS side-by-side benchmark (BenchmarkIPVSComparison on the host,
// TestCompareIPVS in test/vm/inside): upstream kube-proxy's IPVS mode and
// kpo's agent in IPVS mode, one after the other, inside the VM, against the
// host's API server, measured as test/bench measures the other modes.

// Files of the comparison's overlay.
const (
	// CompareFile holds "SERVICESxENDPOINTS CAP" (the data set the host loaded
	// and the bound of each proxy's cold sync); the inside test runs only
	// when it exists.
	CompareFile = "kpo-vm-compare"
	// KubeProxyFile is upstream kube-proxy in the VM.
	KubeProxyFile = "kube-proxy"
)

// CompareMarker starts the console line that carries one proxy's figures as
// JSON.
const CompareMarker = "KPO-VM-COMPARE: "

// CompareFigures are one proxy's figures at one size, inside the VM (TCG
// emulation): the fields of test/bench's result that mean the same thing.
type CompareFigures struct {
	Impl      string `json:"impl"`
	Services  int    `json:"services"`
	Endpoints int    `json:"endpointsPerService"`
	// ColdSyncS is process start to the first sync that holds every Service;
	// FirstSyncS that sync's own duration (the proxy's histogram or log).
	ColdSyncS  float64 `json:"coldSyncSeconds"`
	FirstSyncS float64 `json:"firstSyncSeconds"`
	// Capped: no complete sync within CapS (ColdSyncS is then the cap).
	Capped bool    `json:"capped"`
	CapS   float64 `json:"capSeconds"`
	// ColdCPUS is the process's and its waited-for children's (ipset,
	// iptables-restore) CPU time up to the first complete sync.
	ColdCPUS      float64 `json:"coldCPUSeconds"`
	ColdChildCPUS float64 `json:"coldChildCPUSeconds"`
	// VirtualServers is the IPVS virtual servers in the node after the cold sync.
	VirtualServers int `json:"virtualServers"`
	// PartialSyncS is the duration of the sync that followed one
	// EndpointSlice update (the proxy's histogram); PartialType "full" or
	// "partial" (kube-proxy's IPVS mode has no partial syncs).
	PartialSyncS float64 `json:"partialSyncSeconds"`
	PartialType  string  `json:"partialType"`
	// PartialLatencyS is the update's API call to that sync being done, seen
	// by polling the proxy's metrics.
	PartialLatencyS float64 `json:"partialLatencySeconds"`
	PartialCPUS     float64 `json:"partialCPUSeconds"`
	RSSMiB          float64 `json:"rssMiB"`
	PeakRSSMiB      float64 `json:"peakRSSMiB"`
	// GuestLoadAvg is the VM's 1-minute load average at the end of the cold
	// sync; HostLoadAvg the host's when the line reached the console (the
	// host fills it in).
	GuestLoadAvg float64 `json:"guestLoadAverage1m"`
	HostLoadAvg  float64 `json:"hostLoadAverage1m"`
}

// Line is the console line carrying f.
func (f CompareFigures) Line() string {
	b, err := json.Marshal(f)
	if err != nil {
		// Only numbers and strings: cannot happen.
		panic(err)
	}
	return CompareMarker + string(b)
}

// ParseCompareLine reads one console line; ok is false when it carries no
// figures.
func ParseCompareLine(line string) (CompareFigures, bool, error) {
	var f CompareFigures
	_, rest, ok := strings.Cut(line, CompareMarker)
	if !ok {
		return f, false, nil
	}
	if err := json.Unmarshal([]byte(strings.TrimSpace(rest)), &f); err != nil {
		return f, false, fmt.Errorf("%s%s: %w", CompareMarker, rest, err)
	}
	return f, true, nil
}

// CompareArgs are the inside binary's arguments for the comparison.
func CompareArgs(timeout string) string {
	return "-test.timeout=" + timeout + " -test.run=^TestCompareIPVS$"
}

// compareMarkdown is the report of one comparison run: the figures of both
// proxies at each size, side by side, with the ratios, the command and the
// load.
func compareMarkdown(figs []CompareFigures, command, vmKernel string, wall time.Duration) string {
	var sb strings.Builder
	w := func(format string, a ...any) { fmt.Fprintf(&sb, format, a...) }
	w("# IPVS: upstream kube-proxy and kpo side by side in the VM\n\n")
	w("<!-- Written by test/vm BenchmarkIPVSComparison (make bench-ipvs); do not edit by hand. -->\n\n")
	w("Produced on %s in %.1f min by\n\n```sh\n%s\n```\n\n", time.Now().UTC().Format("2006-01-02"), wall.Minutes(), command)
	w("Both proxies inside one qemu VM (Debian's kernel %s: this machine's kernel has no IPVS) under **TCG "+
		"emulation** (no KVM: every instruction emulated, 2 emulated CPUs on the host's 2 shared cores), one after "+
		"the other on a fresh node namespace each, against the same real kube-apiserver and etcd (on the host, reached "+
		"through qemu's restricted user network), with the same data set (test/testnet's loader: N ClusterIP Services × 2 "+
		"endpoints on another node, created before the proxy starts) and the same sync periods (minSyncPeriod 1s, "+
		"syncPeriod 30s). Absolute times are several times those of hardware; the ratios are the figure. "+
		"Method as test/bench ([kube-proxy-comparison.md](kube-proxy-comparison.md)): *cold sync* is process start to "+
		"the first sync holding every Service (kube-proxy: the first IPv4 observation of "+
		"`kubeproxy_sync_proxy_rules_duration_seconds`, which its IPVS proxier makes only once its informers synced; "+
		"kpo: its first full `synced` log line with every service port), then checked against the IPVS virtual servers "+
		"in the node; *CPU* is the process's and its children's (ipset, iptables-restore); *sync after one endpoint "+
		"change* is the proxy's own histogram for the sync that followed one EndpointSlice update (kube-proxy's IPVS "+
		"mode has only full syncs), *change → synced* the update's API call to that sync being seen in the metrics. "+
		"See [ipvs-vm-tests.md](ipvs-vm-tests.md).\n\n", orUnknown(vmKernel))
	w("| size | figure | kube-proxy | kpo | kube-proxy / kpo |\n|---|---|---:|---:|---:|\n")
	for _, pair := range comparePairs(figs) {
		up, kp := pair[0], pair[1]
		size := fmt.Sprintf("%s × %d", shortCount(up.Services), up.Endpoints)
		// cell is one proxy's figure, "—" past a cap (it never got there).
		cell := func(f CompareFigures, format string, v float64) string {
			if f.Capped {
				return "—"
			}
			return fmt.Sprintf(format, v)
		}
		row := func(name string, u, k float64, format string) {
			ratio := "—"
			if k > 0 && u > 0 && !up.Capped && !kp.Capped {
				ratio = fmt.Sprintf("%.1f×", u/k)
			}
			w("| %s | %s | %s | %s | %s |\n", size, name, cell(up, format, u), cell(kp, format, k), ratio)
		}
		if up.Capped || kp.Capped {
			w("| %s | cold sync (s) | %s | %s | %s |\n", size, capped(up), capped(kp), cappedRatio(up, kp))
			w("| %s | CPU to cold sync, or to the cap (s) | %.2f | %.2f | |\n", size, up.ColdCPUS, kp.ColdCPUS)
		} else {
			row("cold sync (s)", up.ColdSyncS, kp.ColdSyncS, "%.2f")
			row("CPU to cold sync (s)", up.ColdCPUS, kp.ColdCPUS, "%.2f")
		}
		row("first complete sync itself (s)", up.FirstSyncS, kp.FirstSyncS, "%.2f")
		row("… CPU to cold sync in child processes (s)", up.ColdChildCPUS, kp.ColdChildCPUS, "%.2f")
		row("sync after one endpoint change (ms)", up.PartialSyncS*1000, kp.PartialSyncS*1000, "%.1f")
		w("| %s | that sync's kind | %s | %s | |\n", size, orDash(up.PartialType), orDash(kp.PartialType))
		row("one endpoint change → synced (ms)", up.PartialLatencyS*1000, kp.PartialLatencyS*1000, "%.0f")
		row("CPU of that change (s)", up.PartialCPUS, kp.PartialCPUS, "%.2f")
		w("| %s | RSS / peak RSS (MiB) | %.0f / %.0f | %.0f / %.0f | |\n", size, up.RSSMiB, up.PeakRSSMiB, kp.RSSMiB, kp.PeakRSSMiB)
		w("| %s | IPVS virtual servers (at the cap, if capped) | %d | %d | |\n", size, up.VirtualServers, kp.VirtualServers)
		w("| %s | host / VM 1-min load average | %.1f / %.1f | %.1f / %.1f | |\n", size, up.HostLoadAvg, up.GuestLoadAvg,
			kp.HostLoadAvg, kp.GuestLoadAvg)
	}
	w("\nHost load average: this machine's (2 cores, shared with other work) when the proxy's figures reached the " +
		"console; VM load average: inside the VM at the end of the cold sync.\n")
	return sb.String()
}

// comparePairs pairs kube-proxy's and kpo's figures of each size, in order;
// a size with one proxy's figures only is left out.
func comparePairs(figs []CompareFigures) [][2]CompareFigures {
	var out [][2]CompareFigures
	for i, up := range figs {
		if up.Impl != "kube-proxy" {
			continue
		}
		for _, kp := range figs[i+1:] {
			if kp.Impl == "kpo" && kp.Services == up.Services && kp.Endpoints == up.Endpoints {
				out = append(out, [2]CompareFigures{up, kp})
				break
			}
		}
	}
	return out
}

func capped(f CompareFigures) string {
	if f.Capped {
		return fmt.Sprintf("> %.0f (capped)", f.CapS)
	}
	return fmt.Sprintf("%.2f", f.ColdSyncS)
}

// cappedRatio is the lower bound of the ratio when kube-proxy alone ran
// into the cap.
func cappedRatio(up, kp CompareFigures) string {
	if up.Capped && !kp.Capped && kp.ColdSyncS > 0 {
		return fmt.Sprintf("> %.1f×", up.CapS/kp.ColdSyncS)
	}
	return "—"
}

func orDash(s string) string {
	if s == "" {
		return "—"
	}
	return s
}

func orUnknown(s string) string {
	if s == "" {
		return "(unknown)"
	}
	return s
}

// shortCount writes 1000 as 1k.
func shortCount(n int) string {
	if n >= 1000 && n%1000 == 0 {
		return fmt.Sprintf("%dk", n/1000)
	}
	return fmt.Sprint(n)
}
