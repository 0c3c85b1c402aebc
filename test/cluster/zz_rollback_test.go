package cluster_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
	"kpo.dev/kpo/hack/apiserver"
	"kpo.dev/kpo/hack/cluster"
	"kpo.dev/kpo/test/testnet"
)

// TestZZZZRollbackToKubeProxy (the last test: it runs after undeploy, so it
// installs kpo again, from install.yaml) rolls a cluster back from kpo to
// upstream kube-proxy v1.37.1 as docs/install.md, "Rolling back to
// kube-proxy", says: kube-proxy starts again on every node next to kpo's
// agents, the ProxyConfiguration is deleted (its agents remove their rules),
// kpo is uninstalled; under a steady load no request fails, and nothing of
// kpo stays on the nodes or in the API. On the way it checks what an
// installation shows an operator: the agents got the API server's own
// address without a hand edit, the agents serve kube-proxy's metric names,
// and the ProxyConfiguration has Events.
func TestZZZZRollbackToKubeProxy(t *testing.T) {
	c := need(t)
	ctx := context.Background()
	if err := c.DeployOperator(ctx, settle); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Kubectl(ctx, nil, "apply", "-f", cluster.Repo(cluster.SamplesDir)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.WaitProxyAvailable(ctx, "default", kpov1.ModeNFTables, settle); err != nil {
		t.Fatal(err)
	}
	checkInstallation(t, c)

	ls := loads(t, c)
	began := time.Now()
	stopKubeProxy := startKubeProxies(t, c)
	defer stopKubeProxy()
	t.Logf("kube-proxy programmed every node after %v", time.Since(began).Round(100*time.Millisecond))

	// The configuration goes first: its agents remove their rules (kube-proxy's serve).
	deleted := time.Now()
	if out, err := c.Kubectl(ctx, nil, "delete", "proxyconfigurations", "--all", "--wait", "--timeout=4m"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	t.Logf("the ProxyConfiguration was gone after %v", time.Since(deleted).Round(100*time.Millisecond))
	for _, n := range c.Nodes {
		if objects, err := testnet.KpoObjects(n.NS); err != nil || len(objects) > 0 {
			t.Errorf("%s still holds kpo's %v (%v)", n.Name, objects, err)
		}
	}
	// Then kpo itself, as installed.
	if out, err := c.Kubectl(ctx, nil, "delete", "--ignore-not-found", "--wait", "--timeout=4m", "-f", cluster.Repo(cluster.InstallYAML)); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	apiserver.Eventually(t, settle, func() error { return kpoLeftInAPI(ctx, c) })
	stopLoads(t, "rolling back to kube-proxy", ls)
}

// checkInstallation checks what an operator of the cluster sees of a fresh
// installation: the agents' API server address (discovered by the operator,
// not hand-edited), kube-proxy's metric names on an agent, and Events.
func checkInstallation(t *testing.T, c *cluster.Cluster) {
	t.Helper()
	ctx := context.Background()
	pod := agentPod(t, c, c.Nodes[0].Name)
	env := map[string]string{}
	for _, e := range pod.Spec.Containers[0].Env {
		env[e.Name] = e.Value
	}
	if env["KUBERNETES_SERVICE_HOST"] != "198.51.100.254" || env["KUBERNETES_SERVICE_PORT"] != "6443" {
		t.Errorf("the agents' API server address %v, want the discovered 198.51.100.254:6443", env)
	}
	// Discovered from the kubernetes EndpointSlice, not the operator's own
	// --kube-apiserver (which this cluster sets too).
	if logs, err := c.Kubectl(ctx, nil, "-n", "kpo-system", "logs", "deploy/kpo-operator"); err != nil ||
		!strings.Contains(logs, "discovered the API server's address for the agents") {
		t.Errorf("the operator did not discover the agents' API server address (%v):\n%s", err, tailOf(logs, 2000))
	}
	// The agent's metrics, on the node (127.0.0.1, the default bind address).
	out, err := c.Nodes[0].NS.Run("curl", "-sf", "http://127.0.0.1:10249/metrics")
	if err != nil {
		t.Fatalf("the agent's metrics: %v", err)
	}
	for _, name := range []string{"kubeproxy_sync_proxy_rules_duration_seconds_count", "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
		"kubeproxy_network_programming_duration_seconds_bucket", "kubeproxy_sync_proxy_rules_endpoint_changes_total",
		`kpo_agent_info{active_mode="nftables",configuration="default",configured_mode="nftables"`} {
		if !strings.Contains(out, name) {
			t.Errorf("the agent's metrics lack %s", name)
		}
	}
	// Events on the ProxyConfiguration (cluster-scoped: in default).
	apiserver.Eventually(t, 30*time.Second, func() error {
		evs, err := c.Kube.EventsV1().Events(metav1.NamespaceDefault).List(ctx, metav1.ListOptions{})
		if err != nil {
			return err
		}
		var reasons []string
		for _, e := range evs.Items {
			if e.Regarding.Kind == "ProxyConfiguration" && e.Regarding.Name == "default" {
				reasons = append(reasons, e.Reason)
			}
		}
		if !strings.Contains(strings.Join(reasons, " "), kpov1.ReasonRollingOut) {
			return fmt.Errorf("events of the ProxyConfiguration: %v, want %s", reasons, kpov1.ReasonRollingOut)
		}
		return nil
	})
}

// startKubeProxies runs upstream kube-proxy (iptables mode) in every node's
// network namespace, next to kpo's agents (whose ports it waits for, as it
// does for a held port), and waits until each has programmed the demo app's
// Service. The returned function stops them and removes their rules.
func startKubeProxies(t *testing.T, c *cluster.Cluster) (stop func()) {
	t.Helper()
	bin, err := apiserver.Binary("kube-proxy")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	var cmds []*exec.Cmd
	stop = func() {
		for i, cmd := range cmds {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			_, _ = c.Nodes[i].NS.Run(bin, "--cleanup")
		}
		cmds = nil
	}
	for _, n := range c.Nodes {
		cfg := fmt.Sprintf(`apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clusterCIDR: 10.244.0.0/16,fd10:244::/48
hostnameOverride: %s
clientConnection: {kubeconfig: %s}
conntrack: {maxPerCore: 0}
iptables: {minSyncPeriod: 100ms}
`, n.Name, filepath.Join(c.Dir, "pki", "lan.kubeconfig"))
		path := filepath.Join(dir, n.Name+".yaml")
		if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		cmd := n.NS.Command(bin, "--config="+path)
		logs, err := os.Create(filepath.Join(dir, n.Name+".log"))
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stdout, cmd.Stderr = logs, logs
		if err := cmd.Start(); err != nil {
			stop()
			t.Fatal(err)
		}
		cmds = append(cmds, cmd)
	}
	for _, n := range c.Nodes {
		apiserver.Eventually(t, settle, func() error {
			out, err := n.NS.Run("iptables-save", "-t", "nat")
			if err != nil {
				return err
			}
			if !strings.Contains(out, `"demo/echo:tcp`) || !strings.Contains(out, "KUBE-NODEPORTS") {
				logs, _ := os.ReadFile(filepath.Join(dir, n.Name+".log"))
				return fmt.Errorf("kube-proxy has not programmed demo/echo on %s; its log ends:\n%s", n.Name, tailOf(string(logs), 2000))
			}
			return nil
		})
	}
	return stop
}

func tailOf(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[len(s)-n:]
}

// kpoLeftInAPI names what of kpo the API still holds after an uninstall.
func kpoLeftInAPI(ctx context.Context, c *cluster.Cluster) error {
	var left []string
	for _, crd := range []string{"proxyconfigurations.proxy.kpo.dev", "proxynodestatuses.proxy.kpo.dev"} {
		if out, err := c.Kubectl(ctx, nil, "get", "crd", crd, "--ignore-not-found", "-o", "name"); err != nil || strings.TrimSpace(out) != "" {
			left = append(left, fmt.Sprintf("CRD %s (%v)", crd, err))
		}
	}
	if _, err := c.Kube.CoreV1().Namespaces().Get(ctx, "kpo-system", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		left = append(left, fmt.Sprintf("namespace kpo-system (%v)", err))
	}
	for _, name := range []string{"kpo-operator", "kpo-agent"} {
		if _, err := c.Kube.RbacV1().ClusterRoles().Get(ctx, name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			left = append(left, "ClusterRole "+name)
		}
		if _, err := c.Kube.RbacV1().ClusterRoleBindings().Get(ctx, name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			left = append(left, "ClusterRoleBinding "+name)
		}
	}
	if _, err := c.Kube.RbacV1().Roles(metav1.NamespaceDefault).Get(ctx, "kpo-operator", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		left = append(left, "Role default/kpo-operator")
	}
	if _, err := c.Kube.AdmissionregistrationV1().ValidatingAdmissionPolicies().Get(ctx, "kpo-agent-node-status", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		left = append(left, "ValidatingAdmissionPolicy kpo-agent-node-status")
	}
	if len(left) > 0 {
		return fmt.Errorf("kpo left in the API: %s", strings.Join(left, ", "))
	}
	return nil
}
