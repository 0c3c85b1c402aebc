// Package noderuntime stands in for kubelet and a container runtime on a
// simulated node of the local cluster (no container images can be had here):
// it registers the Node and keeps its lease, and runs the pods bound to the
// node as processes, hostNetwork pods in the node's network namespace and the
// others in namespaces of their own with an IP from the node's podCIDR.
//
// What it does, as kubelet does: images map to local binaries (Images); the
// container's command, args, env (values, fieldRef, configMap/secret refs,
// envFrom, $(VAR) expansion) and working directory; volumes (configMap, secret,
// projected service-account tokens, downwardAPI, emptyDir, hostPath) bind-mounted
// at their mountPath in a mount namespace of the container's own; runAsUser;
// readiness, liveness and startup probes (httpGet, tcpSocket, exec); restart
// policy with back-off; pod phase, conditions, IPs and container statuses;
// graceful stop with the grace period on deletion.
//
// What it does not do is said on the pod: a container it cannot run waits with
// a reason naming the missing feature, and fields it ignores (resource limits,
// capabilities, ...) are listed in the pod's NodeRuntimeIgnored condition.
package noderuntime

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
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"kpo.dev/kpo/hack/procs"
	"kpo.dev/kpo/test/netns"
)

// Config describes one node.
type Config struct {
	NodeName string
	// Index is the node's number N in the address plan: it has 198.51.100.N and
	// 2001:db8:1::N on the node network and runs pods in 10.244.N.0/24 and
	// fd10:244:0:N::/64.
	Index int
	// NS is the node's network namespace (netns.LAN.AddNode).
	NS   *netns.NS
	Kube kubernetes.Interface
	// Images maps image names to local binaries.
	Images Images
	// Dir holds the node's pod files (volumes) and container logs.
	Dir    string
	Ledger *procs.Ledger
	// Labels are added to the Node's (e.g. a topology zone).
	Labels map[string]string
	Logf   func(format string, args ...any)
}

// Runtime is one node's kubelet stand-in.
type Runtime struct {
	cfg     Config
	ips     *ipPool
	mu      sync.Mutex
	workers map[string]*podWorker // by pod UID
	wg      sync.WaitGroup
}

// New returns the runtime of one node; Run starts it.
func New(cfg Config) *Runtime {
	if cfg.Logf == nil {
		cfg.Logf = func(string, ...any) {}
	}
	return &Runtime{cfg: cfg, ips: newIPPool(cfg.Index), workers: map[string]*podWorker{}}
}

// Version is what the Node reports as its kubelet version.
const Version = "v1.37.1-kpo-noderuntime"

// leaseDuration and heartbeat follow kubelet's defaults (40 s lease renewed
// every 10 s); the Node's status is refreshed every minute.
const (
	leaseDuration   = 40 * time.Second
	leaseRenewEvery = 10 * time.Second
	statusEvery     = time.Minute
)

// Run registers the node, keeps it alive, and runs its pods until ctx ends;
// then it stops every container (SIGTERM, then SIGKILL after 5 s) and returns.
func (r *Runtime) Run(ctx context.Context) error {
	if err := r.register(ctx); err != nil {
		return fmt.Errorf("registering node %s: %w", r.cfg.NodeName, err)
	}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		r.heartbeat(ctx)
	}()
	err := r.runPods(ctx)
	r.stopAll(5 * time.Second)
	r.wg.Wait()
	return err
}

func (r *Runtime) nodeIPs() []string {
	return []string{netns.NodeAddr4(r.cfg.Index), netns.NodeAddr6(r.cfg.Index)}
}

func (r *Runtime) register(ctx context.Context) error {
	labels := map[string]string{
		corev1.LabelHostname:   r.cfg.NodeName,
		corev1.LabelOSStable:   "linux",
		corev1.LabelArchStable: "amd64",
	}
	for k, v := range r.cfg.Labels {
		labels[k] = v
	}
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: r.cfg.NodeName, Labels: labels},
		Spec: corev1.NodeSpec{
			PodCIDR:  netns.PodCIDR4(r.cfg.Index),
			PodCIDRs: []string{netns.PodCIDR4(r.cfg.Index), netns.PodCIDR6(r.cfg.Index)},
		},
	}
	nodes := r.cfg.Kube.CoreV1().Nodes()
	created, err := nodes.Create(ctx, node, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		// A restarted node keeps its object, as kubelet's does; labels are refreshed.
		created, err = nodes.Get(ctx, r.cfg.NodeName, metav1.GetOptions{})
		if err == nil {
			for k, v := range labels {
				created.Labels[k] = v
			}
			created, err = nodes.Update(ctx, created, metav1.UpdateOptions{})
		}
	}
	if err != nil {
		return err
	}
	return r.updateNodeStatus(ctx, created)
}

func (r *Runtime) updateNodeStatus(ctx context.Context, node *corev1.Node) error {
	now := metav1.Now()
	capacity := corev1.ResourceList{
		corev1.ResourceCPU:    resource.MustParse("2"),
		corev1.ResourceMemory: resource.MustParse("4Gi"),
		corev1.ResourcePods:   resource.MustParse("110"),
	}
	cond := func(t corev1.NodeConditionType, s corev1.ConditionStatus, reason, msg string) corev1.NodeCondition {
		c := corev1.NodeCondition{Type: t, Status: s, Reason: reason, Message: msg, LastHeartbeatTime: now, LastTransitionTime: now}
		for _, old := range node.Status.Conditions {
			if old.Type == t && old.Status == s {
				c.LastTransitionTime = old.LastTransitionTime
			}
		}
		return c
	}
	node.Status = corev1.NodeStatus{
		Capacity:    capacity,
		Allocatable: capacity,
		Conditions: []corev1.NodeCondition{
			cond(corev1.NodeReady, corev1.ConditionTrue, "KubeletReady", "kpo node runtime is posting ready status"),
			cond(corev1.NodeMemoryPressure, corev1.ConditionFalse, "KubeletHasSufficientMemory", ""),
			cond(corev1.NodeDiskPressure, corev1.ConditionFalse, "KubeletHasNoDiskPressure", ""),
			cond(corev1.NodePIDPressure, corev1.ConditionFalse, "KubeletHasSufficientPID", ""),
		},
		Addresses: []corev1.NodeAddress{
			{Type: corev1.NodeInternalIP, Address: netns.NodeAddr4(r.cfg.Index)},
			{Type: corev1.NodeInternalIP, Address: netns.NodeAddr6(r.cfg.Index)},
			{Type: corev1.NodeHostName, Address: r.cfg.NodeName},
		},
		NodeInfo: corev1.NodeSystemInfo{
			KubeletVersion:          Version,
			OperatingSystem:         "linux",
			Architecture:            "amd64",
			ContainerRuntimeVersion: "kpo-noderuntime://" + Version,
		},
	}
	_, err := r.cfg.Kube.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{})
	return err
}

// heartbeat renews the node's lease (what the node-lifecycle controller
// watches) and refreshes the Node's Ready condition.
func (r *Runtime) heartbeat(ctx context.Context) {
	leaseTick := time.NewTicker(leaseRenewEvery)
	defer leaseTick.Stop()
	statusTick := time.NewTicker(statusEvery)
	defer statusTick.Stop()
	for {
		if err := r.renewLease(ctx); err != nil && ctx.Err() == nil {
			r.cfg.Logf("%s: lease: %v", r.cfg.NodeName, err)
		}
		select {
		case <-ctx.Done():
			return
		case <-leaseTick.C:
		case <-statusTick.C:
			node, err := r.cfg.Kube.CoreV1().Nodes().Get(ctx, r.cfg.NodeName, metav1.GetOptions{})
			if err == nil {
				err = r.updateNodeStatus(ctx, node)
			}
			if err != nil && ctx.Err() == nil {
				r.cfg.Logf("%s: node status: %v", r.cfg.NodeName, err)
			}
		}
	}
}

func (r *Runtime) renewLease(ctx context.Context) error {
	leases := r.cfg.Kube.CoordinationV1().Leases(corev1.NamespaceNodeLease)
	now := metav1.NowMicro()
	lease, err := leases.Get(ctx, r.cfg.NodeName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		node, err := r.cfg.Kube.CoreV1().Nodes().Get(ctx, r.cfg.NodeName, metav1.GetOptions{})
		if err != nil {
			return err
		}
		lease = &coordinationv1.Lease{
			ObjectMeta: metav1.ObjectMeta{Name: r.cfg.NodeName, Namespace: corev1.NamespaceNodeLease,
				OwnerReferences: []metav1.OwnerReference{{APIVersion: "v1", Kind: "Node", Name: node.Name, UID: node.UID}}},
			Spec: coordinationv1.LeaseSpec{HolderIdentity: ptr.To(r.cfg.NodeName),
				LeaseDurationSeconds: ptr.To(int32(leaseDuration.Seconds())), RenewTime: &now},
		}
		_, err = leases.Create(ctx, lease, metav1.CreateOptions{})
		return err
	}
	if err != nil {
		return err
	}
	lease.Spec.RenewTime = &now
	_, err = leases.Update(ctx, lease, metav1.UpdateOptions{})
	return err
}
