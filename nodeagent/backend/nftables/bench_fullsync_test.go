package nftables

import (
	"context"
	"fmt"
	"slices"
	"testing"

	"kpo.dev/kpo/nodeagent/backend/backendtest"
	"kpo.dev/kpo/nodeagent/model"
)

// BenchmarkKernelFullSyncVia: the first sync of a new backend into an empty
// namespace, with the production kernel (service objects over netlink,
// base_apart.go) and with nft alone (one `nft -f`, as full syncs were
// before); then a warm full sync over the same table. Sizes: services ×
// endpoints, every service with a NodePort up to 2000.
func BenchmarkKernelFullSyncVia(b *testing.B) {
	for _, c := range []struct{ services, eps int }{{1000, 50}, {10000, 2}, {5000, 50}} {
		for _, via := range []string{"netlink", "nft"} {
			b.Run(fmt.Sprintf("%dx%d/%s", c.services, c.eps, via), func(b *testing.B) {
				ns := benchNode(b)
				s := bigSnapshot(c.services, c.eps)
				for b.Loop() {
					be, spy := newSpiedBackend(b, ns)
					if via == "nft" {
						be.kernel = spy
					}
					if err := ns.Do(func() error { _, err := backendtest.Sync(context.Background(), be, s, true); return err }); err != nil {
						b.Fatal(err)
					}
					b.StopTimer()
					if err := ns.Do(func() error { return be.Cleanup(context.Background()) }); err != nil {
						b.Fatal(err)
					}
					b.StartTimer()
				}
			})
		}
	}
}

// BenchmarkKernelPartialSync1kx50: one endpoint of one service changes, 1k×50
// services programmed (the many-endpoints shape), over netlink.
func BenchmarkKernelPartialSync1kx50(b *testing.B) {
	ns := benchNode(b)
	s := bigSnapshot(1000, 50)
	be := benchBackend(b, ns)
	if err := ns.Do(func() error { _, err := backendtest.Sync(context.Background(), be, s, true); return err }); err != nil {
		b.Fatal(err)
	}
	k := key("default", "svc500", model.IPv4)
	orig := s.Services[k]
	alt := *orig
	alt.ClusterEndpoints = append(slices.Clone(orig.ClusterEndpoints[1:]), ep("10.250.0.1", 8080, false))
	alt.ExternalEndpoints = alt.ClusterEndpoints
	snaps := []*model.Snapshot{withSnap(s, &alt), withSnap(s, orig)}
	i := 0
	for b.Loop() {
		snap := snaps[i%2]
		i++
		if err := ns.Do(func() error {
			res, err := backendtest.Sync(context.Background(), be, snap, false)
			if err == nil && res.ServicePortsWritten != 1 {
				err = fmt.Errorf("wrote %d service ports", res.ServicePortsWritten)
			}
			return err
		}); err != nil {
			b.Fatal(err)
		}
	}
}
