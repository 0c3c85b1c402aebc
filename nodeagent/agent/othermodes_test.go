package agent

import (
	"context"
	"fmt"
	"testing"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
	"kpo.dev/kpo/hack/netns"
	"kpo.dev/kpo/nodeagent/backend"
	"kpo.dev/kpo/nodeagent/backend/backendtest"
	"kpo.dev/kpo/nodeagent/backend/iptables"
	"kpo.dev/kpo/nodeagent/model"
)

// TestNothingToRemove runs on the real kernel, in namespaces of its own: a
// fresh namespace holds nothing of the iptables and ipvs modes (their
// cleanups are skipped); each object those cleanups remove makes the answer
// "not certain", and so does any legacy iptables table. The iptables mode's
// own rules, synced for real and cleaned up by its backend, are seen and
// then gone.
func TestNothingToRemove(t *testing.T) {
	netns.Skip(t)
	ask := func(ns *netns.NS, mode kpov1.Mode) bool {
		var got bool
		if err := ns.Do(func() error { got = NothingToRemove(mode); return nil }); err != nil {
			t.Fatal(err)
		}
		return got
	}
	expect := func(ns *netns.NS, what string, iptablesFree, ipvsFree bool) {
		t.Helper()
		if got := ask(ns, kpov1.ModeIPTables); got != iptablesFree {
			t.Errorf("%s: nothing of iptables to remove = %v, want %v", what, got, iptablesFree)
		}
		if got := ask(ns, kpov1.ModeIPVS); got != ipvsFree {
			t.Errorf("%s: nothing of ipvs to remove = %v, want %v", what, got, ipvsFree)
		}
		if ask(ns, kpov1.ModeNFTables) {
			t.Errorf("%s: the nftables mode is never skipped", what)
		}
	}

	fresh := netns.New(t, "modes-fresh")
	expect(fresh, "a fresh namespace", true, true)
	// Foreign chains and kube-proxy's are not kpo's.
	fresh.MustRun(t, "iptables-nft", "-t", "nat", "-N", "KUBE-SERVICES")
	fresh.MustRun(t, "nft", "add table ip kpo; add chain ip kpo services")
	expect(fresh, "kube-proxy's chain and kpo's nftables table", true, true)

	for i, c := range []struct {
		what                   string
		cmd                    []string
		iptablesFree, ipvsFree bool
	}{
		{"an iptables-nft KPO- chain", []string{"iptables-nft", "-t", "filter", "-N", "KPO-FORWARD"}, false, true},
		{"an ip6tables-nft KPO- chain", []string{"ip6tables-nft", "-t", "nat", "-N", "KPO-SERVICES"}, false, true},
		{"a companion chain of the ipvs mode", []string{"iptables-nft", "-t", "nat", "-N", iptables.IPVSChainPrefix + "X"}, false, false},
		{"a legacy iptables table", []string{"iptables-legacy", "-t", "nat", "-S"}, false, false},
		{"a legacy ip6tables table", []string{"ip6tables-legacy", "-t", "filter", "-S"}, false, false},
		{"an ipset of the ipvs mode", []string{"ipset", "create", "KPO-CLUSTER-IP", "hash:ip,port"}, true, false},
		{"an IPv6 ipset of the ipvs mode", []string{"ipset", "create", "KPO6-CLUSTER-IP", "hash:ip,port", "family", "inet6"}, true, false},
		// (A bridge: this kernel has no dummy links; the name is what counts.)
		{"the ipvs mode's interface", []string{"ip", "link", "add", ipvsLink, "type", "bridge"}, true, false},
	} {
		ns := netns.New(t, fmt.Sprintf("modes%d", i))
		ns.MustRun(t, c.cmd[0], c.cmd[1:]...)
		expect(ns, c.what, c.iptablesFree, c.ipvsFree)
	}

	// The iptables mode's real rules, then its real cleanup.
	ns := netns.New(t, "modes-ipt")
	be, err := iptables.New(backend.Settings{MasqueradeBit: 14, LocalhostNodePorts: true}, nil, iptables.WithVariant(iptables.VariantNFT))
	must(t, err)
	must(t, ns.Do(func() error {
		_, err := backendtest.Sync(context.Background(), be, &model.Snapshot{}, true)
		return err
	}))
	expect(ns, "after an iptables-mode sync", false, true)
	must(t, ns.Do(func() error { return be.Cleanup(context.Background()) }))
	expect(ns, "after the iptables mode's cleanup", true, true)
}
