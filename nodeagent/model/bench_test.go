package model

import (
	"fmt"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

// benchInput is n Services of one port, each with one EndpointSlice of e
// ready endpoints on another node: the objects of the side-by-side benchmark
// (test/testnet.Loader), as the informers hand them over.
func benchInput(n, e int) ([]*corev1.Service, [][]*discoveryv1.EndpointSlice) {
	svcs := make([]*corev1.Service, n)
	ess := make([][]*discoveryv1.EndpointSlice, n)
	for i := range n {
		name := fmt.Sprintf("svc-%d", i)
		ip := fmt.Sprintf("10.96.%d.%d", 100+i/250, 1+i%250)
		svcs[i] = &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: "bench", Name: name},
			Spec: corev1.ServiceSpec{ClusterIP: ip, ClusterIPs: []string{ip},
				Ports: []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}}},
		}
		s := &discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Namespace: "bench", Name: name},
			AddressType: discoveryv1.AddressTypeIPv4,
			Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](8080), Protocol: ptr.To(corev1.ProtocolTCP)}},
		}
		for j := range e {
			k := i*e + j
			s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{
				Addresses: []string{fmt.Sprintf("10.244.%d.%d", 2+k/250%250, 1+k%250)},
				NodeName:  ptr.To("node-remote"),
			})
		}
		ess[i] = []*discoveryv1.EndpointSlice{s}
	}
	return svcs, ess
}

// BenchmarkBuildServicePorts is the model's share of a cold start: every
// ServicePort built from n Services × e endpoints.
func BenchmarkBuildServicePorts(b *testing.B) {
	for _, size := range []struct{ n, e int }{{1000, 50}, {5000, 50}} {
		b.Run(fmt.Sprintf("%dx%d", size.n, size.e), func(b *testing.B) {
			svcs, ess := benchInput(size.n, size.e)
			node := NodeContext{Name: "node-1", Zone: "a"}
			b.ReportAllocs()
			for b.Loop() {
				for i, svc := range svcs {
					if sps, _ := BuildServicePorts(svc, ess[i], node); len(sps) != 1 || len(sps[0].ClusterEndpoints) != size.e {
						b.Fatalf("%s: %d ports", svc.Name, len(sps))
					}
				}
			}
		})
	}
}
