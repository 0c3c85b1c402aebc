package nftables

import (
	"context"
	"net/netip"
	"testing"

	"kpo.dev/kpo/hack/netns"
	"kpo.dev/kpo/nodeagent/backend/backendtest"
	"kpo.dev/kpo/nodeagent/model"
)

// syncParityCase is a backend sync (after an optional first one, which both
// must accept) that the fake and the kernel must both accept or both refuse.
// A partial second sync goes over netlink on the real kernel and through
// knftables on the fake: the same objWriter calls, two encodings.
type syncParityCase struct {
	name    string
	first   *model.Snapshot // synced fully first, when set
	snap    *model.Snapshot
	partial bool
	refuse  bool
}

func syncParityCases() []syncParityCase {
	ext := netip.MustParseAddr("203.0.113.5")
	withExt := func(sp *model.ServicePort, ip netip.Addr) *model.ServicePort {
		sp.ExternalIPs = []netip.Addr{ip}
		return sp
	}
	a := withExt(svc("a", "10.96.0.1", 80, ep("10.244.1.10", 8080, true)), ext)
	b := withExt(svc("b", "10.96.0.2", 80, ep("10.244.1.11", 8080, true)), ext)
	twin := withExt(svc("twin", "10.96.0.3", 80, ep("10.244.1.10", 8080, true)), ext)
	npA := svc("npa", "10.96.0.4", 80, ep("10.244.1.10", 8080, true))
	npA.NodePort = 30080
	npB := svc("npb", "10.96.0.5", 80, ep("10.244.1.11", 8080, true))
	npB.NodePort = 30080
	port70k := svc("p70k", "10.96.0.6", 80, ep("10.244.1.10", 70000, true))
	np70k := svc("np70k", "10.96.0.7", 80, ep("10.244.1.10", 8080, true))
	np70k.NodePort = 70000
	port0 := svc("port0", "10.96.0.8", 0, ep("10.244.1.10", 8080, true))
	mixed := svc("mixed", "fd10:96::9", 80, ep("10.244.1.10", 8080, true))
	vipClash := svc("clash", "10.96.0.10", 80, ep("10.244.1.11", 8080, true))
	onCluster := withExt(svc("oncluster", "10.96.0.11", 80, ep("10.244.1.10", 8080, true)), vipClash.ClusterIP)
	overlapping := model.NodeInfo{Name: "node", ClusterCIDRs: map[model.Family][]netip.Prefix{
		model.IPv4: {netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("10.244.1.0/24")}}}
	return []syncParityCase{
		// Issue 11: two Services sharing an external IP and port.
		{name: "two services share an external IP and port", snap: snapshot(testNode, a, b), refuse: true},
		{name: "a second service takes an external IP and port (partial)", first: snapshot(testNode, a), snap: snapshot(testNode, a, b), partial: true, refuse: true},
		// The same elements twice are no conflict to the kernel.
		{name: "two services share an external IP, port and endpoints", snap: snapshot(testNode, a, twin)},
		{name: "two services share a NodePort", snap: snapshot(testNode, npA, npB), refuse: true},
		{name: "an external IP is another service's ClusterIP", snap: snapshot(testNode, vipClash, onCluster), refuse: true},
		{name: "endpoint port 70000", snap: snapshot(testNode, port70k), refuse: true},
		{name: "endpoint port 70000 (partial)", first: snapshot(testNode, a), snap: snapshot(testNode, a, port70k), partial: true, refuse: true},
		{name: "NodePort 70000", snap: snapshot(testNode, np70k), refuse: true},
		{name: "service port 0", snap: snapshot(testNode, port0)},
		{name: "IPv4 endpoint of an IPv6 service", snap: snapshot(testNode, mixed), refuse: true},
		// clusterCIDRs 10.244.0.0/16 and 10.244.1.0/24 failed every sync
		// ("conflicting intervals specified") until renderBase dropped the
		// inner one.
		{name: "overlapping cluster CIDRs", snap: snapshot(overlapping, a)},
	}
}

// TestFakeParitySync: whole syncs, on the fake and (as root) on the kernel.
func TestFakeParitySync(t *testing.T) {
	cases := syncParityCases()
	run := func(t *testing.T, who string, newBackend func() (*Backend, *spyNFT, func(func() error) error)) {
		for _, c := range cases {
			b, spy, do := newBackend()
			if c.first != nil {
				if err := do(func() error { _, err := backendtest.Sync(context.Background(), b, c.first, true); return err }); err != nil {
					t.Errorf("%s: %s: first sync: %v", who, c.name, err)
					continue
				}
			}
			err := do(func() error { _, err := backendtest.Sync(context.Background(), b, c.snap, !c.partial); return err })
			switch {
			case c.refuse && err == nil:
				t.Errorf("%s accepted %q, the kernel refuses it", who, c.name)
			case !c.refuse && err != nil:
				t.Errorf("%s refused %q, the kernel accepts it: %v", who, c.name, err)
			}
			if c.partial && spy != nil && err == nil && spy.partial > 0 {
				t.Errorf("%s: the partial sync went through nft, not netlink", c.name)
			}
		}
	}
	t.Run("fake", func(t *testing.T) {
		run(t, "fake", func() (*Backend, *spyNFT, func(func() error) error) {
			b, _ := newFake(t)
			return b, nil, func(fn func() error) error { return fn() }
		})
	})
	t.Run("kernel", func(t *testing.T) {
		netns.Skip(t)
		ns := netns.New(t, "nftsyncparity")
		run(t, "kernel", func() (*Backend, *spyNFT, func(func() error) error) {
			ns.MustRun(t, "nft", "flush", "ruleset")
			b, spy := newSpiedBackend(t, ns)
			return b, spy, ns.Do
		})
	})
}
