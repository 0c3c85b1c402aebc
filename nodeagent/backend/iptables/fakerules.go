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

func quoteArgs(args []string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		if strings.ContainsAny(a, " \t") || a == "" {
			a = `"` + a + `"`
		}
		out[i] = a
	}
	return out
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
	r := fakeRule{text: strings.Join(quoteArgs(args), " "), args: args}
	proto := ""
	mods := map[string]bool{}
	need := func(i int) (string, error) {
		if i+1 >= len(args) {
			return "", fmt.Errorf("option %s needs a value", args[i])
		}
		return args[i+1], nil
	}
	needMod := func(opt string, ms ...string) error {
		for _, m := range ms {
			if mods[m] {
				return nil
			}
		}
		return fmt.Errorf("option %s without -m %s", opt, strings.Join(ms, "/"))
	}
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "!" {
			continue
		}
		var v string
		var err error
		switch a {
		case "--rcheck", "--set", "--reap", "--random-fully", "--rsource":
		default:
			if v, err = need(i); err != nil {
				return r, err
			}
			i++
		}
		switch a {
		case "-s", "-d":
			if _, _, err := parseAddrMask(fam, v); err != nil {
				return r, fmt.Errorf("%s: %w", a, err)
			}
		case "-i", "-o":
			if err := checkInterface(chain, a, v); err != nil {
				return r, err
			}
		case "-p":
			switch v {
			case "tcp", "udp", "sctp", "all":
			case "icmp":
				if fam == model.IPv6 {
					return r, fmt.Errorf("-p icmp in ip6tables")
				}
			default:
				return r, fmt.Errorf("unknown protocol %q", v)
			}
			proto = v
			if v == "tcp" || v == "udp" || v == "sctp" {
				// iptables loads the protocol's match implicitly:
				// "-p tcp --dport 80" is "-p tcp -m tcp --dport 80".
				mods[v] = true
			}
		case "-m":
			switch v {
			case "tcp", "udp", "sctp":
				// iptables: "-m tcp" needs "-p tcp" first.
				if proto != v {
					return r, fmt.Errorf("-m %s without -p %s", v, v)
				}
			case "comment", "conntrack", "addrtype", "statistic", "recent", "mark":
			default:
				return r, fmt.Errorf("unknown match %q", v)
			}
			mods[v] = true
		case "--dport", "--sport":
			if err := needMod(a, "tcp", "udp", "sctp"); err != nil {
				return r, err
			}
			if err := parsePort(v); err != nil {
				return r, err
			}
		case "--comment":
			if err := needMod(a, "comment"); err != nil {
				return r, err
			}
		case "--ctstate":
			if err := needMod(a, "conntrack"); err != nil {
				return r, err
			}
			for _, s := range strings.Split(v, ",") {
				switch s {
				case "NEW", "ESTABLISHED", "RELATED", "INVALID", "UNTRACKED", "SNAT", "DNAT":
				default:
					return r, fmt.Errorf("bad ctstate %q", s)
				}
			}
		case "--src-type", "--dst-type":
			if err := needMod(a, "addrtype"); err != nil {
				return r, err
			}
			if v != "LOCAL" && v != "UNICAST" && v != "BROADCAST" && v != "MULTICAST" {
				return r, fmt.Errorf("bad address type %q", v)
			}
		case "--mode":
			if err := needMod(a, "statistic"); err != nil {
				return r, err
			}
			if v != "random" && v != "nth" {
				return r, fmt.Errorf("bad statistic mode %q", v)
			}
		case "--probability":
			if err := needMod(a, "statistic"); err != nil {
				return r, err
			}
			p, err := strconv.ParseFloat(v, 64)
			if err != nil || p < 0 || p > 1 {
				return r, fmt.Errorf("bad probability %q", v)
			}
		case "--name":
			if err := needMod(a, "recent"); err != nil {
				return r, err
			}
		case "--rcheck", "--set", "--reap", "--rsource":
			if err := needMod(a, "recent"); err != nil {
				return r, err
			}
		case "--seconds":
			if err := needMod(a, "recent"); err != nil {
				return r, err
			}
			if n, err := strconv.Atoi(v); err != nil || n <= 0 {
				return r, fmt.Errorf("bad seconds %q", v)
			}
		case "--random-fully":
		case "--mark":
			if err := needMod(a, "mark"); err != nil {
				return r, err
			}
		case "-j", "-g":
			if r.target != "" {
				return r, fmt.Errorf("two targets")
			}
			r.target = v
			if err := t.checkTarget(v); err != nil {
				return r, err
			}
		case "--reject-with":
			if r.target != "REJECT" {
				return r, fmt.Errorf("--reject-with without -j REJECT")
			}
			switch v {
			case "tcp-reset":
				if proto != "tcp" {
					return r, fmt.Errorf("tcp-reset needs -p tcp")
				}
			case "icmp-port-unreachable":
				if fam == model.IPv6 {
					return r, fmt.Errorf("%s in ip6tables", v)
				}
			case "icmp6-port-unreachable":
				if fam == model.IPv4 {
					return r, fmt.Errorf("%s in iptables", v)
				}
			default:
				return r, fmt.Errorf("bad --reject-with %q", v)
			}
		case "--to-destination":
			if r.target != "DNAT" {
				return r, fmt.Errorf("--to-destination without -j DNAT")
			}
			ap, err := netip.ParseAddrPort(v)
			if err != nil {
				return r, fmt.Errorf("bad --to-destination %q: %w", v, err)
			}
			if model.FamilyOf(ap.Addr()) != fam {
				return r, fmt.Errorf("--to-destination %s not of family %s", v, fam)
			}
			if proto == "" || proto == "all" {
				return r, fmt.Errorf("DNAT to a port needs -p")
			}
		case "--or-mark", "--xor-mark", "--set-xmark":
			if r.target != "MARK" {
				return r, fmt.Errorf("%s without -j MARK", a)
			}
			if _, err := strconv.ParseUint(strings.SplitN(v, "/", 2)[0], 0, 32); err != nil {
				return r, fmt.Errorf("bad mark %q", v)
			}
		default:
			return r, fmt.Errorf("unknown option %q", a)
		}
		if a == "--random-fully" && r.target != "MASQUERADE" {
			return r, fmt.Errorf("--random-fully without -j MASQUERADE")
		}
	}
	return r, nil
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
