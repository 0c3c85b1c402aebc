package ipvs

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"kpo.dev/kpo/nodeagent/model"
	"kpo.dev/kpo/nodeagent/model/modeltest"
)

// TestSetEntries checks each service port's contribution to the ipsets that
// drive masquerade, hairpin, reject, drop and source ranges.
func TestSetEntries(t *testing.T) {
	e1 := ep("10.244.1.5:8080")
	tests := []struct {
		name string
		sp   func() *model.ServicePort
		want []string // "SET entry"
	}{{
		name: "clusterIP with an endpoint",
		sp:   func() *model.ServicePort { return svc("a", "10.96.0.10", 80, e1) },
		want: []string{"KPO-CLUSTER-IP 10.96.0.10,tcp:80", "KPO-IPVS-IPS 10.96.0.10", "KPO-LOOP-BACK 10.244.1.5,tcp:8080,10.244.1.5",
			"KPO-VIP-PORTS 10.96.0.10,tcp:80"},
	}, {
		name: "no endpoints: reject, external included",
		sp: func() *model.ServicePort {
			sp := svc("a", "10.96.0.10", 80)
			sp.NodePort = 30080
			return sp
		},
		want: []string{"KPO-CLUSTER-IP 10.96.0.10,tcp:80", "KPO-IPVS-IPS 10.96.0.10", "KPO-REJECT 10.96.0.10,tcp:80",
			"KPO-REJECT 198.51.100.1,tcp:30080", "KPO-VIP-PORTS 10.96.0.10,tcp:80", "KPO-VIP-PORTS 198.51.100.1,tcp:30080"},
	}, {
		name: "policy Cluster: external VIPs masquerade",
		sp: func() *model.ServicePort {
			sp := svc("a", "10.96.0.10", 80, e1)
			sp.ExternalIPs = []netip.Addr{addr("203.0.113.1")}
			return sp
		},
		want: []string{"KPO-CLUSTER-IP 10.96.0.10,tcp:80", "KPO-EXTERNAL 203.0.113.1,tcp:80", "KPO-IPVS-IPS 10.96.0.10",
			"KPO-IPVS-IPS 203.0.113.1", "KPO-LOOP-BACK 10.244.1.5,tcp:8080,10.244.1.5", "KPO-VIP-PORTS 10.96.0.10,tcp:80",
			"KPO-VIP-PORTS 203.0.113.1,tcp:80"},
	}, {
		name: "policy Local without local endpoints: drop, keep source otherwise; health check port",
		sp: func() *model.ServicePort {
			sp := svc("a", "10.96.0.10", 80, e1)
			sp.LoadBalancerIPs = []netip.Addr{addr("203.0.113.7")}
			sp.ExternalPolicyLocal, sp.ExternalEndpoints = true, nil
			sp.HealthCheckNodePort = 32000
			return sp
		},
		want: []string{"KPO-CLUSTER-IP 10.96.0.10,tcp:80", "KPO-DROP 203.0.113.7,tcp:80", "KPO-HEALTH-CHECK 32000",
			"KPO-IPVS-IPS 10.96.0.10", "KPO-IPVS-IPS 203.0.113.7", "KPO-LOOP-BACK 10.244.1.5,tcp:8080,10.244.1.5",
			"KPO-VIP-PORTS 10.96.0.10,tcp:80", "KPO-VIP-PORTS 203.0.113.7,tcp:80"},
	}, {
		name: "source ranges",
		sp: func() *model.ServicePort {
			return modeltest.LoadBalancer(svc("a", "10.96.0.10", 80, e1), "203.0.113.7", "198.51.100.128/25")
		},
		want: []string{"KPO-CLUSTER-IP 10.96.0.10,tcp:80", "KPO-EXTERNAL 203.0.113.7,tcp:80", "KPO-FW 203.0.113.7,tcp:80",
			"KPO-FW-SRC 203.0.113.7,tcp:80,198.51.100.128/25", "KPO-IPVS-IPS 10.96.0.10", "KPO-IPVS-IPS 203.0.113.7",
			"KPO-LOOP-BACK 10.244.1.5,tcp:8080,10.244.1.5", "KPO-VIP-PORTS 10.96.0.10,tcp:80", "KPO-VIP-PORTS 203.0.113.7,tcp:80"},
	}, {
		name: "IPv6 sets",
		sp:   func() *model.ServicePort { return svc("a", "fd10:96::10", 53) },
		want: []string{"KPO6-CLUSTER-IP fd10:96::10,tcp:53", "KPO6-IPVS-IPS fd10:96::10", "KPO6-REJECT fd10:96::10,tcp:53",
			"KPO6-VIP-PORTS fd10:96::10,tcp:53"},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, Config{})
			e.sync(snapOf(tt.sp()), true)
			var got []string
			for name, set := range e.r.Last.Sets {
				for entry := range set {
					got = append(got, name+" "+entry)
				}
			}
			slices.Sort(got)
			if !slices.Equal(got, tt.want) {
				t.Errorf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
			}
		})
	}
}

func TestRulesFollowPartialSyncs(t *testing.T) {
	e := newEnv(t, Config{})
	a := svc("a", "10.96.0.10", 80)
	s := snapOf(a)
	e.sync(s, true)
	if !e.r.Has("KPO-REJECT", "10.96.0.10,tcp:80") {
		t.Fatal("no reject")
	}
	e.sync(with(s, svc("a", "10.96.0.10", 80, ep("10.244.1.5:8080"))), false)
	if e.r.Has("KPO-REJECT", "10.96.0.10,tcp:80") || e.r.Fulls != 1 {
		t.Fatalf("reject kept after endpoints appeared, or full count %d", e.r.Fulls)
	}
}

func TestRenderChains(t *testing.T) {
	cidrs := []string{"-s 10.244.0.0/16"}
	tests := []struct {
		name      string
		masqAll   bool
		cidrs     []string
		has, hasn []string
	}{
		{name: "detect-local", cidrs: cidrs,
			has: []string{"-A KPO-IPVS-CLUSTER-MASQ -s 10.244.0.0/16 -j RETURN", "-A KPO-IPVS-CLUSTER-MASQ -j KPO-IPVS-MARK-MASQ",
				"-A KPO-IPVS-MARK-MASQ -j MARK --or-mark 0x4000", "-A KPO-IPVS-POSTROUTING -m set --match-set KPO-LOOP-BACK dst,dst,src -j MASQUERADE\n",
				// As kube-proxy's IPVS mode (and this one's iptables mode).
				"-A KPO-IPVS-POSTROUTING -j MARK --xor-mark 0x4000\n-A KPO-IPVS-POSTROUTING -j MASQUERADE --random-fully",
				// kube-proxy's KUBE-IPVS-FILTER and KUBE-FORWARD (no INVALID drop in its IPVS mode).
				"-A KPO-IPVS-FILTER -m set --match-set KPO-VIP-PORTS dst,dst -j RETURN\n" +
					"-A KPO-IPVS-FILTER -m set --match-set KPO-HEALTH-CHECK dst -j RETURN\n" +
					"-A KPO-IPVS-FILTER -m conntrack --ctstate NEW -m set --match-set KPO-IPVS-IPS dst -j REJECT",
				`-A KPO-IPVS-FORWARD -m comment --comment "kpo forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT`,
				"--ctstate RELATED,ESTABLISHED -j ACCEPT"},
			hasn: []string{"INVALID"}},
		{name: "masquerade all", masqAll: true, cidrs: cidrs,
			has: []string{"-A KPO-IPVS-CLUSTER-MASQ -j KPO-IPVS-MARK-MASQ"}, hasn: []string{"-s 10.244.0.0/16 -j RETURN"}},
		{name: "no pod CIDRs: no ClusterIP masquerade", hasn: []string{"-A KPO-IPVS-CLUSTER-MASQ -j"}},
		{name: "detect-local by interface", cidrs: []string{"-i veth+"},
			has: []string{"-A KPO-IPVS-CLUSTER-MASQ -i veth+ -j RETURN", "-A KPO-IPVS-CLUSTER-MASQ -j KPO-IPVS-MARK-MASQ"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := testSettings
			s.MasqueradeAll = tt.masqAll
			masq := model.RouteOptions{MasqueradeAll: tt.masqAll, PodsKnown: len(tt.cidrs) > 0}.ClusterMasquerade()
			c := renderChains(model.IPv4, s, masq, tt.cidrs, true)
			all := strings.Join(append(c["nat"], c["filter"]...), "\n")
			for _, h := range tt.has {
				if !strings.Contains(all, h) {
					t.Errorf("missing %q in\n%s", h, all)
				}
			}
			for _, h := range tt.hasn {
				if strings.Contains(all, h) {
					t.Errorf("unexpected %q in\n%s", h, all)
				}
			}
		})
	}
}

func TestIPSetRestore(t *testing.T) {
	rs := &RuleSet{Sets: map[string]map[string]bool{"KPO-REJECT": {"10.96.0.10,tcp:80": true, "10.96.0.11,tcp:80": true}}}
	full := ipsetRestore(rs, nil)
	for _, l := range []string{"create KPO-REJECT hash:ip,port family inet -exist", "add KPO-REJECT-T 10.96.0.10,tcp:80",
		"swap KPO-REJECT-T KPO-REJECT", "destroy KPO-REJECT-T"} {
		if !strings.Contains(full, l+"\n") {
			t.Errorf("full restore lacks %q:\n%s", l, full)
		}
	}
	if got := createSpec("KPO6-HEALTH-CHECK"); got != "bitmap:port range 0-65535" {
		t.Errorf("port bitmap created as %q: it has no family", got)
	}
	if got := createSpec("KPO6-IPVS-IPS"); got != "hash:ip family inet6" {
		t.Errorf("IPv6 address set created as %q", got)
	}
	cur := map[string]map[string]bool{"KPO-REJECT": {"10.96.0.10,tcp:80": true, "10.96.0.12,tcp:80": true}}
	want := "del KPO-REJECT 10.96.0.12,tcp:80 -exist\nadd KPO-REJECT 10.96.0.11,tcp:80 -exist\n"
	if got := ipsetRestore(rs, cur); got != want {
		t.Errorf("incremental restore:\n%s\nwant\n%s", got, want)
	}
}
