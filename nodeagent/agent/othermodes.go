package agent

import (
	"errors"
	"net"
	"os"
	"strings"
	"syscall"

	gnft "github.com/google/nftables"
	"github.com/vishvananda/netlink"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
	"kpo.dev/kpo/nodeagent/backend/iptables"
)

// NothingToRemove reports whether the kernel provably holds nothing the
// cleanup of mode (iptables or ipvs) would remove, asked over netlink and
// /proc instead of through the mode's tools. Making those backends and
// running their cleanups execs iptables-save, iptables -S and ipset some
// twenty times: 40–60 ms and ~25 ms of CPU at the end of every first sync
// (strace and perf of a cold start at 1k × 50; docs/nftables-backend.md,
// "The cold path"), on nodes that never ran those modes. Whenever the
// answer is not certain (legacy iptables tables exist, a listing fails),
// it is false and the mode's own cleanup runs as before.
//
// What the cleanups remove (iptables.RemoveOwn, ipvs' Cleanup): chains
// named KPO-… (KPO-IPVS-… for ipvs) and the jumps to them, which cannot
// exist without their chains; for ipvs also ipsets KPO-… / KPO6-…, the
// interface kpo-ipvs0 and the virtual services on it or in those sets.
func NothingToRemove(mode kpov1.Mode) bool {
	var chainPrefix string
	switch mode {
	case kpov1.ModeIPTables:
		chainPrefix = "KPO-"
	case kpov1.ModeIPVS:
		chainPrefix = iptables.IPVSChainPrefix
	default:
		return false
	}
	if !noLegacyTables() || !noNFTChains(chainPrefix) {
		return false
	}
	if mode == kpov1.ModeIPVS {
		if _, err := net.InterfaceByName(ipvsLink); err == nil {
			return false
		}
		return noIPSets()
	}
	return true
}

// noLegacyTables: iptables-legacy's tables of a namespace come into being
// when a tool names them; listed in /proc, they are none in a namespace
// legacy iptables never touched. (Their chains can only be read by
// iptables-legacy-save, so any table means "not certain".)
func noLegacyTables() bool {
	for _, f := range []string{"/proc/thread-self/net/ip_tables_names", "/proc/thread-self/net/ip6_tables_names"} {
		b, err := os.ReadFile(f)
		if errors.Is(err, os.ErrNotExist) {
			continue // no ip_tables module: no legacy tables
		}
		if err != nil || strings.TrimSpace(string(b)) != "" {
			return false
		}
	}
	return true
}

// noNFTChains: iptables-nft keeps its chains, under their iptables names,
// in nf_tables tables of the ip and ip6 families.
func noNFTChains(prefix string) bool {
	c, err := gnft.New()
	if err != nil {
		return false
	}
	for _, fam := range []gnft.TableFamily{gnft.TableFamilyIPv4, gnft.TableFamilyIPv6} {
		chains, err := c.ListChainsOfTableFamily(fam)
		if err != nil {
			return false
		}
		for _, ch := range chains {
			if strings.HasPrefix(ch.Name, prefix) {
				return false
			}
		}
	}
	return true
}

// noIPSets: no ipset of the ipvs mode's (KPO-…, KPO6-…). Without the ip_set
// subsystem there are none (ipvs' own cleanup reads it the same way).
func noIPSets() bool {
	sets, err := netlink.IpsetListAll()
	if errors.Is(err, syscall.EPROTONOSUPPORT) || errors.Is(err, syscall.ENOENT) {
		return true
	}
	if err != nil {
		return false
	}
	for _, s := range sets {
		if strings.HasPrefix(s.SetName, "KPO-") || strings.HasPrefix(s.SetName, "KPO6-") {
			return false
		}
	}
	return true
}
