// Package nodeports resolves the nodePortAddresses setting into the local
// addresses that accept NodePort traffic on this node, with kube-proxy's
// meaning (cmd/kube-proxy/app/server.go expandNodePortAddressKeywords and
// pkg/proxy/util/nodeport_addresses.go in Kubernetes v1.37):
//
//   - each family is resolved on its own: a family that none of the values
//     names accepts NodePorts on every local address of that family;
//   - "primary" is the node's primary IP of each family (from the Node
//     object: the first InternalIP, else ExternalIP), "localhost" is
//     127.0.0.0/8 and ::1, "all" is every address;
//   - a CIDR selects the local interface addresses inside it, so a family
//     whose CIDRs match no local address accepts NodePorts on none;
//   - in nftables mode an empty setting means "primary" (kube-proxy's
//     default there); in the other modes it means every local address.
package nodeports

import (
	"net/netip"
	"slices"

	corev1 "k8s.io/api/core/v1"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
	"kpo.dev/kpo/nodeagent/model"
)

// Keywords of nodePortAddresses besides CIDRs.
const (
	Primary   = "primary"
	Localhost = "localhost"
	All       = "all"
)

// Resolve returns, per family, the addresses that accept NodePort traffic: a
// nil entry (or none) means every local address of the family, an empty
// non-nil list means none. local are the node's interface addresses.
func Resolve(setting []string, mode kpov1.Mode, node *corev1.Node, local []netip.Addr) map[model.Family][]netip.Addr {
	if len(setting) == 0 && mode == kpov1.ModeNFTables {
		setting = []string{Primary}
	}
	prefixes := expand(setting, PrimaryIPs(node))
	out := map[model.Family][]netip.Addr{}
	for _, f := range []model.Family{model.IPv4, model.IPv6} {
		var mine []netip.Prefix
		for _, p := range prefixes {
			if model.FamilyOf(p.Addr()) == f {
				mine = append(mine, p)
			}
		}
		if len(mine) == 0 || slices.ContainsFunc(mine, func(p netip.Prefix) bool { return p.Bits() == 0 }) {
			continue // every local address of the family
		}
		ips := []netip.Addr{}
		for _, a := range local {
			a = a.Unmap()
			if model.FamilyOf(a) == f && !slices.Contains(ips, a) &&
				slices.ContainsFunc(mine, func(p netip.Prefix) bool { return p.Contains(a) }) {
				ips = append(ips, a)
			}
		}
		slices.SortFunc(ips, netip.Addr.Compare)
		out[f] = ips
	}
	return out
}

// expand turns keywords into prefixes and parses the CIDRs; what does not
// parse is skipped (the API refuses it).
func expand(setting []string, primary map[model.Family]netip.Addr) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range setting {
		switch s {
		case Primary:
			// A family without a known node IP has nothing to pin to (kube-proxy
			// falls back to loopback and skips it).
			for _, f := range []model.Family{model.IPv4, model.IPv6} {
				if ip, ok := primary[f]; ok {
					out = append(out, netip.PrefixFrom(ip, ip.BitLen()))
				}
			}
		case Localhost:
			out = append(out, netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128"))
		case All:
			out = append(out, netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0"))
		default:
			if p, err := netip.ParsePrefix(s); err == nil {
				out = append(out, p.Masked())
			}
		}
	}
	return out
}

// PrimaryIPs are the node's primary addresses by family, as kube-proxy picks
// them (pkg/util/node GetNodeHostIPs): InternalIPs first, then ExternalIPs,
// the first of each family.
func PrimaryIPs(node *corev1.Node) map[model.Family]netip.Addr {
	out := map[model.Family]netip.Addr{}
	if node == nil {
		return out
	}
	for _, kind := range []corev1.NodeAddressType{corev1.NodeInternalIP, corev1.NodeExternalIP} {
		for _, a := range node.Status.Addresses {
			if a.Type != kind {
				continue
			}
			if ip, err := netip.ParseAddr(a.Address); err == nil {
				ip = ip.Unmap()
				if _, seen := out[model.FamilyOf(ip)]; !seen {
					out[model.FamilyOf(ip)] = ip
				}
			}
		}
	}
	return out
}
