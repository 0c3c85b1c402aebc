package ipvs

import (
	"context"
	"net/netip"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"kpo.dev/kpo/nodeagent/backend"
	"kpo.dev/kpo/nodeagent/backend/backendtest"
	"kpo.dev/kpo/nodeagent/model"
	"kpo.dev/kpo/nodeagent/model/modeltest"
)

var testSettings = backendtest.Settings

func addr(s string) netip.Addr { return netip.MustParseAddr(s) }

func ep(s string) model.Endpoint {
	ap := netip.MustParseAddrPort(s)
	return model.Endpoint{IP: ap.Addr(), Port: int32(ap.Port()), Ready: true}
}

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

func tcpKey(s string) VSKey {
	a := netip.MustParseAddrPort(s)
	return VSKey{Addr: a.Addr(), Protocol: protoTCP, Port: a.Port()}
}

// svc builds a TCP service port whose external endpoints equal its cluster ones.
func svc(name, clusterIP string, port int32, eps ...model.Endpoint) *model.ServicePort {
	return modeltest.ServicePort("ns", name, clusterIP, port, eps...)
}

func snapOf(sps ...*model.ServicePort) *model.Snapshot {
	return modeltest.Snapshot(model.NodeInfo{Name: "node", ClusterCIDRs: map[model.Family][]netip.Prefix{
		model.IPv4: modeltest.PodNetworks()[model.IPv4],
	}}, sps...)
}

// with returns a copy of s with sps added or replaced, keeping the other pointers.
func with(s *model.Snapshot, sps ...*model.ServicePort) *model.Snapshot {
	return modeltest.With(s, sps...)
}

// without returns a copy of s without the named service ports.
func without(s *model.Snapshot, sps ...*model.ServicePort) *model.Snapshot {
	return modeltest.Without(s, sps...)
}

// env is a backend over fakes, with a settable clock.
type env struct {
	t   *testing.T
	h   *FakeHandle
	l   *FakeLinks
	r   *FakeRules
	now time.Time
	b   *Backend
}

func newEnv(t *testing.T, cfg Config) *env {
	t.Helper()
	e := &env{t: t, h: NewFakeHandle(), l: NewFakeLinks(addr("198.51.100.1")), r: &FakeRules{},
		now: time.Unix(1_000_000, 0)}
	e.b = e.newBackend(cfg)
	return e
}

// newBackend makes another backend over the same fakes: an agent restart.
func (e *env) newBackend(cfg Config) *Backend {
	e.t.Helper()
	b, err := New(testSettings, cfg, []model.Family{model.IPv4, model.IPv6},
		WithHandle(e.h), WithLinks(e.l), WithRules(e.r), WithClock(func() time.Time { return e.now }))
	if err != nil {
		e.t.Fatal(err)
	}
	return b
}

func (e *env) sync(s *model.Snapshot, full bool) backend.SyncResult {
	e.t.Helper()
	res, err := backendtest.Sync(context.Background(), e.b, s, full)
	if err != nil {
		e.t.Fatalf("sync: %v", err)
	}
	return res
}

// dests returns a virtual server's destinations with their weights.
func (e *env) dests(k string) map[netip.AddrPort]int {
	e.t.Helper()
	_, ds, ok := e.h.Service(tcpKey(k))
	if !ok {
		e.t.Fatalf("no virtual server %s; have %v", k, e.h.Keys())
	}
	out := map[netip.AddrPort]int{}
	for a, d := range ds {
		out[a] = d.Weight
	}
	return out
}

func (e *env) hasVS(k string) bool {
	_, _, ok := e.h.Service(tcpKey(k))
	return ok
}

func (e *env) dummyAddrs() []netip.Addr {
	as, _ := e.l.Addrs(dummyName)
	return as
}

// udp turns a service port of svc into a UDP one.
func udp(sp *model.ServicePort) *model.ServicePort {
	sp.Protocol, sp.Key.Protocol = corev1.ProtocolUDP, corev1.ProtocolUDP
	return sp
}
