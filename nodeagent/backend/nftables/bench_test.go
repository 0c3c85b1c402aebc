package nftables

import (
	"context"
	"fmt"
	"testing"

	"kpo.dev/kpo/hack/netns"
	"kpo.dev/kpo/nodeagent/backend/backendtest"
	"kpo.dev/kpo/nodeagent/model"
)

// BenchmarkRenderService is the pure rendering cost of one service port with
// two endpoints and a NodePort.
func BenchmarkRenderService(b *testing.B) {
	s := bigSnapshot(1000, 2)
	rc := newRenderCtx(model.IPv4, &model.NodeInfo{}, false)
	rc.isLocal, rc.notLocal = localMatch(rc.fi, &testNode, model.IPv4)
	sps := make([]*model.ServicePort, 0, len(s.Services))
	for _, sp := range s.Services {
		sps = append(sps, sp)
	}
	i := 0
	for b.Loop() {
		renderService(rc, sps[i%len(sps)])
		i++
	}
}

// BenchmarkFakeFullSync1k is rendering plus transaction building for 1k×2
// services, applied to the fake (no kernel). (The fake copies its tables per
// transaction and checks references linearly: it is not a model of kernel cost.)
func BenchmarkFakeFullSync1k(b *testing.B) {
	s := bigSnapshot(1000, 2)
	for b.Loop() {
		k := NewFakeKernel()
		be, _ := New(testSettings, []model.Family{model.IPv4}, WithKernel(k))
		if _, err := backendtest.Sync(context.Background(), be, s, true); err != nil {
			b.Fatal(err)
		}
	}
}

func benchNode(b *testing.B) *netns.NS {
	netns.Skip(b)
	return netns.New(b, "bench")
}

func benchBackend(b *testing.B, ns *netns.NS) *Backend {
	var be *Backend
	if err := ns.Do(func() error {
		var err error
		be, err = New(testSettings, []model.Family{model.IPv4})
		return err
	}); err != nil {
		b.Fatal(err)
	}
	return be
}

// BenchmarkKernelColdFullSync: the first sync of a new backend into an empty
// namespace (the table is deleted between iterations, untimed).
func BenchmarkKernelColdFullSync(b *testing.B) {
	for _, c := range []struct{ services, eps int }{{1000, 2}, {10000, 2}, {1000, 50}} {
		b.Run(fmt.Sprintf("%dx%d", c.services, c.eps), func(b *testing.B) {
			ns := benchNode(b)
			s := bigSnapshot(c.services, c.eps)
			for b.Loop() {
				backendtest.ColdSync(b, ns.Do, benchBackend(b, ns), s)
			}
		})
	}
}

// BenchmarkKernelWarmFullSync: a full (drift-repair) sync over an identical,
// already programmed table.
func BenchmarkKernelWarmFullSync10k(b *testing.B) {
	ns := benchNode(b)
	s := bigSnapshot(10000, 2)
	be := benchBackend(b, ns)
	for b.Loop() {
		if err := ns.Do(func() error { _, err := backendtest.Sync(context.Background(), be, s, true); return err }); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkKernelPartialSync10k: one endpoint of one service changes, 10k×2
// services programmed; applied over netlink (the default) or with nft.
func BenchmarkKernelPartialSync10k(b *testing.B) {
	for _, via := range []string{"netlink", "nft"} {
		b.Run(via, func(b *testing.B) {
			ns := benchNode(b)
			s := bigSnapshot(10000, 2)
			be, spy := newSpiedBackend(b, ns)
			if via == "nft" {
				// nft alone, as the kernel was before partial syncs went over netlink.
				be.kernel = spy
			}
			if err := ns.Do(func() error { _, err := backendtest.Sync(context.Background(), be, s, true); return err }); err != nil {
				b.Fatal(err)
			}
			k := key("default", "svc5000", model.IPv4)
			orig := s.Services[k]
			alt := *orig
			alt.ClusterEndpoints = []model.Endpoint{orig.ClusterEndpoints[0], ep("10.250.0.1", 8080, false)}
			alt.ExternalEndpoints = alt.ClusterEndpoints
			snaps := []*model.Snapshot{withSnap(s, &alt), withSnap(s, orig)}
			i := 0
			for b.Loop() {
				snap := snaps[i%2]
				i++
				if err := ns.Do(func() error {
					res, err := backendtest.Sync(context.Background(), be, snap, false)
					if err == nil && (res.ServicePortsWritten != 1 || (via == "netlink") != (spy.partial == 0)) {
						err = fmt.Errorf("wrote %d service ports, %d partial nft transactions", res.ServicePortsWritten, spy.partial)
					}
					return err
				}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
