//go:build vmtest

package inside

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"kpo.dev/kpo/hack/netns"
	"kpo.dev/kpo/nodeagent/backend/backendtest"
	"kpo.dev/kpo/nodeagent/backend/ipvs"
	"kpo.dev/kpo/nodeagent/model"
)

// BenchmarkSync records the IPVS figures of the issue inside the VM (TCG
// emulation, so slower than hardware): a cold full sync of N ClusterIP services
// × 2 endpoints, and the netlink operations and time of a partial sync after one
// endpoint change. Run with KPO_VM_BENCH=1 go test -v -run TestIPVSInVM ./test/vm/.
func BenchmarkSync(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		b.Run(fmt.Sprintf("%dx2", n), func(b *testing.B) {
			for range b.N {
				benchSync(b, n)
			}
		})
	}
}

func benchSync(b *testing.B, services int) {
	node := netns.New(b, "bench")
	be, err := ipvs.New(settings, ipvs.Config{}, []model.Family{model.IPv4})
	if err != nil {
		b.Fatal(err)
	}
	snap := snapOf()
	var changed *model.ServicePort
	for i := range services {
		// Endpoints need not exist: IPVS programs destinations, it does not dial them.
		e1 := model.Endpoint{IP: netip.AddrFrom4([4]byte{10, 244, byte(2 + i/250), byte(1 + i%250)}), Port: 8080, Ready: true}
		e2 := model.Endpoint{IP: netip.AddrFrom4([4]byte{10, 245, byte(2 + i/250), byte(1 + i%250)}), Port: 8080, Ready: true}
		sp := svc(fmt.Sprintf("s%d", i), fmt.Sprintf("10.96.%d.%d", 100+i/250, 1+i%250), 80, e1, e2)
		snap.Services[sp.Key] = sp
		changed = sp
	}
	sync := func(s *model.Snapshot, full bool) time.Duration {
		start := time.Now()
		if err := node.Do(func() error { _, err := backendtest.Sync(context.Background(), be, s, full); return err }); err != nil {
			b.Fatal(err)
		}
		return time.Since(start)
	}
	cold := sync(snap, true)
	coldOps := be.Stats().NetlinkOps

	// One endpoint of one service changes: a partial sync of that pointer.
	next := snapOf()
	for k, sp := range snap.Services {
		next.Services[k] = sp
	}
	moved := *changed
	moved.ClusterEndpoints = []model.Endpoint{changed.ClusterEndpoints[0],
		{IP: netip.MustParseAddr("10.246.0.1"), Port: 8080, Ready: true}}
	moved.ExternalEndpoints = moved.ClusterEndpoints
	next.Services[moved.Key] = &moved
	partial := sync(next, false)
	partialOps := be.Stats().NetlinkOps

	b.ReportMetric(cold.Seconds(), "cold-s")
	b.ReportMetric(float64(coldOps), "cold-netlink-ops")
	b.ReportMetric(float64(partial.Microseconds())/1000, "partial-ms")
	b.ReportMetric(float64(partialOps), "partial-netlink-ops")
	_ = node.Do(func() error { return be.Cleanup(context.Background()) })
}
