package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
	"kpo.dev/kpo/hack/apiserver"
	"kpo.dev/kpo/hack/netns"
	"kpo.dev/kpo/test/testnet"
)

// TestMigrationFromKubeProxy runs upstream kube-proxy (v1.37, iptables mode) on
// a node, stops it, and lets kpo (nftables, migrateFromKubeProxy) take over
// under load: no request may fail, and nothing of kube-proxy may remain.
func TestMigrationFromKubeProxy(t *testing.T) {
	netns.Skip(t)
	kubeProxy, err := apiserver.Binary("kube-proxy")
	if err != nil {
		t.Fatal(err)
	}
	tn := testnet.New(t, api, agentBin, 1, 2)
	node := tn.Nodes[0]
	client, server := node.Pods[0], node.Pods[1]
	tn.CreateService(t, testnet.ServiceSpec{Name: "legacy", ClusterIPs: []string{"10.96.4.1"}, Pods: []*testnet.Pod{server}})

	dir := t.TempDir()
	cfg := fmt.Sprintf(`apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clusterCIDR: 10.244.0.0/16,fd10:244::/48
hostnameOverride: %s
clientConnection: {kubeconfig: %s}
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 0.0.0.0:10256
conntrack: {maxPerCore: 0}
iptables: {minSyncPeriod: 100ms}
`, node.Name, tn.Kubeconfig(t))
	if err := os.WriteFile(filepath.Join(dir, "kube-proxy.yaml"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	kp := node.Command(kubeProxy, "--config="+filepath.Join(dir, "kube-proxy.yaml"), "--conntrack-max-per-core=0")
	if err := kp.Start(); err != nil {
		t.Fatal(err)
	}
	kpDone := make(chan struct{})
	go func() { _ = kp.Wait(); close(kpDone) }()
	stopKubeProxy := func() {
		_ = kp.Process.Kill() // nsenter execs kube-proxy: this is its PID
		<-kpDone
	}
	t.Cleanup(stopKubeProxy)
	expectServer(t, client.NS, "tcp", "10.96.4.1:80", server.Name) // served by kube-proxy
	if out := node.MustRun(t, "iptables-save", "-t", "nat"); !strings.Contains(out, ":KUBE-SERVICES") {
		t.Fatalf("kube-proxy made no KUBE-SERVICES chain:\n%s", out)
	}

	ld := testnet.StartLoad(client.NS, "tcp", "10.96.4.1:80", 10*time.Millisecond)
	stopKubeProxy() // its rules stay and keep serving
	agentCfg := agentConfig(kpov1.ModeNFTables)
	agentCfg.MigrateFromKubeProxy = true
	node.StartAgent(t, agentCfg)
	waitSynced(t, node.Name, kpov1.ModeNFTables)
	apiserver.Eventually(t, settle, func() error {
		for _, save := range []string{"iptables-save", "ip6tables-save"} {
			out, _ := node.Run(save)
			for _, line := range strings.Split(out, "\n") {
				if strings.HasPrefix(line, ":KUBE-") && !strings.HasPrefix(line, ":KUBE-KUBELET-CANARY") &&
					!strings.HasPrefix(line, ":KUBE-FIREWALL") && !strings.HasPrefix(line, ":KUBE-IPTABLES-HINT") {
					return fmt.Errorf("%s still has %s", save, line)
				}
			}
		}
		if tables := node.MustRun(t, "nft", "list", "tables"); strings.Contains(tables, "kube-proxy") {
			return fmt.Errorf("kube-proxy's nftables tables remain: %s", tables)
		}
		return nil
	})
	expectServer(t, client.NS, "tcp", "10.96.4.1:80", server.Name) // now served by kpo
	ld.StopAndCheck(t, "during the migration", 20)
}
