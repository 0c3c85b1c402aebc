package bench

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"kpo.dev/kpo/hack/apiserver"
)

// machine is what the figures depend on besides the code.
type machine struct {
	Kernel    string `json:"kernel"`
	CPUs      int    `json:"cpus"`
	CPUModel  string `json:"cpuModel"`
	IPTables  string `json:"iptables"`
	NFT       string `json:"nft"`
	Go        string `json:"go"`
	KubeProxy string `json:"kubeProxy"`
	Date      string `json:"date"`
}

func describeMachine() machine {
	run := func(name string, args ...string) string {
		out, err := exec.Command(name, args...).CombinedOutput()
		if err != nil {
			return "unknown"
		}
		return strings.TrimSpace(string(out))
	}
	m := machine{Kernel: run("uname", "-r"), CPUs: runtime.NumCPU(), IPTables: run("iptables", "--version"),
		NFT: run("nft", "--version"), Go: runtime.Version(),
		// The project builds kube-proxy from the module proxy, without the
		// version stamp (it reports v0.0.0-master); the version is the module's.
		KubeProxy: apiserver.K8sVersion + " (bin/k8s-" + apiserver.K8sVersion + "/kube-proxy)",
		Date:      time.Now().UTC().Format("2006-01-02")}
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	return m
}

// command is the exact command line of this run, for the report.
func command() string {
	var env []string
	for _, k := range []string{"KPO_BENCH_SIZES", "KPO_BENCH_LARGE", "KPO_BENCH_MODES", "KPO_BENCH_CAP",
		"KPO_BENCH_LATENCY_SIZES", "KPO_BENCH_CHURN_MIN_SYNC", "KPO_BENCH_CHURN_RATE", "KPO_BENCH_CHURN_SECONDS",
		"KPO_BENCH_IPVS_VM", "KPO_BENCH_IPVS_VM_SIZES", "KPO_BENCH_IPVS_VM_TIMEOUT"} {
		if v := os.Getenv(k); v != "" {
			env = append(env, k+"="+v)
		}
	}
	env = append(env, "KPO_BENCH_WRITE=1")
	args := []string{"go", "test", "./test/bench/"}
	if n := niceness(); n > 0 {
		args = append([]string{"nice", "-n", strconv.Itoa(n)}, args...)
	}
	for _, a := range os.Args[1:] {
		if strings.HasPrefix(a, "-test.") && !strings.HasPrefix(a, "-test.paniconexit0") && !strings.HasPrefix(a, "-test.testlogfile") &&
			!strings.HasPrefix(a, "-test.gocoverdir") {
			args = append(args, "-"+strings.TrimPrefix(a, "-test."))
		}
	}
	return strings.Join(env, " ") + " " + strings.Join(args, " ")
}

// niceness is this process's nice value (field 19 of /proc/self/stat), so
// that the command shows a `nice -n 5` it ran under.
func niceness() int {
	stat, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		return 0
	}
	_, rest, _ := strings.Cut(string(stat), ") ")
	f := strings.Fields(rest)
	if len(f) < 17 {
		return 0
	}
	n, _ := strconv.Atoi(f[16])
	return n
}

// report is the JSON document: everything the markdown is made from.
type report struct {
	Command string        `json:"command"`
	Machine machine       `json:"machine"`
	Results []result      `json:"results"`
	Churn   []churnResult `json:"churn,omitempty"`
	// IPVSVM is kpo's IPVS figures from the VM, or why there are none.
	IPVSVM *ipvsVMReport `json:"ipvsVM,omitempty"`
	// WallS is how long the whole run took.
	WallS float64 `json:"wallSeconds,omitempty"`
}

// docsDir is where the report goes: the repository's docs, or
// KPO_BENCH_DOCS_DIR (a scratch copy, for trying the harness out without
// touching the committed figures; benchmarks.md gets its section appended
// there if it has none).
func docsDir() string {
	if d := os.Getenv("KPO_BENCH_DOCS_DIR"); d != "" {
		return d
	}
	return filepath.Join(apiserver.RepoRoot(), "docs")
}

// writeReport writes docs/kube-proxy-comparison.md and .json, and the
// comparison section of docs/benchmarks.md, from this run.
func writeReport(rs []result, cs []churnResult, ipvs *ipvsVMReport, wall time.Duration) error {
	rep := report{Command: command(), Machine: describeMachine(), Results: rs, Churn: cs, IPVSVM: ipvs, WallS: wall.Seconds()}
	raw, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(docsDir(), "kube-proxy-comparison.json"), append(raw, '\n'), 0o644); err != nil {
		return err
	}
	if err := writeMarkdown(rep); err != nil {
		return err
	}
	return writeSummary(rep)
}

// TestRegenerateReport rewrites the markdown from the committed JSON, so that
// a change of wording or layout needs no new (slow) run: KPO_BENCH_REGEN=1.
func TestRegenerateReport(t *testing.T) {
	if os.Getenv("KPO_BENCH_REGEN") != "1" {
		t.Skip("set KPO_BENCH_REGEN=1 to rewrite docs/kube-proxy-comparison.md from its JSON")
	}
	raw, err := os.ReadFile(filepath.Join(docsDir(), "kube-proxy-comparison.json"))
	if err != nil {
		t.Fatal(err)
	}
	var rep report
	if err := json.Unmarshal(raw, &rep); err != nil {
		t.Fatal(err)
	}
	if err := writeMarkdown(rep); err != nil {
		t.Fatal(err)
	}
	if err := writeSummary(rep); err != nil {
		t.Fatal(err)
	}
}

// writeMarkdown writes docs/kube-proxy-comparison.md. Results of one data set
// and mode are grouped, kube-proxy first.
func writeMarkdown(rep report) error {
	var sb strings.Builder
	w := func(format string, a ...any) { fmt.Fprintf(&sb, format, a...) }
	w("# kpo and upstream kube-proxy, side by side\n\n")
	w("Generated by `test/bench` (BenchmarkKubeProxyComparison); raw figures in\n")
	w("[kube-proxy-comparison.json](kube-proxy-comparison.json). Do not edit by hand: rerun.\n\n")
	w("```sh\n%s\n```\n\n", rep.Command)
	mdMethod(w, rep.Machine)
	mdMachine(w, rep.Machine)
	w("## Results\n\n")
	mdResults(w, rep)
	ipvsSection(w, rep.IPVSVM)
	mdCaveats(w)
	return os.WriteFile(filepath.Join(docsDir(), "kube-proxy-comparison.md"), []byte(sb.String()), 0o644)
}

// mdMethod is the report's method section.
func mdMethod(w func(string, ...any), m machine) {
	w("## Method\n\n")
	w("One kube-apiserver and etcd (envtest), loaded with N ClusterIP Services (one TCP port)\n")
	w("× E endpoints each, all on a node that runs no proxy. For each mode, upstream kube-proxy\n")
	w("%s and then kpo run, one after the other, each in a fresh node namespace (the\n", apiserver.K8sVersion)
	w("machine has %d cores; running both at once would measure their contention), with the\n", m.CPUs)
	w("same mode, cluster CIDRs and sync periods (minSyncPeriod %s, syncPeriod %s: kube-proxy's\n", minSyncPeriod, syncPeriod)
	w("defaults). Both reach the API server through the same in-namespace proxy.\n\n")
	w("- **cold sync**: process start to the end of the first sync that holds every Service\n")
	w("  (kube-proxy: its `SyncProxyRules complete` line for IPv4 at --v=2, which it only reaches\n")
	w("  once its informers have listed everything; kpo: its first `synced full=true` line with\n")
	w("  all service ports). Includes connecting, listing, and the sync.\n")
	w("- **first sync**: the duration of that sync alone, as the proxy logs it.\n")
	w("- **partial sync**: one EndpointSlice update (one endpoint's address) after the proxy has\n")
	w("  been quiet for 3 s; the duration is the delta of the proxy's own partial-sync histogram\n")
	w("  (`kubeproxy_sync_partial_proxy_rules_duration_seconds`, the same name in both);\n")
	w("  *change → synced* is the update's API call to that histogram's count moving (metrics\n")
	w("  polled every 10 ms), i.e. watch delivery + batching + sync.\n")
	w("- **CPU**: utime+stime of the process and its waited-for children (kube-proxy runs\n")
	w("  iptables-restore / nft as children) from /proc/PID/stat.\n")
	w("- **RSS**: VmRSS after the partial sync, and VmHWM (peak) since start, of the proxy process.\n")
	w("- **rules**: nftables: rule objects in `nft -j list ruleset`; iptables: `-A` lines of\n")
	w("  iptables-save + ip6tables-save. *ruleset* is the size of that dump (covers set/map\n")
	w("  elements too). The two designs differ, so compare these with care.\n")
	w("- **backends**: every endpoint address is real: a namespace behind the node owns the\n")
	w("  loader's pod addresses (10.244.2.0–10.244.255.255, routed `local`) and answers on TCP 8080\n")
	w("  with the address it was reached at. Connections come from the test network's client\n")
	w("  namespace (198.51.100.200), through the node, like traffic from another host.\n")
	w("- **connect to first / last service** (at the latency sizes): median connect() time (SYN\n")
	w("  through the proxy's rules to the SYN-ACK; %d connections each, alternating) to the\n", connectSamples)
	w("  service that comes first and the one that comes last in the proxy's dispatch: iptables,\n")
	w("  the order of the nat table's KUBE-SERVICES / KPO-SERVICES walk (kpo descends into its\n")
	w("  per-byte KPO-DST-xx chains); nftables, both look services up in the `service-ips` verdict\n")
	w("  map (a hash), so first and last are just the dump's order there. *last / first* is the ratio.\n")
	w("- **churn** (at the latency sizes): a fresh proxy of each kind, both with the settings shown\n")
	w("  (minSyncPeriod 1ms unless said otherwise: with kube-proxy's default of 1 s every figure\n")
	w("  would be bound by that rate limit, for both; not 0, which kube-proxy's configuration\n")
	w("  defaulting turns into 1 s), then one Service every 1/rate seconds gets its\n")
	w("  endpoints replaced by one new address, for longer than syncPeriod (so that a periodic\n")
	w("  resync would fall into the window; both proxies count syncPeriod from their last sync, so\n")
	w("  under steady churn neither does one). For each change, from just before the\n")
	w("  EndpointSlice write, the client connects to the Service until the new address answers\n")
	w("  (probes every elapsed/20, 2–100 ms). p50 / p99 / max over all changes; a change not live\n")
	w("  within 60 s counts as 60 s. *CPU* is the proxy's (with children) during the churn.\n\n")
	w("A run that has not completed its cold sync within the cap is shown as `> cap`.\n\n")
}

// mdMachine is the report's machine section.
func mdMachine(w func(string, ...any), m machine) {
	w("## Machine\n\n")
	w("| | |\n|---|---|\n")
	w("| kernel | %s |\n| CPUs | %d (%s), shared with other work |\n| iptables | %s |\n| nft | %s |\n| kube-proxy | %s |\n| Go | %s |\n| date | %s |\n\n",
		m.Kernel, m.CPUs, m.CPUModel, m.IPTables, m.NFT, m.KubeProxy, m.Go, m.Date)
}

// mdResults is one table per mode and data set, kube-proxy first, and the
// churn runs of that size.
func mdResults(w func(string, ...any), rep report) {
	type key struct {
		mode     string
		svc, eps int
	}
	var order []key
	byKey := map[key]map[string]result{}
	for _, r := range rep.Results {
		k := key{r.Mode, r.Services, r.Endpoints}
		if byKey[k] == nil {
			byKey[k] = map[string]result{}
			order = append(order, k)
		}
		byKey[k][r.Impl] = r // the last run of a key wins (-benchtime Nx)
	}
	for _, k := range order {
		up, upOK := byKey[k]["kube-proxy"]
		kp, kpOK := byKey[k]["kpo"]
		mdResultTable(w, k.mode, k.svc, k.eps, up, upOK, kp, kpOK)
		churnTable(w, rep.Churn, k.mode, k.svc)
	}
}

// mdResultTable is the table of one mode and data set.
func mdResultTable(w func(string, ...any), mode string, svc, eps int, up result, upOK bool, kp result, kpOK bool) {
	w("### %s, %d Services × %d endpoints\n\n", mode, svc, eps)
	w("| | kube-proxy | kpo | kube-proxy / kpo |\n|---|---:|---:|---:|\n")
	row := func(name string, f func(result) float64, scale float64, digits int) {
		cell := func(r result, ok bool) string {
			if !ok {
				return "—"
			}
			if r.Capped && name != "RSS (MiB)" && name != "peak RSS (MiB)" {
				if name == "cold sync (s)" {
					return fmt.Sprintf("> %.0f", r.CapS)
				}
				return "—"
			}
			return fmt.Sprintf("%.*f", digits, f(r)*scale)
		}
		ratio := "—"
		if upOK && kpOK && !up.Capped && !kp.Capped && f(kp) > 0 {
			ratio = fmt.Sprintf("%.1f×", f(up)/f(kp))
		} else if upOK && kpOK && up.Capped && !kp.Capped && name == "cold sync (s)" && f(kp) > 0 {
			ratio = fmt.Sprintf("> %.0f×", up.CapS/f(kp))
		}
		if strings.HasPrefix(name, "load") || strings.HasPrefix(name, "… last") {
			ratio = "" // a fact about the machine, not the proxies
		}
		w("| %s | %s | %s | %s |\n", name, cell(up, upOK), cell(kp, kpOK), ratio)
	}
	row("cold sync (s)", func(r result) float64 { return r.ColdSyncS }, 1, 2)
	row("first sync (s)", func(r result) float64 { return r.FirstSyncS }, 1, 3)
	row("CPU to cold sync (s)", func(r result) float64 { return r.ColdCPUS }, 1, 2)
	row("… of it in children (s)", func(r result) float64 { return r.ColdChildCPUS }, 1, 2)
	row("partial sync (ms)", func(r result) float64 { return r.PartialSyncS }, 1000, 1)
	row("change → synced (ms)", func(r result) float64 { return r.PartialLatencyS }, 1000, 0)
	row("CPU for the change (s)", func(r result) float64 { return r.PartialCPUS }, 1, 2)
	row("RSS (MiB)", func(r result) float64 { return r.RSSMiB }, 1, 1)
	row("peak RSS (MiB)", func(r result) float64 { return r.PeakRSSMiB }, 1, 1)
	row("rules + set/map elements", func(r result) float64 { return float64(r.Rules) }, 1, 0)
	row("ruleset (KiB)", func(r result) float64 { return float64(r.RulesetBytes) }, 1.0/1024, 0)
	row("load average at cold sync", func(r result) float64 { return r.LoadAvg }, 1, 2)
	if up.ConnectFirstUS > 0 || kp.ConnectFirstUS > 0 {
		row("connect to first service (µs, p50)", func(r result) float64 { return r.ConnectFirstUS }, 1, 0)
		row("connect to last service (µs, p50)", func(r result) float64 { return r.ConnectLastUS }, 1, 0)
		row("… last / first", lastFirst, 1, 2)
	}
	for _, r := range []result{up, kp} {
		if r.PartialType == "full" {
			w("\n%s handled the EndpointSlice update with a full sync.\n", r.Impl)
		}
	}
	w("\n")
}

// mdCaveats is the report's caveats section.
func mdCaveats(w func(string, ...any)) {
	w("## Caveats\n\n")
	w("- One run per figure, on a shared 2-core machine: expect run-to-run noise of tens of\n")
	w("  percent on the small figures; the orders of magnitude are what is stable.\n")
	w("- The two proxies run one after the other against the same, idle API server; the\n")
	w("  cold sync includes listing from it, which both pay alike.\n")
	w("- kube-proxy also resyncs every syncPeriod (30 s); if such a sync fell into the few\n")
	w("  hundred milliseconds of the partial-sync measurement it would be measured instead.\n")
	w("- *rules* and *ruleset* count different designs (kube-proxy's nftables mode, for one,\n")
	w("  dispatches services through verdict maps, whose elements are not rules): they say\n")
	w("  how much the kernel holds, not which design is better.\n")
	w("- *connect* times are tens of microseconds, and their absolute value moves with the\n")
	w("  machine's state (CPU wake-up latency on an idle core, neighbours' load): the same proxy\n")
	w("  and size have measured 27 and 99 µs in different runs. Compare *last / first* (both taken\n")
	w("  in one run, alternating) rather than the absolute figures across proxies.\n")
}
