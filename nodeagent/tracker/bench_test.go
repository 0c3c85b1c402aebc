package tracker

import (
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"kpo.dev/kpo/nodeagent/model"
)

// benchTracker holds n Services of 50 endpoints each, every one with an
// externalIP (so that arbitration has claims to weigh), snapshotted once.
func benchTracker(b *testing.B, n int) *Tracker {
	b.Helper()
	tr := New(model.NodeContext{Name: "n", Zone: "a"}, nil)
	for i := range n {
		name := fmt.Sprintf("s%d", i)
		s := svc(name, fmt.Sprintf("10.96.%d.%d", i/250, 1+i%250))
		s.Spec.ExternalIPs = []string{fmt.Sprintf("203.0.%d.%d", i/250, 1+i%250)}
		tr.SetService(s)
		var ips []string
		for k := range 50 {
			ips = append(ips, fmt.Sprintf("10.244.%d.%d", k, 1+i%250))
		}
		tr.SetEndpointSlice(eps(name, time.Now(), ips...))
	}
	tr.Snapshot()
	return tr
}

// BenchmarkSnapshotFull10k rebuilds every Service (as a zone change does).
func BenchmarkSnapshotFull10k(b *testing.B) {
	tr := benchTracker(b, 10000)
	zones := []string{"a", "b"}
	for i := 0; b.Loop(); i++ {
		tr.SetNode(model.NodeContext{Name: "n", Zone: zones[i%2]})
		tr.Snapshot()
	}
}

// BenchmarkSnapshotPartial10k rebuilds one Service after an endpoint change.
func BenchmarkSnapshotPartial10k(b *testing.B) {
	tr := benchTracker(b, 10000)
	a := eps("s7", time.Now(), "10.244.1.5")
	c := eps("s7", time.Now(), "10.244.1.6")
	for i := 0; b.Loop(); i++ {
		if i%2 == 0 {
			tr.SetEndpointSlice(a)
		} else {
			tr.SetEndpointSlice(c)
		}
		tr.Snapshot()
	}
}

// BenchmarkSnapshotCold is the tracker's share of an agent's cold start:
// n Services of m endpoints each (one port, one EndpointSlice, no external
// addresses, as the side-by-side benchmark's) recorded and snapshotted once.
func BenchmarkSnapshotCold(b *testing.B) {
	for _, size := range [][2]int{{1000, 50}, {5000, 50}, {10000, 2}} {
		n, m := size[0], size[1]
		b.Run(fmt.Sprintf("%dx%d", n, m), func(b *testing.B) {
			svcs := make([]*corev1.Service, n)
			ess := make([]*discoveryv1.EndpointSlice, n)
			for i := range n {
				name := fmt.Sprintf("s%d", i)
				svcs[i] = svc(name, fmt.Sprintf("10.96.%d.%d", i/250, 1+i%250))
				ips := make([]string, m)
				for k := range ips {
					ips[k] = fmt.Sprintf("10.244.%d.%d", 2+(i*m+k)/250%250, 1+(i*m+k)%250)
				}
				ess[i] = eps(name, time.Now(), ips...)
			}
			b.ReportAllocs()
			for b.Loop() {
				tr := New(model.NodeContext{Name: "n", Zone: "a"}, nil)
				for i := range n {
					tr.SetService(svcs[i])
					tr.SetEndpointSlice(ess[i])
				}
				if snap, _ := tr.Snapshot(); len(snap.Services) != n {
					b.Fatalf("%d service ports", len(snap.Services))
				}
			}
		})
	}
}
