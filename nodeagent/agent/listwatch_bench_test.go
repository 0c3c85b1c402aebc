package agent

import (
	"fmt"
	"runtime"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

// BenchmarkSlimObjectRetained is what the informers' cache holds of 5k
// EndpointSlices of 50 endpoints (the side-by-side benchmark's objects, with
// the conditions and zone an EndpointSlice controller writes), decoded from
// protobuf as the informers decode them (the labels are those the
// EndpointSlice controller writes when the Service has none) and trimmed by slimObject: the heap
// they keep alive, in retained-MB.
func BenchmarkSlimObjectRetained(b *testing.B) {
	const n, e = 5000, 50
	wire := make([][]byte, n)
	for i := range n {
		s := &discoveryv1.EndpointSlice{
			ObjectMeta: metav1.ObjectMeta{Namespace: "bench", Name: fmt.Sprintf("svc-%d-abcde", i), Labels: map[string]string{
				discoveryv1.LabelServiceName: fmt.Sprintf("svc-%d", i), discoveryv1.LabelManagedBy: "endpointslice-controller.k8s.io"}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](8080), Protocol: ptr.To(corev1.ProtocolTCP)}},
		}
		for j := range e {
			k := i*e + j
			s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{
				Addresses:  []string{fmt.Sprintf("10.244.%d.%d", 2+k/250%250, 1+k%250)},
				NodeName:   ptr.To(fmt.Sprintf("node-%d", k%20)),
				Zone:       ptr.To(fmt.Sprintf("zone-%d", k%3)),
				Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true), Serving: ptr.To(true), Terminating: ptr.To(false)},
			})
		}
		var err error
		if wire[i], err = s.Marshal(); err != nil {
			b.Fatal(err)
		}
	}
	for b.Loop() {
		before := heapInUse()
		kept := make([]any, n)
		for i := range n {
			s := &discoveryv1.EndpointSlice{}
			if err := s.Unmarshal(wire[i]); err != nil {
				b.Fatal(err)
			}
			kept[i], _ = slimObject(s)
		}
		b.ReportMetric(float64(heapInUse()-before)/1e6, "retained-MB")
		runtime.KeepAlive(kept)
	}
}

func heapInUse() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}
