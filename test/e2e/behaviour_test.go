package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
	"kpo.dev/kpo/hack/netns"
	"kpo.dev/kpo/test/behaviour"
	"kpo.dev/kpo/test/testnet"
)

// The table's roles on the two-node test network: node-1 is the node under
// test with three pods, the remote pod is node-2's first.
func tableHosts(tn *testnet.Net) (behaviour.Hosts, map[behaviour.Role]*netns.NS, map[string]behaviour.Role) {
	n1, n2 := tn.Nodes[0], tn.Nodes[1]
	pods := map[behaviour.Role]*testnet.Pod{behaviour.PodA: n1.Pods[0], behaviour.PodB: n1.Pods[1],
		behaviour.ClientPod: n1.Pods[2], behaviour.Remote: n2.Pods[0]}
	h := behaviour.Hosts{
		behaviour.Node:        {IP4: n1.IP4, IP6: n1.IP6},
		behaviour.Client:      {IP4: "198.51.100.200", IP6: "2001:db8:1::200"},
		behaviour.OtherClient: {IP4: "198.51.100.201", IP6: "2001:db8:1::201"},
	}
	byRole := map[behaviour.Role]*netns.NS{behaviour.Node: n1.NS, behaviour.Client: tn.Client, behaviour.OtherClient: tn.Client}
	roleOf := map[string]behaviour.Role{}
	for r, p := range pods {
		h[r] = behaviour.Host{IP4: p.IP4, IP6: p.IP6, NodeName: p.Node.Name}
		byRole[r] = p.NS
		roleOf[p.Name] = r
	}
	return h, byRole, roleOf
}

// runTable runs the behaviour table against the agents of tn through the
// API server: the table's Services and EndpointSlices are applied there,
// probes are real connections that may take settle to hold.
func runTable(t *testing.T, mode kpov1.Mode, tn *testnet.Net) {
	h, byRole, roleOf := tableHosts(tn)
	tn.Client.AddAddr(t, "eth0", h[behaviour.OtherClient].IP4+"/24")
	tn.Client.AddAddr(t, "eth0", h[behaviour.OtherClient].IP6+"/64")
	dial := behaviour.NamespaceDialer(h, byRole)
	byName := func(from behaviour.Role, network, addr string, timeout time.Duration) (behaviour.Reply, error) {
		r, err := dial(from, network, addr, timeout)
		if err == nil {
			r.Server = roleOf[string(r.Server)]
		}
		return r, err
	}
	t.Cleanup(func() { deleteTableObjects(t) })
	behaviour.Run(t, behaviour.Level{Mode: mode, Hosts: h, Apply: apiApply(h),
		Check: behaviour.DialCheck(h, byName, behaviour.Timing{Settle: settle, Dial: dialTimeout})}, behaviour.Table())
}

// apiApply makes the API server hold the services (server-side apply, as
// the table says them) and deletes those of earlier calls it no longer
// holds, with their EndpointSlices.
func apiApply(h behaviour.Hosts) func(t *testing.T, services []behaviour.Service) {
	held := map[string]bool{}
	return func(t *testing.T, services []behaviour.Service) {
		t.Helper()
		ctx := context.Background()
		ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: behaviour.Namespace}}
		if err := api.Client.Create(ctx, ns); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
		want := map[string]bool{}
		for _, s := range services {
			svc, slices := s.Objects(h)
			objs := []client.Object{svc}
			for _, sl := range slices {
				objs = append(objs, sl)
			}
			for _, o := range objs {
				if err := serverSideApply(ctx, o); err != nil {
					t.Fatalf("applying %s: %v", o.GetName(), err)
				}
			}
			want[s.Name] = true
		}
		for name := range held {
			if want[name] {
				continue
			}
			if err := api.Client.Delete(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: behaviour.Namespace, Name: name}}); err != nil {
				t.Fatal(err)
			}
			if err := api.Client.DeleteAllOf(ctx, &discoveryv1.EndpointSlice{}, client.InNamespace(behaviour.Namespace),
				client.MatchingLabels{discoveryv1.LabelServiceName: name}); err != nil {
				t.Fatal(err)
			}
		}
		held = want
	}
}

// deleteTableObjects deletes the table's Services and EndpointSlices, so that
// the package's other tests can allocate the ClusterIPs the table used.
func deleteTableObjects(t *testing.T) {
	ctx := context.Background()
	svcs := &corev1.ServiceList{}
	if err := api.Client.List(ctx, svcs, client.InNamespace(behaviour.Namespace)); err != nil {
		t.Errorf("listing the table's Services: %v", err)
		return
	}
	for i := range svcs.Items {
		if err := api.Client.Delete(ctx, &svcs.Items[i]); err != nil && !apierrors.IsNotFound(err) {
			t.Errorf("deleting %s: %v", svcs.Items[i].Name, err)
		}
	}
	if err := api.Client.DeleteAllOf(ctx, &discoveryv1.EndpointSlice{}, client.InNamespace(behaviour.Namespace)); err != nil {
		t.Errorf("deleting the table's EndpointSlices: %v", err)
	}
}

// serverSideApply applies o as the table's field manager, and a Service's
// status (its load-balancer ingress) through the status subresource.
func serverSideApply(ctx context.Context, o client.Object) error {
	gvk, err := api.Client.GroupVersionKindFor(o)
	if err != nil {
		return err
	}
	u, err := runtime.DefaultUnstructuredConverter.ToUnstructured(o)
	if err != nil {
		return err
	}
	status := u["status"]
	delete(u, "status")
	obj := &unstructured.Unstructured{Object: u}
	obj.SetGroupVersionKind(gvk)
	if err := api.Client.Apply(ctx, client.ApplyConfigurationFromUnstructured(obj), client.FieldOwner("behaviour"), client.ForceOwnership); err != nil {
		return err
	}
	if svc, ok := o.(*corev1.Service); !ok || len(svc.Status.LoadBalancer.Ingress) == 0 {
		return nil
	}
	st := &unstructured.Unstructured{Object: map[string]any{"status": status}}
	st.SetGroupVersionKind(gvk)
	st.SetNamespace(o.GetNamespace())
	st.SetName(o.GetName())
	if err := api.Client.Status().Apply(ctx, client.ApplyConfigurationFromUnstructured(st), client.FieldOwner("behaviour"), client.ForceOwnership); err != nil {
		return fmt.Errorf("status: %w", err)
	}
	return nil
}
