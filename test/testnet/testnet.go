// Package testnet is the test network of kpo's dataplane tests: a real
// kube-apiserver and etcd, N node namespaces on a shared node network, pod
// namespaces behind each node with echo servers, an external client, and kpo
// agents running as real processes inside the node namespaces.
//
//	                      lan (bridge br0, its own namespace)
//	     ┌──────────────────────┼─────────────────────────┐
//	node1 198.51.100.1     node2 198.51.100.2      client 198.51.100.200
//	 └ pods 10.244.1.x      └ pods 10.244.2.x
//
// Nothing is created in the root namespace. Agents reach the API server through
// a proxy that the test process listens with inside each node namespace
// (127.0.0.1:6443) and that forwards to the API server on the root namespace's
// loopback; so the API server stays where envtest puts it.
package testnet

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
	"kpo.dev/kpo/hack/apiserver"
	"kpo.dev/kpo/hack/netns"
)

// Net is a running test network.
type Net struct {
	t      testing.TB
	API    *apiserver.Env
	LAN    *netns.LAN
	Client *netns.NS
	Nodes  []*Node
	// agentBin is the kpo-agent binary under test.
	agentBin string
	dir      string
}

// Node is one simulated node.
type Node struct {
	*netns.NS
	Name   string
	Index  int
	IP4    string
	IP6    string
	Pods   []*Pod
	net    *Net
	agent  *exec.Cmd
	done   chan struct{}
	logs   *LockedBuffer
	stopAP func()
}

// Pod is a pod namespace behind a node.
type Pod struct {
	*netns.NS
	Name string
	Node *Node
	IP4  string
	IP6  string
}

// New starts the API server and builds nodes nodes, each with podsPerNode pods
// (echo servers on TCP and UDP port 8080 answering with the pod's name).
func New(t testing.TB, api *apiserver.Env, agentBin string, nodes, podsPerNode int) *Net {
	t.Helper()
	n := &Net{t: t, API: api, agentBin: agentBin, dir: t.TempDir()}
	n.LAN = netns.NewLAN(t)
	n.Client = n.LAN.AddClient(t, 1)
	byIndex := map[int]*netns.NS{}
	for i := 1; i <= nodes; i++ {
		byIndex[i] = n.addNode(t, i).NS
	}
	n.LAN.RoutePods(t, byIndex)
	for _, node := range n.Nodes {
		for k := range podsPerNode {
			node.AddPod(t, fmt.Sprintf("n%dp%d", node.Index, k))
		}
	}
	return n
}

func (n *Net) addNode(t testing.TB, i int) *Node {
	node := &Node{NS: n.LAN.AddNode(t, i), Name: fmt.Sprintf("node-%d", i), Index: i,
		IP4: netns.NodeAddr4(i), IP6: netns.NodeAddr6(i), net: n}
	node.stopAP = n.proxyAPIServer(t, node.NS)
	n.Nodes = append(n.Nodes, node)

	// The Node object, with the addresses the agent reads.
	obj := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: node.Name, Labels: map[string]string{
			corev1.LabelHostname: node.Name, corev1.LabelTopologyZone: "zone-a",
		}},
		Spec: corev1.NodeSpec{PodCIDRs: []string{netns.PodCIDR4(i), netns.PodCIDR6(i)}},
	}
	ctx := context.Background()
	if err := n.API.Client.Create(ctx, obj); err != nil {
		t.Fatalf("creating node %s: %v", node.Name, err)
	}
	obj.Status.Addresses = []corev1.NodeAddress{
		{Type: corev1.NodeInternalIP, Address: node.IP4}, {Type: corev1.NodeInternalIP, Address: node.IP6},
		{Type: corev1.NodeHostName, Address: node.Name},
	}
	if err := n.API.Client.Status().Update(ctx, obj); err != nil {
		t.Fatalf("node %s status: %v", node.Name, err)
	}
	t.Cleanup(func() {
		// With the Node goes its ProxyNodeStatus (in a cluster, the garbage
		// collector does it: the Node owns it; envtest runs no collector).
		_ = n.API.Client.Delete(context.Background(), obj)
		_ = n.API.Client.Delete(context.Background(), &kpov1.ProxyNodeStatus{ObjectMeta: metav1.ObjectMeta{Name: node.Name}})
	})
	return node
}

// AddPod adds a pod namespace behind the node, with echo servers on 8080.
func (node *Node) AddPod(t testing.TB, name string) *Pod {
	t.Helper()
	k := len(node.Pods)
	p := &Pod{NS: netns.New(t, name), Name: name, Node: node,
		IP4: fmt.Sprintf("10.244.%d.%d", node.Index, 10+k), IP6: fmt.Sprintf("fd10:244:0:%d::%x", node.Index, 10+k)}
	gw4, gw6 := netns.PodGateways(node.Index)
	netns.PlugPod(t, node.NS, fmt.Sprintf("vp%d", k), p.NS, p.IP4, p.IP6, gw4, gw6)
	for _, network := range []string{"tcp", "udp"} {
		p.ServeEcho(t, network, ":8080", name)
	}
	node.Pods = append(node.Pods, p)
	return p
}

// proxyAPIServer listens on 127.0.0.1:6443 inside ns and forwards each
// connection to the API server on the root namespace's loopback.
func (n *Net) proxyAPIServer(t testing.TB, ns *netns.NS) func() {
	// rest.Config.Host is a URL or a bare host:port.
	u := n.API.Config.Host
	if parsed, err := url.Parse(u); err == nil && parsed.Host != "" {
		u = parsed.Host
	}
	l, err := netns.Forward(ns, "127.0.0.1:6443", nil, u)
	if err != nil {
		t.Fatalf("API proxy in %s: %v", ns.Name, err)
	}
	stop := func() { _ = l.Close() }
	t.Cleanup(stop)
	return stop
}

// kubeconfig writes a kubeconfig whose server is the in-namespace proxy.
func (n *Net) kubeconfig(t testing.TB) string {
	path := filepath.Join(n.dir, "agent.kubeconfig")
	if _, err := os.Stat(path); err == nil {
		return path
	}
	data, err := os.ReadFile(n.API.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	out := replaceServer(string(data), "https://127.0.0.1:6443")
	if err := os.WriteFile(path, []byte(out), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// StartAgent runs kpo-agent inside the node namespace with cfg. It is killed
// when the test ends; its logs are printed if the test failed.
func (node *Node) StartAgent(t testing.TB, cfg *kpov1.AgentConfiguration) {
	t.Helper()
	data, err := kpov1.MarshalAgentConfiguration(cfg)
	if err != nil {
		t.Fatal(err)
	}
	cfgPath := filepath.Join(node.net.dir, node.Name+".yaml")
	if err := os.WriteFile(cfgPath, data, 0o600); err != nil {
		t.Fatal(err)
	}
	node.logs = &LockedBuffer{}
	cmd := node.Command(node.net.agentBin, "--config="+cfgPath, "--kubeconfig="+node.net.kubeconfig(t),
		"--node-name="+node.Name, "--lock-file="+node.LockFile(), "--v=2")
	cmd.Stdout, cmd.Stderr = node.logs, node.logs
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting agent on %s: %v", node.Name, err)
	}
	node.agent, node.done = cmd, make(chan struct{})
	done := node.done
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		node.KillAgent()
		if t.Failed() {
			t.Logf("agent on %s:\n%s", node.Name, Tail(node.logs.String(), 6000))
		}
	})
}

// LockFile is the node's agent lock (kpo-agent --lock-file): the nodes share
// this machine's file system, so each has its own instead of /run/kpo's.
func (node *Node) LockFile() string {
	return filepath.Join(node.net.dir, node.Name+".lock")
}

// KillAgent kills the agent with SIGKILL (no cleanup: the rules stay).
func (node *Node) KillAgent() {
	if node.agent == nil || node.agent.Process == nil {
		return
	}
	_ = node.agent.Process.Kill()
	select {
	case <-node.done:
	case <-time.After(10 * time.Second):
	}
	node.agent = nil
}

// AgentLogs returns what the agent printed so far.
func (node *Node) AgentLogs() string {
	if node.logs == nil {
		return ""
	}
	return node.logs.String()
}

// AgentPID is the agent's process ID (0 when not running).
func (node *Node) AgentPID() int {
	if node.agent == nil || node.agent.Process == nil {
		return 0
	}
	return node.agent.Process.Pid
}

// AgentRunning reports whether the agent process is still running.
func (node *Node) AgentRunning() bool {
	if node.done == nil {
		return false
	}
	select {
	case <-node.done:
		return false
	default:
		return true
	}
}

// Kubeconfig is a kubeconfig for processes in the node namespaces (its server
// is the in-namespace proxy to the API server).
func (n *Net) Kubeconfig(t testing.TB) string { return n.kubeconfig(t) }
