package nftables

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"kpo.dev/kpo/hack/netns"
	"kpo.dev/kpo/nodeagent/backend/backendtest"
	"kpo.dev/kpo/nodeagent/model"
	"kpo.dev/kpo/nodeagent/model/modeltest"
)

// variety renders every kind of rule and element renderService emits.
func variety(fam model.Family) []*model.ServicePort {
	ip := func(v4, v6 string) string {
		if fam == model.IPv6 {
			return v6
		}
		return v4
	}
	e0, e1 := ep(ip("10.244.1.2", "fd10:244:0:1::2"), 8080, true), ep(ip("10.244.1.3", "fd10:244:0:1::3"), 8080, false)
	a := svc("a", ip("10.96.0.1", "fd10:96::1"), 80, e0, e1)
	a.NodePort = 30001
	a.ExternalIPs = []netip.Addr{netip.MustParseAddr(ip("203.0.113.1", "2001:db8:2::1"))}
	a.LoadBalancerIPs = []netip.Addr{netip.MustParseAddr(ip("203.0.113.2", "2001:db8:2::2"))}
	a.SourceRanges = []netip.Prefix{netip.MustParsePrefix(ip("10.240.0.0/12", "fd10:240::/44")),
		netip.MustParsePrefix(ip("10.1.0.0/16", "fd10:1::/48")), netip.MustParsePrefix(ip("192.0.2.7/32", "2001:db8::7/128"))}
	a.AffinityTimeout = time.Hour
	l := svc("l", ip("10.96.0.2", "fd10:96::2"), 53, e0, e1)
	l.Protocol, l.Key.Protocol = "UDP", "UDP"
	l.ExternalPolicyLocal, l.ExternalEndpoints, l.NodePort = true, []model.Endpoint{e0}, 30002
	n := svc("n", ip("10.96.0.3", "fd10:96::3"), 80)
	n.NodePort = 30003
	d := svc("d", ip("10.96.0.4", "fd10:96::4"), 80, e1)
	d.ExternalPolicyLocal, d.ExternalEndpoints, d.NodePort = true, nil, 30004
	// b: a without affinity (flat), with eTP=Local and no cluster endpoints.
	b := *a
	b.Key.Name, b.ClusterIP, b.NodePort = "b", netip.MustParseAddr(ip("10.96.0.5", "fd10:96::5")), 30005
	b.AffinityTimeout = 0
	c := b
	c.Key.Name, c.ClusterIP, c.NodePort = "c", netip.MustParseAddr(ip("10.96.0.6", "fd10:96::6")), 30006
	c.ExternalPolicyLocal, c.ClusterEndpoints, c.ExternalEndpoints = true, nil, []model.Endpoint{e0}
	c.ExternalIPs, c.LoadBalancerIPs, c.SourceRanges = nil, nil, nil
	return []*model.ServicePort{a, l, n, d, &b, &c}
}

// TestNetlinkGrammar: everything renderService emits has a netlink encoding,
// so partial syncs never fall back to nft for the backend's own rules.
func TestNetlinkGrammar(t *testing.T) {
	for _, fam := range []model.Family{model.IPv4, model.IPv6} {
		fi := fams[fam]
		for i, node := range []model.NodeInfo{testNode, {LocalInterface: "veth", LocalInterfacePrefix: true},
			{LocalInterface: "cbr0"}, {}} {
			masqAll := i == 3
			rc := newRenderCtx(fam, &node, masqAll)
			for _, sp := range variety(fam) {
				o := renderService(rc, sp)
				chains := slices.Clone(o.chains)
				for _, c := range o.classes {
					chains = append(chains, chainDef{name: c.name(), rules: classRules(rc, c)})
				}
				for _, c := range chains {
					for _, r := range c.rules {
						if _, err := ruleExprs(fi, r); err != nil {
							t.Errorf("%s: %v", c.name, err)
						}
					}
				}
				for _, e := range o.elems {
					if _, err := e.appendKey(nil, fi); err != nil {
						t.Error(err)
					}
					if isDataMap(e.mapName) {
						if _, err := e.appendData(nil, fi); err != nil {
							t.Error(err)
						}
					}
				}
			}
		}
	}
	if _, err := ruleExprs(fams[model.IPv4], "ct state new accept"); !errors.Is(err, errGrammar) {
		t.Errorf("unknown statement: want errGrammar, got %v", err)
	}
}

// canonical makes two `nft list table` outputs comparable: blocks (chains,
// sets, maps) in any order, rules in order, set and map elements in any
// order, without the entries packets added to dynamic sets.
func canonical(listing string) map[string][]string {
	blocks := map[string][]string{}
	cur := ""
	for _, l := range strings.Split(listing, "\n") {
		l = strings.TrimSpace(l)
		switch {
		case l == "" || l == "}":
			continue
		case strings.HasSuffix(l, " {") && !strings.HasPrefix(l, "elements"):
			cur = l
			blocks[cur] = []string{}
			continue
		}
		if strings.HasPrefix(cur, "set ") || strings.HasPrefix(cur, "map ") {
			l = strings.TrimSuffix(strings.TrimSuffix(strings.TrimPrefix(l, "elements = { "), " }"), ",")
			if strings.Contains(l, " expires ") {
				continue // affinity entries are state, not rules
			}
		}
		blocks[cur] = append(blocks[cur], l)
	}
	for k, v := range blocks {
		if strings.HasPrefix(k, "set ") || strings.HasPrefix(k, "map ") {
			slices.Sort(v)
		}
	}
	return blocks
}

func listKpo(t *testing.T, ns *netns.NS) map[string][]string {
	t.Helper()
	out := ns.MustRun(t, "nft", "list", "table", "ip", "kpo")
	out += ns.MustRun(t, "nft", "list", "table", "ip6", "kpo")
	return canonical(out)
}

func sameTables(t *testing.T, what string, got, want map[string][]string) {
	t.Helper()
	for k, w := range want {
		if g, ok := got[k]; !ok || !slices.Equal(g, w) {
			t.Errorf("%s: %s\n got  %q\n want %q", what, k, g, w)
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("%s: unexpected %s %q", what, k, got[k])
		}
	}
}

// TestKernelNetlinkPartial: partial syncs over netlink produce working rules,
// and exactly the table a full knftables sync of the same snapshot writes.
func TestKernelNetlinkPartial(t *testing.T) {
	netns.Skip(t)
	top := netns.NewOneNode(t, 2)
	node, client := top.Node, top.Client
	pod0, pod1 := top.Pods[0], top.Pods[1]
	pod0.ServeEcho(t, "tcp", ":8080", "pod0")
	pod1.ServeEcho(t, "tcp", ":8080", "pod1")
	e0, e1 := ep(pod0.IP4, 8080, true), ep(pod1.IP4, 8080, false)
	e60, e61 := ep(pod0.IP6, 8080, true), ep(pod1.IP6, 8080, false)

	cluster := svc("cluster", "10.96.0.10", 80, e0, e1)
	np := svc("np", "10.96.0.12", 80, e0, e1)
	np.NodePort = 30012
	aff := svc("aff", "10.96.0.15", 80, e0, e1)
	aff.AffinityTimeout = time.Hour
	fw := svc("fw", "10.96.0.16", 80, e0, e1)
	fw.LoadBalancerIPs = []netip.Addr{netip.MustParseAddr("203.0.113.16")}
	fw.SourceRanges = []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}
	v6 := svc("v6", "fd10:96::18", 80, e60, e61)
	s1 := snapshot(testNode, cluster, np, aff, fw, v6)

	b, spy := newSpiedBackend(t, node)
	kernelSync(t, node, b, s1, true)
	spread(t, client, "10.96.0.10:80", "pod0", "pod1")

	// One partial sync changing every kind of object: endpoints (chains
	// replaced), an affinity timeout (new sets), source ranges (unaligned
	// prefix), a removed service, a new eTP=Local NodePort service, IPv6.
	c2 := *cluster
	c2.ClusterEndpoints, c2.ExternalEndpoints = []model.Endpoint{e1}, []model.Endpoint{e1}
	aff2 := *aff
	aff2.AffinityTimeout = 2 * time.Hour
	fw2 := *fw
	fw2.SourceRanges = []netip.Prefix{netip.MustParsePrefix("10.240.0.0/12")}
	late := svc("late", "10.96.0.30", 80, e0, e1)
	modeltest.LocalPolicy(late, e0).NodePort = 30030
	v62 := *v6
	v62.ClusterEndpoints, v62.ExternalEndpoints = []model.Endpoint{e61}, []model.Endpoint{e61}
	s2 := snapshot(testNode, &c2, &aff2, &fw2, late, &v62)
	if err := node.Do(func() error {
		res, err := backendtest.Sync(context.Background(), b, s2, false)
		if err == nil && (res.Full || spy.partial > 0) {
			err = errors.New("partial sync not applied over netlink")
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}

	t.Run("Works", func(t *testing.T) { netlinkPartialWorks(t, node, client, pod0) })
	t.Run("RemovedServiceGone", func(t *testing.T) {
		if _, err := client.Dial("tcp", net.JoinHostPort(netns.NodeIP4, "30012"), dialTimeout); !errors.Is(err, netns.ErrRefused) {
			t.Errorf("removed NodePort: want refused (nothing listens on the node), got %v", err)
		}
		out := node.MustRun(t, "nft", "list", "table", "ip", "kpo")
		for _, s := range []string{serviceChainName(np.Key), "10.96.0.12", "30012", affinitySetName(aff.Key, e0, 3600)} {
			if strings.Contains(out, s) {
				t.Errorf("%s left in the table", s)
			}
		}
	})
	t.Run("SameAsFullSync", func(t *testing.T) { netlinkSameAsFullSync(t, node, b, s2) })
	t.Run("FailedBatchKeepsRules", func(t *testing.T) { netlinkFailedBatch(t, node, client, b, s2, late, &aff2, e0) })
}

// netlinkPartialWorks: the rules of the partial sync over netlink carry
// traffic: endpoint changes, a new policy-Local node port, affinity with
// new sets, the new source ranges.
func netlinkPartialWorks(t *testing.T, node, client *netns.NS, pod0 *netns.Pod) {
	for range 10 {
		if r, err := client.Dial("tcp", "10.96.0.10:80", dialTimeout); err != nil || r.Server != "pod1" {
			t.Fatalf("endpoint change: %+v %v", r, err)
		}
		if r, err := node.Dial("tcp", "[fd10:96::18]:80", dialTimeout); err != nil || r.Server != "pod1" {
			t.Fatalf("IPv6 endpoint change: %+v %v", r, err)
		}
		r, err := client.Dial("tcp", net.JoinHostPort(netns.NodeIP4, "30030"), dialTimeout)
		if err != nil || r.Server != "pod0" || r.ClientIP() != netns.ClientIP4 {
			t.Fatalf("new eTP=Local NodePort: %+v %v", r, err)
		}
	}
	first, err := client.Dial("tcp", "10.96.0.15:80", dialTimeout)
	if err != nil {
		t.Fatal(err)
	}
	for range 10 {
		if r, err := client.Dial("tcp", "10.96.0.15:80", dialTimeout); err != nil || r.Server != first.Server {
			t.Fatalf("affinity with the new sets: %+v %v (first %s)", r, err, first.Server)
		}
	}
	if _, err := client.Dial("tcp", "203.0.113.16:80", 500*time.Millisecond); !errors.Is(err, netns.ErrTimeout) {
		t.Errorf("source ranges: want a drop, got %v", err)
	}
	spread(t, pod0.NS, "203.0.113.16:80", "pod0", "pod1")
}

// netlinkSameAsFullSync: the table after the partial sync over netlink is
// the one a fresh full sync of the same snapshot writes.
func netlinkSameAsFullSync(t *testing.T, node *netns.NS, b *Backend, s2 *model.Snapshot) {
	ref := netns.New(t, "fullref")
	var rb *Backend
	if err := ref.Do(func() error {
		var err error
		if rb, err = New(testSettings, nil); err == nil {
			_, err = backendtest.Sync(context.Background(), rb, s2, true)
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	want := listKpo(t, ref)
	if len(want) < 20 {
		t.Fatalf("reference listing too small: %v", want)
	}
	sameTables(t, "partial over netlink vs. fresh full sync", listKpo(t, node), want)
	// And a full resync of the node changes nothing.
	before := listKpo(t, node)
	kernelSync(t, node, b, s2, true)
	sameTables(t, "partial vs. full resync", before, listKpo(t, node))
}

// netlinkFailedBatch: a batch the kernel refuses changes nothing, and the
// next sync is full and repairs the table.
func netlinkFailedBatch(t *testing.T, node, client *netns.NS, b *Backend, s2 *model.Snapshot, late, aff2 *model.ServicePort, e0 model.Endpoint) {
	// A foreign rule still jumping to a pick chain that the next partial
	// sync deletes (late's only user of it loses an endpoint): the
	// kernel refuses that deletion (EBUSY), which must abort the whole
	// batch.
	pick := class{kind: nodePortLocalK, m: 1, n: 2}.name()
	node.MustRun(t, "nft", "insert rule ip kpo services ip daddr 203.0.113.99 jump "+pick)
	before := listKpo(t, node)
	late2 := *late
	late2.ClusterEndpoints = []model.Endpoint{e0}
	late2.ShortCircuitEndpoints = late2.ClusterEndpoints
	extra := svc("extra", "10.96.0.31", 80, e0)
	s3 := withSnap(s2, &late2, extra)
	// Also remove a service with chains of its own (affinity): the full
	// sync that follows must delete them as stale ones (svc- still
	// jumping to ep- until flushed).
	delete(s3.Services, aff2.Key)
	if err := node.Do(func() error { _, err := backendtest.Sync(context.Background(), b, s3, false); return err }); err == nil {
		t.Fatal("want the batch to fail")
	}
	sameTables(t, "after a failed batch", listKpo(t, node), before)
	// The next sync is full (nft), repairs the foreign rule and applies s3.
	if err := node.Do(func() error {
		res, err := backendtest.Sync(context.Background(), b, s3, false)
		if err == nil && !res.Full {
			err = errors.New("the sync after a failure must be full")
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if out := node.MustRun(t, "nft", "list", "chain", "ip", "kpo", "services"); strings.Contains(out, "203.0.113.99") {
		t.Errorf("foreign rule left:\n%s", out)
	}
	spread(t, client, "10.96.0.31:80", "pod0")
	if out := node.MustRun(t, "nft", "list", "table", "ip", "kpo"); strings.Contains(out, serviceChainName(aff2.Key)) || strings.Contains(out, pick) {
		t.Errorf("removed service's chains left after the full sync")
	}
}

// TestKernelNetlinkInterfaceDetector: with detect-local by interface, the pick
// chains a partial sync adds over netlink (iifname matches) are the ones a full
// nft sync writes.
func TestKernelNetlinkInterfaceDetector(t *testing.T) {
	netns.Skip(t)
	node := model.NodeInfo{Name: "node", LocalInterface: "veth", LocalInterfacePrefix: true}
	first := snapshot(node, svc("a", "10.96.0.10", 80, ep("10.244.1.2", 8080, true)))
	late := modeltest.LocalPolicy(svc("late", "10.96.0.11", 80, ep("10.244.1.2", 8080, true), ep("10.244.2.2", 8080, false)),
		ep("10.244.1.2", 8080, true))
	late.NodePort = 30011
	second := withSnap(first, late)
	ns, ref := netns.New(t, "ifnode"), netns.New(t, "ifref")
	b, spy := newSpiedBackend(t, ns)
	rb, _ := newSpiedBackend(t, ref)
	kernelSync(t, ns, b, first, true)
	kernelSync(t, ns, b, second, false)
	if spy.partial > 0 {
		t.Fatal("the partial sync went through nft")
	}
	kernelSync(t, ref, rb, second, true)
	got := ns.MustRun(t, "nft", "list", "table", "ip", "kpo")
	if !strings.Contains(got, `iifname "veth*"`) {
		t.Fatalf("no iifname match:\n%s", got)
	}
	sameTables(t, "partial over netlink vs. full sync", listKpo(t, ns), listKpo(t, ref))
}
