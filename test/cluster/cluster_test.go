package cluster_test

import (
	"context"
	"fmt"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
	"kpo.dev/kpo/hack/apiserver"
	"kpo.dev/kpo/hack/cluster"
	"kpo.dev/kpo/hack/netns"
	"kpo.dev/kpo/test/testnet"
)

// TestServiceAnswersThroughTheProxy: the demo app's Service answers from a
// node, from a pod and from the external client, over TCP and UDP, IPv4 and
// IPv6, and every replica is reached.
func TestServiceAnswersThroughTheProxy(t *testing.T) {
	c := need(t)
	pods, err := c.Kube.CoreV1().Pods("demo").List(context.Background(), metav1.ListOptions{LabelSelector: "app=echo"})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{}
	for _, p := range pods.Items {
		want[p.Name] = true
	}
	from := map[string]*netns.NS{"node-3": c.Nodes[2].NS, "pod": clientPod(t, c), "external": c.External}
	targets := []string{net.JoinHostPort(svc.Spec.ClusterIP, "80"), net.JoinHostPort(netns.NodeAddr4(1), "30080")}
	if len(svc.Spec.ClusterIPs) > 1 {
		targets = append(targets, net.JoinHostPort(svc.Spec.ClusterIPs[1], "80"))
	}
	for name, ns := range from {
		for _, addr := range targets {
			for _, network := range []string{"tcp", "udp"} {
				if name == "external" && addr != targets[1] {
					continue // the external client reaches the NodePort
				}
				seen := map[string]bool{}
				apiserver.Eventually(t, 30*time.Second, func() error {
					r, err := ns.Dial(network, addr, 2*time.Second)
					if err != nil {
						return fmt.Errorf("%s %s from %s: %w", network, addr, name, err)
					}
					seen[r.Server] = true
					if len(seen) < len(want) {
						return fmt.Errorf("%s %s from %s: answered by %v of %v", network, addr, name, seen, want)
					}
					return nil
				})
			}
		}
	}
}

// TestModeSwitchUnderLoad edits spec.mode nftables → iptables → nftables
// under a steady load of new connections (TCP and UDP, from a pod and from
// the external client): no request fails, the roll keeps at most
// maxUnavailable (1, the sample's) nodes without a ready agent, and each
// node's kernel ends up holding only the new mode's objects. It logs each
// node's switch time and the time until the CR is Available again.
func TestModeSwitchUnderLoad(t *testing.T) {
	c := need(t)
	ls := loads(t, c)
	for _, mode := range []kpov1.Mode{kpov1.ModeIPTables, kpov1.ModeNFTables} {
		// A roll starts from ready agents: the DaemonSet controller replaces
		// unavailable pods without counting them against maxUnavailable.
		waitAgents(t, c)
		watch := watchRoll(c, mode)
		setMode(t, c, mode)
		if _, err := c.WaitProxyAvailable(context.Background(), "default", mode, settle); err != nil {
			t.Fatal(err)
		}
		available := time.Since(watch.began)
		switched, maxUnavailable, worst := watch.finish(c)
		var perNode []string
		for _, n := range c.Nodes {
			perNode = append(perNode, fmt.Sprintf("%s %.1fs", n.Name, switched[n.Name].Seconds()))
		}
		t.Logf("switch to %s: nodes synced in the new mode after %s; CR Available after %.1fs; at most %d node(s) without a ready agent",
			mode, strings.Join(perNode, ", "), available.Seconds(), maxUnavailable)
		if maxUnavailable > 1 {
			t.Errorf("switch to %s: %d nodes were without a ready agent at once (%s); maxUnavailable is 1", mode, maxUnavailable, worst)
		}
		if len(switched) != len(c.Nodes) {
			t.Errorf("switch to %s: only %v reported the new mode", mode, switched)
		}
		expectOnlyMode(t, c, mode)
	}
	stopLoads(t, "across nftables → iptables → nftables", ls)
}

// TestUnavailableModeDegrades asks for ipvs on nodes whose kernel has no IPVS:
// every node keeps serving with the mode it ran, keeps those rules in sync (a
// Service created meanwhile answers), and the CR says Degraded with the
// reason; switching back makes it Available.
func TestUnavailableModeDegrades(t *testing.T) {
	c := need(t)
	if ok, _ := netns.KernelHasIPVS(); ok {
		t.Skip("this kernel has IPVS")
	}
	ls := loads(t, c)
	setMode(t, c, kpov1.ModeIPVS)
	apiserver.Eventually(t, settle, func() error {
		var pc kpov1.ProxyConfiguration
		if err := c.Client.Get(context.Background(), client.ObjectKey{Name: "default"}, &pc); err != nil {
			return err
		}
		deg := apimeta.FindStatusCondition(pc.Status.Conditions, kpov1.ConditionDegraded)
		if pc.Status.ObservedGeneration != pc.Generation || deg == nil || deg.Status != metav1.ConditionTrue {
			return fmt.Errorf("not Degraded yet: %+v", deg)
		}
		if len(pc.Status.FailingNodes) != len(c.Nodes) {
			return fmt.Errorf("failing nodes %+v", pc.Status.FailingNodes)
		}
		for _, f := range pc.Status.FailingNodes {
			if f.Reason != kpov1.NodeReasonIPVSUnavailable {
				return fmt.Errorf("node %s: reason %s, want %s", f.Node, f.Reason, kpov1.NodeReasonIPVSUnavailable)
			}
		}
		if pc.Status.Mode != string(kpov1.ModeNFTables) {
			return fmt.Errorf("nodes run %q, want the previous mode (nftables)", pc.Status.Mode)
		}
		t.Logf("Degraded: %s: %s", deg.Reason, deg.Message)
		return nil
	})
	expectOnlyMode(t, c, kpov1.ModeNFTables)

	// The previous mode's rules stay in sync: a new Service answers.
	extra := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "echo-while-degraded", Namespace: "demo"},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "echo"},
			Ports: []corev1.ServicePort{{Name: "tcp", Port: 8081, TargetPort: intstr.FromInt32(8080)}}},
	}
	if err := c.Client.Create(context.Background(), extra); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Client.Delete(context.Background(), extra) })
	apiserver.Eventually(t, settle, func() error {
		_, err := c.Nodes[1].NS.Dial("tcp", net.JoinHostPort(extra.Spec.ClusterIP, "8081"), 2*time.Second)
		return err
	})

	setMode(t, c, kpov1.ModeNFTables)
	if _, err := c.WaitProxyAvailable(context.Background(), "default", kpov1.ModeNFTables, settle); err != nil {
		t.Fatal(err)
	}
	stopLoads(t, "while ipvs was asked for and unavailable", ls)
}

// TestRestartsUnderLoad restarts the operator (its pod deleted), SIGKILLs an
// agent (kubelet restarts it) and restarts kube-apiserver, each under
// the steady load: no request fails, and the cluster converges after each (a
// scaled Deployment's new endpoint is reached).
func TestRestartsUnderLoad(t *testing.T) {
	c := need(t)
	ctx := context.Background()
	ls := loads(t, c)

	// The operator: delete its pod; the ReplicaSet makes a new one.
	if err := c.Client.DeleteAllOf(ctx, &corev1.Pod{}, client.InNamespace("kpo-system"),
		client.MatchingLabels{"app.kubernetes.io/name": "kpo-operator"}); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitDeployment(ctx, "kpo-system", "kpo-operator", settle); err != nil {
		t.Fatal(err)
	}

	// An agent: SIGKILL its process (kubelet restarts the container).
	agent := agentPod(t, c, c.Nodes[0].Name)
	pid, err := c.ContainerPID(ctx, c.Nodes[0].Name, agent.Status.ContainerStatuses[0].ContainerID)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	apiserver.Eventually(t, settle, func() error {
		p := agentPod(t, c, c.Nodes[0].Name)
		if cs := p.Status.ContainerStatuses[0]; cs.RestartCount == 0 || !cs.Ready {
			return fmt.Errorf("agent on %s: restarts %d, ready %v", c.Nodes[0].Name, cs.RestartCount, cs.Ready)
		}
		return nil
	})

	// The API server: SIGTERM and start again.
	if err := c.RestartAPIServer(ctx); err != nil {
		t.Fatal(err)
	}

	// Converged: the CR is Available, and a fourth replica is reached.
	if _, err := c.WaitProxyAvailable(ctx, "default", kpov1.ModeNFTables, settle); err != nil {
		t.Fatal(err)
	}
	scale(t, c, 4)
	t.Cleanup(func() { scale(t, c, 3) })
	if err := c.WaitReadyEndpoints(ctx, "demo", "echo", 4, settle); err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	apiserver.Eventually(t, settle, func() error {
		r, err := c.Nodes[2].NS.Dial("tcp", net.JoinHostPort(svc.Spec.ClusterIP, "80"), 2*time.Second)
		if err == nil {
			seen[r.Server] = true
		}
		if len(seen) < 4 {
			return fmt.Errorf("answered by %v, want 4 pods", seen)
		}
		return nil
	})
	stopLoads(t, "across operator, agent and API server restarts", ls)
}

// TestZZDeletionCleansNodes (last: it removes kpo) deletes the
// ProxyConfiguration: the nodes' rules are gone by the time the DaemonSet is,
// and then everything the CR owned is gone.
func TestZZDeletionCleansNodes(t *testing.T) {
	c := need(t)
	ctx := context.Background()
	pc := &kpov1.ProxyConfiguration{ObjectMeta: metav1.ObjectMeta{Name: "default"}}
	if err := c.Client.Delete(ctx, pc); err != nil {
		t.Fatal(err)
	}
	ds := &appsv1.DaemonSet{}
	apiserver.Eventually(t, settle, func() error {
		err := c.Client.Get(ctx, client.ObjectKey{Namespace: "kpo-system", Name: "kpo-agent-default"}, ds)
		if !apierrors.IsNotFound(err) {
			return fmt.Errorf("DaemonSet still there (%v)", err)
		}
		return nil
	})
	// No agent is left to remove anything: what the kernels hold now is what
	// the cleanup phase left.
	for _, n := range c.Nodes {
		objects, err := testnet.KpoObjects(n.NS)
		if err != nil {
			t.Fatal(err)
		}
		if len(objects) > 0 {
			t.Errorf("%s still holds %v after the DaemonSet went", n.Name, objects)
		}
	}
	apiserver.Eventually(t, settle, func() error {
		if err := c.Client.Get(ctx, client.ObjectKey{Name: "default"}, pc); !apierrors.IsNotFound(err) {
			return fmt.Errorf("ProxyConfiguration still there (%v)", err)
		}
		for _, obj := range []client.Object{&corev1.ConfigMap{}, &corev1.ServiceAccount{}} {
			if err := c.Client.Get(ctx, client.ObjectKey{Namespace: "kpo-system", Name: "kpo-agent-default"}, obj); !apierrors.IsNotFound(err) {
				return fmt.Errorf("%T kpo-agent-default still there (%v)", obj, err)
			}
		}
		return nil
	})
}

// agentPod is the running agent pod on node.
func agentPod(t *testing.T, c *cluster.Cluster, node string) *corev1.Pod {
	t.Helper()
	var pods corev1.PodList
	if err := c.Client.List(context.Background(), &pods, client.InNamespace("kpo-system"),
		client.MatchingLabels{"app.kubernetes.io/name": "kpo-agent"}); err != nil {
		t.Fatal(err)
	}
	for i := range pods.Items {
		p := &pods.Items[i]
		if p.Spec.NodeName == node && p.DeletionTimestamp == nil && len(p.Status.ContainerStatuses) > 0 {
			return p
		}
	}
	t.Fatalf("no agent pod on %s:\n%s", node, c.DescribePods(context.Background()))
	return nil
}

// scale sets the demo app's replicas.
func scale(t *testing.T, c *cluster.Cluster, n int) {
	t.Helper()
	if _, err := c.Kubectl(context.Background(), nil, "-n", "demo", "scale", "deployment/echo", fmt.Sprintf("--replicas=%d", n)); err != nil {
		t.Error(err)
	}
}
