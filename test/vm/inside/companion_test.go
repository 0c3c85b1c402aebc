//go:build vmtest

package inside

import (
	"context"
	"net/netip"
	"strings"
	"testing"

	"kpo.dev/kpo/hack/netns"
	"kpo.dev/kpo/nodeagent/backend/ipvs"
)

// useIPTables makes variant ("legacy" or "nft") the flavour the node uses,
// the way kubelet marks it: KUBE-IPTABLES-HINT in that flavour's mangle
// table. The backend follows it as kube-proxy's image does
// (iptables.DetectVariant); the VM image has both flavours (hack/vm/build.sh).
func useIPTables(t *testing.T, node *netns.NS, variant string) {
	t.Helper()
	node.MustRun(t, "iptables-"+variant, "-t", "mangle", "-N", "KUBE-IPTABLES-HINT")
}

// TestCompanionRules runs the companion ipsets and chains through both
// iptables flavours on the VM's kernel, each chosen by kubelet's hint: the
// REJECT of a service without endpoints (filter), the masquerade of an
// external client to a NodePort (nat, with the IPVS conntrack sysctl),
// loadBalancerSourceRanges (filter FW chain) and Cleanup. The rules must land in the chosen flavour's tables
// only: legacy x_tables and nf_tables are separate rule sets in the kernel.
func TestCompanionRules(t *testing.T) {
	for _, tc := range []struct{ variant, other string }{{"legacy", "nft"}, {"nft", "legacy"}} {
		t.Run(tc.variant, func(t *testing.T) {
			e := newEnv(t, 2, ipvs.Config{})
			useIPTables(t, e.top.Node, tc.variant)
			e.top.Client.AddAddr(t, "eth0", otherClient4+"/24")
			sp := svc("np", clusterIP, 80, e.ep(0), e.ep(1))
			sp.NodePort = 30080
			sp.LoadBalancerIPs = []netip.Addr{mustAddr(lbIP4)}
			sp.SourceRanges = []netip.Prefix{netip.MustParsePrefix(netns.ClientIP4 + "/32")}
			e.sync(snapOf(sp, svc("empty", "10.96.0.11", 80)), true)

			nat := e.top.Node.MustRun(t, "iptables-"+tc.variant, "-t", "nat", "-S")
			filter := e.top.Node.MustRun(t, "iptables-"+tc.variant, "-t", "filter", "-S")
			for _, want := range []string{"-A PREROUTING", "KPO-IPVS-SERVICES", "KPO-IPVS-POSTROUTING", "KPO-EXTERNAL"} {
				if !strings.Contains(nat, want) {
					t.Errorf("iptables-%s nat table lacks %q:\n%s", tc.variant, want, nat)
				}
			}
			for _, want := range []string{"KPO-IPVS-FIREWALL", "KPO-REJECT", "KPO-IPVS-FILTER", "KPO-IPVS-FORWARD"} {
				if !strings.Contains(filter, want) {
					t.Errorf("iptables-%s filter table lacks %q:\n%s", tc.variant, want, filter)
				}
			}
			if out, _ := e.top.Node.Run("iptables-"+tc.other, "-t", "nat", "-S"); strings.Contains(out, "KPO-IPVS") {
				t.Errorf("rules in iptables-%s too:\n%s", tc.other, out)
			}

			mustFail(t, e.top.Pods[0].NS, "tcp4", "", "10.96.0.11:80", netns.ErrRefused)
			r, err := e.top.Client.Dial("tcp4", netns.NodeIP4+":30080", dialTimeout)
			if err != nil {
				t.Fatal(err)
			}
			if r.ClientIP() == netns.ClientIP4 {
				t.Errorf("NodePort: endpoint saw the client's own %s, want masquerade", r.ClientIP())
			}
			if _, err := e.top.Client.DialFrom("tcp4", netns.ClientIP4+":0", lbIP4+":80", dialTimeout); err != nil {
				t.Errorf("LB IP from the allowed source: %v", err)
			}
			mustFail(t, e.top.Client, "tcp4", otherClient4+":0", lbIP4+":80", netns.ErrTimeout)

			if err := e.node(func() error { return e.b.Cleanup(context.Background()) }); err != nil {
				t.Fatalf("Cleanup: %v", err)
			}
			for _, table := range []string{"nat", "filter"} {
				if out := e.top.Node.MustRun(t, "iptables-"+tc.variant, "-t", table, "-S"); strings.Contains(out, "KPO-IPVS") {
					t.Errorf("after Cleanup, iptables-%s %s:\n%s", tc.variant, table, out)
				}
			}
		})
	}
}
