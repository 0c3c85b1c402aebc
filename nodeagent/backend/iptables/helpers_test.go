package iptables

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"kpo.dev/kpo/nodeagent/backend"
	"kpo.dev/kpo/nodeagent/backend/backendtest"
	"kpo.dev/kpo/nodeagent/model"
	"kpo.dev/kpo/nodeagent/model/modeltest"
)

var testSettings = backendtest.Settings

func addr(s string) netip.Addr { return netip.MustParseAddr(s) }

func ep(s string, local bool) model.Endpoint {
	ap := netip.MustParseAddrPort(s)
	return model.Endpoint{IP: ap.Addr(), Port: int32(ap.Port()), Local: local, Ready: true}
}

// svc builds a TCP service port whose external endpoints equal its cluster ones.
func svc(name, clusterIP string, port int32, eps ...model.Endpoint) *model.ServicePort {
	return modeltest.ServicePort("ns", name, clusterIP, port, eps...)
}

func snapOf(sps ...*model.ServicePort) *model.Snapshot {
	return modeltest.Snapshot(model.NodeInfo{Name: "node", ClusterCIDRs: modeltest.PodNetworks()}, sps...)
}

// clone copies a snapshot's map, keeping the ServicePort pointers.
func clone(s *model.Snapshot) *model.Snapshot { return modeltest.With(s) }

func newFakeBackend(t testing.TB, settings backend.Settings) (*Backend, *Fake) {
	t.Helper()
	f := NewFake()
	b, err := New(settings, nil, WithKernel(f))
	if err != nil {
		t.Fatal(err)
	}
	return b, f
}

func mustSync(t testing.TB, b *Backend, s *model.Snapshot, full bool) backend.SyncResult {
	t.Helper()
	res, err := backendtest.Sync(context.Background(), b, s, full)
	if err != nil {
		t.Fatalf("sync: %v", err)
	}
	return res
}

func pkt(src, dst string, port int) Packet {
	return Packet{Src: addr(src), Dst: addr(dst), Proto: "tcp", DPort: port}
}

func res(dnat string, masq bool) NATResult { return NATResult{DNAT: dnat, Masquerade: masq} }

// bigSnapshot makes n ClusterIP services of eps endpoints each, in 10.96.0.0/16.
func bigSnapshot(n, eps int) *model.Snapshot {
	s := snapOf()
	for i := range n {
		var e []model.Endpoint
		for j := range eps {
			e = append(e, ep(fmt.Sprintf("10.244.%d.%d:8080", (i*eps+j)/250%250, (i*eps+j)%250+1), false))
		}
		sp := svc(fmt.Sprintf("svc%d", i), fmt.Sprintf("10.96.%d.%d", i/250, i%250+1), 80, e...)
		s.Services[sp.Key] = sp
	}
	return s
}

var _ = time.Second
