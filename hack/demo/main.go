// Command demo is `make demo`: a 3-node local cluster from real Kubernetes
// components (hack/cluster: kubelet and containerd on every node), kpo's
// operator deployed with the project's own manifests from the image `make
// images` built, the sample ProxyConfiguration, a demo app behind a Service,
// requests answered through the proxy from a node, a pod and an external
// client, an agent's log and its userland through kubectl exec, and a mode
// switch by editing the CR. It stays up until Ctrl-C.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
	"kpo.dev/kpo/hack/apiserver"
	"kpo.dev/kpo/hack/cluster"
	"kpo.dev/kpo/hack/netns"
)

func main() {
	nodes := flag.Int("nodes", 3, "number of nodes")
	switchTo := flag.String("switch-to", "iptables", "mode to switch to after the first round (empty: no switch)")
	exit := flag.Bool("exit", false, "tear down after the demo instead of waiting for Ctrl-C")
	imagesDir := flag.String("images", cluster.ImagesDir(), "the images' OCI layouts (make images)")
	flag.Parse()
	if os.Geteuid() != 0 {
		fatal(fmt.Errorf("the local cluster needs root (network namespaces, mounts): run as root"))
	}
	// Quiet the controller-runtime client's "logger not set" warning.
	ctrllog.SetLogger(logr.Discard())
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *nodes, *imagesDir, kpov1.Mode(*switchTo), *exit); err != nil {
		fatal(err)
	}
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "demo:", err)
	os.Exit(1)
}

// step prints a numbered heading with the time since start.
var start = time.Now()

func step(format string, args ...any) {
	fmt.Printf("\n==> [%5.1fs] %s\n", time.Since(start).Seconds(), fmt.Sprintf(format, args...))
}

func progress(msg string) { fmt.Printf("    [%5.1fs] %s\n", time.Since(start).Seconds(), msg) }

func run(ctx context.Context, nodes int, imagesDir string, switchTo kpov1.Mode, exit bool) error {
	step("starting a %d-node local cluster (images from make images: %s)", nodes, imagesDir)
	c, err := cluster.Start(ctx, cluster.Options{Nodes: nodes, Images: imagesDir, Progress: progress})
	if err != nil {
		return err
	}
	defer func() {
		step("tearing down")
		c.Close()
	}()
	if err := c.WaitNodesReady(ctx, 2*time.Minute); err != nil {
		return err
	}
	show(ctx, c, "get", "nodes", "-o", "wide")

	step("deploying the operator: kubectl apply -f install.yaml (as make release renders it, + the API server's bootstrap address)")
	if err := c.DeployOperator(ctx, 3*time.Minute); err != nil {
		return withLogs(c, err)
	}
	step("applying config/samples/ (ProxyConfiguration \"default\", nftables mode)")
	if _, err := c.Kubectl(ctx, nil, "apply", "-f", cluster.Repo(cluster.SamplesDir)); err != nil {
		return err
	}
	if _, err := c.WaitProxyAvailable(ctx, "default", kpov1.ModeNFTables, 3*time.Minute); err != nil {
		return withLogs(c, err)
	}
	step("deploying the demo app: 3 echo servers behind Service demo/echo (ClusterIP + NodePort 30080, TCP and UDP)")
	svc, err := c.DeployEcho(ctx, 3, 3*time.Minute)
	if err != nil {
		return withLogs(c, err)
	}
	show(ctx, c, "get", "pods", "-A", "-o", "wide")
	// The operator hands its own image to the agents, by the digest kubelet
	// reports for it (docs/security.md): the image make images built.
	show(ctx, c, "-n", "kpo-system", "get", "pods", "-o",
		"custom-columns=POD:.metadata.name,IMAGE:.spec.containers[0].image,RUNNING:.status.containerStatuses[0].imageID")
	round(ctx, c, svc)
	agent := agentOn(ctx, c, c.Nodes[0].Name)
	step("the agent on %s: its log (kubectl logs) and its rules, listed by the image's nft (kubectl exec)", c.Nodes[0].Name)
	show(ctx, c, "-n", "kpo-system", "logs", agent, "--tail=6")
	showHead(ctx, c, 12, "-n", "kpo-system", "exec", agent, "--", "nft", "list", "table", "ip", "kpo")

	if switchTo != "" {
		step("switching mode: kubectl patch proxyconfig default --type merge -p '{\"spec\":{\"mode\":\"%s\"}}'", switchTo)
		began := time.Now()
		patch := fmt.Sprintf(`{"spec":{"mode":%q}}`, switchTo)
		if _, err := c.Kubectl(ctx, nil, "patch", "proxyconfig", "default", "--type", "merge", "-p", patch); err != nil {
			return err
		}
		if _, err := c.WaitProxyAvailable(ctx, "default", switchTo, 3*time.Minute); err != nil {
			return withLogs(c, err)
		}
		progress(fmt.Sprintf("Available in %s mode on every node %.1fs after the edit", switchTo, time.Since(began).Seconds()))
		round(ctx, c, svc)
		if switchTo == kpov1.ModeIPTables {
			agent := agentOn(ctx, c, c.Nodes[0].Name)
			step("the new agent on %s: its rules through the image's iptables-save (kubectl exec)", c.Nodes[0].Name)
			showHead(ctx, c, 8, "-n", "kpo-system", "exec", agent, "--", "iptables-save", "-t", "nat")
		}
	}

	step("the cluster is yours")
	fmt.Printf(`    export KUBECONFIG=%s
    %s get proxyconfig -o wide
    %s get proxynodestatus
    ip netns exec %s nft list table ip kpo      # a node's rules (nftables mode)
    ip netns exec %s iptables-save -t nat       # (iptables mode)
    %s -n kpo-system logs ds/kpo-agent-default
    logs: %s/logs (control plane), %s/nodes/<node>/{kubelet,containerd}.log
`, c.Kubeconfig, kubectl(), kubectl(), c.Nodes[0].NS.Name, c.Nodes[0].NS.Name, kubectl(), c.Dir, c.Dir)
	if exit {
		return nil
	}
	fmt.Println("    Ctrl-C tears everything down.")
	<-ctx.Done()
	return nil
}

// round shows the status objects and sends requests through the proxy.
func round(ctx context.Context, c *cluster.Cluster, svc *corev1.Service) {
	// The agents refresh their counts every 10 s: wait until they include the
	// demo app (the kubernetes Service's port, and echo's TCP and UDP ports in
	// both families), so that the table below is current.
	waitCounts(ctx, c, 5)
	show(ctx, c, "get", "proxyconfig", "-o", "wide")
	show(ctx, c, "get", "proxynodestatus", "-o", "wide")
	vip := net.JoinHostPort(svc.Spec.ClusterIP, "80")
	node := c.Nodes[len(c.Nodes)-1]
	request(node.NS, "tcp", vip, fmt.Sprintf("from node %s to ClusterIP %s (TCP)", node.Name, vip))
	request(node.NS, "udp", vip, fmt.Sprintf("from node %s to ClusterIP %s (UDP)", node.Name, vip))
	if ns, name := clientPod(ctx, c); ns != nil {
		request(ns, "tcp", vip, fmt.Sprintf("from pod %s to ClusterIP %s (TCP)", name, vip))
	}
	for _, ip := range svc.Spec.ClusterIPs[1:] {
		request(node.NS, "tcp", net.JoinHostPort(ip, "80"), fmt.Sprintf("from node %s to ClusterIP [%s] (TCP, IPv6)", node.Name, ip))
	}
	nodePort := net.JoinHostPort(netns.NodeAddr4(1), "30080")
	request(c.External, "tcp", nodePort, "from the external client to NodePort "+nodePort)
}

// waitCounts waits (at most 15 s) until every node reports at least n service ports.
func waitCounts(ctx context.Context, c *cluster.Cluster, n int32) {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	for ctx.Err() == nil {
		var reports kpov1.ProxyNodeStatusList
		if err := c.Client.List(ctx, &reports); err == nil && len(reports.Items) == len(c.Nodes) {
			low := false
			for _, r := range reports.Items {
				low = low || r.Status.Services < n
			}
			if !low {
				return
			}
		}
		time.Sleep(500 * time.Millisecond) // polling the reports, bounded by the timeout
	}
}

// clientPod is one of the demo app's pods, to send requests from.
func clientPod(ctx context.Context, c *cluster.Cluster) (*netns.NS, string) {
	pods, err := c.Kube.CoreV1().Pods("demo").List(ctx, metav1.ListOptions{LabelSelector: "app=echo"})
	if err != nil {
		return nil, ""
	}
	for _, p := range pods.Items {
		if ns := c.PodNS(p.Namespace, p.Name); ns != nil {
			return ns, p.Name
		}
	}
	return nil, ""
}

// request sends five requests and prints who answered.
func request(from *netns.NS, network, addr, what string) {
	var answers []string
	for range 5 {
		r, err := from.Dial(network, addr, 2*time.Second)
		if err != nil {
			answers = append(answers, "ERROR: "+err.Error())
			continue
		}
		answers = append(answers, r.Server)
	}
	fmt.Printf("    %-66s → %s\n", what, strings.Join(answers, ", "))
}

func show(ctx context.Context, c *cluster.Cluster, args ...string) {
	fmt.Printf("    $ kubectl %s\n", strings.Join(args, " "))
	out, err := c.Kubectl(ctx, nil, args...)
	if err != nil {
		fmt.Printf("    %v\n", err)
	}
	for _, line := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
		fmt.Println("    " + line)
	}
}

// showHead is show for long outputs: the first n lines.
func showHead(ctx context.Context, c *cluster.Cluster, n int, args ...string) {
	fmt.Printf("    $ kubectl %s | head -%d\n", strings.Join(args, " "), n)
	out, err := c.Kubectl(ctx, nil, args...)
	if err != nil {
		fmt.Printf("    %v\n", err)
	}
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	for i, line := range lines {
		if i == n {
			fmt.Printf("    ... (%d more lines)\n", len(lines)-n)
			break
		}
		fmt.Println("    " + line)
	}
}

// agentOn is the name of the running agent pod on a node.
func agentOn(ctx context.Context, c *cluster.Cluster, node string) string {
	pods, err := c.Kube.CoreV1().Pods("kpo-system").List(ctx, metav1.ListOptions{
		LabelSelector: "app.kubernetes.io/name=kpo-agent", FieldSelector: "spec.nodeName=" + node})
	if err == nil {
		for _, p := range pods.Items {
			if p.DeletionTimestamp == nil && p.Status.Phase == corev1.PodRunning {
				return p.Name
			}
		}
	}
	return "(no running agent on " + node + ")"
}

func kubectl() string { return filepath.Join(apiserver.BinDir(), "kubectl") }

// withLogs adds where to look to an error.
func withLogs(c *cluster.Cluster, err error) error {
	return fmt.Errorf("%w\n%s(control-plane logs: %s/logs; kubelet and containerd logs: %s/nodes/<node>/; set KPO_CLUSTER_KEEP=1 to keep them)", err,
		c.DescribePods(context.Background()), c.Dir, c.Dir)
}
