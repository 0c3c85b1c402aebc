package iptables

import (
	"testing"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
	"kpo.dev/kpo/nodeagent/model"
	"kpo.dev/kpo/test/behaviour"
)

// TestBehaviourTable runs the behaviour table (test/behaviour) against the
// backend over the fake: every probe's first packet is traced through nat
// and filter as the syncs left them (Fake.Trace).
func TestBehaviourTable(t *testing.T) {
	b, f := newFakeBackend(t, testSettings)
	behaviour.RunFake(t, kpov1.ModeIPTables, b, behaviour.TracerFunc(func(p behaviour.Packet) (map[behaviour.Hop]float64, error) {
		pkt := Packet{Src: p.Src, Dst: p.Dst.Addr(), Proto: p.Proto, DPort: int(p.Dst.Port())}
		hops := map[behaviour.Hop]float64{}
		for o, w := range f.Trace(model.FamilyOf(p.Dst.Addr()), pkt, p.FromNode, behaviour.IsNodeAddr) {
			hops[behaviour.HopOf(p, o.Verdict, o.DNAT, o.Masquerade)] += w
		}
		return hops, nil
	}))
}
