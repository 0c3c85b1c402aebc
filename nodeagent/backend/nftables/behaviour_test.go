package nftables

import (
	"testing"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
	"kpo.dev/kpo/test/behaviour"
)

// TestBehaviourTable runs the behaviour table (test/behaviour) against the
// backend over the fake kernel: every probe's first packet is traced
// through the rules the syncs left there (FakeKernel.Trace).
func TestBehaviourTable(t *testing.T) {
	b, k := newFake(t)
	behaviour.RunFake(t, kpov1.ModeNFTables, b, behaviour.TracerFunc(func(p behaviour.Packet) (map[behaviour.Hop]float64, error) {
		out, err := k.Trace(TracePacket{Proto: p.Proto, Src: p.Src, Dst: p.Dst.Addr(), DPort: p.Dst.Port(), FromNode: p.FromNode,
			Local: behaviour.IsNodeAddr})
		hops := map[behaviour.Hop]float64{}
		for o, w := range out {
			hops[behaviour.HopOf(p, o.Verdict, o.DNAT, o.Masquerade)] += w
		}
		return hops, err
	}))
}
