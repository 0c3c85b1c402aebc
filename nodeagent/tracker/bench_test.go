package tracker

import (
	"fmt"
	"testing"
	"time"

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
