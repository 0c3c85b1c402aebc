package iptables

import (
	"fmt"
	"maps"
	"strings"
	"testing"

	"kpo.dev/kpo/hack/netns"
	"kpo.dev/kpo/nodeagent/model"
)

// paritySet is the one ipset that exists for the parity cases.
const paritySet = "KPO-PARITY"

// newParityFake is a Fake where paritySet exists.
func newParityFake() *Fake {
	f := NewFake()
	f.SetExists = func(name string) bool { return name == paritySet }
	return f
}

// parityCase is one iptables-restore --noflush input, run after setup.
type parityCase struct {
	name   string
	fam    model.Family
	setup  string // must be accepted everywhere
	input  string
	accept bool // what both flavours of the real iptables do
}

// nat and filter wrap rule lines in a table section.
func nat(lines ...string) string    { return section(tableNAT, lines) }
func filter(lines ...string) string { return section(tableFilter, lines) }
func section(table string, lines []string) string {
	return "*" + table + "\n" + strings.Join(lines, "\n") + "\nCOMMIT\n"
}

// parityCases are what kpo's rules use and the ways they can go wrong. The
// expected verdict is the real iptables' (both flavours agree on each); the
// Fake must reach the same.
var parityCases = []parityCase{
	{"plain chain and rules", model.IPv4, "", nat(":KPO-A - [0:0]", "-A KPO-A -d 10.96.0.10/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.244.1.10:8080", "-A PREROUTING -j KPO-A"), true},
	{"redeclaring an existing chain flushes it", model.IPv4, nat(":KPO-A - [0:0]", "-A KPO-A -j RETURN"), nat(":KPO-A - [0:0]"), true},
	{"-N of an existing chain", model.IPv4, nat(":KPO-A - [0:0]"), nat("-N KPO-A"), false},
	{"-N twice", model.IPv4, "", nat("-N KPO-A", "-N KPO-A"), false},
	{"jump to a missing chain", model.IPv4, "", nat(":KPO-A - [0:0]", "-A KPO-A -j KPO-MISSING"), false},
	{"jump to a built-in chain", model.IPv4, "", nat(":KPO-A - [0:0]", "-A KPO-A -j PREROUTING"), false},
	{"port 70000", model.IPv4, "", filter(":KPO-A - [0:0]", "-A KPO-A -p tcp -m tcp --dport 70000 -j DROP"), false},
	{"port 65535", model.IPv4, "", filter(":KPO-A - [0:0]", "-A KPO-A -p tcp -m tcp --dport 65535 -j DROP"), true},
	{"negative port", model.IPv4, "", filter(":KPO-A - [0:0]", "-A KPO-A -p tcp -m tcp --dport -1 -j DROP"), false},
	{"DNAT to port 70000", model.IPv4, "", nat(":KPO-A - [0:0]", "-A KPO-A -p tcp -j DNAT --to-destination 10.244.1.10:70000"), false},
	{"DNAT to a port without -p", model.IPv4, "", nat(":KPO-A - [0:0]", "-A KPO-A -j DNAT --to-destination 10.244.1.10:8080"), false},
	{"IPv6 address in iptables", model.IPv4, "", filter(":KPO-A - [0:0]", "-A KPO-A -d fd10:96::10/128 -j DROP"), false},
	{"IPv4 address in ip6tables", model.IPv6, "", filter(":KPO-A - [0:0]", "-A KPO-A -d 10.96.0.10/32 -j DROP"), false},
	{"IPv6 DNAT in iptables", model.IPv4, "", nat(":KPO-A - [0:0]", "-A KPO-A -p tcp -j DNAT --to-destination [fd10:244::a]:8080"), false},
	{"IPv4 DNAT in ip6tables", model.IPv6, "", nat(":KPO-A - [0:0]", "-A KPO-A -p tcp -j DNAT --to-destination 10.244.1.10:8080"), false},
	{"ICMPv4 reject in ip6tables", model.IPv6, "", filter(":KPO-A - [0:0]", "-A KPO-A -p udp -j REJECT --reject-with icmp-port-unreachable"), false},
	{"ICMPv6 reject in iptables", model.IPv4, "", filter(":KPO-A - [0:0]", "-A KPO-A -p udp -j REJECT --reject-with icmp6-port-unreachable"), false},
	{"IPv6 rules in ip6tables", model.IPv6, "", nat(":KPO-A - [0:0]", "-A KPO-A -d fd10:96::10/128 -p tcp -m tcp --dport 80 -j DNAT --to-destination [fd10:244::a]:8080", "-A KPO-A -d ::a/::ff -j RETURN"), true},
	{"bad address", model.IPv4, "", filter(":KPO-A - [0:0]", "-A KPO-A -s 10.0.0.300 -j DROP"), false},
	{"non-contiguous mask", model.IPv4, "", filter(":KPO-A - [0:0]", "-A KPO-A -d 0.0.0.10/0.0.0.255 -j RETURN"), true},
	{"deleting a referenced chain", model.IPv4, nat(":KPO-A - [0:0]", ":KPO-B - [0:0]", "-A KPO-A -j KPO-B"), nat("-X KPO-B"), false},
	{"deleting a chain referenced from a built-in chain", model.IPv4, nat(":KPO-A - [0:0]", "-A PREROUTING -j KPO-A"), nat("-X KPO-A"), false},
	{"deleting a flushed, unreferenced chain", model.IPv4, nat(":KPO-A - [0:0]", ":KPO-B - [0:0]", "-A KPO-A -j KPO-B"), nat(":KPO-A - [0:0]", "-X KPO-B"), true},
	{"deleting a non-empty chain", model.IPv4, nat(":KPO-A - [0:0]", "-A KPO-A -j RETURN"), nat("-X KPO-A"), false},
	{"deleting a missing chain", model.IPv4, "", nat("-X KPO-A"), false},
	{"deleting a built-in chain", model.IPv4, "", nat("-X PREROUTING"), false},
	{"deleting a missing rule", model.IPv4, nat(":KPO-A - [0:0]"), nat("-D KPO-A -j RETURN"), false},
	{"chain name of 28 characters", model.IPv4, "", nat(":KPO-ABCDEFGHIJKLMNOPQRSTUVWX - [0:0]"), true},
	{"chain name of 29 characters", model.IPv4, "", nat(":KPO-ABCDEFGHIJKLMNOPQRSTUVWXY - [0:0]"), false},
	{"DROP in nat", model.IPv4, "", nat(":KPO-A - [0:0]", "-A KPO-A -j DROP"), false},
	{"DNAT in filter", model.IPv4, "", filter(":KPO-A - [0:0]", "-A KPO-A -p tcp -j DNAT --to-destination 10.244.1.10:8080"), false},
	{"MASQUERADE in filter", model.IPv4, "", filter(":KPO-A - [0:0]", "-A KPO-A -j MASQUERADE"), false},
	{"tcp-reset without -p tcp", model.IPv4, "", filter(":KPO-A - [0:0]", "-A KPO-A -p udp -j REJECT --reject-with tcp-reset"), false},
	{"-m tcp without -p tcp", model.IPv4, "", filter(":KPO-A - [0:0]", "-A KPO-A -m tcp --dport 80 -j DROP"), false},
	{"--dport without -m tcp", model.IPv4, "", filter(":KPO-A - [0:0]", "-A KPO-A -p tcp --dport 80 -j DROP"), true},
	{"unknown match", model.IPv4, "", filter(":KPO-A - [0:0]", "-A KPO-A -m nosuchmatch -j DROP"), false},
	{"unknown target", model.IPv4, "", filter(":KPO-A - [0:0]", "-A KPO-A -j NOSUCHTARGET"), false},
	{"probability 2", model.IPv4, "", nat(":KPO-A - [0:0]", "-A KPO-A -m statistic --mode random --probability 2 -j RETURN"), false},
	{"bad ctstate", model.IPv4, "", filter(":KPO-A - [0:0]", "-A KPO-A -m conntrack --ctstate FOO -j DROP"), false},
	{"bad address type", model.IPv4, "", filter(":KPO-A - [0:0]", "-A KPO-A -m addrtype --dst-type NOPE -j DROP"), false},
	{"mark wider than 32 bits", model.IPv4, "", nat(":KPO-A - [0:0]", "-A KPO-A -j MARK --or-mark 0x100000000"), false},
	{"comment of 300 characters (iptables truncates it)", model.IPv4, "", filter(":KPO-A - [0:0]", `-A KPO-A -m comment --comment "`+strings.Repeat("c", 300)+`" -j DROP`), true},
	{"-i with a prefix in a chain reached from OUTPUT", model.IPv4, "", nat(":KPO-A - [0:0]", "-A KPO-A -i veth+ -j RETURN", "-A OUTPUT -j KPO-A"), true},
	{"interface name of 15 characters", model.IPv4, "", nat(":KPO-A - [0:0]", "-A KPO-A -i abcdefghijklmno -j RETURN"), true},
	{"interface name of 16 characters", model.IPv4, "", nat(":KPO-A - [0:0]", "-A KPO-A -i abcdefghijklmnop -j RETURN"), false},
	{"-i in OUTPUT", model.IPv4, "", nat("-A OUTPUT -i eth0 -j RETURN"), false},
	{"a match of an existing ipset", model.IPv4, "", nat(":KPO-A - [0:0]", "-A KPO-A -m set --match-set "+paritySet+" dst,dst,src -j RETURN"), true},
	{"a match of a missing ipset", model.IPv4, "", nat(":KPO-A - [0:0]", "-A KPO-A -m set --match-set KPO-NOSUCHSET dst,dst -j RETURN"), false},
	{"bad ipset flags", model.IPv4, "", nat(":KPO-A - [0:0]", "-A KPO-A -m set --match-set "+paritySet+" dst,any -j RETURN"), false},
	{"--match-set without -m set", model.IPv4, "", nat(":KPO-A - [0:0]", "-A KPO-A --match-set "+paritySet+" dst -j RETURN"), false},
	{"missing COMMIT", model.IPv4, "", "*nat\n:KPO-A - [0:0]\n", false},
	{"DNAT reached from POSTROUTING", model.IPv4, "", nat(":KPO-A - [0:0]", "-A KPO-A -p tcp -j DNAT --to-destination 10.244.1.10:8080", "-A POSTROUTING -j KPO-A"), false},
	{"MASQUERADE reached from PREROUTING", model.IPv4, "", nat(":KPO-A - [0:0]", "-A KPO-A -j MASQUERADE", "-A PREROUTING -j KPO-A"), false},
	{"MASQUERADE in POSTROUTING", model.IPv4, "", nat(":KPO-A - [0:0]", "-A KPO-A -j MASQUERADE --random-fully", "-A POSTROUTING -j KPO-A"), true},
	{"a loop of jumps, unreachable", model.IPv4, "", nat(":KPO-A - [0:0]", ":KPO-B - [0:0]", "-A KPO-A -j KPO-B", "-A KPO-B -j KPO-A"), true},
	{"a loop of jumps from PREROUTING", model.IPv4, "", nat(":KPO-A - [0:0]", ":KPO-B - [0:0]", "-A KPO-A -j KPO-B", "-A KPO-B -j KPO-A", "-A PREROUTING -j KPO-A"), false},
	{"a chain reached twice is no loop", model.IPv4, "", nat(":KPO-A - [0:0]", ":KPO-B - [0:0]", "-A KPO-A -j KPO-B", "-A KPO-A -j KPO-B", "-A PREROUTING -j KPO-A", "-A OUTPUT -j KPO-B"), true},
	{"DNAT reached from PREROUTING and OUTPUT", model.IPv4, "", nat(":KPO-A - [0:0]", "-A KPO-A -p tcp -j DNAT --to-destination 10.244.1.10:8080", "-A PREROUTING -j KPO-A", "-A OUTPUT -j KPO-A"), true},
	{"a jump added later makes DNAT reachable from POSTROUTING", model.IPv4,
		nat(":KPO-A - [0:0]", "-A KPO-A -p tcp -j DNAT --to-destination 10.244.1.10:8080"), nat("-I POSTROUTING -j KPO-A"), false},
	{"a failing section after a good one: the good one stays", model.IPv4, "",
		filter(":KPO-A - [0:0]", "-A KPO-A -j DROP") + nat(":KPO-B - [0:0]", "-A KPO-B -j KPO-MISSING"), false},
	{"kpo's affinity rules", model.IPv4, "", nat(":KPO-SEP-A - [0:0]", ":KPO-SVC-A - [0:0]",
		"-A KPO-SEP-A -s 10.244.1.10/32 -j MARK --or-mark 0x4000",
		"-A KPO-SEP-A -p tcp -m recent --name KPO-SEP-A --set -j DNAT --to-destination 10.244.1.10:8080",
		"-A KPO-SVC-A -m recent --name KPO-SEP-A --rcheck --seconds 10800 --reap -j KPO-SEP-A",
		"-A KPO-SVC-A -m statistic --mode random --probability 0.5000000000 -j KPO-SEP-A",
		"-A PREROUTING -m comment --comment \"kpo service portals\" -j KPO-SVC-A"), true},
	{"kpo's filter rules", model.IPv4, "", filter(":KPO-A - [0:0]",
		"-A KPO-A -m conntrack --ctstate INVALID -j DROP",
		"-A KPO-A -m mark --mark 0x4000/0x4000 -j ACCEPT",
		"-A KPO-A -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP",
		"-A KPO-A -d 10.96.0.11/32 -p tcp -m tcp --dport 80 -j REJECT --reject-with tcp-reset",
		"-A KPO-A -m addrtype --dst-type LOCAL ! -d 127.0.0.0/8 -j RETURN",
		"-A INPUT -m conntrack --ctstate NEW -m conntrack ! --ctstate DNAT -j KPO-A"), true},
}

// TestFakeParity runs every parity case against the Fake and against the
// real iptables-nft and iptables-legacy in a namespace, and expects the same
// verdict and the same resulting chains (with their rule counts) from all.
func TestFakeParity(t *testing.T) {
	for _, c := range parityCases { // the Fake alone, also with -short
		f := newParityFake()
		if c.setup != "" {
			if err := f.Restore(c.fam, []byte(c.setup)); err != nil {
				t.Fatalf("%s: setup refused by the Fake: %v", c.name, err)
			}
		}
		if err := f.Restore(c.fam, []byte(c.input)); (err == nil) != c.accept {
			t.Errorf("%s: Fake says %v, the kernel accept=%v", c.name, err, c.accept)
		}
	}
	netns.Skip(t)
	for _, v := range []Variant{VariantNFT, VariantLegacy} {
		t.Run(string(v), func(t *testing.T) {
			ns := netns.New(t, "parity")
			ns.MustRun(t, "ipset", "create", paritySet, "hash:ip,port,ip")
			for _, c := range parityCases {
				cmd, restore := v.binaries(c.fam)
				for _, table := range []string{tableNAT, tableFilter} {
					ns.MustRun(t, cmd, "-t", table, "-F")
					ns.MustRun(t, cmd, "-t", table, "-X")
				}
				run := func(data string) error {
					c := ns.Command(restore, "--noflush")
					c.Stdin = strings.NewReader(data)
					if out, err := c.CombinedOutput(); err != nil {
						return fmt.Errorf("%v: %s", err, strings.TrimSpace(string(out)))
					}
					return nil
				}
				f := newParityFake()
				if c.setup != "" {
					if err := run(c.setup); err != nil {
						t.Fatalf("%s: setup refused: %v", c.name, err)
					}
					_ = f.Restore(c.fam, []byte(c.setup))
				}
				realErr, fakeErr := run(c.input), f.Restore(c.fam, []byte(c.input))
				if (realErr == nil) != c.accept {
					t.Errorf("%s: %s says %v, the case expects accept=%v", c.name, restore, realErr, c.accept)
				}
				if (realErr == nil) != (fakeErr == nil) {
					t.Errorf("%s: %s says %v, the Fake %v", c.name, restore, realErr, fakeErr)
				}
				for _, table := range []string{tableNAT, tableFilter} {
					got := kernelChains(t, ns, cmd, table)
					if want := fakeChains(f, c.fam, table); !maps.Equal(got, want) {
						t.Errorf("%s: %s %s holds %v, the Fake %v", c.name, cmd, table, got, want)
					}
				}
			}
		})
	}
}

// kernelChains is a table's chains with their rule counts, from "iptables -S".
func kernelChains(t *testing.T, ns *netns.NS, cmd, table string) map[string]int {
	out := map[string]int{}
	for _, l := range strings.Split(ns.MustRun(t, cmd, "-t", table, "-S"), "\n") {
		f := strings.Fields(l)
		switch {
		case len(f) >= 2 && (f[0] == "-N" || f[0] == "-P"):
			out[f[1]] += 0
		case len(f) >= 2 && f[0] == "-A":
			out[f[1]]++
		}
	}
	return out
}

func fakeChains(f *Fake, fam model.Family, table string) map[string]int {
	out := map[string]int{}
	for _, c := range f.Chains(fam, table) {
		rules, _ := f.Rules(fam, table, c)
		out[c] = len(rules)
	}
	return out
}
