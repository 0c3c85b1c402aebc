package iptables

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"kpo.dev/kpo/nodeagent/model"
)

// Rule validation of the Fake: a subset of iptables' syntax, the one kpo
// uses, checked as strictly as iptables does (unknown options, a match's
// options without its -m, values that do not parse, targets in the wrong table).

var targets = map[string]bool{
	"ACCEPT": true, "DROP": true, "RETURN": true, "REJECT": true,
	"DNAT": true, "SNAT": true, "MASQUERADE": true, "MARK": true,
}

func isTarget(s string) bool { return targets[s] }

// splitArgs splits a rule on blanks, keeping "double quoted" words whole.
func splitArgs(s string) ([]string, error) {
	var out []string
	for s = strings.TrimSpace(s); s != ""; s = strings.TrimSpace(s) {
		if s[0] == '"' {
			end := strings.IndexByte(s[1:], '"')
			if end < 0 {
				return nil, fmt.Errorf("unterminated quote")
			}
			out = append(out, s[1:end+1])
			s = s[end+2:]
			continue
		}
		i := strings.IndexAny(s, " \t")
		if i < 0 {
			i = len(s)
		}
		out = append(out, s[:i])
		s = s[i:]
	}
	return out, nil
}

// parseAddrMask parses addr, addr/len or addr/mask (iptables accepts
// non-contiguous masks) into address and mask of the table's family.
func parseAddrMask(fam model.Family, s string) (addr, mask netip.Addr, err error) {
	a, m, hasMask := strings.Cut(s, "/")
	addr, err = netip.ParseAddr(a)
	if err != nil {
		return addr, mask, err
	}
	if model.FamilyOf(addr) != fam || addr.Is4In6() {
		return addr, mask, fmt.Errorf("address %s not of family %s", a, fam)
	}
	bits := addr.BitLen()
	if !hasMask {
		m = strconv.Itoa(bits)
	}
	if n, err := strconv.Atoi(m); err == nil {
		if n < 0 || n > bits {
			return addr, mask, fmt.Errorf("bad prefix length %d", n)
		}
		var b [16]byte
		for i := 0; i < n; i++ {
			b[i/8] |= 0x80 >> (i % 8)
		}
		if bits == 32 {
			mask = netip.AddrFrom4([4]byte(b[:4]))
		} else {
			mask = netip.AddrFrom16(b)
		}
		return addr, mask, nil
	}
	mask, err = netip.ParseAddr(m)
	if err != nil || mask.BitLen() != bits {
		return addr, mask, fmt.Errorf("bad mask %q", m)
	}
	return addr, mask, nil
}

func parsePort(s string) error {
	lo, hi, isRange := strings.Cut(s, ":")
	for _, p := range []string{lo, hi} {
		if !isRange && p == hi {
			continue
		}
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 || n > 65535 {
			return fmt.Errorf("bad port %q", s)
		}
	}
	return nil
}

// checkInterface checks an -i or -o match as iptables does: a name (with
// "+" for a prefix) shorter than IFNAMSIZ, and in a built-in chain only where
// packets have such an interface ("Can't use -i with OUTPUT"). In a user
// chain iptables checks nothing more: a locally generated packet reaching
// it from OUTPUT simply has no input interface.
func checkInterface(chain, opt, name string) error {
	if len(name) > 15 {
		return fmt.Errorf("interface name %q must be shorter than IFNAMSIZ (15)", name)
	}
	noIn := chain == "OUTPUT" || chain == "POSTROUTING"
	noOut := chain == "INPUT" || chain == "PREROUTING"
	if (opt == "-i" && noIn) || (opt == "-o" && noOut) {
		return fmt.Errorf("can't use %s with %s", opt, chain)
	}
	return nil
}

// parseRule validates a rule for chain of table t and returns it.
func (t *fakeTable) parseRule(fam model.Family, chain string, args []string) (fakeRule, error) {
	p := &ruleParser{t: t, fam: fam, chain: chain, mods: map[string]bool{},
		r: fakeRule{text: strings.Join(quoteArgs(args), " "), args: args}}
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "!" {
			continue
		}
		var vals []string
		if n := optionValues(a); n > 0 {
			if i+n >= len(args) {
				return p.r, fmt.Errorf("option %s needs %d values", a, n)
			}
			vals = args[i+1 : i+1+n]
			i += n
		}
		if err := p.option(a, vals); err != nil {
			return p.r, err
		}
	}
	return p.r, nil
}

// ruleParser checks a rule's options in order, as iptables parses them.
type ruleParser struct {
	t     *fakeTable
	fam   model.Family
	chain string
	r     fakeRule
	proto string
	mods  map[string]bool // loaded matches
}

// optionValues is how many values an option takes.
func optionValues(opt string) int {
	switch opt {
	case "--rcheck", "--set", "--reap", "--random-fully", "--rsource":
		return 0
	case "--match-set":
		return 2 // set name, direction flags
	}
	return 1
}

// optionMods are the matches an option needs loaded (any of them).
var optionMods = map[string][]string{
	"--dport": {"tcp", "udp", "sctp"}, "--sport": {"tcp", "udp", "sctp"},
	"--comment": {"comment"}, "--ctstate": {"conntrack"},
	"--src-type": {"addrtype"}, "--dst-type": {"addrtype"},
	"--mode": {"statistic"}, "--probability": {"statistic"},
	"--name": {"recent"}, "--rcheck": {"recent"}, "--set": {"recent"}, "--reap": {"recent"},
	"--rsource": {"recent"}, "--seconds": {"recent"},
	"--mark": {"mark"}, "--match-set": {"set"},
}

// targetOptions are the options of a target, valid after it.
var targetOptions = map[string]string{
	"--reject-with": "REJECT", "--to-destination": "DNAT", "--random-fully": "MASQUERADE",
	"--or-mark": "MARK", "--xor-mark": "MARK", "--set-xmark": "MARK",
}

func (p *ruleParser) option(a string, vals []string) error {
	if ms, ok := optionMods[a]; ok && !slices.ContainsFunc(ms, func(m string) bool { return p.mods[m] }) {
		return fmt.Errorf("option %s without -m %s", a, strings.Join(ms, "/"))
	}
	if tgt, ok := targetOptions[a]; ok && p.r.target != tgt {
		return fmt.Errorf("%s without -j %s", a, tgt)
	}
	v := ""
	if len(vals) > 0 {
		v = vals[0]
	}
	switch a {
	case "-s", "-d":
		if _, _, err := parseAddrMask(p.fam, v); err != nil {
			return fmt.Errorf("%s: %w", a, err)
		}
	case "-i", "-o":
		return checkInterface(p.chain, a, v)
	case "-p":
		return p.protocol(v)
	case "-m":
		return p.match(v)
	case "-j", "-g":
		if p.r.target != "" {
			return fmt.Errorf("two targets")
		}
		p.r.target = v
		return p.t.checkTarget(v)
	case "--match-set":
		return p.matchSet(vals[0], vals[1])
	default:
		return p.value(a, v)
	}
	return nil
}

func (p *ruleParser) protocol(v string) error {
	switch v {
	case "tcp", "udp", "sctp", "all":
	case "icmp":
		if p.fam == model.IPv6 {
			return fmt.Errorf("-p icmp in ip6tables")
		}
	default:
		return fmt.Errorf("unknown protocol %q", v)
	}
	p.proto = v
	if v == "tcp" || v == "udp" || v == "sctp" {
		// iptables loads the protocol's match implicitly:
		// "-p tcp --dport 80" is "-p tcp -m tcp --dport 80".
		p.mods[v] = true
	}
	return nil
}

func (p *ruleParser) match(v string) error {
	switch v {
	case "tcp", "udp", "sctp":
		// iptables: "-m tcp" needs "-p tcp" first.
		if p.proto != v {
			return fmt.Errorf("-m %s without -p %s", v, v)
		}
	case "comment", "conntrack", "addrtype", "statistic", "recent", "mark", "set":
	default:
		return fmt.Errorf("unknown match %q", v)
	}
	p.mods[v] = true
	return nil
}

// matchSet checks "--match-set NAME FLAGS": iptables refuses a set that
// does not exist ("Set NAME doesn't exist") and flags other than one to
// six of src and dst.
func (p *ruleParser) matchSet(name, flags string) error {
	if p.t.hasSet == nil || !p.t.hasSet(name) {
		return fmt.Errorf("set %s doesn't exist", name)
	}
	fs := strings.Split(flags, ",")
	if len(fs) > 6 || slices.ContainsFunc(fs, func(f string) bool { return f != "src" && f != "dst" }) {
		return fmt.Errorf("bad set flags %q", flags)
	}
	return nil
}

// value checks the value of the other options.
func (p *ruleParser) value(a, v string) error {
	switch a {
	case "--dport", "--sport":
		return parsePort(v)
	case "--comment", "--name", "--mark", "--rcheck", "--set", "--reap", "--rsource", "--random-fully":
	case "--ctstate":
		for _, s := range strings.Split(v, ",") {
			switch s {
			case "NEW", "ESTABLISHED", "RELATED", "INVALID", "UNTRACKED", "SNAT", "DNAT":
			default:
				return fmt.Errorf("bad ctstate %q", s)
			}
		}
	case "--src-type", "--dst-type":
		if v != "LOCAL" && v != "UNICAST" && v != "BROADCAST" && v != "MULTICAST" {
			return fmt.Errorf("bad address type %q", v)
		}
	case "--mode":
		if v != "random" && v != "nth" {
			return fmt.Errorf("bad statistic mode %q", v)
		}
	case "--probability":
		if f, err := strconv.ParseFloat(v, 64); err != nil || f < 0 || f > 1 {
			return fmt.Errorf("bad probability %q", v)
		}
	case "--seconds":
		if n, err := strconv.Atoi(v); err != nil || n <= 0 {
			return fmt.Errorf("bad seconds %q", v)
		}
	case "--reject-with":
		return p.rejectWith(v)
	case "--to-destination":
		return p.toDestination(v)
	case "--or-mark", "--xor-mark", "--set-xmark":
		if _, err := strconv.ParseUint(strings.SplitN(v, "/", 2)[0], 0, 32); err != nil {
			return fmt.Errorf("bad mark %q", v)
		}
	default:
		return fmt.Errorf("unknown option %q", a)
	}
	return nil
}

func (p *ruleParser) rejectWith(v string) error {
	switch v {
	case "tcp-reset":
		if p.proto != "tcp" {
			return fmt.Errorf("tcp-reset needs -p tcp")
		}
	case "icmp-port-unreachable":
		if p.fam == model.IPv6 {
			return fmt.Errorf("%s in ip6tables", v)
		}
	case "icmp6-port-unreachable":
		if p.fam == model.IPv4 {
			return fmt.Errorf("%s in iptables", v)
		}
	default:
		return fmt.Errorf("bad --reject-with %q", v)
	}
	return nil
}

func (p *ruleParser) toDestination(v string) error {
	ap, err := netip.ParseAddrPort(v)
	if err != nil {
		return fmt.Errorf("bad --to-destination %q: %w", v, err)
	}
	if model.FamilyOf(ap.Addr()) != p.fam {
		return fmt.Errorf("--to-destination %s not of family %s", v, p.fam)
	}
	if p.proto == "" || p.proto == "all" {
		return fmt.Errorf("DNAT to a port needs -p")
	}
	return nil
}

func (t *fakeTable) checkTarget(v string) error {
	switch {
	case v == "DNAT" || v == "SNAT" || v == "MASQUERADE":
		if t.name != tableNAT {
			return fmt.Errorf("target %s outside the nat table", v)
		}
	case v == "REJECT" || v == "DROP":
		// iptables-legacy refuses DROP in nat ("not intended for filtering").
		if t.name == tableNAT {
			return fmt.Errorf("target %s in the nat table", v)
		}
	case isTarget(v):
	default:
		c, ok := t.chains[v]
		if !ok {
			return fmt.Errorf("chain %q does not exist", v)
		}
		if c.builtin {
			return fmt.Errorf("cannot jump to built-in chain %s", v)
		}
	}
	return nil
}

// hookTargets are the targets the kernel allows only from some built-in
// chains (xt_nat and xt_MASQUERADE declare their hooks): a rule with one of
// them in a user chain is refused once a jump from another hook reaches it.
var hookTargets = map[string][]string{
	"DNAT":       {"PREROUTING", "OUTPUT"},
	"SNAT":       {"POSTROUTING", "INPUT"},
	"MASQUERADE": {"POSTROUTING"},
}

// validate checks what the kernel checks when a table is committed: no loop
// of jumps reachable from a built-in chain, and every hook-bound target
// reached only from its hooks (legacy: translate_table; nf_tables: chain
// validation at commit).
func (t *fakeTable) validate() error {
	for _, name := range slices.Sorted(maps.Keys(t.chains)) {
		if t.chains[name].builtin {
			if err := t.walk(name, name, map[string]bool{}); err != nil {
				return err
			}
		}
	}
	return nil
}

// walk follows the jumps from chain, reached from the built-in chain hook,
// with onPath the chains of the current path.
func (t *fakeTable) walk(hook, chain string, onPath map[string]bool) error {
	if onPath[chain] {
		return fmt.Errorf("loop of jumps through %s, reached from %s", chain, hook)
	}
	onPath[chain] = true
	defer delete(onPath, chain)
	for _, r := range t.chains[chain].rules {
		if hooks, ok := hookTargets[r.target]; ok && !slices.Contains(hooks, hook) {
			return fmt.Errorf("target %s in %s, reached from %s (allowed from %v)", r.target, chain, hook, hooks)
		}
		if c, ok := t.chains[r.target]; ok && !c.builtin {
			if err := t.walk(hook, r.target, onPath); err != nil {
				return err
			}
		}
	}
	return nil
}
