package nftables

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"sigs.k8s.io/knftables"
)

// alt is one value an expression takes, with its probability.
type alt struct {
	key  []string
	prob float64
}

// rule runs one path through one rule, word by word: a match that fails
// ends it (the path goes on to the next rule), a statement acts, a verdict
// ends the chain for it. numgen splits the path.
func (tr *tracer) rule(t *knftables.FakeTable, w []string, p tracePath, depth int) ([]tracePath, error) {
	for i := 0; i < len(w); {
		switch {
		case w[i] == "counter":
			i++
		case w[i] == "ct" && len(w) > i+2 && w[i+1] == "state":
			if !strings.Contains(","+w[i+2]+",", ",new,") {
				return []tracePath{p}, nil
			}
			i += 3
		case w[i] == "fib":
			ok, n, err := tr.fib(w[i:], p)
			if err != nil {
				return nil, err
			}
			if !ok {
				return []tracePath{p}, nil
			}
			i += n
		case w[i] == "meta" && len(w) > i+2 && w[i+1] == "mark":
			next, n, err := markWords(w[i:], &p)
			if err != nil || !next {
				return []tracePath{p}, err
			}
			i += n
		case w[i] == "update":
			i += 3 // update @set { key }: affinity state, not traced
		case w[i] == "dnat":
			return tr.dnat(t, w[i:], p)
		default:
			if isVerdict(w[i]) {
				return tr.verdict(t, w[i:], p, depth)
			}
			return tr.exprWords(t, w, i, p, depth)
		}
	}
	return []tracePath{p}, nil
}

// exprWords evaluates an expression at w[i] and what follows it: a match
// (literal, set, anonymous set, negated) or a verdict map lookup.
func (tr *tracer) exprWords(t *knftables.FakeTable, w []string, i int, p tracePath, depth int) ([]tracePath, error) {
	alts, n, err := tr.expr(w[i:], p)
	if err != nil {
		return nil, err
	}
	i += n
	if i >= len(w) {
		return nil, fmt.Errorf("expression without a match at the end")
	}
	if w[i] == "vmap" {
		return eachLookup(t, w[i+1], alts, p, func(q tracePath, v []string) ([]tracePath, error) {
			return tr.verdict(t, strings.Fields(v[0]), q, depth)
		})
	}
	neg := w[i] == "!="
	if neg {
		i++
	}
	var out []tracePath
	for _, a := range alts {
		ok, err := matches(t, a.key, w[i])
		if err != nil {
			return nil, err
		}
		q := p
		q.weight *= a.prob
		if ok == neg {
			out = append(out, q)
			continue
		}
		sub, err := tr.rule(t, w[i+1:], q, depth)
		if err != nil {
			return nil, err
		}
		out = append(out, sub...)
	}
	return out, nil
}

// expr evaluates a (concatenated) expression to its values; it returns
// how many words it took.
func (tr *tracer) expr(w []string, p tracePath) ([]alt, int, error) {
	alts := []alt{{prob: 1}}
	i := 0
	for {
		var vals []alt
		switch {
		case len(w) > i+1 && (w[i] == "ip" || w[i] == "ip6") && w[i+1] == "saddr":
			vals, i = []alt{{key: []string{tr.p.Src.String()}, prob: 1}}, i+2
		case len(w) > i+1 && (w[i] == "ip" || w[i] == "ip6") && w[i+1] == "daddr":
			vals, i = []alt{{key: []string{p.dst.Addr().String()}, prob: 1}}, i+2
		case len(w) > i+1 && w[i] == "meta" && w[i+1] == "l4proto":
			vals, i = []alt{{key: []string{tr.p.Proto}, prob: 1}}, i+2
		case len(w) > i+1 && w[i] == "th" && w[i+1] == "dport":
			vals, i = []alt{{key: []string{strconv.Itoa(int(p.dst.Port()))}, prob: 1}}, i+2
		case len(w) > i+3 && w[i] == "numgen" && w[i+1] == "random" && w[i+2] == "mod":
			n, err := strconv.Atoi(w[i+3])
			if err != nil {
				return nil, 0, err
			}
			i += 4
			off := 0
			if len(w) > i+1 && w[i] == "offset" {
				if off, err = strconv.Atoi(w[i+1]); err != nil {
					return nil, 0, err
				}
				i += 2
			}
			for v := range n {
				vals = append(vals, alt{key: []string{strconv.Itoa(off + v)}, prob: 1 / float64(n)})
			}
		default:
			return nil, 0, fmt.Errorf("unknown expression at %q", strings.Join(w[i:], " "))
		}
		var next []alt
		for _, a := range alts {
			for _, v := range vals {
				next = append(next, alt{key: append(append([]string{}, a.key...), v.key...), prob: a.prob * v.prob})
			}
		}
		alts = next
		if i >= len(w) || w[i] != "." {
			return alts, i, nil
		}
		i++
	}
}

// fib matches "fib saddr|daddr type [!=] local".
func (tr *tracer) fib(w []string, p tracePath) (bool, int, error) {
	if len(w) < 4 || w[2] != "type" {
		return false, 0, fmt.Errorf("unknown fib match %q", strings.Join(w, " "))
	}
	a := tr.p.Src
	if w[1] == "daddr" {
		a = p.dst.Addr()
	}
	local := tr.p.Local(a) || (w[1] == "saddr" && tr.p.FromNode)
	if w[3] == "!=" && len(w) > 4 && w[4] == "local" {
		return !local, 5, nil
	}
	if w[3] != "local" {
		return false, 0, fmt.Errorf("unknown fib type %q", w[3])
	}
	return local, 4, nil
}

// markWords handles "meta mark set meta mark or|xor V" (a statement) and
// "meta mark & M == V" (a match); next says whether the rule goes on.
func markWords(w []string, p *tracePath) (next bool, n int, err error) {
	num := func(s string) uint32 { v, _ := strconv.ParseUint(s, 0, 32); return uint32(v) }
	switch {
	case len(w) >= 7 && w[2] == "set" && w[3] == "meta" && w[4] == "mark":
		switch w[5] {
		case "or":
			p.mark |= num(w[6])
		case "xor":
			p.mark ^= num(w[6])
		default:
			return false, 0, fmt.Errorf("unknown mark operation %q", w[5])
		}
		return true, 7, nil
	case len(w) >= 6 && w[2] == "&" && (w[4] == "==" || w[4] == "!="):
		eq := p.mark&num(w[3]) == num(w[5])
		return eq == (w[4] == "=="), 6, nil
	}
	return false, 0, fmt.Errorf("unknown mark expression %q", strings.Join(w, " "))
}

func isVerdict(w string) bool {
	switch w {
	case "accept", "drop", "reject", "return", "jump", "goto", "masquerade":
		return true
	}
	return false
}

// verdict applies a verdict (or masquerade, which ends the hook too).
func (tr *tracer) verdict(t *knftables.FakeTable, w []string, p tracePath, depth int) ([]tracePath, error) {
	switch w[0] {
	case "accept", "drop", "reject", "return":
		p.verdict = w[0]
		return []tracePath{p}, nil
	case "masquerade":
		p.verdict, p.masq = "accept", true
		return []tracePath{p}, nil
	}
	if len(w) < 2 || t.Chains[w[1]] == nil {
		return nil, fmt.Errorf("%q: no such chain", strings.Join(w, " "))
	}
	out, err := tr.chain(t, t.Chains[w[1]], p, depth+1)
	if err != nil {
		return nil, err
	}
	for i := range out {
		switch {
		case w[0] == "jump" && out[i].verdict == "return":
			out[i].verdict = "" // back to the rule after the jump
		case w[0] == "goto" && out[i].verdict == "":
			out[i].verdict = "return" // back to the chain that jumped here
		}
	}
	return out, nil
}

// dnat handles "dnat to A:P" and "dnat ip|ip6 to <expr> map @m"; a lookup
// miss ends the rule without a match.
func (tr *tracer) dnat(t *knftables.FakeTable, w []string, p tracePath) ([]tracePath, error) {
	w = w[1:]
	if len(w) > 0 && (w[0] == "ip" || w[0] == "ip6") {
		w = w[1:]
	}
	if len(w) < 2 || w[0] != "to" {
		return nil, fmt.Errorf("unknown dnat %q", strings.Join(w, " "))
	}
	if len(w) == 2 {
		to, err := netip.ParseAddrPort(w[1])
		if err != nil {
			return nil, err
		}
		p.dst, p.dnat, p.verdict = to, true, "accept"
		return []tracePath{p}, nil
	}
	alts, n, err := tr.expr(w[1:], p)
	if err != nil {
		return nil, err
	}
	if len(w) != n+3 || w[n+1] != "map" {
		return nil, fmt.Errorf("unknown dnat map %q", strings.Join(w, " "))
	}
	return eachLookup(t, w[n+2], alts, p, func(q tracePath, v []string) ([]tracePath, error) {
		v = strings.Split(strings.Join(v, " . "), " . ")
		addr, err := netip.ParseAddr(v[0])
		if err != nil || len(v) != 2 {
			return nil, fmt.Errorf("dnat map value %v", v)
		}
		port, err := strconv.ParseUint(v[1], 10, 16)
		if err != nil {
			return nil, fmt.Errorf("dnat map value %v: %w", v, err)
		}
		q.dst, q.dnat, q.verdict = netip.AddrPortFrom(addr, uint16(port)), true, "accept"
		return []tracePath{q}, nil
	})
}

// eachLookup looks each value of alts up in the map "@m" and calls hit
// with the path (weighted by the value's probability) and the value found;
// a miss goes on to the rule after this one.
func eachLookup(t *knftables.FakeTable, m string, alts []alt, p tracePath,
	hit func(q tracePath, v []string) ([]tracePath, error)) ([]tracePath, error) {
	var out []tracePath
	for _, a := range alts {
		q := p
		q.weight *= a.prob
		v, ok, err := lookup(t, strings.TrimPrefix(m, "@"), a.key)
		if err != nil {
			return nil, err
		}
		if !ok {
			out = append(out, q)
			continue
		}
		sub, err := hit(q, v)
		if err != nil {
			return nil, err
		}
		out = append(out, sub...)
	}
	return out, nil
}

// lookup finds key in map m and returns its value.
func lookup(t *knftables.FakeTable, m string, key []string) ([]string, bool, error) {
	fm := t.Maps[m]
	if fm == nil {
		return nil, false, fmt.Errorf("no map %s", m)
	}
	for _, e := range fm.Elements {
		if keyMatches(e.Key, key) {
			return e.Value, true, nil
		}
	}
	return nil, false, nil
}

// matches is a match of key against a literal, "@set" or "{ a, b }".
func matches(t *knftables.FakeTable, key []string, rhs string) (bool, error) {
	if set, ok := strings.CutPrefix(rhs, "@"); ok {
		fs := t.Sets[set]
		if fs == nil {
			return false, fmt.Errorf("no set %s", set)
		}
		for _, e := range fs.Elements {
			if keyMatches(e.Key, key) {
				return true, nil
			}
		}
		return false, nil
	}
	for _, lit := range strings.Split(strings.Trim(rhs, "{} "), ",") {
		if keyMatches([]string{strings.TrimSpace(lit)}, key) {
			return true, nil
		}
	}
	return false, nil
}

// keyMatches compares a key with an element's: prefixes contain, addresses
// compare as addresses, the rest as text.
func keyMatches(elem, key []string) bool {
	if len(elem) != len(key) {
		return false
	}
	for i, e := range elem {
		if pfx, err := netip.ParsePrefix(e); err == nil {
			a, err := netip.ParseAddr(key[i])
			if err != nil || !pfx.Contains(a) {
				return false
			}
			continue
		}
		if ea, err := netip.ParseAddr(e); err == nil {
			if ka, err := netip.ParseAddr(key[i]); err != nil || ka != ea {
				return false
			}
			continue
		}
		if e != key[i] {
			return false
		}
	}
	return true
}
