package nftables

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/knftables"

	"kpo.dev/kpo/nodeagent/backend/backendtest"
	"kpo.dev/kpo/nodeagent/model"
	"kpo.dev/kpo/nodeagent/model/modeltest"
)

func newFake(t *testing.T) (*Backend, *FakeKernel) {
	t.Helper()
	k := NewFakeKernel()
	b, err := New(testSettings, nil, WithKernel(k))
	if err != nil {
		t.Fatal(err)
	}
	return b, k
}

func mustSync(t *testing.T, b *Backend, s *model.Snapshot, full bool) {
	t.Helper()
	if _, err := backendtest.Sync(context.Background(), b, s, full); err != nil {
		t.Fatal(err)
	}
}

// dump is the fake's ruleset, for substring checks.
func dump(k *FakeKernel) string { return k.Dump() }

func TestRendering(t *testing.T) {
	np := svc("np", "10.96.0.2", 80, ep("10.244.1.10", 8080, true), ep("10.244.2.10", 8080, false))
	np.NodePort = 30080
	local := svc("local", "10.96.0.3", 80, ep("10.244.1.10", 8080, true), ep("10.244.2.10", 8080, false))
	modeltest.LocalPolicy(local, local.ClusterEndpoints[0])
	local.ExternalIPs = []netip.Addr{netip.MustParseAddr("203.0.113.5")}
	noLocal := svc("nolocal", "10.96.0.4", 80, ep("10.244.2.10", 8080, false))
	modeltest.LocalPolicy(noLocal)
	noLocal.NodePort = 30081
	aff := svc("aff", "10.96.0.5", 80, ep("10.244.1.10", 8080, true))
	aff.AffinityTimeout = 3 * time.Hour
	lb := svc("lb", "10.96.0.6", 80, ep("10.244.1.10", 8080, true))
	lb.LoadBalancerIPs = []netip.Addr{netip.MustParseAddr("203.0.113.6")}
	lb.SourceRanges = []netip.Prefix{netip.MustParsePrefix("198.51.100.0/25")}
	v6 := svc("v6", "fd10:96::7", 80, ep("fd10:244:0:1::a", 8080, true))

	tests := []struct {
		name string
		sp   *model.ServicePort
		want []string // substrings of the fake's dump
	}{
		{"cluster IP, two endpoints", svc("two", "10.96.0.1", 80, ep("10.244.1.10", 8080, true), ep("10.244.2.10", 8080, false)), []string{
			"add element ip kpo service-ips { 10.96.0.1 . tcp . 80 : goto pick-cluster-2 }",
			"add rule ip kpo pick-cluster-2 ip saddr != @cluster-cidrs jump mark-for-masquerade",
			"add rule ip kpo pick-cluster-2 dnat ip to ip daddr . meta l4proto . th dport . numgen random mod 2 map @endpoints",
			"add element ip kpo endpoints { 10.96.0.1 . tcp . 80 . 0 : 10.244.1.10 . 8080 }",
			"add element ip kpo endpoints { 10.96.0.1 . tcp . 80 . 1 : 10.244.2.10 . 8080 }",
			// Hairpin for the local endpoint only (kube-proxy's hairpin-connections).
			"add element ip kpo hairpin-connections { 10.244.1.10 . 10.244.1.10 . tcp . 8080 }",
			"add rule ip kpo masquerading ip saddr . ip daddr . meta l4proto . th dport @hairpin-connections jump mark-for-masquerade",
			// Other ports of the ClusterIP are refused.
			"add element ip kpo cluster-ips { 10.96.0.1 }",
			"add rule ip kpo cluster-ips-check ip daddr @cluster-ips reject",
			// Addresses of the service range no service holds are dropped.
			"add rule ip kpo cluster-ips-check ip daddr { 10.96.0.0/16 } drop",
		}},
		{"no endpoints rejects", svc("none", "10.96.0.9", 80), []string{
			"add element ip kpo no-endpoint-services { 10.96.0.9 . tcp . 80 : goto reject-chain }",
		}},
		{"nodeport masquerades", np, []string{
			"add element ip kpo service-nodeports { tcp . 30080 : goto pick-nodeport-2 }",
			"add rule ip kpo pick-nodeport-2 jump mark-for-masquerade",
			"add rule ip kpo pick-nodeport-2 dnat ip to meta l4proto . th dport . numgen random mod 2 map @nodeport-endpoints",
			"add element ip kpo nodeport-endpoints { tcp . 30080 . 1 : 10.244.2.10 . 8080 }",
			"fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports",
		}},
		{"eTP Local", local, []string{
			"add element ip kpo service-ips { 203.0.113.5 . tcp . 80 : goto pick-external-local-1-2 }",
			// Slot 0: the local endpoint; 1-2: every endpoint, for pods and the node.
			"add element ip kpo endpoints { 203.0.113.5 . tcp . 80 . 0 : 10.244.1.10 . 8080 }",
			"add element ip kpo endpoints { 203.0.113.5 . tcp . 80 . 2 : 10.244.2.10 . 8080 }",
			"add rule ip kpo pick-external-local-1-2 ip saddr @cluster-cidrs dnat ip to ip daddr . meta l4proto . th dport . numgen random mod 2 offset 1 map @endpoints",
			"add rule ip kpo pick-external-local-1-2 fib saddr type local jump mark-for-masquerade",
			"add rule ip kpo pick-external-local-1-2 fib saddr type local dnat ip to ip daddr . meta l4proto . th dport . numgen random mod 2 offset 1 map @endpoints",
			"add rule ip kpo pick-external-local-1-2 dnat ip to ip daddr . meta l4proto . th dport . numgen random mod 1 map @endpoints",
		}},
		{"eTP Local without local endpoints drops", noLocal, []string{
			"add element ip kpo service-nodeports { tcp . 30081 : goto pick-nodeport-local-0-1 }",
			"add rule ip kpo pick-nodeport-local-0-1 drop",
		}},
		{"affinity", aff, []string{
			"add element ip kpo service-ips { 10.96.0.5 . tcp . 80 : goto svc-",
			"flags dynamic,timeout ; timeout 10800s",
			"update @aff-",
			"ip saddr @aff-",
			"meta l4proto tcp dnat to 10.244.1.10:8080",
		}},
		{"source ranges", lb, []string{
			"add element ip kpo firewall-ips { 203.0.113.6 . tcp . 80 : goto fw-",
			"ip saddr 198.51.100.0/25 return",
		}},
		{"IPv6", v6, []string{
			"add element ip6 kpo service-ips { fd10:96::7 . tcp . 80 : goto pick-cluster-1 }",
			"add element ip6 kpo endpoints { fd10:96::7 . tcp . 80 . 0 : fd10:244:0:1::a . 8080 }",
			"add rule ip6 kpo pick-cluster-1 dnat ip6 to ip6 daddr . meta l4proto . th dport . numgen random mod 1 map @endpoints",
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b, k := newFake(t)
			mustSync(t, b, snapshot(testNode, tc.sp), true)
			d := dump(k)
			for _, w := range tc.want {
				if !strings.Contains(d, w) {
					t.Errorf("missing %q in\n%s", w, d)
				}
			}
			if strings.Contains(d, "hairpin-connections { 10.244.2.10") {
				t.Errorf("a remote endpoint in the hairpin set:\n%s", d)
			}
		})
	}
}

func TestMasqueradeAllAndNoClusterCIDRs(t *testing.T) {
	k := NewFakeKernel()
	s := testSettings
	s.MasqueradeAll = true
	b, _ := New(s, []model.Family{model.IPv4}, WithKernel(k))
	mustSync(t, b, snapshot(testNode, svc("a", "10.96.0.1", 80, ep("10.244.1.10", 80, true))), true)
	if !strings.Contains(dump(k), "add rule ip kpo pick-cluster-1 jump mark-for-masquerade") {
		t.Errorf("masqueradeAll: no unconditional mark:\n%s", dump(k))
	}
	k2 := NewFakeKernel()
	b2, _ := New(testSettings, []model.Family{model.IPv4}, WithKernel(k2))
	mustSync(t, b2, snapshot(model.NodeInfo{}, svc("a", "10.96.0.1", 80, ep("10.244.1.10", 80, true))), true)
	if strings.Contains(dump(k2), "pick-cluster-1 jump mark-for-masquerade") || strings.Contains(dump(k2), "@cluster-cidrs jump") {
		t.Errorf("no cluster CIDRs: cluster traffic must not be masqueraded:\n%s", dump(k2))
	}
}

func countOps(tx *knftables.Transaction) int { return tx.NumOperations() }

func TestPartialSyncTouchesOnlyChanged(t *testing.T) {
	b, k := newFake(t)
	s1 := bigSnapshot(100, 2)
	res, err := backendtest.Sync(context.Background(), b, s1, true)
	if err != nil {
		t.Fatal(err)
	}
	if res.ServicePortsWritten != 100 || !res.Full {
		t.Fatalf("full sync: %+v", res)
	}
	// Change one endpoint of one service.
	old := s1.Services[key("default", "svc7", model.IPv4)]
	changed := *old
	changed.ClusterEndpoints = []model.Endpoint{old.ClusterEndpoints[0], ep("10.244.200.1", 8080, false)}
	changed.ExternalEndpoints = changed.ClusterEndpoints
	s2 := withSnap(s1, &changed)
	res2, err := backendtest.Sync(context.Background(), b, s2, false)
	if err != nil {
		t.Fatal(err)
	}
	if res2.ServicePortsWritten != 1 || res2.Full {
		t.Fatalf("partial: %+v", res2)
	}
	// Only elements of svc7 (ClusterIP 10.96.0.7, NodePort 30007): no chain,
	// no rule, so the kernel has no reason to validate the table.
	txt := k.LastTransaction.String()
	for _, line := range strings.Split(strings.TrimSpace(txt), "\n") {
		svc7 := strings.Contains(line, "10.96.0.7 ") || strings.Contains(line, " 30007 ") ||
			strings.Contains(line, "hairpin { 10.244.0.15 . ") || strings.Contains(line, "hairpin { 10.244.200.1 . ")
		if !strings.Contains(line, " element ") || !svc7 {
			t.Errorf("partial sync wrote more than svc7's elements: %s", line)
		}
	}
	for _, want := range []string{
		"delete element ip kpo endpoints { 10.96.0.7 . tcp . 80 . 1 }",
		"add element ip kpo endpoints { 10.96.0.7 . tcp . 80 . 1 : 10.244.200.1 . 8080 }",
		"add element ip kpo nodeport-endpoints { tcp . 30007 . 1 : 10.244.200.1 . 8080 }",
	} {
		if !strings.Contains(txt, want) {
			t.Errorf("missing %q in\n%s", want, txt)
		}
	}
	if countOps(k.LastTransaction) > 20 {
		t.Errorf("partial sync has %d operations", countOps(k.LastTransaction))
	}
	// An unchanged snapshot writes nothing but still succeeds.
	res3, err := backendtest.Sync(context.Background(), b, s2, false)
	if err != nil || res3.ServicePortsWritten != 0 || res3.Rules != res2.Rules {
		t.Fatalf("no-op sync: %+v %v", res3, err)
	}
	// Rules is consistent with a from-scratch full sync.
	b2, _ := newFake(t)
	res4, _ := backendtest.Sync(context.Background(), b2, s2, true)
	if res4.Rules != res2.Rules {
		t.Errorf("rule count after partial %d != full %d", res2.Rules, res4.Rules)
	}
}

func TestRemovalAndKindChanges(t *testing.T) {
	b, k := newFake(t)
	a := svc("a", "10.96.0.1", 80, ep("10.244.1.10", 8080, true))
	a.NodePort = 30001
	c := svc("c", "10.96.0.3", 80, ep("10.244.1.11", 8080, true))
	s1 := snapshot(testNode, a, c)
	mustSync(t, b, s1, true)
	// a loses its endpoints (reject), then goes away.
	a2 := *a
	a2.ClusterEndpoints, a2.ExternalEndpoints, a2.HasEndpoints = nil, nil, false
	mustSync(t, b, withSnap(s1, &a2), false)
	d := dump(k)
	if !strings.Contains(d, "no-endpoint-services { 10.96.0.1 . tcp . 80 : goto reject-chain }") ||
		!strings.Contains(d, "no-endpoint-nodeports { tcp . 30001 : goto reject-chain }") ||
		strings.Contains(d, "service-ips { 10.96.0.1 ") || strings.Contains(d, "endpoints { 10.96.0.1 ") ||
		strings.Contains(d, "endpoints { tcp . 30001 ") {
		t.Errorf("after losing endpoints:\n%s", d)
	}
	// Its pick chain for the NodePort has no user left; the cluster one does (c).
	if strings.Contains(d, "pick-nodeport-1") || !strings.Contains(d, "add chain ip kpo pick-cluster-1") {
		t.Errorf("pick chains not collected:\n%s", d)
	}
	mustSync(t, b, snapshot(testNode, c), false)
	d = dump(k)
	if strings.Contains(d, "10.96.0.1 ") || strings.Contains(d, "30001") {
		t.Errorf("removed service still present:\n%s", d)
	}
	if !strings.Contains(d, "10.96.0.3 . tcp . 80 : goto pick-cluster-1") {
		t.Errorf("other service gone:\n%s", d)
	}
}

func TestFailedTransactionKeepsStateAndForcesFull(t *testing.T) {
	b, k := newFake(t)
	s1 := snapshot(testNode, svc("a", "10.96.0.1", 80, ep("10.244.1.10", 8080, true)))
	mustSync(t, b, s1, true)
	before := dump(k)
	k.FailNext = errors.New("boom")
	s2 := snapshot(testNode, svc("b", "10.96.0.2", 80, ep("10.244.1.10", 8080, true)))
	if _, err := backendtest.Sync(context.Background(), b, s2, false); err == nil {
		t.Fatal("expected an error")
	}
	if dump(k) != before {
		t.Fatal("failed transaction changed the ruleset")
	}
	res, err := backendtest.Sync(context.Background(), b, s2, false)
	if err != nil || !res.Full {
		t.Fatalf("sync after failure must be full: %+v %v", res, err)
	}
	if strings.Contains(dump(k), "10.96.0.1 ") {
		t.Errorf("full sync left the old service:\n%s", dump(k))
	}
}

func TestFullSyncRemovesDrift(t *testing.T) {
	b, k := newFake(t)
	s1 := snapshot(testNode, svc("a", "10.96.0.1", 80, ep("10.244.1.10", 8080, true)))
	mustSync(t, b, s1, true)
	// Someone else edits our table: a foreign chain, a foreign element, a rule.
	tx := k.NewTransaction()
	tx.Add(&knftables.Chain{Family: knftables.IPv4Family, Table: tableName, Name: "intruder"})
	tx.Add(&knftables.Element{Family: knftables.IPv4Family, Table: tableName, Map: mapServiceIPs,
		Key: []string{"10.96.9.9", "tcp", "80"}, Value: []string{"goto intruder"}})
	tx.Add(&knftables.Rule{Family: knftables.IPv4Family, Table: tableName, Chain: chainServices, Rule: "drop"})
	if err := k.Run(context.Background(), tx); err != nil {
		t.Fatal(err)
	}
	// And an unrelated table that must survive.
	tx = k.NewTransaction()
	tx.Add(&knftables.Table{Family: knftables.IPv4Family, Name: "kube-proxy"})
	if err := k.Run(context.Background(), tx); err != nil {
		t.Fatal(err)
	}
	mustSync(t, b, s1, true)
	d := dump(k)
	if strings.Contains(d, "intruder") || strings.Contains(d, "10.96.9.9") || strings.Contains(d, "add rule ip kpo services drop") {
		t.Errorf("drift not repaired:\n%s", d)
	}
	if !strings.Contains(d, "add table ip kube-proxy") {
		t.Error("full sync touched another table")
	}
	if err := b.Cleanup(context.Background()); err != nil {
		t.Fatal(err)
	}
	d = dump(k)
	if strings.Contains(d, " kpo") || !strings.Contains(d, "kube-proxy") {
		t.Errorf("cleanup:\n%s", d)
	}
	if err := b.Cleanup(context.Background()); err != nil {
		t.Fatalf("cleanup of nothing: %v", err)
	}
}

func TestNodeChangeForcesFull(t *testing.T) {
	b, _ := newFake(t)
	s1 := snapshot(testNode, svc("a", "10.96.0.1", 80, ep("10.244.1.10", 8080, true)))
	mustSync(t, b, s1, true)
	s2 := withSnap(s1)
	s2.Node = model.NodeInfo{Name: "node", NodePortIPs: map[model.Family][]netip.Addr{model.IPv4: {netip.MustParseAddr("198.51.100.1")}}}
	res, err := backendtest.Sync(context.Background(), b, s2, false)
	if err != nil || !res.Full {
		t.Fatalf("%+v %v", res, err)
	}
}

// TestHairpinShared: two services with the same local endpoint share its
// hairpin element; it goes with the last of them.
func TestHairpinShared(t *testing.T) {
	b, k := newFake(t)
	a := svc("a", "10.96.0.1", 80, ep("10.244.1.10", 8080, true))
	c := svc("c", "10.96.0.3", 81, ep("10.244.1.10", 8080, true))
	const elem = "add element ip kpo hairpin-connections { 10.244.1.10 . 10.244.1.10 . tcp . 8080 }"
	mustSync(t, b, snapshot(testNode, a, c), true)
	mustSync(t, b, snapshot(testNode, c), false)
	if !strings.Contains(dump(k), elem) {
		t.Errorf("hairpin element gone with one of its two services:\n%s", dump(k))
	}
	mustSync(t, b, snapshot(testNode), false)
	if strings.Contains(dump(k), "element ip kpo hairpin-connections") {
		t.Errorf("hairpin element left:\n%s", dump(k))
	}
	// And a full sync from scratch agrees with the partial ones.
	res, _ := backendtest.Sync(context.Background(), b, snapshot(testNode, a), false)
	b2, _ := newFake(t)
	res2, _ := backendtest.Sync(context.Background(), b2, snapshot(testNode, a), true)
	if res.Rules != res2.Rules {
		t.Errorf("rules after partial syncs %d != full %d", res.Rules, res2.Rules)
	}
}

// TestHairpinKeyedByEndpointPort: the hairpin element is the endpoint's
// address, protocol and port, as kube-proxy's hairpin-connections. A pod that
// one Service lists as a local endpoint (TCP 8080) is not masqueraded when it
// reaches itself through another Service that lists it without nodeName (UDP
// 8082): kube-proxy does not either, and that hairpin times out. Keyed by the
// address alone (before), kpo masqueraded it: conformance seed 257 in the
// random batch 251–275.
func TestHairpinKeyedByEndpointPort(t *testing.T) {
	b, k := newFake(t)
	a := svc("a", "10.96.0.1", 80, ep("10.244.1.10", 8080, true))
	dns := svc("dns", "10.96.0.2", 53, ep("10.244.1.10", 8082, false))
	dns.Protocol, dns.Key.Protocol = corev1.ProtocolUDP, corev1.ProtocolUDP
	mustSync(t, b, snapshot(testNode, a, dns), true)
	d := dump(k)
	if !strings.Contains(d, "add element ip kpo hairpin-connections { 10.244.1.10 . 10.244.1.10 . tcp . 8080 }") {
		t.Errorf("no hairpin element for the local endpoint's port:\n%s", d)
	}
	if strings.Contains(d, "udp . 8082") {
		t.Errorf("hairpin element for an endpoint that is not local:\n%s", d)
	}
	// Made local, the UDP endpoint gets its own element (partial sync).
	dns2 := svc("dns", "10.96.0.2", 53, ep("10.244.1.10", 8082, true))
	dns2.Protocol, dns2.Key.Protocol = corev1.ProtocolUDP, corev1.ProtocolUDP
	mustSync(t, b, snapshot(testNode, a, dns2), false)
	if d := dump(k); !strings.Contains(d, "add element ip kpo hairpin-connections { 10.244.1.10 . 10.244.1.10 . udp . 8082 }") {
		t.Errorf("no hairpin element for the UDP endpoint made local:\n%s", d)
	}
}
