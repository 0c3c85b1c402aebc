package bench

import (
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"strings"
)

// The comparison section of docs/benchmarks.md lies between these markers;
// writeSummary rewrites it and leaves the rest of the file as written.
const (
	summaryBegin = "<!-- BEGIN kube-proxy comparison: written by test/bench (make bench), do not edit by hand -->"
	summaryEnd   = "<!-- END kube-proxy comparison -->"
)

// churnTargetMS is the target for kpo's p99 network programming
// latency under churn.
const churnTargetMS = 100

// sizeMode keys the results of one data set and mode.
type sizeMode struct {
	mode     string
	svc, eps int
}

// groupResults groups results by data set and mode, in the order measured;
// within a group the last run of an implementation wins (-benchtime Nx).
func groupResults(rs []result) ([]sizeMode, map[sizeMode]map[string]result) {
	var order []sizeMode
	by := map[sizeMode]map[string]result{}
	for _, r := range rs {
		k := sizeMode{r.Mode, r.Services, r.Endpoints}
		if by[k] == nil {
			by[k] = map[string]result{}
			order = append(order, k)
		}
		by[k][r.Impl] = r
	}
	return order, by
}

func lastFirst(r result) float64 {
	if r.ConnectFirstUS <= 0 {
		return 0
	}
	return r.ConnectLastUS / r.ConnectFirstUS
}

// churnTable writes the churn figures of one mode and size, if measured.
func churnTable(w func(string, ...any), cs []churnResult, mode string, services int) {
	var up, kp *churnResult
	for i := range cs {
		c := &cs[i]
		if c.Mode != mode || c.Services != services {
			continue
		}
		if c.Impl == "kube-proxy" {
			up = c
		} else {
			kp = c
		}
	}
	if up == nil && kp == nil {
		return
	}
	settings := up
	if settings == nil {
		settings = kp
	}
	w("Network programming latency under churn (%s, %d Services; both proxies: minSyncPeriod %s,\n",
		mode, services, settings.MinSyncPeriod)
	w("syncPeriod %s; %d changes at %.1f/s):\n\n", settings.SyncPeriod, settings.Changes, settings.RatePerS)
	w("| | kube-proxy | kpo | kube-proxy / kpo |\n|---|---:|---:|---:|\n")
	row := func(name string, f func(*churnResult) float64, digits int) {
		cell := func(c *churnResult) string {
			switch {
			case c == nil:
				return "—"
			case c.Capped:
				return fmt.Sprintf("no cold sync in %.0f s", c.CapS)
			}
			return fmt.Sprintf("%.*f", digits, f(c))
		}
		ratio := "—"
		if up != nil && kp != nil && !up.Capped && !kp.Capped && f(kp) > 0 {
			ratio = fmt.Sprintf("%.1f×", f(up)/f(kp))
		}
		w("| %s | %s | %s | %s |\n", name, cell(up), cell(kp), ratio)
	}
	row("write → live, p50 (ms)", func(c *churnResult) float64 { return c.P50MS }, 1)
	row("write → live, p99 (ms)", func(c *churnResult) float64 { return c.P99MS }, 1)
	row("write → live, max (ms)", func(c *churnResult) float64 { return c.MaxMS }, 1)
	row("changes not live in 60 s", func(c *churnResult) float64 { return float64(c.NotLive) }, 0)
	row("CPU during the churn (s)", func(c *churnResult) float64 { return c.CPUS }, 1)
	w("\n")
}

func mark(ok bool) string {
	if ok {
		return "✓"
	}
	return "✗"
}

// writeSummary rewrites the comparison section of docs/benchmarks.md.
func writeSummary(rep report) error {
	path := filepath.Join(docsDir(), "benchmarks.md")
	data, err := os.ReadFile(path)
	// A scratch KPO_BENCH_DOCS_DIR may start without it.
	scratch := errors.Is(err, fs.ErrNotExist) && os.Getenv("KPO_BENCH_DOCS_DIR") != ""
	if err != nil && !scratch {
		return err
	}
	doc := string(data)
	before, rest, ok := strings.Cut(doc, summaryBegin)
	_, after, ok2 := strings.Cut(rest, summaryEnd)
	if !ok || !ok2 {
		// No section yet: append one.
		before, after = strings.TrimRight(doc, "\n")+"\n\n", "\n"
		if doc == "" {
			before = ""
		}
	}
	var sb strings.Builder
	w := func(format string, a ...any) { fmt.Fprintf(&sb, format, a...) }
	summaryHeader(w, rep)
	summaryTable(w, &sb, rep.Results)
	ipvsRows(w, rep.IPVSVM)
	w("\nConnect times (first packet: SYN through the rules to the SYN-ACK, median of 300) move with the\n")
	w("machine's state from run to run; *last / first*, measured within one run, is the figure to compare.\n\n")
	ipvsSummaryNote(w, rep.IPVSVM)
	if len(rep.Churn) > 0 {
		summaryChurn(w, rep.Churn)
	}
	goalsTable(w, rep.Results)
	w("%s", summaryEnd)
	return os.WriteFile(path, []byte(before+sb.String()+after), 0o644)
}

// summaryHeader says how, where and on what the figures were taken.
func summaryHeader(w func(string, ...any), rep report) {
	m := rep.Machine
	w("%s\n", summaryBegin)
	w("## Side by side with upstream kube-proxy\n\n")
	w("Both proxies on the same API server, data set, mode and settings (minSyncPeriod %s, syncPeriod %s,\n", minSyncPeriod, syncPeriod)
	w("kube-proxy's defaults, except in the churn runs, see below), one after the other, one run each.\n")
	w("Method, every figure and caveats: [kube-proxy-comparison.md](kube-proxy-comparison.md); raw figures:\n")
	w("[kube-proxy-comparison.json](kube-proxy-comparison.json). Produced on %s", m.Date)
	if rep.WallS > 0 {
		w(" in %.1f min", rep.WallS/60)
	}
	w(" by\n\n```sh\n%s\n```\n\n", rep.Command)
	w("Machine: Linux %s, %d × %s (shared with other work: see the load averages), %s, %s,\n",
		m.Kernel, m.CPUs, m.CPUModel, m.IPTables, m.NFT)
	w("kube-proxy %s, %s.", m.KubeProxy, m.Go)
	lo, hi := math.Inf(1), 0.0
	for _, r := range rep.Results {
		lo, hi = math.Min(lo, r.LoadAvg), math.Max(hi, r.LoadAvg)
	}
	if hi > 0 {
		w(" 1-minute load average at the cold syncs: %.1f–%.1f.", lo, hi)
	}
	w("\n\n")
}

// summaryTable is one row per figure, size and mode; sb is where w writes
// (the RSS row is rewritten in place).
func summaryTable(w func(string, ...any), sb *strings.Builder, results []result) {
	order, by := groupResults(results)
	w("| size | mode | figure | kube-proxy | kpo | kube-proxy / kpo |\n|---|---|---|---:|---:|---:|\n")
	for _, k := range order {
		up, upOK := by[k]["kube-proxy"]
		kp, kpOK := by[k]["kpo"]
		size := fmt.Sprintf("%s × %d", short(k.svc), k.eps)
		row := func(name string, f func(result) float64, digits int, withRatio bool) {
			cell := func(r result, ok bool) string {
				switch {
				case !ok:
					return "—"
				case r.Capped && name == "cold sync (s)":
					return fmt.Sprintf("> %.0f (cap)", r.CapS)
				case r.Capped:
					return "—"
				}
				return fmt.Sprintf("%.*f", digits, f(r))
			}
			ratio := ""
			if withRatio {
				ratio = "—"
				switch {
				case upOK && kpOK && !up.Capped && !kp.Capped && f(kp) > 0:
					ratio = fmt.Sprintf("%.1f×", f(up)/f(kp))
				case upOK && kpOK && up.Capped && !kp.Capped && name == "cold sync (s)" && f(kp) > 0:
					ratio = fmt.Sprintf("> %.0f×", up.CapS/f(kp))
				}
			}
			w("| %s | %s | %s | %s | %s | %s |\n", size, k.mode, name, cell(up, upOK), cell(kp, kpOK), ratio)
		}
		row("cold sync (s)", func(r result) float64 { return r.ColdSyncS }, 2, true)
		row("CPU to cold sync (s)", func(r result) float64 { return r.ColdCPUS }, 2, true)
		row("partial sync, one endpoint (ms)", func(r result) float64 { return r.PartialSyncS * 1000 }, 1, true)
		row("one endpoint change → synced (ms)", func(r result) float64 { return r.PartialLatencyS * 1000 }, 0, true)
		row("RSS / peak RSS (MiB)", func(r result) float64 { return r.PeakRSSMiB }, 0, false)
		// RSS and peak in one cell would not parse as a number: overwrite the cells.
		fixRSS(sb, up, upOK, kp, kpOK)
		row("rules + set/map elements", func(r result) float64 { return float64(r.Rules) }, 0, true)
		if up.ConnectFirstUS > 0 || kp.ConnectFirstUS > 0 {
			row("connect, first service (µs)", func(r result) float64 { return r.ConnectFirstUS }, 0, true)
			row("connect, last service (µs)", func(r result) float64 { return r.ConnectLastUS }, 0, true)
			row("connect, last / first", lastFirst, 2, false)
		}
	}
}

// summaryChurn is the table of the churn runs.
func summaryChurn(w func(string, ...any), churn []churnResult) {
	c0 := churn[0]
	w("Network programming latency under steady churn: %s Services, one Service's endpoints replaced\n", short(c0.Services))
	w("every %.0f ms for %d changes, EndpointSlice write → the new endpoint answering a real connection.\n",
		1000/c0.RatePerS, c0.Changes)
	w("Both proxies run with **minSyncPeriod %s**, syncPeriod %s in these runs (with kube-proxy's\n", c0.MinSyncPeriod, c0.SyncPeriod)
	w("default of 1 s, both would wait for the rate limit: the figure would be the setting's).\n\n")
	w("| mode | kube-proxy p50 / p99 (ms) | kpo p50 / p99 (ms) | p99 kube-proxy / kpo | kpo p99 ≤ %d ms |\n", churnTargetMS)
	w("|---|---:|---:|---:|---|\n")
	cs := map[string]map[string]churnResult{}
	var modes []string
	for _, c := range churn {
		if cs[c.Mode] == nil {
			cs[c.Mode] = map[string]churnResult{}
			modes = append(modes, c.Mode)
		}
		cs[c.Mode][c.Impl] = c
	}
	for _, mode := range modes {
		up, upOK := cs[mode]["kube-proxy"]
		kp, kpOK := cs[mode]["kpo"]
		cell := func(c churnResult, ok bool) string {
			if !ok || c.Capped {
				return "—"
			}
			return fmt.Sprintf("%.0f / %.0f", c.P50MS, c.P99MS)
		}
		ratio, target := "—", "—"
		if upOK && kpOK && !up.Capped && !kp.Capped && kp.P99MS > 0 {
			ratio = fmt.Sprintf("%.1f×", up.P99MS/kp.P99MS)
		}
		if kpOK && !kp.Capped {
			target = fmt.Sprintf("%s %.0f ms", mark(kp.P99MS <= churnTargetMS), kp.P99MS)
			if kp.P99MS > churnTargetMS {
				target += fmt.Sprintf(" (%.1f× the target)", kp.P99MS/churnTargetMS)
			}
		}
		w("| %s | %s | %s | %s | %s |\n", mode, cell(up, upOK), cell(kp, kpOK), ratio, target)
	}
	w("\n")
}

// fixRSS replaces the last row's kube-proxy and kpo cells with "RSS / peak".
func fixRSS(sb *strings.Builder, up result, upOK bool, kp result, kpOK bool) {
	s := sb.String()
	i := strings.LastIndex(strings.TrimSuffix(s, "\n"), "\n")
	cells := strings.Split(s[i+1:], " | ")
	if len(cells) < 6 {
		return
	}
	cell := func(r result, ok bool) string {
		if !ok {
			return "—"
		}
		return fmt.Sprintf("%.0f / %.0f", r.RSSMiB, r.PeakRSSMiB)
	}
	cells[3], cells[4] = cell(up, upOK), cell(kp, kpOK)
	sb.Reset()
	sb.WriteString(s[:i+1] + strings.Join(cells, " | "))
}

// short writes 10000 as 10k.
func short(n int) string {
	if n >= 1000 && n%1000 == 0 {
		return fmt.Sprintf("%dk", n/1000)
	}
	return fmt.Sprint(n)
}
