// Package scale is kpo's simulated-node load harness: a real kube-apiserver
// and etcd (hack/apiserver), the real operator binary, and N simulated nodes
// — a Node object, a Lease renewed as a kubelet does, and an agent whose
// ProxyNodeStatus is written by the agent's own reporting code
// (nodeagent/report) with configurable sync outcomes. No rules are
// programmed; everything between an agent's sync and the ProxyConfiguration's
// status is the real code path. docs/scale.md has the figures and commands.
package scale

import (
	"context"
	"fmt"
	"sync"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"kpo.dev/kpo/controllers"
)

// NodeLabel selects the simulated nodes.
const NodeLabel = "scale.kpo.dev/simulated"

// nodeName is the i-th simulated node's name; names sort by index.
func nodeName(i int) string { return fmt.Sprintf("sim-%05d", i) }

// simNode is a node as a kubelet would create it: a status of the usual size
// (conditions, addresses, capacity, node info), so that the operator's Node
// cache holds what a real cluster's would, less the image list.
func simNode(i int) *corev1.Node {
	rl := corev1.ResourceList{
		corev1.ResourceCPU: resource.MustParse("8"), corev1.ResourceMemory: resource.MustParse("32Gi"),
		corev1.ResourcePods: resource.MustParse("110"), corev1.ResourceEphemeralStorage: resource.MustParse("100Gi"),
	}
	now := metav1.Now()
	var conds []corev1.NodeCondition
	for _, c := range []corev1.NodeConditionType{corev1.NodeMemoryPressure, corev1.NodeDiskPressure, corev1.NodePIDPressure} {
		conds = append(conds, corev1.NodeCondition{Type: c, Status: corev1.ConditionFalse, Reason: "KubeletHasSufficient" + string(c),
			Message: "kubelet has sufficient resources", LastHeartbeatTime: now, LastTransitionTime: now})
	}
	conds = append(conds, corev1.NodeCondition{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady",
		Message: "kubelet is posting ready status", LastHeartbeatTime: now, LastTransitionTime: now})
	return &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: nodeName(i), Labels: map[string]string{
			NodeLabel: "true", "kubernetes.io/hostname": nodeName(i), "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
			"topology.kubernetes.io/zone": fmt.Sprintf("zone-%d", i%3),
		}},
		Spec: corev1.NodeSpec{PodCIDR: fmt.Sprintf("10.244.%d.0/24", i%256)},
		Status: corev1.NodeStatus{
			Capacity: rl, Allocatable: rl, Conditions: conds,
			// Node addresses from the test plan's node network (198.51.100.0/24),
			// wrapping: nothing routes to them.
			Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: fmt.Sprintf("198.51.100.%d", 1+i%200)},
				{Type: corev1.NodeHostName, Address: nodeName(i)}},
			NodeInfo: corev1.NodeSystemInfo{KubeletVersion: "v1.37.1", ContainerRuntimeVersion: "containerd://2.4.2",
				KernelVersion: "6.18.0", OSImage: "Debian GNU/Linux 12 (bookworm)", OperatingSystem: "linux", Architecture: "amd64",
				MachineID: fmt.Sprintf("%032x", i), SystemUUID: fmt.Sprintf("%032x", i), BootID: fmt.Sprintf("%032x", i)},
		},
	}
}

// forEach runs f(i) for i in [0, n) on workers goroutines; the first error wins.
func forEach(ctx context.Context, n, workers int, f func(ctx context.Context, i int) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	next := make(chan int)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if err := f(ctx, i); err != nil {
					cancel(err)
				}
			}
		}()
	}
	for i := range n {
		select {
		case next <- i:
		case <-ctx.Done():
		}
	}
	close(next)
	wg.Wait()
	return context.Cause(ctx)
}

// createNodes creates n Nodes (with status) and their Leases and returns the
// Nodes' UIDs and the Leases.
func createNodes(ctx context.Context, c client.Client, n int) ([]string, []*coordinationv1.Lease, error) {
	uids := make([]string, n)
	leases := make([]*coordinationv1.Lease, n)
	err := forEach(ctx, n, 16, func(ctx context.Context, i int) error {
		node := simNode(i)
		status := node.Status
		if err := c.Create(ctx, node); err != nil {
			return fmt.Errorf("creating node %s: %w", node.Name, err)
		}
		node.Status = status
		if err := c.Status().Update(ctx, node); err != nil {
			return fmt.Errorf("node %s status: %w", node.Name, err)
		}
		uids[i] = string(node.UID)
		lease := &coordinationv1.Lease{
			ObjectMeta: metav1.ObjectMeta{Name: node.Name, Namespace: controllers.NodeLeaseNamespace,
				OwnerReferences: []metav1.OwnerReference{{APIVersion: "v1", Kind: "Node", Name: node.Name, UID: node.UID}}},
			Spec: coordinationv1.LeaseSpec{HolderIdentity: ptr.To(node.Name), LeaseDurationSeconds: ptr.To[int32](40),
				RenewTime: &metav1.MicroTime{Time: time.Now()}},
		}
		if err := c.Create(ctx, lease); err != nil {
			return fmt.Errorf("creating lease %s: %w", node.Name, err)
		}
		leases[i] = lease
		return nil
	})
	return uids, leases, err
}

// leaseRenewer renews every live node's Lease once per period, spread over
// the period, as kubelets do (nodeLeaseRenewIntervalFraction 0.25 of 40 s).
type leaseRenewer struct {
	c        client.Client
	leases   []*coordinationv1.Lease
	period   time.Duration
	duration int32
	// dead nodes' kubelets renew nothing.
	dead func(i int) bool

	mu      sync.Mutex
	renewed int
	failed  int
}

func (lr *leaseRenewer) run(ctx context.Context) {
	const slots = 20
	t := time.NewTicker(lr.period / slots)
	defer t.Stop()
	for slot := 0; ; slot = (slot + 1) % slots {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		var due []int
		lr.mu.Lock()
		dead := lr.dead
		lr.mu.Unlock()
		for i := slot; i < len(lr.leases); i += slots {
			if !dead(i) {
				due = append(due, i)
			}
		}
		_ = forEach(ctx, len(due), 8, func(ctx context.Context, k int) error {
			lease := lr.leases[due[k]]
			lease.Spec.RenewTime = &metav1.MicroTime{Time: time.Now()}
			lease.Spec.LeaseDurationSeconds = ptr.To(lr.duration)
			err := lr.c.Update(ctx, lease)
			if apierrors.IsConflict(err) {
				// A write that timed out but landed: take the stored version.
				_ = lr.c.Get(ctx, client.ObjectKeyFromObject(lease), lease)
			}
			lr.mu.Lock()
			if err != nil {
				lr.failed++
			} else {
				lr.renewed++
			}
			lr.mu.Unlock()
			return nil
		})
	}
}
