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
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
	"kpo.dev/kpo/test/apiserver"
	"kpo.dev/kpo/test/netns"
)

// Net is a running test network.
type Net struct {
	t      testing.TB
	API    *apiserver.Env
	LAN    *netns.NS
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
	n.LAN = netns.New(t, "lan")
	n.LAN.MustRun(t, "ip", "link", "add", "br0", "type", "bridge")
	n.LAN.MustRun(t, "ip", "link", "set", "br0", "up")

	n.Client = netns.New(t, "client")
	n.attach(t, n.Client, "c")
	n.Client.AddAddr(t, "eth0", "198.51.100.200/24")
	n.Client.AddAddr(t, "eth0", "2001:db8:1::200/64")

	for i := 1; i <= nodes; i++ {
		n.addNode(t, i)
	}
	// Routes between nodes: each node's pod network via that node (a flat pod
	// network, as a routed CNI plugin makes it). The client reaches services and
	// external IPs through node 1.
	for _, a := range n.Nodes {
		for _, b := range n.Nodes {
			if a != b {
				a.Route(t, fmt.Sprintf("10.244.%d.0/24", b.Index), b.IP4, "eth0")
				a.Route(t, fmt.Sprintf("fd10:244:0:%d::/64", b.Index), b.IP6, "eth0")
			}
		}
	}
	first := n.Nodes[0]
	for _, dst := range []string{"10.96.0.0/16", "203.0.113.0/24"} {
		n.Client.Route(t, dst, first.IP4, "eth0")
	}
	for _, dst := range []string{"fd10:96::/112", "2001:db8:2::/64"} {
		n.Client.Route(t, dst, first.IP6, "eth0")
	}
	for _, node := range n.Nodes {
		for k := range podsPerNode {
			node.AddPod(t, fmt.Sprintf("n%dp%d", node.Index, k))
		}
	}
	return n
}

// attach plugs a namespace into the LAN bridge with a veth named eth0.
func (n *Net) attach(t testing.TB, ns *netns.NS, tag string) {
	port := "p" + tag
	netns.Veth(t, n.LAN, port, ns, "eth0")
	n.LAN.MustRun(t, "ip", "link", "set", port, "master", "br0")
}

func (n *Net) addNode(t testing.TB, i int) {
	node := &Node{NS: netns.New(t, fmt.Sprintf("node%d", i)), Name: fmt.Sprintf("node-%d", i), Index: i,
		IP4: fmt.Sprintf("198.51.100.%d", i), IP6: fmt.Sprintf("2001:db8:1::%d", i), net: n}
	n.attach(t, node.NS, fmt.Sprintf("n%d", i))
	node.AddAddr(t, "eth0", node.IP4+"/24")
	node.AddAddr(t, "eth0", node.IP6+"/64")
	for _, k := range []string{"net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding", "net/ipv6/conf/default/forwarding"} {
		node.MustSysctl(t, k, "1")
	}
	// The sink: service and external ranges no rule translates end here, so that
	// "not proxied" reads as a clean timeout and nothing leaves the sandbox.
	sink := netns.New(t, fmt.Sprintf("sink%d", i))
	netns.Veth(t, node.NS, "sink0", sink, "sink1")
	node.MustRun(t, "ip", "link", "set", "sink0", "arp", "off")
	sink.MustRun(t, "ip", "link", "set", "sink1", "down")
	for _, dst := range []string{"10.96.0.0/16", "203.0.113.0/24", "fd10:96::/112", "2001:db8:2::/64"} {
		node.Route(t, dst, "", "sink0")
	}
	node.stopAP = n.proxyAPIServer(t, node.NS)
	n.Nodes = append(n.Nodes, node)

	// The Node object, with the addresses the agent reads.
	obj := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: node.Name, Labels: map[string]string{
			corev1.LabelHostname: node.Name, corev1.LabelTopologyZone: "zone-a",
		}},
		Spec: corev1.NodeSpec{PodCIDRs: []string{fmt.Sprintf("10.244.%d.0/24", i), fmt.Sprintf("fd10:244:0:%d::/64", i)}},
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
}

// AddPod adds a pod namespace behind the node, with echo servers on 8080.
func (node *Node) AddPod(t testing.TB, name string) *Pod {
	t.Helper()
	k := len(node.Pods)
	p := &Pod{NS: netns.New(t, name), Name: name, Node: node,
		IP4: fmt.Sprintf("10.244.%d.%d", node.Index, 10+k), IP6: fmt.Sprintf("fd10:244:0:%d::%x", node.Index, 10+k)}
	gw4, gw6 := fmt.Sprintf("10.244.%d.1", node.Index), fmt.Sprintf("fd10:244:0:%d::1", node.Index)
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
	var l net.Listener
	if err := ns.Do(func() error {
		var err error
		l, err = net.Listen("tcp", "127.0.0.1:6443")
		return err
	}); err != nil {
		t.Fatalf("API proxy in %s: %v", ns.Name, err)
	}
	var wg sync.WaitGroup
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { _ = c.Close() }()
				up, err := net.Dial("tcp", u)
				if err != nil {
					t.Logf("API proxy in %s: %v", ns.Name, err)
					return
				}
				defer func() { _ = up.Close() }()
				go func() { _, _ = io.Copy(up, c); _ = up.(*net.TCPConn).CloseWrite() }()
				_, _ = io.Copy(c, up)
			}()
		}
	}()
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
		"--node-name="+node.Name, "--v=2")
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
