package conformance

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/utils/ptr"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
	"kpo.dev/kpo/hack/apiserver"
	"kpo.dev/kpo/test/testnet"
)

// Settings are the proxy settings of a run, given to both proxies in their own
// configuration format.
type Settings struct {
	// Name labels the variant in reports ("default", "masqueradeAll", ...).
	Name              string
	Mode              kpov1.Mode
	ClusterCIDRs      []string
	MasqueradeAll     bool
	NodePortAddresses []string
	// LocalhostNodePorts is the iptables setting; nil is kube-proxy's default (true).
	LocalhostNodePorts *bool
	// DetectLocalMode and its interface ("" : ClusterCIDR).
	DetectLocalMode kpov1.DetectLocalMode
	DetectLocal     kpov1.DetectLocalSettings
}

// defaultSettings are both proxies' defaults with the test network's pod CIDRs.
func defaultSettings(mode kpov1.Mode) Settings {
	return Settings{Name: "default", Mode: mode, ClusterCIDRs: []string{"10.244.0.0/16", "fd10:244::/48"}}
}

// minSyncPeriod is short so that steps and barriers settle fast.
const minSyncPeriod = "100ms"

// proxy is one implementation under comparison, run on every node.
type proxy interface {
	name() string
	start(t *testing.T, w *World, s Settings)
	// stop kills the proxy and removes its rules from every node.
	stop(t *testing.T, w *World)
}

// kubeProxy is upstream kube-proxy, the reference.
type kubeProxy struct {
	bin   string
	procs []*process
}

func (*kubeProxy) name() string { return "kube-proxy" }

func (k *kubeProxy) start(t *testing.T, w *World, s Settings) {
	t.Helper()
	dir := t.TempDir()
	for _, node := range w.Nodes {
		path := filepath.Join(dir, node.Name+".yaml")
		if err := os.WriteFile(path, []byte(kubeProxyConfig(node, w.Net.Kubeconfig(t), s)), 0o600); err != nil {
			t.Fatal(err)
		}
		// No conntrack sysctls in a namespace: maxPerCore 0 leaves the global ones alone.
		k.procs = append(k.procs, startProcess(t, node, k.bin, k.args(path)...))
	}
	if s.Mode == kpov1.ModeNFTables {
		k.awaitServiceCIDRs(t, w, dir)
	}
}

func (k *kubeProxy) args(config string) []string {
	return []string{"--config=" + config, "--conntrack-max-per-core=0"}
}

// awaitServiceCIDRs waits until every kube-proxy drops traffic to unallocated
// service IPs, restarting those that missed it. Its nftables mode learns the
// service ranges from a ServiceCIDR informer it does not wait for, and writes
// them only in a full sync, which comes once an hour: a first sync that wins
// that race leaves unallocated ClusterIPs open for up to an hour (seen in CI
// on a loaded machine). kpo syncs again when the ranges arrive
// (docs/conformance.md); the comparison is of steady states.
func (k *kubeProxy) awaitServiceCIDRs(t *testing.T, w *World, dir string) {
	t.Helper()
	restarts := 0
	apiserver.Eventually(t, 90*time.Second, func() error {
		for i, node := range w.Nodes {
			for _, family := range []string{"ip", "ip6"} {
				out, err := node.Run("nft", "list", "chain", family, "kube-proxy", "cluster-ips-check")
				if err != nil {
					return fmt.Errorf("kube-proxy on %s: no %s cluster-ips-check yet: %v", node.Name, family, err)
				}
				if strings.Contains(out, "drop") {
					continue
				}
				if restarts++; restarts > 5 {
					t.Fatalf("kube-proxy on %s synced without the service CIDRs 5 times", node.Name)
				}
				t.Logf("kube-proxy on %s synced before it knew the service CIDRs: restarting it", node.Name)
				k.procs[i].kill()
				// Without its old tables, the chain's return means the new
				// process has synced.
				for _, f := range []string{"ip", "ip6"} {
					_, _ = node.Run("nft", "delete", "table", f, "kube-proxy")
				}
				k.procs[i] = startProcess(t, node, k.bin, k.args(filepath.Join(dir, node.Name+".yaml"))...)
				return fmt.Errorf("kube-proxy on %s restarted", node.Name)
			}
		}
		return nil
	})
}

func (k *kubeProxy) stop(t *testing.T, w *World) {
	t.Helper()
	for _, p := range k.procs {
		p.kill()
	}
	k.procs = nil
	for _, node := range w.Nodes {
		// --cleanup removes the rules of every mode, then exits.
		if out, err := node.Run(k.bin, "--cleanup"); err != nil {
			t.Logf("kube-proxy --cleanup on %s: %v: %s", node.Name, err, testnet.Tail(out, 2000))
		}
	}
}

func kubeProxyConfig(node *testnet.Node, kubeconfig string, s Settings) string {
	var b strings.Builder
	fmt.Fprintf(&b, `apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: %s
clusterCIDR: %s
hostnameOverride: %s
clientConnection: {kubeconfig: %s}
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 0.0.0.0:10256
conntrack: {maxPerCore: 0}
logging: {verbosity: 2}
iptables: {minSyncPeriod: %s, masqueradeAll: %v, localhostNodePorts: %v}
nftables: {minSyncPeriod: %s, masqueradeAll: %v}
`, s.Mode, strings.Join(s.ClusterCIDRs, ","), node.Name, kubeconfig,
		minSyncPeriod, s.MasqueradeAll, s.LocalhostNodePorts == nil || *s.LocalhostNodePorts,
		minSyncPeriod, s.MasqueradeAll)
	if len(s.NodePortAddresses) > 0 {
		fmt.Fprintf(&b, "nodePortAddresses: [%s]\n", strings.Join(s.NodePortAddresses, ", "))
	}
	if s.DetectLocalMode != "" {
		fmt.Fprintf(&b, "detectLocalMode: %s\ndetectLocal: {bridgeInterface: %q, interfaceNamePrefix: %q}\n",
			s.DetectLocalMode, s.DetectLocal.BridgeInterface, s.DetectLocal.InterfaceNamePrefix)
	}
	return b.String()
}

// kpoAgent is kpo's node agent in the same mode and settings.
type kpoAgent struct{ bin string }

func (*kpoAgent) name() string { return "kpo" }

func (k *kpoAgent) start(t *testing.T, w *World, s Settings) {
	t.Helper()
	for _, node := range w.Nodes {
		node.StartAgent(t, kpoConfig(s))
	}
}

func kpoConfig(s Settings) *kpov1.AgentConfiguration {
	cfg := &kpov1.AgentConfiguration{ConfigurationName: "conformance", ConfigurationGeneration: 1, Mode: s.Mode}
	for _, c := range s.ClusterCIDRs {
		cfg.ClusterCIDRs = append(cfg.ClusterCIDRs, kpov1.CIDR(c))
	}
	for _, a := range s.NodePortAddresses {
		cfg.NodePortAddresses = append(cfg.NodePortAddresses, kpov1.NodePortAddress(a))
	}
	cfg.MasqueradeAll = s.MasqueradeAll
	cfg.DetectLocalMode, cfg.DetectLocal = s.DetectLocalMode, s.DetectLocal
	cfg.IPTables.LocalhostNodePorts = s.LocalhostNodePorts
	cfg.MinSyncPeriod = minSyncPeriod
	// As kube-proxy here: leave the global conntrack sysctls alone.
	cfg.Conntrack.MaxPerCore, cfg.Conntrack.Min = ptr.To[int32](0), ptr.To[int32](0)
	cfg.Default()
	return cfg
}

func (k *kpoAgent) stop(t *testing.T, w *World) {
	t.Helper()
	for _, node := range w.Nodes {
		node.KillAgent()
		if out, err := node.Run(k.bin, "--cleanup", "--config=/nonexistent", "--lock-file="+node.LockFile()); err != nil {
			t.Logf("kpo-agent --cleanup on %s: %v: %s", node.Name, err, testnet.Tail(out, 2000))
		}
	}
}

// process is a proxy process in a node namespace; its output is printed when
// the test fails.
type process struct {
	node   *testnet.Node
	logs   *testnet.LockedBuffer
	pid    int
	exited chan struct{}
}

func startProcess(t *testing.T, node *testnet.Node, bin string, args ...string) *process {
	t.Helper()
	cmd := node.Command(bin, args...)
	p := &process{node: node, logs: &testnet.LockedBuffer{}, exited: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.logs, p.logs
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s on %s: %v", bin, node.Name, err)
	}
	p.pid = cmd.Process.Pid
	go func() { _ = cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("%s on %s:\n%s", filepath.Base(bin), node.Name, testnet.Tail(p.logs.String(), 4000))
		}
	})
	return p
}

// kill stops the process (nsenter execs the binary, so the PID is its own).
func (p *process) kill() {
	if proc, err := os.FindProcess(p.pid); err == nil {
		_ = proc.Kill()
	}
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
	}
}
