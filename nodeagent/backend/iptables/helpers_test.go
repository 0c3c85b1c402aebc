package iptables

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"kpo.dev/kpo/nodeagent/backend"
	"kpo.dev/kpo/nodeagent/model"
)

var testSettings = backend.Settings{MasqueradeBit: 14}

func addr(s string) netip.Addr { return netip.MustParseAddr(s) }

func ep(s string, local bool) model.Endpoint {
	ap := netip.MustParseAddrPort(s)
	return model.Endpoint{IP: ap.Addr(), Port: int32(ap.Port()), Local: local, Ready: true}
}

// svc builds a TCP service port whose external endpoints equal its cluster ones.
func svc(name, clusterIP string, port int32, eps ...model.Endpoint) *model.ServicePort {
	ip := addr(clusterIP)
	sp := &model.ServicePort{
		Key: model.ServicePortKey{
			ServicePortName: model.ServicePortName{Namespace: "ns", Name: name, Protocol: corev1.ProtocolTCP},
			Family:          model.FamilyOf(ip),
		},
		Protocol: corev1.ProtocolTCP, ClusterIP: ip, Port: port,
		ClusterEndpoints: eps, ExternalEndpoints: eps,
	}
	return sp
}

func snapOf(sps ...*model.ServicePort) *model.Snapshot {
	s := &model.Snapshot{
		Services: map[model.ServicePortKey]*model.ServicePort{},
		Node: model.NodeInfo{
			Name: "node",
			ClusterCIDRs: map[model.Family][]netip.Prefix{
				model.IPv4: {netip.MustParsePrefix("10.244.0.0/16")},
				model.IPv6: {netip.MustParsePrefix("fd10:244::/48")},
			},
		},
	}
	for _, sp := range sps {
		s.Services[sp.Key] = sp
	}
	return s
}

// clone copies a snapshot's map, keeping the ServicePort pointers.
func clone(s *model.Snapshot) *model.Snapshot {
	c := *s
	c.Services = map[model.ServicePortKey]*model.ServicePort{}
	for k, v := range s.Services {
		c.Services[k] = v
	}
	return &c
}

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
	res, err := b.Sync(context.Background(), s, full)
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
