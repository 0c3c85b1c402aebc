package migrate

import (
	"context"
	"strings"
	"testing"

	"kpo.dev/kpo/hack/netns"
)

// kubeProxyRules is what kube-proxy's iptables mode (v1.37,
// pkg/proxy/iptables/proxier.go: iptablesJumpChains and a service) and
// kubelet (KUBE-FIREWALL, the hint and canary) leave in a node's tables, plus
// a chain of kpo's, for iptables-restore --noflush.
const kubeProxyRules = `*mangle
:KUBE-IPTABLES-HINT - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
:KUBE-PROXY-CANARY - [0:0]
COMMIT
*filter
:KUBE-FIREWALL - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-EXTERNAL-SERVICES - [0:0]
:KUBE-FORWARD - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-PROXY-FIREWALL - [0:0]
:KUBE-PROXY-CANARY - [0:0]
:KPO-SERVICES - [0:0]
-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL
-A INPUT -m comment --comment "kubernetes health check service ports" -j KUBE-NODEPORTS
-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES
-A INPUT -j KUBE-FIREWALL
-A INPUT -j KPO-SERVICES
-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL
-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD
-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -j KUBE-FIREWALL
-A KUBE-FIREWALL -m comment --comment "block incoming localnet connections" -j DROP
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT
COMMIT
*nat
:KUBE-SERVICES - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-SVC-ABCDEFGHIJKLMNOP - [0:0]
:KUBE-SEP-ABCDEFGHIJKLMNOP - [0:0]
:KUBE-PROXY-CANARY - [0:0]
:KPO-SERVICES - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A PREROUTING -j KPO-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A KUBE-SERVICES -d 10.96.0.1/32 -p tcp -m tcp --dport 443 -j KUBE-SVC-ABCDEFGHIJKLMNOP
-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
-A KUBE-SVC-ABCDEFGHIJKLMNOP -j KUBE-SEP-ABCDEFGHIJKLMNOP
-A KUBE-SEP-ABCDEFGHIJKLMNOP -s 10.244.1.10/32 -j KUBE-MARK-MASQ
-A KUBE-SEP-ABCDEFGHIJKLMNOP -p tcp -m tcp -j DNAT --to-destination 10.244.1.10:8080
-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
COMMIT
`

// kept are the chains that are not kube-proxy's and must stay.
var kept = []string{"KUBE-IPTABLES-HINT", "KUBE-KUBELET-CANARY", "KUBE-FIREWALL", "KPO-SERVICES"}

// TestRemoveKubeProxyLeftoversBothFlavours: kube-proxy ran with whichever
// iptables flavour its image's wrapper chose; its chains go from both, in
// both families, and kubelet's and kpo's stay. A flavour whose tables do not
// exist gets none made.
func TestRemoveKubeProxyLeftoversBothFlavours(t *testing.T) {
	netns.Skip(t)
	for _, c := range []struct{ name, v4, v6 string }{
		{"legacy", "iptables-legacy", "ip6tables-legacy"},
		{"nft", "iptables-nft", "ip6tables-nft"},
		{"IPv4 legacy, IPv6 nft", "iptables-legacy", "ip6tables-nft"},
	} {
		t.Run(c.name, func(t *testing.T) {
			ns := netns.New(t, "migrate")
			for _, tool := range []string{c.v4, c.v6} {
				cmd := ns.Command(tool+"-restore", "--noflush")
				cmd.Stdin = strings.NewReader(rulesFor(tool))
				if out, err := cmd.CombinedOutput(); err != nil {
					t.Fatalf("%s-restore: %v: %s", tool, err, out)
				}
			}
			legacyTables := ns.MustRun(t, "cat", "/proc/net/ip_tables_names", "/proc/net/ip6_tables_names")
			if err := ns.Do(func() error { return RemoveKubeProxyLeftovers(context.Background()) }); err != nil {
				t.Fatal(err)
			}
			for _, tool := range []string{"iptables-legacy", "iptables-nft", "ip6tables-legacy", "ip6tables-nft"} {
				out := ns.MustRun(t, tool+"-save")
				for _, line := range strings.Split(out, "\n") {
					if name, ok := strings.CutPrefix(line, ":"); ok && IsKubeProxyChain(strings.Fields(name)[0]) {
						t.Errorf("%s still has %s", tool, line)
					}
				}
				if tool == c.v4 || tool == c.v6 {
					for _, k := range kept {
						if !strings.Contains(out, ":"+k+" ") {
							t.Errorf("%s lost %s:\n%s", tool, k, out)
						}
					}
				}
			}
			if after := ns.MustRun(t, "cat", "/proc/net/ip_tables_names", "/proc/net/ip6_tables_names"); after != legacyTables {
				t.Errorf("legacy tables %q, before %q: made some", after, legacyTables)
			}
		})
	}
}

// rulesFor is kubeProxyRules in the tool's family.
func rulesFor(tool string) string {
	if !strings.HasPrefix(tool, "ip6") {
		return kubeProxyRules
	}
	return strings.NewReplacer("10.96.0.1/32", "fd10:96::1/128", "10.244.1.10/32", "fd10:244:0:1::a/128",
		"10.244.1.10:8080", "[fd10:244:0:1::a]:8080").Replace(kubeProxyRules)
}
