package iptables

import (
	"maps"
	"math"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"kpo.dev/kpo/nodeagent/backend"
	"kpo.dev/kpo/nodeagent/model"
	"kpo.dev/kpo/nodeagent/model/modeltest"
)

func approx(t *testing.T, what string, got map[NATResult]float64, want map[NATResult]float64) {
	t.Helper()
	ok := len(got) == len(want)
	for k, w := range want {
		if math.Abs(got[k]-w) > 1e-6 {
			ok = false
		}
	}
	if !ok {
		t.Errorf("%s: got %v, want %v", what, got, want)
	}
}

// Endpoints, addresses and helpers of the behaviour table.
var (
	behE1, behE2 = ep("10.244.1.10:8080", true), ep("10.244.2.20:8080", false)
	untranslated = one(res("", false))
)

const (
	behNode, behClient, behPod = "198.51.100.1", "198.51.100.200", "10.244.1.10"
	behOther                   = "10.244.3.3"
)

// trace is a packet through one hook and what must happen to it.
type trace struct {
	name  string
	hook  string
	p     Packet
	want  map[NATResult]float64
	fHook string             // filter hook for untranslated packets
	fWant map[string]float64 // nil: no filter check
}

func half(a, b NATResult) map[NATResult]float64 { return map[NATResult]float64{a: .5, b: .5} }
func one(a NATResult) map[NATResult]float64     { return map[NATResult]float64{a: 1} }
func local(p Packet) Packet                     { p.DstLocal = true; return p }
func fromNode(p Packet) Packet                  { p.SrcLocal = true; return p }

// behaviourCase is a service port on a node and the traces through it.
type behaviourCase struct {
	name     string
	settings backend.Settings
	sp       func() *model.ServicePort
	node     func(*model.NodeInfo)
	traces   []trace
}

var behaviourCases = []behaviourCase{{
	name: "cluster IP",
	sp:   func() *model.ServicePort { return svc("a", "10.96.0.10", 80, behE1, behE2) },
	traces: []trace{
		{name: "pod", hook: "PREROUTING", p: pkt(behOther, "10.96.0.10", 80), want: half(res("10.244.1.10:8080", false), res("10.244.2.20:8080", false))},
		{name: "node masqueraded", hook: "OUTPUT", p: fromNode(pkt(behNode, "10.96.0.10", 80)), want: half(res("10.244.1.10:8080", true), res("10.244.2.20:8080", true))},
		{name: "hairpin", hook: "PREROUTING", p: pkt(behPod, "10.96.0.10", 80), want: half(res("10.244.1.10:8080", true), res("10.244.2.20:8080", false))},
		{name: "other port", hook: "PREROUTING", p: pkt(behOther, "10.96.0.10", 81), want: untranslated},
	},
}, {
	// An endpoint whose slice names no node may be a pod on this node: its
	// traffic back to itself is masqueraded, as kube-proxy's KUBE-SEP chains
	// do for every endpoint (conformance seed 737).
	name: "cluster IP, endpoint without a node",
	sp: func() *model.ServicePort {
		unplaced := ep("10.244.3.3:8080", false)
		unplaced.Unplaced = true
		return svc("a", "10.96.0.10", 80, unplaced)
	},
	traces: []trace{
		{name: "hairpin", hook: "PREROUTING", p: pkt(behOther, "10.96.0.10", 80), want: one(res("10.244.3.3:8080", true))},
		{name: "other pod", hook: "PREROUTING", p: pkt("10.244.4.4", "10.96.0.10", 80), want: one(res("10.244.3.3:8080", false))},
	},
}, {
	name: "no endpoints rejects",
	sp:   func() *model.ServicePort { return svc("a", "10.96.0.10", 80) },
	traces: []trace{
		{name: "pod", hook: "PREROUTING", p: pkt(behOther, "10.96.0.10", 80), want: untranslated, fHook: "FORWARD", fWant: map[string]float64{"REJECT": 1}},
		{name: "node", hook: "OUTPUT", p: fromNode(pkt(behNode, "10.96.0.10", 80)), want: untranslated, fHook: "OUTPUT", fWant: map[string]float64{"REJECT": 1}},
	},
}, {
	name:     "masquerade all",
	settings: backend.Settings{MasqueradeBit: 14, MasqueradeAll: true},
	sp:       func() *model.ServicePort { return svc("a", "10.96.0.10", 80, behE2) },
	traces:   []trace{{name: "pod", hook: "PREROUTING", p: pkt(behOther, "10.96.0.10", 80), want: one(res("10.244.2.20:8080", true))}},
}, {
	name:   "no cluster CIDRs: no masquerade",
	sp:     func() *model.ServicePort { return svc("a", "10.96.0.10", 80, behE2) },
	node:   func(n *model.NodeInfo) { n.ClusterCIDRs = nil },
	traces: []trace{{name: "node", hook: "OUTPUT", p: fromNode(pkt(behNode, "10.96.0.10", 80)), want: one(res("10.244.2.20:8080", false))}},
}, {
	name: "node port, external IP, LB IP (policy Cluster)",
	sp: func() *model.ServicePort {
		sp := svc("a", "10.96.0.10", 80, behE2)
		sp.NodePort, sp.ExternalIPs, sp.LoadBalancerIPs = 30080, []netip.Addr{addr("203.0.113.5")}, []netip.Addr{addr("203.0.113.6")}
		return sp
	},
	traces: []trace{
		{name: "node port", hook: "PREROUTING", p: local(pkt(behClient, behNode, 30080)), want: one(res("10.244.2.20:8080", true))},
		{name: "node port not local", hook: "PREROUTING", p: pkt(behClient, behNode, 30080), want: untranslated},
		{name: "external IP", hook: "PREROUTING", p: pkt(behClient, "203.0.113.5", 80), want: one(res("10.244.2.20:8080", true))},
		{name: "LB IP", hook: "PREROUTING", p: pkt(behClient, "203.0.113.6", 80), want: one(res("10.244.2.20:8080", true))},
		{name: "localhost", hook: "OUTPUT", p: local(fromNode(pkt("127.0.0.1", "127.0.0.1", 30080))), want: untranslated},
	},
}, {
	name: "node port on explicit addresses",
	sp: func() *model.ServicePort {
		sp := svc("a", "10.96.0.10", 80, behE2)
		sp.NodePort = 30080
		return sp
	},
	node: func(n *model.NodeInfo) { n.NodePortIPs = map[model.Family][]netip.Addr{model.IPv4: {addr(behNode)}} },
	traces: []trace{
		{name: "listed", hook: "PREROUTING", p: local(pkt(behClient, behNode, 30080)), want: one(res("10.244.2.20:8080", true))},
		{name: "other local", hook: "PREROUTING", p: local(pkt(behClient, "10.244.1.1", 30080)), want: untranslated},
	},
}, {
	name: "policy Local",
	sp: func() *model.ServicePort {
		sp := modeltest.LocalPolicy(svc("a", "10.96.0.10", 80, behE1, behE2), behE1)
		sp.NodePort, sp.LoadBalancerIPs = 30080, []netip.Addr{addr("203.0.113.6")}
		return sp
	},
	traces: []trace{
		{name: "outside client keeps source", hook: "PREROUTING", p: local(pkt(behClient, behNode, 30080)), want: one(res("10.244.1.10:8080", false))},
		{name: "outside client LB", hook: "PREROUTING", p: pkt(behClient, "203.0.113.6", 80), want: one(res("10.244.1.10:8080", false))},
		{name: "pod uses cluster endpoints", hook: "PREROUTING", p: pkt(behOther, "203.0.113.6", 80), want: half(res("10.244.1.10:8080", false), res("10.244.2.20:8080", false))},
		{name: "node uses cluster endpoints", hook: "OUTPUT", p: fromNode(pkt(behNode, "203.0.113.6", 80)), want: half(res("10.244.1.10:8080", true), res("10.244.2.20:8080", true))},
		// A remote endpoint reaching itself through this node's node port.
		{name: "remote pod hairpin", hook: "PREROUTING", p: local(pkt("10.244.2.20", behNode, 30080)), want: half(res("10.244.1.10:8080", false), res("10.244.2.20:8080", true))},
	},
}, {
	// External and cluster endpoints are the same set, so external traffic
	// shares the SVC chain: its masquerade matches the ClusterIP only. (It
	// did not: outside clients lost their source address.)
	name: "policy Local, every endpoint local",
	sp: func() *model.ServicePort {
		sp := modeltest.LocalPolicy(svc("a", "10.96.0.10", 80, behE1), behE1)
		sp.NodePort, sp.LoadBalancerIPs = 30080, []netip.Addr{addr("203.0.113.6")}
		return sp
	},
	traces: []trace{
		{name: "outside client keeps source", hook: "PREROUTING", p: local(pkt(behClient, behNode, 30080)), want: one(res("10.244.1.10:8080", false))},
		{name: "outside client LB keeps source", hook: "PREROUTING", p: pkt(behClient, "203.0.113.6", 80), want: one(res("10.244.1.10:8080", false))},
		{name: "ClusterIP from outside masqueraded", hook: "PREROUTING", p: pkt(behClient, "10.96.0.10", 80), want: one(res("10.244.1.10:8080", true))},
	},
}, {
	name: "policy Local without local endpoints drops",
	sp: func() *model.ServicePort {
		sp := modeltest.LocalPolicy(svc("a", "10.96.0.10", 80, behE2))
		sp.NodePort = 30080
		return sp
	},
	traces: []trace{
		{name: "outside", hook: "PREROUTING", p: local(pkt(behClient, behNode, 30080)), want: untranslated, fHook: "INPUT", fWant: map[string]float64{"DROP": 1}},
		{name: "node", hook: "OUTPUT", p: local(fromNode(pkt(behNode, behNode, 30080))), want: one(res("10.244.2.20:8080", true))},
	},
}, {
	name: "source ranges",
	sp: func() *model.ServicePort {
		return modeltest.LoadBalancer(svc("a", "10.96.0.10", 80, behE2), "203.0.113.6", "198.51.100.0/25")
	},
	traces: []trace{
		{name: "refused", hook: "PREROUTING", p: pkt(behClient, "203.0.113.6", 80), want: untranslated, fHook: "FORWARD", fWant: map[string]float64{"DROP": 1}},
		{name: "allowed", hook: "PREROUTING", p: pkt("198.51.100.7", "203.0.113.6", 80), want: one(res("10.244.2.20:8080", true))},
		{name: "cluster IP unaffected", hook: "PREROUTING", p: pkt(behClient, "10.96.0.10", 80), want: one(res("10.244.2.20:8080", true))},
	},
}, {
	name: "IPv6",
	sp: func() *model.ServicePort {
		return svc("a", "fd10:96::10", 80, ep("[fd10:244:0:1::a]:8080", true))
	},
	traces: []trace{
		{name: "node", hook: "OUTPUT", p: fromNode(pkt("2001:db8:1::1", "fd10:96::10", 80)), want: one(res("[fd10:244:0:1::a]:8080", true))},
		{name: "pod", hook: "PREROUTING", p: pkt("fd10:244:0:1::b", "fd10:96::10", 80), want: one(res("[fd10:244:0:1::a]:8080", false))},
	},
}}

// TestBehaviour traces packets through the rules the backend programmed into
// the Fake, one case per behaviour of kube-proxy's iptables mode.
func TestBehaviour(t *testing.T) {
	for _, tc := range behaviourCases {
		t.Run(tc.name, func(t *testing.T) {
			settings := tc.settings
			if settings == (backend.Settings{}) {
				settings = testSettings
			}
			b, f := newFakeBackend(t, settings)
			s := snapOf(tc.sp())
			if tc.node != nil {
				tc.node(&s.Node)
			}
			mustSync(t, b, s, true)
			for _, tr := range tc.traces {
				fam := model.FamilyOf(tr.p.Dst)
				approx(t, tr.name, f.TraceNAT(fam, tr.hook, tr.p), tr.want)
				if tr.fWant != nil {
					got := f.TraceFilter(fam, tr.fHook, tr.p)
					if !maps.Equal(got, tr.fWant) {
						t.Errorf("%s: filter %s: %v, want %v", tr.name, tr.fHook, got, tr.fWant)
					}
				}
			}
			if t.Failed() {
				t.Log(f.Dump(model.IPv4, tableNAT), f.Dump(model.IPv4, tableFilter))
			}
		})
	}
}

// TestRenderedRules pins the exact rules of the kube-proxy idioms.
func TestRenderedRules(t *testing.T) {
	r := &renderer{fam: model.IPv4, settings: testSettings, local: []string{"-s 10.244.0.0/16"}}
	sp := svc("a", "10.96.0.10", 80, ep("10.244.1.10:8080", true), ep("10.244.2.20:8080", false), ep("10.244.3.30:8080", false))
	sp.AffinityTimeout = 3 * time.Hour
	out := r.render(sp)
	names := chainsFor(sp.Key)
	s1, s2, s3 := sepChain(sp.Key, sp.ClusterEndpoints[0]), sepChain(sp.Key, sp.ClusterEndpoints[1]), sepChain(sp.Key, sp.ClusterEndpoints[2])
	want := []string{
		"-d 10.96.0.10/32 -p tcp -m tcp --dport 80 -j KPO-CLUSTER-MASQ",
		"-m recent --name " + s1 + " --rcheck --seconds 10800 --reap -j " + s1,
		"-m recent --name " + s2 + " --rcheck --seconds 10800 --reap -j " + s2,
		"-m recent --name " + s3 + " --rcheck --seconds 10800 --reap -j " + s3,
		"-m statistic --mode random --probability 0.3333333333 -j " + s1,
		"-m statistic --mode random --probability 0.5000000000 -j " + s2,
		"-j " + s3,
	}
	if out.nat[0].name != names.svc || !slices.Equal(out.nat[0].rules, want) {
		t.Errorf("SVC chain %s:\n%s\nwant\n%s", out.nat[0].name, strings.Join(out.nat[0].rules, "\n"), strings.Join(want, "\n"))
	}
	sep := out.nat[1]
	wantSEP := []string{"-s 10.244.1.10/32 -j KPO-MARK-MASQ", "-p tcp -m recent --name " + s1 + " --set -j DNAT --to-destination 10.244.1.10:8080"}
	if sep.name != s1 || !slices.Equal(sep.rules, wantSEP) {
		t.Errorf("SEP chain %s: %q", sep.name, sep.rules)
	}
	if len(out.natDispatch) != 1 || out.natDispatch[0].rule != "-d 10.96.0.10/32 -p tcp -m tcp --dport 80 -j "+names.svc || out.natDispatch[0].bucket != 10 {
		t.Errorf("dispatch %+v", out.natDispatch)
	}
	for _, c := range out.nat {
		if len(c.name) > maxChainName {
			t.Errorf("chain name %s too long", c.name)
		}
	}
	fixed := r.fixedNAT(true)
	if got := fixed[2].rules; !slices.Equal(got, []string{"-m mark ! --mark 0x4000/0x4000 -m conntrack --ctstate DNAT -j KPO-HAIRPIN", "-m mark ! --mark 0x4000/0x4000 -j RETURN", "-j MARK --xor-mark 0x4000", "-j MASQUERADE --random-fully"}) {
		t.Errorf("postrouting %q", got)
	}
	// UDP without endpoints: ICMP port unreachable, not tcp-reset.
	u := svc("u", "10.96.0.11", 53)
	u.Protocol, u.Key.Protocol = "UDP", "UDP"
	if got := r.render(u).filterDispatch[0].rule; got != "-d 10.96.0.11/32 -p udp -m udp --dport 53 -j REJECT --reject-with icmp-port-unreachable" {
		t.Errorf("udp reject %q", got)
	}
}
