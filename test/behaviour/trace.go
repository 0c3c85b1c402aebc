package behaviour

import (
	"fmt"
	"math"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"testing"
)

// Packet is the first packet of a probe's connection, for a fake kernel's
// tracer.
type Packet struct {
	// Proto is "tcp" or "udp".
	Proto string
	Src   netip.Addr
	// FromNode: the node sends it itself (a local source address, the
	// output hooks).
	FromNode bool
	Dst      netip.AddrPort
}

// Hop is one outcome of a packet through a fake's rules: answered by the
// endpoint To (masqueraded or not), refused, or dropped. A packet that no
// rule translates is refused when the node itself is its destination
// (nothing listens there) and dropped otherwise (the test networks send
// untranslated service traffic into a sink).
type Hop struct {
	Answer      Answer
	To          netip.AddrPort
	Masqueraded bool
}

func (h Hop) String() string {
	if h.Answer != Served {
		return h.Answer.String()
	}
	return fmt.Sprintf("%s (masqueraded %v)", h.To, h.Masqueraded)
}

// Tracer traces a packet through what a fake kernel holds and returns its
// outcomes with their probabilities (random endpoint choices split it).
type Tracer interface {
	Trace(p Packet) (map[Hop]float64, error)
}

// TracerFunc is a Tracer of a function.
type TracerFunc func(p Packet) (map[Hop]float64, error)

// Trace implements Tracer.
func (f TracerFunc) Trace(p Packet) (map[Hop]float64, error) { return f(p) }

// TraceCheck checks probes by tracing their first packet: the outcome must
// hold for every path the packet may take, and a random choice must be
// uniform over the endpoints. What it cannot see: affinity (no state
// between packets), conntrack, routing, replies; the kernel levels do.
func TraceCheck(h Hosts, tr Tracer) func(t *testing.T, p Probe, want Outcome) {
	return func(t *testing.T, p Probe, want Outcome) {
		t.Helper()
		dst := netip.MustParseAddrPort(p.To)
		pkt := Packet{Proto: p.Network(), Src: h.Addr(p.From, dst.Addr()), FromNode: p.From == Node, Dst: dst}
		hops, err := tr.Trace(pkt)
		if err != nil {
			t.Fatalf("tracing %+v: %v", pkt, err)
		}
		if err := checkHops(h, p, want, hops); err != nil {
			t.Errorf("want %s: %v; traced %s", want, err, describeHops(hops))
		}
	}
}

func checkHops(h Hosts, p Probe, want Outcome, hops map[Hop]float64) error {
	total := 0.0
	for _, w := range hops {
		total += w
	}
	if math.Abs(total-1) > 1e-6 {
		return fmt.Errorf("the paths' probabilities add up to %v", total)
	}
	if want.Answer != Served {
		for hop, w := range hops {
			if hop.Answer != want.Answer && w > 1e-9 {
				return fmt.Errorf("%s with probability %.2f", hop, w)
			}
		}
		return nil
	}
	by := map[Role]float64{}
	for hop, w := range hops {
		if hop.Answer != Served {
			return fmt.Errorf("%s with probability %.2f", hop, w)
		}
		r := h.RoleOf(hop.To.Addr())
		if !slices.Contains(want.By, r) || hop.To.Port() != EchoPort {
			return fmt.Errorf("translated to %s", hop.To)
		}
		if err := checkSource(want.Source, p.From, r, h.Addr(p.From, hop.To.Addr()), hop.Masqueraded); err != nil {
			return fmt.Errorf("to %s: %w", r, err)
		}
		by[r] += w
	}
	for _, r := range want.By {
		if math.Abs(by[r]-1/float64(len(want.By))) > 1e-6 {
			return fmt.Errorf("%s chosen with probability %.3f", r, by[r])
		}
	}
	return nil
}

func describeHops(hops map[Hop]float64) string {
	var parts []string
	for hop, w := range hops {
		parts = append(parts, fmt.Sprintf("%s: %.3f", hop, w))
	}
	sort.Strings(parts)
	return "{" + strings.Join(parts, ", ") + "}"
}

// HopOf is the Hop of a packet that left a fake kernel's rules with
// verdict (accept, drop or reject, in either case), translated to dnat
// (invalid when not translated), masqueraded or not. An accepted packet
// that nothing translated is refused when the node itself is its
// destination (nothing listens there) and dropped otherwise (the test
// networks send untranslated service traffic into a sink).
func HopOf(p Packet, verdict string, dnat netip.AddrPort, masq bool) Hop {
	switch strings.ToLower(verdict) {
	case "drop":
		return Hop{Answer: Dropped}
	case "reject":
		return Hop{Answer: Refused}
	}
	switch {
	case dnat.IsValid():
		return Hop{Answer: Served, To: dnat, Masqueraded: masq}
	case IsNodeAddr(p.Dst.Addr()):
		return Hop{Answer: Refused}
	}
	return Hop{Answer: Dropped}
}
