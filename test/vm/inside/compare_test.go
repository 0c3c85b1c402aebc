//go:build vmtest

package inside

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

	mobyipvs "github.com/moby/ipvs"
	"k8s.io/client-go/kubernetes"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
	"kpo.dev/kpo/hack/apiserver"
	"kpo.dev/kpo/hack/netns"
	"kpo.dev/kpo/test/proxystats"
	"kpo.dev/kpo/test/testnet"
	"kpo.dev/kpo/test/vm"
)

// Both proxies' sync periods: kube-proxy's defaults, kpo set to match (as
// test/bench).
const (
	compareMinSync = "1s"
	compareSync    = "30s"
)

// TestCompareIPVS runs upstream kube-proxy in IPVS mode and kpo's agent in
// IPVS mode, one after the other, each on a fresh test/testnet node in this
// VM, against the host's API server, which holds the data set the host loaded
// before booting (vm.CompareFile names it), and prints each proxy's figures as
// a vm.CompareMarker line: the cold sync (process start to the first sync
// holding every Service), its CPU, then the sync after one EndpointSlice
// update. It runs only in the host's BenchmarkIPVSComparison (test/vm).
func TestCompareIPVS(t *testing.T) {
	spec, err := os.ReadFile("/" + vm.CompareFile)
	if err != nil {
		t.Skipf("not a comparison run (%v)", err)
	}
	var services, endpoints int
	var capStr string
	if _, err := fmt.Sscanf(string(spec), "%dx%d %s", &services, &endpoints, &capStr); err != nil {
		t.Fatalf("%s: %q: %v", vm.CompareFile, spec, err)
	}
	capDur, err := time.ParseDuration(capStr)
	if err != nil {
		t.Fatal(err)
	}
	api := vmAPI(t)
	netns.Skip(t)
	kube, err := kubernetes.NewForConfig(api.Config)
	if err != nil {
		t.Fatal(err)
	}
	loader := testnet.NewLoader(kube)
	for gen, impl := range []string{"kube-proxy", "kpo"} {
		t.Run(impl, func(t *testing.T) {
			f := measureIPVS(t, api, loader, impl, services, endpoints, capDur, gen+1)
			// The host parses this line (vm.ParseCompareLine).
			fmt.Println(f.Line())
		})
	}
}

// ipvsProxy is one running proxy and how to read its progress.
type ipvsProxy struct {
	pid  int
	logs func() string
	// synced reports the first sync holding every Service and its duration.
	synced func() (time.Duration, bool)
	// syncs reads the count and seconds of all syncs, and of partial ones.
	syncs func(m proxystats.Metrics) (count, sum, partialCount float64)
}

func measureIPVS(t *testing.T, api *apiserver.Env, loader *testnet.Loader, impl string, services, endpoints int,
	capDur time.Duration, gen int) vm.CompareFigures {
	f := vm.CompareFigures{Impl: impl, Services: services, Endpoints: endpoints, CapS: capDur.Seconds()}
	tn := testnet.New(t, api, agentBin, 1, 0)
	node := tn.Nodes[0]
	t0 := time.Now()
	var p *ipvsProxy
	if impl == "kube-proxy" {
		p = startKubeProxyIPVS(t, tn, node)
	} else {
		p = startKpoIPVS(t, node, services)
	}
	t.Cleanup(func() {
		proxystats.KillTree(p.pid)
		if t.Failed() {
			t.Logf("%s:\n%s", impl, testnet.Tail(p.logs(), 6000))
		}
	})
	for {
		if d, ok := p.synced(); ok {
			f.ColdSyncS, f.FirstSyncS = time.Since(t0).Seconds(), d.Seconds()
			break
		}
		if time.Since(t0) > capDur {
			f.ColdSyncS, f.Capped = capDur.Seconds(), true
			break
		}
		time.Sleep(100 * time.Millisecond) // polling the proxy, bounded by the cap
	}
	ps, err := proxystats.ReadProc(p.pid)
	if err != nil {
		t.Fatalf("%s: %v\n%s", impl, err, testnet.Tail(p.logs(), 4000))
	}
	f.ColdCPUS, f.ColdChildCPUS, f.GuestLoadAvg = ps.CPUSeconds, ps.ChildCPUSeconds, proxystats.LoadAverage()
	f.RSSMiB, f.PeakRSSMiB = ps.RSSMiB, ps.PeakRSSMiB
	if f.VirtualServers, err = virtualServers(node.NS); err != nil {
		t.Fatal(err)
	}
	if f.Capped {
		// How far it got: the virtual servers it had made by the cap.
		t.Logf("%s: no complete sync of %d services within %v (%d virtual servers)", impl, services, capDur, f.VirtualServers)
		return f
	}
	// Every Service is a ClusterIP virtual server: a "complete" sync without
	// them would be a wrong figure.
	if f.VirtualServers < services {
		t.Fatalf("%s: %d virtual servers after its complete sync, want at least %d", impl, f.VirtualServers, services)
	}
	partialIPVS(t, &f, loader, node.NS, p, gen)
	if ps, err = proxystats.ReadProc(p.pid); err == nil {
		f.RSSMiB, f.PeakRSSMiB = ps.RSSMiB, ps.PeakRSSMiB
	}
	return f
}

// partialIPVS waits for the proxy to go quiet (no sync for 3 s), moves one
// endpoint of one Service and times the sync that follows, as test/bench's
// result.partial does.
func partialIPVS(t *testing.T, f *vm.CompareFigures, loader *testnet.Loader, ns *netns.NS, p *ipvsProxy, gen int) {
	read := func() (float64, float64, float64) {
		m, err := proxystats.Scrape(ns, "127.0.0.1:10249")
		if err != nil {
			t.Fatalf("%s metrics: %v", f.Impl, err)
		}
		return p.syncs(m)
	}
	c0, s0, p0 := read()
	quietSince, deadline := time.Now(), time.Now().Add(2*time.Minute)
	for time.Since(quietSince) < 3*time.Second && time.Now().Before(deadline) {
		time.Sleep(200 * time.Millisecond) // polling the metrics, bounded by the deadline
		if c, s, pa := read(); c != c0 {
			c0, s0, p0, quietSince = c, s, pa, time.Now()
		}
	}
	cpu0, err := proxystats.ReadProc(p.pid)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	if err := loader.Touch(context.Background(), f.Services/2, gen); err != nil {
		t.Fatal(err)
	}
	for time.Since(t0) < 3*time.Minute {
		c, s, pa := read()
		seen := time.Now()
		if c > c0 {
			d := time.Duration((s - s0) * float64(time.Second))
			if c == c0+1 && seen.Add(-d).Before(t0) {
				// That sync began before the update (under TCG, kube-proxy's
				// take longer than the 3 s of quiet above): the change waits
				// for the next one.
				c0, s0, p0 = c, s, pa
				continue
			}
			f.PartialLatencyS, f.PartialSyncS = seen.Sub(t0).Seconds(), d.Seconds()
			f.PartialType = "full"
			if pa > p0 {
				f.PartialType = "partial"
			}
			cpu1, err := proxystats.ReadProc(p.pid)
			if err != nil {
				t.Fatal(err)
			}
			f.PartialCPUS = cpu1.CPUSeconds - cpu0.CPUSeconds
			return
		}
		time.Sleep(10 * time.Millisecond) // polling the metrics, bounded by the loop
	}
	t.Errorf("%s: no sync began and ended within 3m of an EndpointSlice update", f.Impl)
}

// virtualServers counts the IPVS virtual servers in ns.
func virtualServers(ns *netns.NS) (int, error) {
	h, err := mobyipvs.New(ns.Path())
	if err != nil {
		return 0, err
	}
	defer h.Close()
	svcs, err := h.GetServices()
	return len(svcs), err
}

// kubeProxyIPv4 selects kube-proxy's IPv4 proxier: it runs one per family,
// and the data set is IPv4 (the IPv6 one's periodic syncs must not count).
const kubeProxyIPv4 = `ip_family="IPv4"`

func startKubeProxyIPVS(t *testing.T, tn *testnet.Net, node *testnet.Node) *ipvsProxy {
	dir := t.TempDir()
	cfg := fmt.Sprintf(`apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: ipvs
clusterCIDR: 10.244.0.0/16,fd10:244::/48
hostnameOverride: %s
clientConnection:
  kubeconfig: %s
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 0.0.0.0:10256
conntrack:
  maxPerCore: 0
ipvs:
  minSyncPeriod: %s
  syncPeriod: %s
logging:
  verbosity: 2
`, node.Name, tn.Kubeconfig(t), compareMinSync, compareSync)
	path := filepath.Join(dir, "kube-proxy.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	logs := &testnet.LockedBuffer{}
	// No conntrack sysctls to set in a namespace: maxPerCore 0 leaves them.
	cmd := node.Command("/"+vm.KubeProxyFile, "--config="+path, "--conntrack-max-per-core=0")
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = cmd.Wait() }()
	syncs := func(m proxystats.Metrics) (float64, float64, float64) {
		// Every sync of kube-proxy's IPVS mode is full (no partial histograms).
		return m.Sum("kubeproxy_sync_proxy_rules_duration_seconds_count", kubeProxyIPv4),
			m.Sum("kubeproxy_sync_proxy_rules_duration_seconds_sum", kubeProxyIPv4), 0
	}
	return &ipvsProxy{pid: cmd.Process.Pid, logs: logs.String, syncs: syncs,
		synced: func() (time.Duration, bool) {
			// The IPVS proxier observes its histogram only once its informers
			// have listed every Service and EndpointSlice (it returns before
			// the timer otherwise), so its first IPv4 observation is the
			// complete sync. Its "syncProxyRules complete" line is at -v=4,
			// which also logs every service: the metric it is.
			m, err := proxystats.Scrape(node.NS, "127.0.0.1:10249")
			if err != nil {
				return 0, false
			}
			if c, s, _ := syncs(m); c >= 1 {
				return time.Duration(s * float64(time.Second)), true
			}
			return 0, false
		}}
}

// kpoSynced is kpo-agent's sync log line (as test/bench's).
var kpoSynced = regexp.MustCompile(`"synced" full=true reason="[a-z]+" servicePorts=(\d+) written=\d+ rules=\d+ duration="([^"]+)"`)

func startKpoIPVS(t *testing.T, node *testnet.Node, services int) *ipvsProxy {
	cfg := &kpov1.AgentConfiguration{ConfigurationName: "default", ConfigurationGeneration: 1, Mode: kpov1.ModeIPVS}
	cfg.ClusterCIDRs = []kpov1.CIDR{"10.244.0.0/16", "fd10:244::/48"}
	cfg.MinSyncPeriod, cfg.SyncPeriod = compareMinSync, compareSync
	cfg.Default()
	node.StartAgent(t, cfg)
	return &ipvsProxy{pid: node.AgentPID(), logs: node.AgentLogs,
		synced: func() (time.Duration, bool) {
			// A full sync's line carries its service-port count: the first with
			// all of them is the complete one.
			for _, m := range kpoSynced.FindAllStringSubmatch(node.AgentLogs(), -1) {
				if n, _ := strconv.Atoi(m[1]); n >= services {
					d, _ := time.ParseDuration(m[2])
					return d, true
				}
			}
			return 0, false
		},
		syncs: func(m proxystats.Metrics) (float64, float64, float64) {
			// kube-proxy's names (nodeagent/agent/metrics.go), no family label.
			return m.Sum("kubeproxy_sync_proxy_rules_duration_seconds_count"),
				m.Sum("kubeproxy_sync_proxy_rules_duration_seconds_sum"),
				m.Sum("kubeproxy_sync_partial_proxy_rules_duration_seconds_count")
		}}
}
