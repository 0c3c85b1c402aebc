package testnet_test

import (
	"context"
	"strconv"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"kpo.dev/kpo/hack/apiserver"
	"kpo.dev/kpo/test/testnet"
)

// The loader's objects, written over protobuf with the shortcuts of a fresh
// load, are what the proxies are measured on: Services whose ClusterIP the
// API server allocated (an IPAddress object points at the Service), and one
// EndpointSlice per Service with the asked-for endpoints, which a later
// Ensure grows or shrinks in place.
func TestLoaderObjects(t *testing.T) {
	if testing.Short() {
		t.Skip("starts kube-apiserver and etcd")
	}
	api, err := apiserver.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = api.Stop() })
	kube, err := kubernetes.NewForConfig(testnet.LoaderConfig(api.Config))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	l := testnet.NewLoader(kube)
	check := func(services, endpoints int) {
		t.Helper()
		for i := range services {
			svc, err := kube.CoreV1().Services(testnet.BenchNamespace).Get(ctx, "svc-"+strconv.Itoa(i), metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			ip := testnet.BenchServiceIP(i)
			if svc.Spec.ClusterIP != ip || svc.Spec.Type != corev1.ServiceTypeClusterIP ||
				len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].Port != 80 {
				t.Errorf("service %d: %+v", i, svc.Spec)
			}
			addr, err := kube.NetworkingV1().IPAddresses().Get(ctx, ip, metav1.GetOptions{})
			if err != nil {
				t.Fatalf("service %d: no IPAddress from the API server's allocator: %v", i, err)
			}
			if ref := addr.Spec.ParentRef; ref == nil || ref.Resource != "services" || ref.Name != svc.Name {
				t.Errorf("IPAddress %s: parent %+v", ip, ref)
			}
			slice, err := kube.DiscoveryV1().EndpointSlices(testnet.BenchNamespace).Get(ctx, svc.Name, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if len(slice.Endpoints) != endpoints || slice.Labels["kubernetes.io/service-name"] != svc.Name ||
				len(slice.Ports) != 1 || *slice.Ports[0].Port != 8080 {
				t.Errorf("slice %s: %d endpoints (want %d), labels %v, ports %+v", slice.Name, len(slice.Endpoints), endpoints,
					slice.Labels, slice.Ports)
			}
			for _, e := range slice.Endpoints {
				if len(e.Addresses) != 1 || e.NodeName == nil || *e.NodeName != testnet.RemoteNode {
					t.Errorf("slice %s: endpoint %+v", slice.Name, e)
				}
			}
		}
	}
	l.Ensure(t, 3, 2)
	check(3, 2)
	l.Ensure(t, 3, 5) // rewrites the existing slices
	check(3, 5)
	l.Ensure(t, 5, 2) // shrinks the first three, creates two
	check(5, 2)
}
