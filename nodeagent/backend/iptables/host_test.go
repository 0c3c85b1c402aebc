package iptables

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"kpo.dev/kpo/nodeagent/backend"
	"kpo.dev/kpo/nodeagent/model"
)

// TestForwardRules checks KPO-FORWARD as kube-proxy's KUBE-FORWARD: INVALID
// packets dropped (unless nf_conntrack_tcp_be_liberal), marked and
// established traffic accepted before a FORWARD policy of DROP, in both
// families.
func TestForwardRules(t *testing.T) {
	for _, liberal := range []bool{false, true} {
		sys := FakeSysctls{sysctlTCPBeLiberal: map[bool]string{false: "0", true: "1"}[liberal]}
		f := NewFake()
		b, err := New(testSettings, nil, WithKernel(f), WithSysctls(sys))
		if err != nil {
			t.Fatal(err)
		}
		mustSync(t, b, snapOf(svc("a", "10.96.0.10", 80, ep("10.244.1.10:8080", true))), true)
		for _, fam := range []model.Family{model.IPv4, model.IPv6} {
			if err := f.Exec(fam, tableFilter, "-A FORWARD -j DROP"); err != nil { // a host firewall's policy
				t.Fatal(err)
			}
			src, dst := "198.51.100.200", "10.244.1.10"
			if fam == model.IPv6 {
				src, dst = "2001:db8:1::200", "fd10:244:0:1::a"
			}
			p := pkt(src, dst, 8080)
			p.DNATed = true
			marked := p
			marked.Mark = 1 << testSettings.MasqueradeBit
			established, invalid := p, p
			established.State, invalid.State = "ESTABLISHED", "INVALID"
			wantInvalid := "DROP"
			for _, c := range []struct {
				what string
				p    Packet
				want string
			}{
				{"marked first packet", marked, "ACCEPT"},
				{"established", established, "ACCEPT"},
				{"unmarked first packet (the host's policy decides)", p, "DROP"},
				{"invalid", invalid, wantInvalid},
			} {
				got := f.TraceFilter(fam, "FORWARD", c.p)
				if got[c.want] != 1 {
					t.Errorf("liberal=%v %s %s: %v, want %s", liberal, fam, c.what, got, c.want)
				}
			}
			rules, _ := f.Rules(fam, tableFilter, chainForward)
			hasDrop := slices.Contains(rules, "-m conntrack --ctstate INVALID -j DROP")
			if hasDrop == liberal {
				t.Errorf("liberal=%v %s: INVALID drop present %v: %q", liberal, fam, hasDrop, rules)
			}
		}
	}
}

// TestLocalnetGuard checks route_localnet and the rule that makes it safe
// (kube-proxy's "block incoming localnet connections"): both only when IPv4
// node ports answer on localhost.
func TestLocalnetGuard(t *testing.T) {
	np := svc("np", "10.96.0.10", 80, ep("10.244.1.10:8080", true))
	np.NodePort = 30080
	loopback := []netip.Addr{addr("127.0.0.1"), addr("198.51.100.1")}
	for _, c := range []struct {
		name      string
		localhost bool
		npIPs     []netip.Addr // nil: every local address
		want      bool
	}{
		{"default: every address", true, nil, true},
		{"localhostNodePorts false", false, nil, false},
		{"node-port addresses with 127.0.0.1", true, loopback, true},
		{"node-port addresses without loopback", true, []netip.Addr{addr("198.51.100.1")}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			sys := FakeSysctls{}
			f := NewFake()
			s := testSettings
			s.LocalhostNodePorts = c.localhost
			b, err := New(s, nil, WithKernel(f), WithSysctls(sys))
			if err != nil {
				t.Fatal(err)
			}
			snap := snapOf(np)
			if c.npIPs != nil {
				snap.Node.NodePortIPs = map[model.Family][]netip.Addr{model.IPv4: c.npIPs}
			}
			mustSync(t, b, snap, true)
			if got := sys[sysctlRouteLocalnet] == "1"; got != c.want {
				t.Errorf("route_localnet set %v, want %v (%v)", got, c.want, sys)
			}
			martian := pkt("198.51.100.200", "127.0.0.1", 30080)
			fromLoopback := pkt("127.0.0.1", "127.0.0.1", 30080)
			reply := martian
			reply.State = "ESTABLISHED"
			wantMartian := map[bool]string{true: "DROP", false: "ACCEPT"}[c.want]
			for _, tc := range []struct {
				what string
				p    Packet
				want string
			}{{"martian", martian, wantMartian}, {"from loopback", fromLoopback, "ACCEPT"}, {"reply", reply, "ACCEPT"}} {
				if got := f.TraceFilter(model.IPv4, "INPUT", tc.p); got[tc.want] != 1 {
					t.Errorf("%s: %v, want %s", tc.what, got, tc.want)
				}
			}
			if rules, _ := f.Rules(model.IPv6, tableFilter, chainFirewall); len(rules) != 0 {
				t.Errorf("IPv6 guard %q: localhost node ports are IPv4 only", rules)
			}
		})
	}
}

// ipvsCompanion is what the ipvs mode keeps in the same tables (see package
// ipvs, rules.go): chains named KPO-IPVS-* and jumps to them.
var ipvsCompanion = []struct{ table, cmd string }{
	{tableNAT, "-N KPO-IPVS-SERVICES"},
	{tableNAT, "-N KPO-IPVS-MARK-MASQ"},
	{tableNAT, "-A KPO-IPVS-MARK-MASQ -j MARK --or-mark 0x4000"},
	{tableNAT, "-A KPO-IPVS-SERVICES -j KPO-IPVS-MARK-MASQ"},
	{tableNAT, `-I PREROUTING -m comment --comment "kpo ipvs" -j KPO-IPVS-SERVICES`},
	{tableFilter, "-N KPO-IPVS-SERVICES"},
	{tableFilter, "-A KPO-IPVS-SERVICES -j DROP"},
	{tableFilter, `-I INPUT -m conntrack --ctstate NEW -m comment --comment "kpo ipvs" -j KPO-IPVS-SERVICES`},
}

// TestLeavesIPVSCompanion is the mode-switch bug: the iptables mode's full
// sync and Cleanup took the ipvs mode's KPO-IPVS-* chains for their own (the
// kernel refuses to delete a referenced chain, so both failed), and a switch
// between the two modes broke. Each mode's cleanup touches only its own.
func TestLeavesIPVSCompanion(t *testing.T) {
	b, f := newFakeBackend(t, testSettings)
	for _, fam := range []model.Family{model.IPv4, model.IPv6} {
		for _, c := range ipvsCompanion {
			if err := f.Exec(fam, c.table, c.cmd); err != nil {
				t.Fatal(c.cmd, err)
			}
		}
	}
	before := map[string]string{}
	snapshot := func(fam model.Family, table string) string {
		var out []string
		for _, l := range strings.Split(f.Dump(fam, table), "\n") {
			if strings.Contains(l, IPVSChainPrefix) {
				out = append(out, l)
			}
		}
		return strings.Join(out, "\n")
	}
	for _, fam := range []model.Family{model.IPv4, model.IPv6} {
		for _, table := range []string{tableNAT, tableFilter} {
			before[fam.String()+table] = snapshot(fam, table)
		}
	}
	s := snapOf(svc("a", "10.96.0.10", 80, ep("10.244.1.10:8080", true)))
	mustSync(t, b, s, true)
	mustSync(t, b, s, true) // drift repair over a listing that shows them
	if err := b.Cleanup(context.Background()); err != nil {
		t.Fatalf("Cleanup: %v", err)
	}
	for _, fam := range []model.Family{model.IPv4, model.IPv6} {
		for _, table := range []string{tableNAT, tableFilter} {
			if got := snapshot(fam, table); got != before[fam.String()+table] {
				t.Errorf("%s %s: the ipvs mode's rules changed:\n%s\nwant\n%s", fam, table, got, before[fam.String()+table])
			}
			for _, c := range f.Chains(fam, table) {
				if ownChain(c) {
					t.Errorf("%s %s: %s left by Cleanup", fam, table, c)
				}
			}
		}
	}
}

// TestChainNamesAvoidIPVSPrefix guards the ownership split: no chain this
// mode makes may look like the ipvs mode's.
func TestChainNamesAvoidIPVSPrefix(t *testing.T) {
	s := backend.Settings{MasqueradeBit: 14, LocalhostNodePorts: true}
	b, f := newFakeBackend(t, s)
	sticky := svc("s", "10.96.0.11", 80, ep("10.244.1.10:8080", true))
	sticky.AffinityTimeout = 1e9
	sticky.NodePort = 30080
	mustSync(t, b, snapOf(sticky, svc("a", "10.96.0.10", 80, ep("10.244.1.10:8080", true))), true)
	for _, fam := range []model.Family{model.IPv4, model.IPv6} {
		for _, table := range []string{tableNAT, tableFilter} {
			for _, c := range f.Chains(fam, table) {
				if strings.HasPrefix(c, chainPrefix) && !ownChain(c) {
					t.Errorf("%s %s: %s", fam, table, c)
				}
			}
		}
	}
}
