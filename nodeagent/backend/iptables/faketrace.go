package iptables

import (
	"cmp"
	"net/netip"
	"strconv"
	"strings"

	"kpo.dev/kpo/nodeagent/model"
)

// Packet is the first packet of a connection, for Fake's tracer.
type Packet struct {
	Src, Dst netip.Addr
	Proto    string // tcp, udp, sctp
	DPort    int
	// SrcLocal and DstLocal answer -m addrtype --src-type/--dst-type LOCAL.
	SrcLocal, DstLocal bool
	// DNATed answers -m conntrack --ctstate DNAT (filter traces; TraceNAT
	// sets it for POSTROUTING after a DNAT).
	DNATed bool
	// State is the packet's conntrack state (NEW, ESTABLISHED, RELATED,
	// INVALID); "" means NEW, a connection's first packet.
	State string
	// Mark is the packet mark entering a filter trace (set by nat before).
	Mark uint32
}

// NATResult is one outcome of the nat table for a packet.
type NATResult struct {
	// DNAT is the new destination ("ip:port"), "" when untranslated.
	DNAT string
	// Masquerade is true when POSTROUTING masquerades the packet.
	Masquerade bool
}

type tracePath struct {
	weight  float64
	mark    uint32
	verdict string // terminal target, "" while the path is live
	dnat    string
	masq    bool
}

// TraceNAT runs a packet through the nat table from hook (PREROUTING or
// OUTPUT) and then POSTROUTING, and returns the outcomes with their
// probabilities (-m statistic branches; -m recent --rcheck never matches).
func (f *Fake) TraceNAT(fam model.Family, hook string, p Packet) map[NATResult]float64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	t := f.tables[fam][tableNAT]
	out := map[NATResult]float64{}
	for _, path := range t.eval(hook, p, []tracePath{{weight: 1}}, 0) {
		q := p
		if path.dnat != "" {
			ap := netip.MustParseAddrPort(path.dnat)
			q.Dst, q.DPort = ap.Addr(), int(ap.Port())
			q.DNATed = true // conntrack --ctstate DNAT from now on
		}
		for _, post := range t.eval("POSTROUTING", q, []tracePath{{weight: path.weight, mark: path.mark}}, 0) {
			out[NATResult{DNAT: path.dnat, Masquerade: post.masq}] += post.weight
		}
	}
	return out
}

// TraceFilter runs a packet through a built-in chain of the filter table and
// returns the verdicts with their probabilities ("ACCEPT" for the policy).
func (f *Fake) TraceFilter(fam model.Family, hook string, p Packet) map[string]float64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[string]float64{}
	for _, path := range f.tables[fam][tableFilter].eval(hook, p, []tracePath{{weight: 1, mark: p.Mark}}, 0) {
		v := path.verdict
		if v == "" {
			v = "ACCEPT"
		}
		out[v] += path.weight
	}
	return out
}

// eval runs live paths through a chain; paths that fall off its end (or
// RETURN) come back live, terminal ones carry their verdict.
func (t *fakeTable) eval(name string, p Packet, paths []tracePath, depth int) []tracePath {
	c := t.chains[name]
	if c == nil || depth > 32 {
		return paths
	}
	var done []tracePath
	live := paths
	for _, r := range c.rules {
		var next []tracePath
		for _, path := range live {
			pm := matchProb(r, p, path.mark)
			if pm < 1 {
				miss := path
				miss.weight *= 1 - pm
				if miss.weight > 0 {
					next = append(next, miss)
				}
			}
			if pm == 0 {
				continue
			}
			hit := path
			hit.weight *= pm
			switch r.target {
			case "":
				next = append(next, hit)
			case "RETURN":
				done = append(done, hit)
			case "MARK":
				hit.mark = applyMark(hit.mark, r.args)
				next = append(next, hit)
			case "DNAT":
				hit.verdict, hit.dnat = "DNAT", argAfter(r.args, "--to-destination")
				done = append(done, hit)
			case "MASQUERADE":
				hit.verdict, hit.masq = "MASQUERADE", true
				done = append(done, hit)
			case "ACCEPT", "DROP", "REJECT", "SNAT":
				hit.verdict = r.target
				done = append(done, hit)
			default:
				for _, sub := range t.eval(r.target, p, []tracePath{hit}, depth+1) {
					if sub.verdict != "" {
						done = append(done, sub)
					} else {
						next = append(next, sub)
					}
				}
			}
		}
		live = next
	}
	return append(done, live...)
}

func applyMark(mark uint32, args []string) uint32 {
	for i, a := range args {
		if i+1 >= len(args) {
			break
		}
		v, _ := strconv.ParseUint(args[i+1], 0, 32)
		switch a {
		case "--or-mark":
			mark |= uint32(v)
		case "--xor-mark":
			mark ^= uint32(v)
		}
	}
	return mark
}

// matchProb is the probability that rule r matches p (0 or 1 except for
// -m statistic).
func matchProb(r fakeRule, p Packet, mark uint32) float64 {
	prob := 1.0
	args := r.args
	for i := 0; i < len(args); i++ {
		neg := false
		if args[i] == "!" {
			neg = true
			i++
		}
		a, v := args[i], ""
		if i+1 < len(args) {
			v = args[i+1]
		}
		var ok bool
		switch a {
		case "-s", "-d":
			addr := p.Src
			if a == "-d" {
				addr = p.Dst
			}
			fam := model.FamilyOf(addr)
			want, mask, err := parseAddrMask(fam, v)
			ok = err == nil && masked(addr, mask) == masked(want, mask)
		case "-p":
			ok = v == "all" || v == p.Proto
		case "--dport":
			lo, hi, isRange := strings.Cut(v, ":")
			l, _ := strconv.Atoi(lo)
			h := l
			if isRange {
				h, _ = strconv.Atoi(hi)
			}
			ok = p.DPort >= l && p.DPort <= h
		case "--src-type":
			ok = (v == "LOCAL") == p.SrcLocal
		case "--dst-type":
			ok = (v == "LOCAL") == p.DstLocal
		case "--ctstate":
			state := cmp.Or(p.State, "NEW")
			ok = false
			for _, s := range strings.Split(v, ",") {
				ok = ok || s == state || (s == "DNAT" && p.DNATed)
			}
		case "--mark":
			vs, ms, _ := strings.Cut(v, "/")
			want, _ := strconv.ParseUint(vs, 0, 32)
			m := uint64(0xffffffff)
			if ms != "" {
				m, _ = strconv.ParseUint(ms, 0, 32)
			}
			ok = uint64(mark)&m == want&m
		case "--probability":
			pr, _ := strconv.ParseFloat(v, 64)
			if neg {
				pr = 1 - pr
			}
			prob *= pr
			i++
			continue
		case "--rcheck":
			return 0 // no affinity state in the tracer
		case "-m", "--comment", "--mode", "--name", "--seconds", "-j", "-g",
			"--reject-with", "--to-destination", "--or-mark", "--xor-mark":
			i++
			continue
		default: // flags without value (--set, --reap, --random-fully)
			continue
		}
		i++
		if ok == neg {
			return 0
		}
	}
	return prob
}

func masked(a, mask netip.Addr) netip.Addr {
	x, m := a.As16(), mask.As16()
	if a.Is4() {
		x4, m4 := a.As4(), mask.As4()
		for i := range x4 {
			x4[i] &= m4[i]
		}
		return netip.AddrFrom4(x4)
	}
	for i := range x {
		x[i] &= m[i]
	}
	return netip.AddrFrom16(x)
}

// TraceOutcome is one way a connection's first packet leaves the rules: its
// filter verdict (ACCEPT, DROP or REJECT), where nat sent it (invalid when
// untranslated) and whether it is masqueraded.
type TraceOutcome struct {
	Verdict    string
	DNAT       netip.AddrPort
	Masquerade bool
}

// Trace runs p through nat and filter as the kernel does: nat PREROUTING
// (OUTPUT when fromNode) and POSTROUTING, then filter INPUT or FORWARD as
// the destination after DNAT is local or not (OUTPUT for the node's own
// packets, and INPUT too when they go to the node itself). local answers
// addrtype LOCAL.
func (f *Fake) Trace(fam model.Family, p Packet, fromNode bool, local func(netip.Addr) bool) map[TraceOutcome]float64 {
	p.SrcLocal, p.DstLocal = fromNode || local(p.Src), local(p.Dst)
	hook := "PREROUTING"
	if fromNode {
		hook = "OUTPUT"
	}
	out := map[TraceOutcome]float64{}
	for nat, w := range f.TraceNAT(fam, hook, p) {
		q, o := p, TraceOutcome{Masquerade: nat.Masquerade}
		if nat.DNAT != "" {
			o.DNAT = netip.MustParseAddrPort(nat.DNAT)
			q.Dst, q.DPort, q.DNATed = o.DNAT.Addr(), int(o.DNAT.Port()), true
			q.DstLocal = local(q.Dst)
		}
		var hooks []string
		switch {
		case fromNode && q.DstLocal:
			hooks = []string{"OUTPUT", "INPUT"}
		case fromNode:
			hooks = []string{"OUTPUT"}
		case q.DstLocal:
			hooks = []string{"INPUT"}
		default:
			hooks = []string{"FORWARD"}
		}
		paths := map[string]float64{"ACCEPT": w}
		for _, h := range hooks {
			next := map[string]float64{}
			for v, pw := range paths {
				if v != "ACCEPT" {
					next[v] += pw
					continue
				}
				for fv, fw := range f.TraceFilter(fam, h, q) {
					next[fv] += pw * fw
				}
			}
			paths = next
		}
		for v, pw := range paths {
			o.Verdict = v
			out[o] += pw
		}
	}
	return out
}
