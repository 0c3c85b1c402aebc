package nftables

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"sigs.k8s.io/knftables"
)

// TracePacket is the first packet of a connection, for FakeKernel's tracer.
type TracePacket struct {
	// Proto is "tcp" or "udp".
	Proto    string
	Src, Dst netip.Addr
	DPort    uint16
	// FromNode: the node sends it (the output hook) rather than receives
	// it (prerouting, then input or forward).
	FromNode bool
	// Local answers fib ... type local: whether an address is the node's.
	Local func(netip.Addr) bool
}

// TraceOutcome is one way a packet leaves the rules: its verdict ("accept",
// "drop" or "reject"), where a dnat sent it (invalid when untranslated) and
// whether it is masqueraded.
type TraceOutcome struct {
	Verdict    string
	DNAT       netip.AddrPort
	Masquerade bool
}

// tracePath is one way through the rules so far, with its probability.
type tracePath struct {
	weight float64
	mark   uint32
	dst    netip.AddrPort
	dnat   bool
	masq   bool
	// verdict is "" while the path goes on in its chain, "return" when it
	// left the chain (return, goto's end), else the hook's verdict.
	verdict string
}

// tracer runs a packet through the base chains of one family's tables.
type tracer struct {
	tables []*knftables.FakeTable
	p      TracePacket
}

// Trace runs p through what the fake holds, hook by hook as the kernel
// does (prerouting, then input or forward as the destination after dnat is
// local or not, then postrouting; output, input when the destination is the
// node, then postrouting for the node's own packets), and returns the outcomes with their probabilities (numgen
// splits them). Affinity sets are never matched: there is no state between
// packets. The rules kpo writes are all it understands: anything else is an
// error, so that a new kind of rule cannot pass unseen.
func (f *FakeKernel) Trace(p TracePacket) (map[TraceOutcome]float64, error) {
	f.RLock()
	defer f.RUnlock()
	fam := knftables.IPv4Family
	if p.Dst.Unmap().Is6() {
		fam = knftables.IPv6Family
	}
	tr := &tracer{p: p}
	for _, t := range f.Tables[fam] {
		tr.tables = append(tr.tables, t)
	}
	paths := []tracePath{{weight: 1, dst: netip.AddrPortFrom(p.Dst, p.DPort)}}
	first := "prerouting"
	if p.FromNode {
		first = "output"
	}
	paths, err := tr.hook(first, paths)
	if err != nil {
		return nil, err
	}
	var routed []tracePath
	for _, path := range paths {
		local := p.Local(path.dst.Addr())
		if path.verdict != "" || (p.FromNode && !local) {
			routed = append(routed, path)
			continue
		}
		// A node's packet to itself comes back over loopback to input.
		next := "forward"
		if local {
			next = "input"
		}
		out, err := tr.hook(next, []tracePath{path})
		if err != nil {
			return nil, err
		}
		routed = append(routed, out...)
	}
	if routed, err = tr.hook("postrouting", routed); err != nil {
		return nil, err
	}
	out := map[TraceOutcome]float64{}
	for _, path := range routed {
		o := TraceOutcome{Verdict: path.verdict, Masquerade: path.masq}
		if o.Verdict == "" {
			o.Verdict = "accept"
		}
		if path.dnat {
			o.DNAT = path.dst
		}
		out[o] += path.weight
	}
	return out, nil
}

// hook runs the paths still accepted through the base chains of a hook, in
// priority order; dropped and rejected paths pass through unchanged.
func (tr *tracer) hook(name string, paths []tracePath) ([]tracePath, error) {
	type base struct {
		t    *knftables.FakeTable
		c    *knftables.FakeChain
		prio int
	}
	var chains []base
	for _, t := range tr.tables {
		for _, c := range t.Chains {
			if c.Hook == nil || string(*c.Hook) != name {
				continue
			}
			prio, err := knftables.ParsePriority(t.Family, string(*c.Priority))
			if err != nil {
				return nil, err
			}
			chains = append(chains, base{t, c, prio})
		}
	}
	slices.SortFunc(chains, func(a, b base) int { return a.prio - b.prio })
	for _, b := range chains {
		var next []tracePath
		for _, path := range paths {
			if path.verdict == "drop" || path.verdict == "reject" {
				next = append(next, path)
				continue
			}
			path.verdict = ""
			out, err := tr.chain(b.t, b.c, path, 0)
			if err != nil {
				return nil, fmt.Errorf("chain %s: %w", b.c.Name, err)
			}
			for _, o := range out {
				if o.verdict == "return" {
					o.verdict = ""
				}
				next = append(next, o)
			}
		}
		paths = next
	}
	return paths, nil
}

// chain runs one path through a chain: what comes out has a verdict, or
// "return" (it left the chain), or "" (it fell off the chain's end).
func (tr *tracer) chain(t *knftables.FakeTable, c *knftables.FakeChain, path tracePath, depth int) ([]tracePath, error) {
	if depth > 16 {
		return nil, fmt.Errorf("jumps nested deeper than 16 at %s", c.Name)
	}
	var done []tracePath
	live := []tracePath{path}
	for _, r := range c.Rules {
		var next []tracePath
		for _, p := range live {
			out, err := tr.rule(t, tokens(r.Rule), p, depth)
			if err != nil {
				return nil, fmt.Errorf("rule %q: %w", r.Rule, err)
			}
			for _, o := range out {
				if o.verdict == "" {
					next = append(next, o)
				} else {
					done = append(done, o)
				}
			}
		}
		live = next
	}
	return append(done, live...), nil
}

// tokens splits a rule into words; "{ a, b }" stays one word.
func tokens(rule string) []string {
	var out []string
	for rest := strings.TrimSpace(rule); rest != ""; rest = strings.TrimSpace(rest) {
		if rest[0] == '{' {
			end := strings.IndexByte(rest, '}')
			out = append(out, rest[:end+1])
			rest = rest[end+1:]
			continue
		}
		word, after, _ := strings.Cut(rest, " ")
		out = append(out, word)
		rest = after
	}
	return out
}
