package iptables

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strings"

	"kpo.dev/kpo/nodeagent/model"
)

// What both iptables-based modes write: this mode, and the ipvs mode's
// companion rules (package ipvs), which use these so that the two cannot
// drift apart. kube-proxy's iptables and IPVS modes write the same rules
// here (pkg/proxy/iptables/proxier.go, pkg/proxy/ipvs/proxier.go).

// Jump is a rule in a built-in chain that sends traffic to one of a mode's
// chains. Rule holds the arguments after "-A <chain>", unquoted.
type Jump struct {
	Table, Chain string
	Rule         []string
}

// Insert is the restore command that inserts j first in its chain, as
// kube-proxy does: rules of other software (a firewall's ACCEPT) must not
// bypass service translation.
func (j Jump) Insert() string {
	return "-I " + j.Chain + " " + strings.Join(quoteArgs(j.Rule), " ")
}

// In reports whether a listing ("iptables -S") of j's table holds j.
func (j Jump) In(lines []string) bool {
	return slices.ContainsFunc(lines, j.Is)
}

// Is reports whether a listed line is j, recognised by its chain, comment
// and target: iptables -S normalises matches differently across versions
// and variants, and a jump missed here would be inserted again at every
// full sync.
func (j Jump) Is(line string) bool {
	line = strings.TrimSpace(line)
	return strings.HasPrefix(line, "-A "+j.Chain+" ") &&
		strings.Contains(line, `--comment "`+argAfter(j.Rule, "--comment")+`"`) &&
		strings.HasSuffix(line, "-j "+argAfter(j.Rule, "-j"))
}

// RemoveOwn deletes, with one restore per family, the jumps and every chain
// own claims in the filter and nat tables: the jumps as listed (so that the
// rule spec matches whatever normalisation the variant applies), then the
// chains, flushed first. Each table's section commits atomically, so no
// packet meets a half-deleted chain. Errors are collected: what can be
// removed is.
func RemoveOwn(k Kernel, families []model.Family, own func(chain string) bool, jumps []Jump) error {
	var errs []error
	for _, f := range families {
		var out bytes.Buffer
		for _, table := range []string{tableFilter, tableNAT} {
			lines, err := k.ListRules(f, table)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: listing %s: %w", f, table, err))
				continue
			}
			t := newTableWriter(table)
			for _, c := range chainsOf(lines) {
				if own(c) {
					t.remove(c)
				}
			}
			for _, l := range lines {
				for _, j := range jumps {
					if j.Table == table && j.Is(l) {
						t.edit("-D" + strings.TrimPrefix(strings.TrimSpace(l), "-A"))
						break
					}
				}
			}
			t.appendTo(&out)
		}
		if out.Len() > 0 {
			if err := k.Restore(f, out.Bytes()); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", f, err))
			}
		}
	}
	return errors.Join(errs...)
}

// chainsOf returns the chains of an "iptables -S" listing.
func chainsOf(lines []string) []string {
	var out []string
	for _, l := range lines {
		if name, ok := strings.CutPrefix(l, "-N "); ok {
			out = append(out, strings.TrimSpace(name))
		} else if name, ok := strings.CutPrefix(l, "-P "); ok {
			out = append(out, strings.Fields(name)[0])
		}
	}
	return out
}

// MarkRule is the rule of a mark-for-masquerade chain.
func MarkRule(mark uint32) string { return fmt.Sprintf("-j MARK --or-mark %#x", mark) }

// MasqueradeRules end a postrouting chain: packets without the masquerade
// bit return; the bit is cleared (a packet re-entering the stack, for
// instance through a tunnel, is not masqueraded twice); the rest is
// masqueraded, with fully random source ports where iptables can
// (kube-proxy always asks for --random-fully).
func MasqueradeRules(mark uint32, randomFully bool) []string {
	m := fmt.Sprintf("%#x", mark)
	return []string{"-m mark ! --mark " + m + "/" + m + " -j RETURN", "-j MARK --xor-mark " + m, masquerade(randomFully)}
}

func masquerade(randomFully bool) string {
	if randomFully {
		return "-j MASQUERADE --random-fully"
	}
	return "-j MASQUERADE"
}

// UnlessPodsRules mark everything but pods' traffic (local: the detect-local
// matches): a RETURN per match, then the jump to markChain. Without a match
// nothing can be told apart, and nothing is marked.
func UnlessPodsRules(local []string, markChain string) []string {
	var out []string
	for _, m := range local {
		out = append(out, m+" -j RETURN")
	}
	if len(local) > 0 {
		out = append(out, "-j "+markChain)
	}
	return out
}

// ForwardRules are kube-proxy's KUBE-FORWARD: service traffic is forwarded
// even where the FORWARD policy drops (the first packet carries the
// masquerade mark, the rest is ESTABLISHED). With dropInvalid (the iptables
// mode, unless nf_conntrack_tcp_be_liberal), out-of-window packets are
// dropped first: not translated back, they would reach a client that
// answers with a RST and kills its own connection (kubernetes#74839,
// #117924). kube-proxy's IPVS mode drops none.
func ForwardRules(mark uint32, dropInvalid bool) []string {
	var out []string
	if dropInvalid {
		out = append(out, "-m conntrack --ctstate INVALID -j DROP")
	}
	m := fmt.Sprintf("%#x", mark)
	return append(out,
		`-m comment --comment "kpo forwarding rules" -m mark --mark `+m+"/"+m+" -j ACCEPT",
		`-m comment --comment "kpo forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT`)
}

// quoteArgs quotes the arguments iptables-save would quote.
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

// argAfter is the argument after opt, or "".
func argAfter(args []string, opt string) string {
	for i, a := range args {
		if a == opt && i+1 < len(args) {
			return args[i+1]
		}
	}
	return ""
}
