package bench

import (
	"cmp"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
	"kpo.dev/kpo/hack/netns"
	"kpo.dev/kpo/test/proxystats"
	"kpo.dev/kpo/test/testnet"
)

// Sync periods of both proxies: kube-proxy's defaults, so that upstream is
// measured as it ships, and kpo configured to match.
const (
	minSyncPeriod = "1s"
	syncPeriod    = "30s"
)

// Churn: the network programming latency runs, at the sizes in
// KPO_BENCH_LATENCY_SIZES. Both proxies get minSyncPeriod 1ms there
// (KPO_BENCH_CHURN_MIN_SYNC): with 1 s, a change waits up to a second for the
// rate limit, which would measure the setting, not the proxy. Not 0:
// kube-proxy's configuration defaulting reads 0 as unset and makes it 1 s.
const (
	defaultLatencySizes = "10000x2"
	defaultChurnMinSync = "1ms"
	defaultChurnRate    = 10.0 // changes per second
	// defaultChurnSeconds is longer than syncPeriod, so that a periodic resync,
	// if a proxy did one under churn, would fall into the window.
	defaultChurnSeconds = 35
	connectSamples      = 300
)

// result is one proxy's figures for one data set and mode.
type result struct {
	Impl      string `json:"impl"`
	Mode      string `json:"mode"`
	Services  int    `json:"services"`
	Endpoints int    `json:"endpointsPerService"`
	// ColdSyncS is process start to the first sync that holds every Service.
	ColdSyncS float64 `json:"coldSyncSeconds"`
	// Capped: no complete sync within CapS; ColdSyncS is then the cap.
	Capped bool    `json:"capped"`
	CapS   float64 `json:"capSeconds"`
	// FirstSyncS is how long that first complete sync itself took.
	FirstSyncS float64 `json:"firstSyncSeconds"`
	// ColdCPUS is CPU time (process and children) up to the first complete sync.
	ColdCPUS float64 `json:"coldCPUSeconds"`
	// ColdChildCPUS is the part of ColdCPUS spent in child processes
	// (iptables-restore, nft).
	ColdChildCPUS float64 `json:"coldChildCPUSeconds"`
	// LoadAvg is the machine's 1-minute load average when the cold sync ended.
	LoadAvg float64 `json:"loadAverage1m"`
	// PartialSyncS is the duration of the sync that followed one EndpointSlice
	// update (from the proxy's own histogram); PartialType says whether the proxy
	// did it as a partial or a full sync.
	PartialSyncS float64 `json:"partialSyncSeconds"`
	PartialType  string  `json:"partialType"`
	// PartialLatencyS is the update's API call to that sync being done (as seen
	// by polling the metrics every 10 ms): watch delivery, batching and the sync.
	PartialLatencyS float64 `json:"partialLatencySeconds"`
	PartialCPUS     float64 `json:"partialCPUSeconds"`
	RSSMiB          float64 `json:"rssMiB"`
	PeakRSSMiB      float64 `json:"peakRSSMiB"`
	Rules           int     `json:"rules"`
	RulesetBytes    int     `json:"rulesetBytes"`
	// ConnectFirstUS and ConnectLastUS are the median connect() times (µs) to
	// the service first and last in the proxy's dispatch order, FirstIP and
	// LastIP (0 when not measured at this size).
	ConnectFirstUS float64 `json:"connectFirstMicroseconds,omitempty"`
	ConnectLastUS  float64 `json:"connectLastMicroseconds,omitempty"`
	FirstIP        string  `json:"firstServiceIP,omitempty"`
	LastIP         string  `json:"lastServiceIP,omitempty"`
}

var (
	resultsMu sync.Mutex
	results   []result
	churns    []churnResult
	// touches numbers the EndpointSlice updates, so each is a real change.
	touches int
)

// BenchmarkKubeProxyComparison runs upstream kube-proxy and kpo, one after the
// other (the machine has few cores; running them together would measure the
// contention), each in a fresh node namespace, against the same API server and
// data set, with the same mode and sync periods.
//
//	KPO_BENCH_WRITE=1 go test ./test/bench/ -run XXX -bench KubeProxyComparison -benchtime 1x -timeout 90m
//
// KPO_BENCH_SIZES (default "1000x2,1000x50,10000x2"; measured in ascending order
// of Services, see sizes), KPO_BENCH_LARGE=1 (adds 5000x50 and 50000x2), KPO_BENCH_MODES (default
// "nftables,iptables"), KPO_BENCH_CAP (default 5m, per proxy and run),
// KPO_BENCH_LATENCY_SIZES (default "10000x2": where connect and churn
// latencies are measured), KPO_BENCH_CHURN_MIN_SYNC (default 1ms),
// KPO_BENCH_CHURN_RATE (default 10 per second), KPO_BENCH_CHURN_SECONDS
// (default 35). Then kpo's IPVS figures from the VM: see benchIPVSInVM
// (KPO_BENCH_IPVS_VM, KPO_BENCH_IPVS_VM_SIZES, KPO_BENCH_IPVS_VM_TIMEOUT).
func BenchmarkKubeProxyComparison(b *testing.B) {
	netns.Skip(b)
	if api == nil {
		b.Skip("no API server: TestMain starts one only when run with -bench")
	}
	l := testnet.NewLoader(kubernetes.NewForConfigOrDie(testnet.LoaderConfig(api.Config)))
	capDur := envDuration(b, "KPO_BENCH_CAP", 5*time.Minute)
	latencyAt := map[string]bool{}
	for _, s := range envList("KPO_BENCH_LATENCY_SIZES", defaultLatencySizes) {
		latencyAt[s] = true
	}
	for _, sz := range sizes(b) {
		latency := latencyAt[fmt.Sprintf("%dx%d", sz[0], sz[1])]
		for _, mode := range envList("KPO_BENCH_MODES", "nftables,iptables") {
			for _, impl := range []string{"kube-proxy", "kpo"} {
				b.Run(fmt.Sprintf("%dx%d/%s/%s", sz[0], sz[1], mode, impl), func(b *testing.B) {
					l.Ensure(b, sz[0], sz[1])
					for range b.N {
						r := measure(b, l, impl, mode, sz[0], sz[1], capDur, latency)
						b.ReportMetric(r.ColdSyncS, "cold-s")
						b.ReportMetric(r.FirstSyncS, "first-sync-s")
						b.ReportMetric(r.PartialSyncS*1000, "partial-ms")
						b.ReportMetric(r.PartialLatencyS*1000, "change-to-synced-ms")
						b.ReportMetric(r.ColdCPUS, "cold-cpu-s")
						b.ReportMetric(r.ColdChildCPUS, "cold-child-cpu-s")
						b.ReportMetric(r.RSSMiB, "rss-MiB")
						b.ReportMetric(r.PeakRSSMiB, "peak-rss-MiB")
						b.ReportMetric(float64(r.Rules), "rules")
						if latency {
							b.ReportMetric(r.ConnectFirstUS, "connect-first-us")
							b.ReportMetric(r.ConnectLastUS, "connect-last-us")
						}
						resultsMu.Lock()
						results = append(results, r)
						resultsMu.Unlock()
					}
				})
			}
			if !latency {
				continue
			}
			for _, impl := range []string{"kube-proxy", "kpo"} {
				b.Run(fmt.Sprintf("%dx%d/%s/%s/churn", sz[0], sz[1], mode, impl), func(b *testing.B) {
					l.Ensure(b, sz[0], sz[1])
					for range b.N {
						c := measureChurn(b, l, impl, mode, sz[0], capDur)
						b.ReportMetric(c.P50MS, "churn-p50-ms")
						b.ReportMetric(c.P99MS, "churn-p99-ms")
						resultsMu.Lock()
						churns = append(churns, c)
						resultsMu.Unlock()
					}
				})
			}
		}
	}
	benchIPVSInVM(b)
}

// proxy is one running proxy process and how to read its progress.
type proxy struct {
	pid  int
	logs func() string
	// exited is closed when the process ends.
	exited <-chan struct{}
	// synced finds, in the logs, the first sync that holds all services, and
	// that sync's duration.
	synced func(logs string, services int) (time.Duration, bool)
	// counts reads the number and total seconds of full and partial syncs.
	counts func(m proxystats.Metrics) (full, partial, partialSum, fullSum float64)
}

// start builds a one-node test network with the backends, starts the proxy
// with minSync, and waits (at most capDur) for its first complete sync:
// elapsed is process start to that sync and first the sync's own duration;
// ok is false when the cap ran out.
func start(b *testing.B, impl, mode, minSync string, services int, capDur time.Duration) (
	node *testnet.Node, client *netns.NS, p *proxy, elapsed, first time.Duration, ok bool) {
	tn := testnet.New(b, api, agentBin, 1, 0)
	node = tn.Nodes[0]
	addBackends(b, node)
	t0 := time.Now()
	if impl == "kube-proxy" {
		p = startKubeProxy(b, node, mode, minSync)
	} else {
		p = startKpo(b, node, mode, minSync)
	}
	b.Cleanup(func() { proxystats.KillTree(p.pid) })
	// Cold sync, bounded by the cap so that a slow run is a figure, not a hang.
	for {
		if d, done := p.synced(p.logs(), services); done {
			return node, tn.Client, p, time.Since(t0), d, true
		}
		if time.Since(t0) > capDur {
			return node, tn.Client, p, capDur, 0, false
		}
		select {
		case <-p.exited:
			b.Fatalf("%s exited before syncing:\n%s", impl, testnet.Tail(p.logs(), 6000))
		case <-time.After(50 * time.Millisecond): // polling the logs, bounded by the cap
		}
	}
}

func measure(b *testing.B, l *testnet.Loader, impl, mode string, services, endpoints int, capDur time.Duration, latency bool) result {
	r := result{Impl: impl, Mode: mode, Services: services, Endpoints: endpoints, CapS: capDur.Seconds()}
	node, client, p, elapsed, first, ok := start(b, impl, mode, minSyncPeriod, services, capDur)
	r.ColdSyncS, r.FirstSyncS, r.Capped = elapsed.Seconds(), first.Seconds(), !ok
	defer saveLogs(b, p, impl, mode, services, endpoints)
	ps, err := proxystats.ReadProc(p.pid)
	if err != nil {
		b.Fatal(err)
	}
	r.ColdCPUS, r.ColdChildCPUS, r.LoadAvg = ps.CPUSeconds, ps.ChildCPUSeconds, proxystats.LoadAverage()
	if r.Capped {
		b.Logf("%s %s: no complete sync of %d services within %v", impl, mode, services, capDur)
		r.RSSMiB, r.PeakRSSMiB = ps.RSSMiB, ps.PeakRSSMiB
		return r
	}
	r.partial(b, l, node, p)
	if ps, err = proxystats.ReadProc(p.pid); err != nil {
		b.Fatal(err)
	}
	r.RSSMiB, r.PeakRSSMiB = ps.RSSMiB, ps.PeakRSSMiB
	if r.Rules, r.RulesetBytes, err = ruleset(node.NS, mode); err != nil {
		b.Logf("counting rules: %v", err)
	}
	if latency {
		r.connect(b, node.NS, newProber(b, client, 1))
	}
	return r
}

// saveLogs writes the proxy's logs into $KPO_BENCH_LOG_DIR, if set: where
// a cold start's time goes (klog's timestamps), without a failing run.
func saveLogs(b *testing.B, p *proxy, impl, mode string, services, endpoints int) {
	dir := os.Getenv("KPO_BENCH_LOG_DIR")
	if dir == "" {
		return
	}
	name := fmt.Sprintf("%s-%s-%dx%d-%d.log", impl, mode, services, endpoints, time.Now().UnixNano())
	if err := os.WriteFile(filepath.Join(dir, name), []byte(p.logs()), 0o644); err != nil {
		b.Logf("saving the logs: %v", err)
	}
}

// connect measures the first-packet connect latency to the first and the last
// service of the dispatch order. A sync may reorder the rules (kube-proxy's
// iptables mode writes KUBE-SERVICES in Go map order), so the order is read
// again afterwards and the measurement repeated if it moved.
func (r *result) connect(b *testing.B, ns *netns.NS, p *prober) {
	for range 3 {
		order, err := dispatchOrder(ns, r.Impl, r.Mode)
		if err != nil || len(order) < r.Services {
			b.Fatalf("%s: dispatch order: %d of %d services, %v", r.Impl, len(order), r.Services, err)
		}
		first, last := order[0], order[len(order)-1]
		f, l, err := connectLatency(p, first, last, connectSamples)
		if err != nil {
			b.Fatalf("%s: %v", r.Impl, err)
		}
		again, err := dispatchOrder(ns, r.Impl, r.Mode)
		if err == nil && len(again) > 0 && again[0] == first && again[len(again)-1] == last {
			r.ConnectFirstUS, r.ConnectLastUS = float64(f.Microseconds()), float64(l.Microseconds())
			r.FirstIP, r.LastIP = first, last
			return
		}
		b.Logf("%s: the dispatch order changed while measuring; again", r.Impl)
	}
	b.Errorf("%s: the dispatch order kept changing", r.Impl)
}

// measureChurn starts the proxy with the churn settings and measures the
// network programming latency under steady churn.
func measureChurn(b *testing.B, l *testnet.Loader, impl, mode string, services int, capDur time.Duration) churnResult {
	minSync := envList("KPO_BENCH_CHURN_MIN_SYNC", defaultChurnMinSync)[0]
	rate := envFloat(b, "KPO_BENCH_CHURN_RATE", defaultChurnRate)
	changes := int(rate * envFloat(b, "KPO_BENCH_CHURN_SECONDS", defaultChurnSeconds))
	c := churnResult{Impl: impl, Mode: mode, Services: services, MinSyncPeriod: minSync, SyncPeriod: syncPeriod,
		CapS: capDur.Seconds()}
	node, client, p, _, _, ok := start(b, impl, mode, minSync, services, capDur)
	if !ok {
		b.Logf("%s %s: no complete sync of %d services within %v", impl, mode, services, capDur)
		c.Capped = true
		return c
	}
	waitQuiet(b, node.NS, p, impl)
	pr := newProber(b, client, 8)
	// The data plane works before the clock starts.
	if r := pr.dial(testnet.BenchServiceIP(0) + ":80"); r.err != nil || r.answer == "" {
		b.Fatalf("%s: service 0 does not answer: %v", impl, r.err)
	}
	cpu0, err := proxystats.ReadProc(p.pid)
	if err != nil {
		b.Fatal(err)
	}
	lat, notLive, actual := churn(b, l, pr, services, changes, rate)
	cpu1, err := proxystats.ReadProc(p.pid)
	if err != nil {
		b.Fatal(err)
	}
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	c.Changes, c.RatePerS, c.NotLive, c.CPUS = len(lat), actual, notLive, cpu1.CPUSeconds-cpu0.CPUSeconds
	c.P50MS, c.P99MS, c.MaxMS = ms(percentile(lat, 0.5)), ms(percentile(lat, 0.99)), ms(percentile(lat, 1))
	return c
}

// waitQuiet waits (at most a minute) until the proxy has not synced for 3 s
// (longer than minSyncPeriod), so that a measurement starts from a settled
// proxy, not in a leftover of its cold start. It returns the sync counters.
func waitQuiet(b *testing.B, ns *netns.NS, p *proxy, impl string) (full, part, partSum, fullSum float64) {
	read := func() (float64, float64, float64, float64) {
		m, err := proxystats.Scrape(ns, "127.0.0.1:10249")
		if err != nil {
			b.Fatalf("%s metrics: %v", impl, err)
		}
		return p.counts(m)
	}
	f0, p0, ps0, fs0 := read()
	quietSince, deadline := time.Now(), time.Now().Add(time.Minute)
	for time.Since(quietSince) < 3*time.Second && time.Now().Before(deadline) {
		time.Sleep(200 * time.Millisecond) // polling the metrics, bounded by the deadline
		f, pa, ps, fs := read()
		if f != f0 || pa != p0 {
			f0, p0, ps0, fs0, quietSince = f, pa, ps, fs, time.Now()
		}
	}
	return f0, p0, ps0, fs0
}

// partial waits for the proxy to go quiet, updates one EndpointSlice and times
// the sync that follows.
func (r *result) partial(b *testing.B, l *testnet.Loader, node *testnet.Node, p *proxy) {
	ns := node.NS
	read := func() (full, part, partSum, fullSum float64) {
		m, err := proxystats.Scrape(ns, "127.0.0.1:10249")
		if err != nil {
			b.Fatalf("%s metrics: %v", r.Impl, err)
		}
		return p.counts(m)
	}
	f0, p0, ps0, fs0 := waitQuiet(b, ns, p, r.Impl)
	cpu0, err := proxystats.ReadProc(p.pid)
	if err != nil {
		b.Fatal(err)
	}
	resultsMu.Lock()
	touches++
	gen := touches
	resultsMu.Unlock()
	t0 := time.Now()
	if err := l.Touch(context.Background(), gen%r.Services, gen); err != nil {
		b.Fatal(err)
	}
	for time.Since(t0) < 2*time.Minute {
		f, pa, ps, fs := read()
		if f > f0 || pa > p0 {
			r.PartialLatencyS = time.Since(t0).Seconds()
			if pa > p0 {
				r.PartialType, r.PartialSyncS = "partial", ps-ps0
			} else {
				r.PartialType, r.PartialSyncS = "full", fs-fs0
			}
			cpu1, err := proxystats.ReadProc(p.pid)
			if err != nil {
				b.Fatal(err)
			}
			r.PartialCPUS = cpu1.CPUSeconds - cpu0.CPUSeconds
			return
		}
		time.Sleep(10 * time.Millisecond) // polling the metrics, bounded by the loop
	}
	b.Errorf("%s: no sync within 2m of an EndpointSlice update", r.Impl)
}

// kubeProxyDone is kube-proxy's end-of-sync log line (at --v=2). It runs one
// proxier per IP family; the Services are IPv4, so the IPv4 sync is the one
// that counts.
var kubeProxyDone = regexp.MustCompile(`"SyncProxyRules complete".*ipFamily="IPv4".*elapsed="([^"]+)"|"SyncProxyRules complete".*elapsed="([^"]+)".*ipFamily="IPv4"`)

func startKubeProxy(b *testing.B, node *testnet.Node, mode, minSyncPeriod string) *proxy {
	dir := b.TempDir()
	kubeconfig := nodeKubeconfig(b, dir)
	cfg := fmt.Sprintf(`apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: %s
clusterCIDR: 10.244.0.0/16,fd10:244::/48
hostnameOverride: %s
clientConnection:
  kubeconfig: %s
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 0.0.0.0:10256
conntrack:
  maxPerCore: 0
iptables:
  minSyncPeriod: %s
  syncPeriod: %s
nftables:
  minSyncPeriod: %s
  syncPeriod: %s
logging:
  verbosity: 2
`, mode, node.Name, kubeconfig, minSyncPeriod, syncPeriod, minSyncPeriod, syncPeriod)
	path := filepath.Join(dir, "kube-proxy.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		b.Fatal(err)
	}
	logs := &testnet.LockedBuffer{}
	// There are no conntrack sysctls inside a namespace: maxPerCore 0 leaves them.
	cmd := node.Command(kubeProxyBin, "--config="+path, "--conntrack-max-per-core=0")
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	b.Cleanup(func() {
		// nsenter execs kube-proxy (no --fork), so this PID is kube-proxy itself.
		_ = cmd.Process.Kill()
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
		}
		if b.Failed() {
			b.Logf("kube-proxy on %s:\n%s", node.Name, testnet.Tail(logs.String(), 6000))
		}
	})
	return &proxy{pid: cmd.Process.Pid, logs: logs.String, exited: exited,
		synced: func(s string, _ int) (time.Duration, bool) {
			// kube-proxy syncs only once its informers have listed every Service
			// and EndpointSlice, so its first IPv4 sync is complete.
			m := kubeProxyDone.FindStringSubmatch(s)
			if m == nil {
				return 0, false
			}
			d, _ := time.ParseDuration(m[1] + m[2])
			return d, true
		},
		counts: func(m proxystats.Metrics) (float64, float64, float64, float64) {
			return m.Sum("kubeproxy_sync_full_proxy_rules_duration_seconds_count"),
				m.Sum("kubeproxy_sync_partial_proxy_rules_duration_seconds_count"),
				m.Sum("kubeproxy_sync_partial_proxy_rules_duration_seconds_sum"),
				m.Sum("kubeproxy_sync_full_proxy_rules_duration_seconds_sum")
		},
	}
}

var kpoSynced = regexp.MustCompile(`"synced" full=true reason="[a-z]+" servicePorts=(\d+) written=\d+ rules=\d+ duration="([^"]+)"`)

func startKpo(b *testing.B, node *testnet.Node, mode, minSyncPeriod string) *proxy {
	cfg := &kpov1.AgentConfiguration{ConfigurationName: "default", ConfigurationGeneration: 1, Mode: kpov1.Mode(mode)}
	cfg.ClusterCIDRs = []kpov1.CIDR{"10.244.0.0/16", "fd10:244::/48"}
	cfg.MinSyncPeriod, cfg.SyncPeriod = kpov1.Duration(minSyncPeriod), syncPeriod
	cfg.Default()
	node.StartAgent(b, cfg)
	exited := make(chan struct{})
	pid := node.AgentPID()
	go func() {
		// StartAgent keeps the process handle; watch /proc instead.
		for {
			if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err != nil {
				close(exited)
				return
			}
			time.Sleep(200 * time.Millisecond)
		}
	}()
	return &proxy{pid: pid, logs: node.AgentLogs, exited: exited,
		synced: func(s string, services int) (time.Duration, bool) {
			// A full sync's log line carries its service-port count: the first with
			// all of them is the complete one.
			for _, m := range kpoSynced.FindAllStringSubmatch(s, -1) {
				if n, _ := strconv.Atoi(m[1]); n >= services {
					d, _ := time.ParseDuration(m[2])
					return d, true
				}
			}
			return 0, false
		},
		counts: func(m proxystats.Metrics) (float64, float64, float64, float64) {
			// kube-proxy's names (nodeagent/agent/metrics.go).
			return m.Sum("kubeproxy_sync_full_proxy_rules_duration_seconds_count"),
				m.Sum("kubeproxy_sync_partial_proxy_rules_duration_seconds_count"),
				m.Sum("kubeproxy_sync_partial_proxy_rules_duration_seconds_sum"),
				m.Sum("kubeproxy_sync_full_proxy_rules_duration_seconds_sum")
		},
	}
}

// nodeKubeconfig is the API server's kubeconfig pointed at the proxy testnet
// runs inside each node namespace (127.0.0.1:6443).
func nodeKubeconfig(b *testing.B, dir string) string {
	data, err := os.ReadFile(api.Kubeconfig)
	if err != nil {
		b.Fatal(err)
	}
	out := regexp.MustCompile(`server: \S+`).ReplaceAllString(string(data), "server: https://127.0.0.1:6443")
	path := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(path, []byte(out), 0o600); err != nil {
		b.Fatal(err)
	}
	return path
}

// defaultSizes is the short variant: the 1k × 2, 1k × 50 and 10k × 2.
const defaultSizes = "1000x2,1000x50,10000x2"

// largeSizes are what KPO_BENCH_LARGE=1 (make bench BENCH=full) adds.
var largeSizes = []string{"5000x50", "50000x2"}

// sizes are the data sets to measure, in ascending order of Services (stable:
// sizes with as many Services keep their order). The loader cannot delete
// Services, so a smaller count after a larger one would leave the proxies
// syncing the larger; the endpoints per Service can go both ways, since Ensure
// rewrites every EndpointSlice whose count differs (1000x50 → 10000x2 puts the
// first 1000 back to 2). KPO_BENCH_LARGE=1 adds 5000x50 (250k endpoints): it
// lands between the 1000s and 10000x2; and 50000x2 (a 50k-Service cluster),
// last. kube-proxy runs into KPO_BENCH_CAP there.
func sizes(b *testing.B) [][2]int {
	list := envList("KPO_BENCH_SIZES", defaultSizes)
	if os.Getenv("KPO_BENCH_LARGE") == "1" {
		list = append(list, largeSizes...)
	}
	out, err := parseSizes(list)
	if err != nil {
		b.Fatalf("KPO_BENCH_SIZES: %v", err)
	}
	return out
}

// parseSizes parses SERVICESxENDPOINTS items, drops repeats, and orders them
// as sizes says.
func parseSizes(list []string) ([][2]int, error) {
	var out [][2]int
	for _, s := range list {
		a, e, ok := strings.Cut(strings.TrimSpace(s), "x")
		n, err1 := strconv.Atoi(a)
		m, err2 := strconv.Atoi(e)
		if !ok || err1 != nil || err2 != nil || n <= 0 || m <= 0 {
			return nil, fmt.Errorf("%q is not SERVICESxENDPOINTS (both positive)", s)
		}
		if !slices.Contains(out, [2]int{n, m}) {
			out = append(out, [2]int{n, m})
		}
	}
	slices.SortStableFunc(out, func(x, y [2]int) int { return cmp.Compare(x[0], y[0]) })
	return out, nil
}

func envList(key, def string) []string {
	v := os.Getenv(key)
	if v == "" {
		v = def
	}
	return strings.Split(v, ",")
}

func envFloat(b *testing.B, key string, def float64) float64 {
	v := os.Getenv(key)
	if v == "" {
		return def
	}
	f, err := strconv.ParseFloat(v, 64)
	if err != nil || f <= 0 {
		b.Fatalf("%s: %q is not a positive number", key, v)
	}
	return f
}

func envDuration(b *testing.B, key string, def time.Duration) time.Duration {
	v := os.Getenv(key)
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		b.Fatalf("%s: %v", key, err)
	}
	return d
}
