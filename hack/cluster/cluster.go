// Package cluster runs a local Kubernetes cluster made of real components
// and network namespaces, for kpo's demo and whole-system tests:
//
//	host: kubectl ──127.0.0.1:<port>──┐ (a forwarder into the LAN namespace)
//	lan namespace: bridge br0 198.51.100.254 ── etcd, kube-apiserver :6443,
//	               kube-controller-manager, kube-scheduler
//	   ├── node1 198.51.100.1  pods 10.244.1.0/24  (kubelet + containerd: hack/kubenode)
//	   ├── node2 198.51.100.2  pods 10.244.2.0/24
//	   ├── ...
//	   └── client 198.51.100.200 (an external client, routes services via node 1)
//
// Nothing is created in the root namespace but the forwarder's loopback
// socket, the run directory and the run's private cgroup root (kubelet's
// pods). Close tears everything down; a crashed run's leftovers are removed
// by the next Start.
package cluster

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"kpo.dev/kpo/hack/apiserver"
	"kpo.dev/kpo/hack/kubenode"
	"kpo.dev/kpo/hack/netns"
	"kpo.dev/kpo/hack/procs"
)

// Options says what to build.
type Options struct {
	// Nodes is the number of nodes (1…9).
	Nodes int
	// Root holds the runs' directories (default /tmp/kpo-cluster).
	Root string
	// Images holds the images' OCI layouts (default ImagesDir(): `make images`).
	Images string
	// Progress reports long steps (may be nil).
	Progress func(string)
}

// Cluster is a running local cluster.
type Cluster struct {
	// Dir is this run's directory: PKI, logs, kubeconfigs, pod files.
	Dir string
	// Kubeconfig is an admin kubeconfig for the host (kubectl).
	Kubeconfig string
	Config     *rest.Config
	Kube       kubernetes.Interface
	// Client reads and writes kpo's objects too.
	Client client.Client
	LAN    *netns.LAN
	// External is an external client on the node network (198.51.100.200).
	External *netns.NS
	Nodes    []*Node

	scope    *netns.Scope
	ledger   *procs.Ledger
	cp       *controlPlane
	forward  net.Listener
	cgroup   string
	progress func(string)
	podNSMu  sync.Mutex
	podNS    map[string]*netns.NS
}

// Node is one node: kubelet and containerd in the node's namespaces.
type Node struct {
	Name  string
	Index int
	NS    *netns.NS
	Kube  *kubenode.Node
}

// Start builds the network, starts the control plane and the node runtimes.
// On error, whatever was started is torn down again.
func Start(ctx context.Context, opts Options) (c *Cluster, err error) {
	if opts.Nodes < 1 || opts.Nodes > 9 {
		return nil, fmt.Errorf("nodes: %d, want 1…9", opts.Nodes)
	}
	if opts.Root == "" {
		opts.Root = filepath.Join(os.TempDir(), "kpo-cluster")
	}
	progress := opts.Progress
	if progress == nil {
		progress = func(string) {}
	}
	ledger, cleaned, err := procs.NewLedger(opts.Root)
	if err != nil {
		return nil, err
	}
	for _, msg := range cleaned {
		progress(msg)
	}
	if opts.Images == "" {
		opts.Images = ImagesDir()
	}
	c = &Cluster{Dir: ledger.Dir, scope: &netns.Scope{}, ledger: ledger, progress: progress, podNS: map[string]*netns.NS{}}
	defer func() {
		if err != nil {
			c.Close()
			c = nil
		}
	}()
	for _, d := range []string{"logs", "nodes"} {
		if err := os.MkdirAll(filepath.Join(c.Dir, d), 0o755); err != nil {
			return c, err
		}
	}

	progress("certificates")
	p, err := newPKI(filepath.Join(c.Dir, "pki"))
	if err != nil {
		return c, err
	}
	if err := p.writeAll([]string{"127.0.0.1", netns.LANIP4, netns.LANIP6, "10.96.0.1", "fd10:96::1"}); err != nil {
		return c, err
	}

	progress(fmt.Sprintf("network: LAN, %d nodes, an external client", opts.Nodes))
	if err := netns.Build(c.scope, func(s *netns.Scope) { c.buildNetwork(s, opts.Nodes) }); err != nil {
		return c, fmt.Errorf("network: %w", err)
	}

	// kubectl on the host reaches the API server through a forwarder, since
	// the root namespace has no route into the sandbox (by design).
	apiAddr := fmt.Sprintf("%s:%d", netns.LANIP4, APIServerPort)
	c.forward, err = netns.Forward(nil, "127.0.0.1:0", c.LAN.NS, apiAddr)
	if err != nil {
		return c, err
	}
	c.Kubeconfig = filepath.Join(c.Dir, "kubeconfig")
	if err := writeKubeconfig(c.Kubeconfig, "https://"+c.forward.Addr().String(), p); err != nil {
		return c, err
	}
	inLAN := filepath.Join(c.Dir, "pki", "lan.kubeconfig")
	if err := writeKubeconfig(inLAN, "https://"+apiAddr, p); err != nil {
		return c, err
	}
	if c.Config, err = clientcmd.BuildConfigFromFlags("", c.Kubeconfig); err != nil {
		return c, err
	}
	// The node runtimes write pod status for many pods at once: no client-side throttling.
	c.Config.QPS, c.Config.Burst = -1, 0
	if c.Kube, err = kubernetes.NewForConfig(c.Config); err != nil {
		return c, err
	}
	if c.Client, err = client.New(c.Config, client.Options{Scheme: apiserver.Scheme()}); err != nil {
		return c, err
	}

	progress("control plane: etcd, kube-apiserver, kube-controller-manager, kube-scheduler")
	c.cp = &controlPlane{dir: c.Dir, pki: p, lan: c.LAN, ledger: ledger, inLAN: inLAN}
	if err := c.cp.start(ctx, c.Config, progress); err != nil {
		return c, err
	}

	if err := c.startNodes(ctx, p, opts.Images, progress); err != nil {
		return c, err
	}
	return c, nil
}

func (c *Cluster) buildNetwork(s *netns.Scope, nodes int) {
	c.LAN = netns.NewLAN(s)
	byIndex := map[int]*netns.NS{}
	for i := 1; i <= nodes; i++ {
		ns := c.LAN.AddNode(s, i)
		byIndex[i] = ns
		c.Nodes = append(c.Nodes, &Node{Name: fmt.Sprintf("node-%d", i), Index: i, NS: ns})
	}
	c.LAN.RoutePods(s, byIndex)
	c.External = c.LAN.AddClient(s, 1)
}

// RestartAPIServer stops kube-apiserver (SIGTERM) and starts it again.
func (c *Cluster) RestartAPIServer(ctx context.Context) error {
	if err := c.cp.restart("kube-apiserver"); err != nil {
		return err
	}
	return waitReady(ctx, c.Config, c.cp.procs["kube-apiserver"], 2*defaultWait)
}

// LogPath is the log file of a control-plane component.
func (c *Cluster) LogPath(component string) string { return c.cp.logPath(component) }

// Close stops the nodes (kubelet, the pods, containerd) and the control
// plane, removes the network, the run's cgroups and files. It may be called again.
func (c *Cluster) Close() {
	c.stopNodes()
	if c.cp != nil {
		c.progress("stopping the control plane")
		c.cp.stop()
	}
	if c.forward != nil {
		_ = c.forward.Close()
	}
	c.scope.Close()
	c.ledger.RemoveCreatedPaths()
	if os.Getenv("KPO_CLUSTER_KEEP") == "" {
		_ = os.RemoveAll(c.Dir)
	}
}
