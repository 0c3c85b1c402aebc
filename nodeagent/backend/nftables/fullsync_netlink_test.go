package nftables

import (
	"context"
	"slices"
	"strconv"
	"strings"
	"testing"

	"kpo.dev/kpo/hack/netns"
	"kpo.dev/kpo/nodeagent/model"
)

// nftOnlyBackend is a backend whose every transaction is one `nft -f` (the
// layout before full syncs went over netlink): the reference for them.
func nftOnlyBackend(t *testing.T, ns *netns.NS) *Backend {
	t.Helper()
	var b *Backend
	if err := ns.Do(func() error {
		nft, err := newNFTKernel()
		if err != nil {
			return err
		}
		b, err = New(testSettings, nil, WithKernel(nft))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return b
}

// TestKernelNetlinkFullSync: a full sync over netlink (fixed part through nft,
// service objects as one netlink batch, base_apart.go) leaves the same tables
// as one nft transaction, into an empty kernel and over a table that holds
// other services, stale chains and drift; a kernel that refuses the netlink
// batch makes the next full sync one nft transaction, which repairs it.
func TestKernelNetlinkFullSync(t *testing.T) {
	netns.Skip(t)
	// variety's b shares a's external addresses: not at once in one table.
	services := func(fam model.Family) []*model.ServicePort {
		v := variety(fam)
		v[4].ExternalIPs, v[4].LoadBalancerIPs, v[4].SourceRanges = nil, nil, nil
		return v
	}
	first := snapshot(testNode, append(services(model.IPv4), services(model.IPv6)...)...)
	// The second snapshot drops services (stale chains, sets and elements)
	// and adds many (more elements than one message holds; the first ten
	// would take variety's addresses and NodePorts).
	second := snapshot(testNode, services(model.IPv4)[1:]...)
	for _, sp := range bigSnapshot(1200, 3).Services {
		if n, _ := strconv.Atoi(strings.TrimPrefix(sp.Key.Name, "svc")); n >= 10 {
			second.Services[sp.Key] = sp
		}
	}

	nsNL, nsRef := netns.New(t, "nlfull"), netns.New(t, "nftfull")
	b, spy := newSpiedBackend(t, nsNL)
	ref := nftOnlyBackend(t, nsRef)

	kernelSync(t, nsNL, b, first, true)
	kernelSync(t, nsRef, ref, first, true)
	if spy.partial > 0 {
		t.Fatal("the full sync's service objects went through nft")
	}
	sameTables(t, "cold full sync, netlink vs. nft", listKpo(t, nsNL), listKpo(t, nsRef))

	// Drift: a foreign element in a service map and a foreign chain.
	nsNL.MustRun(t, "nft", "add element ip kpo service-ips { 10.96.9.9 . tcp . 80 : goto pick-cluster-2 }")
	nsNL.MustRun(t, "nft", "add chain ip kpo foreign")
	kernelSync(t, nsNL, b, second, true)
	nsRef2 := netns.New(t, "nftfull2")
	ref2 := nftOnlyBackend(t, nsRef2)
	kernelSync(t, nsRef2, ref2, second, true)
	if spy.partial > 0 {
		t.Fatal("the warm full sync's service objects went through nft")
	}
	got := listKpo(t, nsNL)
	sameTables(t, "warm full sync over a changed table, netlink vs. nft", got, listKpo(t, nsRef2))
	if n := strings.Count(nsNL.MustRun(t, "nft", "list", "map", "ip", "kpo", mapEndpoints), " : 10.244."); n < 3570 {
		t.Errorf("the endpoints map holds %d elements, want the 3570 of the big services and more", n)
	}

	t.Run("RefusedBatchFallsBackToNFT", func(t *testing.T) {
		// An endpoints map of another layout (a foreign key type): the
		// netlink batch cannot add to it, and only nft's delete-and-recreate
		// repairs it.
		nsNL.MustRun(t, "nft", "flush chain ip kpo "+chainServices)
		for _, c := range listChains(t, nsNL) {
			if strings.HasPrefix(c, "pick-") {
				nsNL.MustRun(t, "nft", "flush chain ip kpo "+c)
			}
		}
		nsNL.MustRun(t, "nft", "flush map ip kpo service-ips")
		nsNL.MustRun(t, "nft", "delete map ip kpo endpoints")
		nsNL.MustRun(t, "nft", "add map ip kpo endpoints { type ipv4_addr : ipv4_addr; }")
		full := spy.full
		err := nsNL.Do(func() error { _, err := b.Sync(context.Background(), second, nil); return err })
		if err == nil {
			t.Fatal("a full sync over netlink into a foreign endpoints map succeeded")
		}
		// The error names the message the kernel refused.
		if !strings.Contains(err.Error(), "add elements to "+mapEndpoints) {
			t.Errorf("error %q does not name the refused message", err)
		}
		kernelSync(t, nsNL, b, second, true)
		if spy.full != full+2 {
			t.Errorf("nft ran %d full transactions, want 2 (the failed sync's fixed part, then the whole sync)", spy.full-full)
		}
		sameTables(t, "full sync after a refused batch vs. nft", listKpo(t, nsNL), listKpo(t, nsRef2))
	})
}

func listChains(t *testing.T, ns *netns.NS) []string {
	t.Helper()
	var out []string
	for _, l := range strings.Split(ns.MustRun(t, "nft", "list", "chains", "ip"), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "chain" {
			out = append(out, f[1])
		}
	}
	return slices.Compact(out)
}
