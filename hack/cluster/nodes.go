package cluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"kpo.dev/kpo/hack/apiserver"
	"kpo.dev/kpo/hack/images"
	"kpo.dev/kpo/hack/kubenode"
	"kpo.dev/kpo/hack/netns"
	"kpo.dev/kpo/hack/procs"
)

// startNodes starts every node's kubelet and containerd (in parallel: most
// of a node's start is importing the images), then gives each registered
// Node its pod ranges from the address plan.
func (c *Cluster) startNodes(ctx context.Context, p *pki, imagesDir string, progress func(string)) error {
	kubelet, err := apiserver.Binary("kubelet")
	if err != nil {
		return err
	}
	ctrDir := Repo(filepath.Join("bin", "containerd-"+ContainerdVersion))
	for _, b := range []string{"containerd", "containerd-shim-runc-v2", "ctr"} {
		if _, err := os.Stat(filepath.Join(ctrDir, b)); err != nil {
			return fmt.Errorf("%s not built in %s: run 'make containerd'", b, ctrDir)
		}
	}
	for _, b := range []string{"/usr/sbin/runc", "/usr/lib/cni/bridge", "/usr/lib/cni/host-local"} {
		if _, err := os.Stat(b); err != nil {
			return fmt.Errorf("%s missing: run 'make deps' (runc, containernetworking-plugins)", b)
		}
	}
	archives, err := imageArchives(imagesDir, filepath.Join(c.Dir, "images"))
	if err != nil {
		return err
	}
	c.cgroup = procs.CgroupRoot(os.Getpid())
	progress(fmt.Sprintf("nodes: kubelet %s + containerd %s + runc in each node's namespaces; importing %d images", apiserver.K8sVersion, ContainerdVersion, len(archives)))
	var wg sync.WaitGroup
	errs := make([]error, len(c.Nodes))
	for i, n := range c.Nodes {
		cert, key, err := p.issueNode(n.Name)
		if err != nil {
			return err
		}
		kubeconfig := filepath.Join(c.Dir, "nodes", n.Name, "kubelet.kubeconfig")
		if err := writeClientKubeconfig(kubeconfig, fmt.Sprintf("https://%s:%d", netns.LANIP4, APIServerPort), p, cert, key); err != nil {
			return err
		}
		cfg := kubenode.Config{
			Name: n.Name, Index: n.Index, NS: n.NS, Dir: filepath.Join(c.Dir, "nodes", n.Name),
			CgroupRoot: c.cgroup + "/" + n.Name, Kubeconfig: kubeconfig, CACert: p.path(caCert),
			Kubelet: kubelet, Containerd: filepath.Join(ctrDir, "containerd"), Ctr: filepath.Join(ctrDir, "ctr"),
			Runc: "/usr/sbin/runc", CNIBin: "/usr/lib/cni", SandboxImage: images.Pause.FullRef(), Images: archives,
			// Two zones, for topology-aware routing.
			Labels: map[string]string{"topology.kubernetes.io/zone": fmt.Sprintf("zone-%c", 'a'+(n.Index-1)%2)},
			Ledger: c.ledger,
		}
		wg.Go(func() {
			n.Kube, errs[i] = kubenode.Start(ctx, cfg)
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	progress("nodes: waiting for kubelets to register; setting each Node's podCIDRs")
	for _, n := range c.Nodes {
		if err := c.setPodCIDRs(ctx, n); err != nil {
			return fmt.Errorf("%w (kubelet log: %s)", err, n.Kube.KubeletLog())
		}
	}
	return nil
}

// setPodCIDRs waits until node n is registered and sets its podCIDRs (the
// ranges its CNI configuration hands out): the agents read them.
func (c *Cluster) setPodCIDRs(ctx context.Context, n *Node) error {
	return poll(ctx, 2*time.Minute, "node "+n.Name+" registered", func(ctx context.Context) error {
		node, err := c.Kube.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if len(node.Spec.PodCIDRs) > 0 {
			return nil
		}
		patch := fmt.Sprintf(`{"spec":{"podCIDR":%q,"podCIDRs":[%q,%q]}}`, netns.PodCIDR4(n.Index), netns.PodCIDR4(n.Index), netns.PodCIDR6(n.Index))
		_, err = c.Kube.CoreV1().Nodes().Patch(ctx, n.Name, types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{})
		return err
	})
}

func (c *Cluster) stopNodes() {
	c.podNSMu.Lock()
	for _, ns := range c.podNS {
		ns.Close()
	}
	c.podNS = map[string]*netns.NS{}
	c.podNSMu.Unlock()
	if len(c.Nodes) > 0 && c.cgroup != "" {
		c.progress("stopping the nodes (kubelet, pods, containerd)")
	}
	var wg sync.WaitGroup
	for _, n := range c.Nodes {
		if n.Kube != nil {
			wg.Go(func() {
				if err := n.Kube.Stop(); err != nil {
					c.progress(err.Error())
				}
			})
		}
	}
	wg.Wait()
	if c.cgroup != "" {
		if err := procs.RemoveCgroup(c.cgroup, 10*time.Second); err != nil {
			c.progress(err.Error())
		}
	}
}

// node is the Node of a name.
func (c *Cluster) node(name string) (*Node, error) {
	for _, n := range c.Nodes {
		if n.Name == name && n.Kube != nil {
			return n, nil
		}
	}
	return nil, fmt.Errorf("no node %q", name)
}

// PodNS is the network namespace of a running pod (nil if none): the node's
// for a hostNetwork pod, else the pod's own (opened once, closed at Close).
func (c *Cluster) PodNS(namespace, name string) *netns.NS {
	ctx := context.Background()
	pod, err := c.Kube.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil || pod.Status.Phase != corev1.PodRunning || len(pod.Status.ContainerStatuses) == 0 {
		return nil
	}
	n, err := c.node(pod.Spec.NodeName)
	if err != nil {
		return nil
	}
	if pod.Spec.HostNetwork {
		return n.NS
	}
	c.podNSMu.Lock()
	defer c.podNSMu.Unlock()
	if ns, ok := c.podNS[string(pod.UID)]; ok {
		return ns
	}
	path, err := n.Kube.PodNetNSPath(ctx, pod.Status.ContainerStatuses[0].ContainerID)
	if err != nil {
		return nil
	}
	ns, err := netns.Open(namespace+"/"+name, path)
	if err != nil {
		return nil
	}
	c.podNS[string(pod.UID)] = ns
	return ns
}

// ContainerPID is the host PID of a container (by the ID its pod's status
// reports) on a node: what a test kills to crash it.
func (c *Cluster) ContainerPID(ctx context.Context, node, containerID string) (int, error) {
	n, err := c.node(node)
	if err != nil {
		return 0, err
	}
	return n.Kube.ContainerPID(ctx, containerID)
}

// KubeletLog is a node's kubelet log.
func (c *Cluster) KubeletLog(node string) string {
	return filepath.Join(c.Dir, "nodes", node, "kubelet.log")
}
