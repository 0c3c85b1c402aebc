package nftables

import (
	"fmt"
	"net/netip"
	"strings"

	"sigs.k8s.io/knftables"

	"kpo.dev/kpo/nodeagent/model"
)

// Names of the table's fixed objects.
const (
	tableName = "kpo"

	chainNatPrerouting  = "nat-prerouting"
	chainNatOutput      = "nat-output"
	chainNatPostrouting = "nat-postrouting"
	chainFilterPreDNAT  = "filter-prerouting-pre-dnat"
	chainFilterOutPre   = "filter-output-pre-dnat"
	chainFilterInput    = "filter-input"
	chainFilterForward  = "filter-forward"
	chainFilterOutput   = "filter-output"

	chainServices       = "services"
	chainFirewallCheck  = "firewall-check"
	chainEndpointsCheck = "service-endpoints-check"
	chainNodePortsCheck = "nodeport-endpoints-check"
	chainMarkMasq       = "mark-for-masquerade"
	chainMasquerading   = "masquerading"
	chainReject         = "reject-chain"
	chainClusterIPs     = "cluster-ips-check"

	mapServiceIPs          = "service-ips"
	mapServiceNodePorts    = "service-nodeports"
	mapNoEndpointServices  = "no-endpoint-services"
	mapNoEndpointNodePorts = "no-endpoint-nodeports"
	mapFirewallIPs         = "firewall-ips"
	mapEndpoints           = "endpoints"
	mapNodePortEndpoints   = "nodeport-endpoints"
	// setHairpin is kube-proxy's hairpin-connections set, keyed as there by
	// endpoint IP . endpoint IP . protocol . port (pkg/proxy/nftables/proxier.go);
	// the name moved with the key (it was "hairpin", keyed by the IPs alone),
	// so that an older table's set is stale and deleted on the first full sync.
	setHairpin = "hairpin-connections"

	setClusterCIDRs = "cluster-cidrs"
	setNodePortIPs  = "nodeport-ips"
	setClusterIPs   = "cluster-ips"
)

// baseChain describes a hooked chain.
type baseChain struct {
	name     string
	typ      knftables.BaseChainType
	hook     knftables.BaseChainHook
	priority knftables.BaseChainPriority
	rules    []string
}

// baseChains are the chains hooked into netfilter. Priorities follow
// kube-proxy: the firewall runs just before DNAT (it must see the LB IP), the
// no-endpoint reject runs in filter hooks (reject is not allowed in nat chains)
// on new connections only.
var baseChains = []baseChain{
	{chainNatPrerouting, knftables.NATType, knftables.PreroutingHook, knftables.DNATPriority, []string{"jump " + chainServices}},
	{chainNatOutput, knftables.NATType, knftables.OutputHook, knftables.DNATPriority, []string{"jump " + chainServices}},
	{chainNatPostrouting, knftables.NATType, knftables.PostroutingHook, knftables.SNATPriority, []string{"jump " + chainMasquerading}},
	{chainFilterPreDNAT, knftables.FilterType, knftables.PreroutingHook, knftables.DNATPriority + "-10", []string{"ct state new jump " + chainFirewallCheck}},
	{chainFilterOutPre, knftables.FilterType, knftables.OutputHook, knftables.DNATPriority + "-10", []string{"ct state new jump " + chainFirewallCheck}},
	// NodePorts without endpoints are refused on input only, as kube-proxy
	// does: the node's own datagrams to them then meet the refusal as an ICMP
	// error (ECONNREFUSED), not as a drop on output (EPERM).
	{chainFilterInput, knftables.FilterType, knftables.InputHook, knftables.FilterPriority,
		[]string{"ct state new jump " + chainNodePortsCheck, "ct state new jump " + chainEndpointsCheck}},
	// After the no-endpoint check, what is still addressed to a ClusterIP (a
	// port the service does not serve) or to the service ranges (an address
	// no service holds) is refused or dropped, as kube-proxy v1.37 does.
	{chainFilterForward, knftables.FilterType, knftables.ForwardHook, knftables.FilterPriority,
		[]string{"ct state new jump " + chainEndpointsCheck, "ct state new jump " + chainClusterIPs}},
	{chainFilterOutput, knftables.FilterType, knftables.OutputHook, knftables.FilterPriority,
		[]string{"ct state new jump " + chainEndpointsCheck, "ct state new jump " + chainClusterIPs}},
}

// baseObjects are the table's fixed chains, maps and sets for one family and
// node. They are rewritten on full syncs and when the node's settings change.
type baseObjects struct {
	fam    model.Family
	chains []chainDef // regular fixed chains with their rules
	sets   map[string][]string
	nRules int
}

func renderBase(fi famInfo, fam model.Family, s settingsView, node *model.NodeInfo) *baseObjects {
	b := &baseObjects{fam: fam, sets: map[string][]string{}}
	ipKW := fi.ipKW
	mark := fmt.Sprintf("0x%x", s.mark)

	var cidrs []string
	for _, p := range outermost(node.ClusterCIDRs[fam]) {
		cidrs = append(cidrs, p.String())
	}
	b.sets[setClusterCIDRs] = cidrs

	// NodePorts: every local address but loopback (DNAT from 127/8 needs
	// route_localnet; kube-proxy's nftables mode refuses it too), or only the
	// configured ones.
	nodePortMatch := fmt.Sprintf("fib daddr type local %s daddr != %s", ipKW, fi.lo)
	if ips, ok := node.NodePortIPs[fam]; ok && ips != nil {
		var elems []string
		for _, ip := range ips {
			// Never loopback, as kube-proxy's nodeport-ips: DNAT from 127/8 or
			// ::1 needs route_localnet (nftables mode never sets it), so the
			// translated packet would be dropped as a martian; untranslated,
			// the node answers for itself (nothing listens: refused).
			if model.FamilyOf(ip) == fam && !ip.IsLoopback() {
				elems = append(elems, ip.Unmap().String())
			}
		}
		b.sets[setNodePortIPs] = elems
		nodePortMatch = fmt.Sprintf("%s daddr @%s", ipKW, setNodePortIPs)
	} else {
		b.sets[setNodePortIPs] = nil
	}

	b.chains = []chainDef{
		{name: chainServices, rules: []string{
			fmt.Sprintf("%s daddr . meta l4proto . th dport vmap @%s", ipKW, mapServiceIPs),
			fmt.Sprintf("%s meta l4proto . th dport vmap @%s", nodePortMatch, mapServiceNodePorts),
		}},
		{name: chainFirewallCheck, rules: []string{
			fmt.Sprintf("%s daddr . meta l4proto . th dport vmap @%s", ipKW, mapFirewallIPs),
		}},
		{name: chainEndpointsCheck, rules: []string{
			fmt.Sprintf("%s daddr . meta l4proto . th dport vmap @%s", ipKW, mapNoEndpointServices),
		}},
		{name: chainNodePortsCheck, rules: []string{
			fmt.Sprintf("%s meta l4proto . th dport vmap @%s", nodePortMatch, mapNoEndpointNodePorts),
		}},
		{name: chainMarkMasq, rules: []string{
			fmt.Sprintf("meta mark set meta mark or %s", mark),
		}},
		{name: chainMasquerading, rules: []string{
			// Hairpin (see shareCommon): the translated packet goes back to
			// the pod that sent it, to the port of a local endpoint.
			fmt.Sprintf("%s saddr . %s daddr . meta l4proto . th dport @%s jump %s", ipKW, ipKW, setHairpin, chainMarkMasq),
			fmt.Sprintf("meta mark & %s == 0 return", mark),
			// Clear the bit: the packet may be forwarded into another tunnel or
			// proxy that uses marks of its own.
			fmt.Sprintf("meta mark set meta mark xor %s", mark),
			"masquerade fully-random",
		}},
		{name: chainReject, rules: []string{"reject"}},
		{name: chainClusterIPs, rules: clusterIPsCheckRules(ipKW, node.ServiceCIDRs[fam])},
	}
	for _, bc := range baseChains {
		b.chains = append(b.chains, chainDef{name: bc.name, rules: bc.rules})
	}
	for _, c := range b.chains {
		b.nRules += len(c.rules)
	}
	for _, e := range b.sets {
		b.nRules += len(e)
	}
	return b
}

// clusterIPsCheckRules refuse traffic to a ClusterIP on a port no service
// serves, and drop traffic to addresses of the service ranges (the cluster's
// ServiceCIDRs) that no service holds (kube-proxy's cluster-ips-check).
func clusterIPsCheckRules(ipKW string, serviceCIDRs []netip.Prefix) []string {
	rules := []string{fmt.Sprintf("%s daddr @%s reject", ipKW, setClusterIPs)}
	if len(serviceCIDRs) > 0 {
		var cidrs []string
		// Overlapping ServiceCIDRs (a range being replaced) would make the
		// anonymous interval set, and the whole sync, fail.
		for _, p := range outermost(serviceCIDRs) {
			cidrs = append(cidrs, p.Masked().String())
		}
		rules = append(rules, fmt.Sprintf("%s daddr { %s } drop", ipKW, strings.Join(cidrs, ", ")))
	}
	return rules
}

// outermost drops the prefixes that lie inside another one (and repeats):
// cluster-cidrs is an interval set, and nft refuses an interval overlapping
// another ("conflicting intervals specified"), which made every sync fail for
// clusterCIDRs such as 10.244.0.0/16 and 10.244.1.0/24. The union is the same.
func outermost(ps []netip.Prefix) []netip.Prefix {
	var out []netip.Prefix
	for i, p := range ps {
		p = p.Masked()
		covered := false
		for j, q := range ps {
			q = q.Masked()
			if (q.Bits() < p.Bits() && q.Contains(p.Addr())) || (q == p && j < i) {
				covered = true
				break
			}
		}
		if !covered {
			out = append(out, p)
		}
	}
	return out
}

// settingsView is the part of backend.Settings that shapes rules.
type settingsView struct {
	mark    uint32
	masqAll bool
}

// isBase reports whether a chain/set/map name is one of the fixed objects.
func isBase(name string) bool {
	switch name {
	case chainServices, chainFirewallCheck, chainEndpointsCheck, chainNodePortsCheck, chainMarkMasq, chainMasquerading, chainReject,
		chainClusterIPs, mapServiceIPs, mapServiceNodePorts, mapNoEndpointServices, mapNoEndpointNodePorts,
		mapFirewallIPs, mapEndpoints, mapNodePortEndpoints, setHairpin, setClusterCIDRs, setNodePortIPs, setClusterIPs:
		return true
	}
	for _, bc := range baseChains {
		if bc.name == name {
			return true
		}
	}
	return false
}

// writeBase adds the table and its fixed objects to tx and flushes the fixed
// chains; linkBase then re-adds their rules. All chains are created before any
// rule refers to them (the kernel resolves jump targets per rule).
//
// inKernel are the table's chains and sets/maps the kernel holds (full sync;
// nil for a fresh table). Every chain is flushed first: the rules go away
// before anything they refer to is deleted or recreated, and the later
// rewrites need no flush of their own.
//
// The maps are flushed only when flushMaps (full sync): a full sync re-adds
// every element, which repairs drift without listing them.
func writeBase(tx *knftables.Transaction, fi famInfo, b *baseObjects, flushMaps bool, inKernel *staleObjects) {
	fam, tbl := fi.family, tableName
	tx.Add(&knftables.Table{Family: fam, Name: tbl, Comment: knftables.PtrTo("kpo service proxy")})
	haveMap := map[string]bool{}
	if inKernel != nil {
		for _, c := range inKernel.chains {
			tx.Flush(&knftables.Chain{Family: fam, Table: tbl, Name: c})
		}
		for _, s := range inKernel.sets {
			haveMap[s] = true
		}
	}

	for _, m := range verdictMaps(fi) {
		tx.Add(&knftables.Map{Family: fam, Table: tbl, Name: m.name, Type: m.typ})
		if flushMaps {
			tx.Flush(&knftables.Map{Family: fam, Table: tbl, Name: m.name})
		}
	}
	// The endpoint maps: typeof, because numgen's value has no named type
	// ("integer" has no size in a concatenation, "mark" is refused as a
	// different type). The "mod 1" is only the key's type; each pick chain
	// draws with its own modulus.
	//
	// nft 1.0.6 cannot rebuild the value's typeof "ip daddr . th dport" from
	// the kernel ("conflicting protocols specified: ip vs. th"), so it refuses
	// any rule that uses such a map when the map came from the kernel rather
	// than from the same transaction. A full sync therefore deletes and
	// recreates them (their elements are all rewritten anyway; the chains
	// using them were flushed above). ("tcp dport" would rebuild, but then nft
	// adds a "meta l4proto tcp" dependency to every rule using the map.)
	// Partial syncs go over netlink and never ask nft.
	for _, m := range endpointMaps(fi) {
		if haveMap[m.name] {
			tx.Delete(&knftables.Map{Family: fam, Table: tbl, Name: m.name})
		}
		tx.Add(&knftables.Map{Family: fam, Table: tbl, Name: m.name, TypeOf: m.typ})
	}
	// Sets whose elements the services own (use-counted: a ClusterIP serves
	// several ports, an endpoint several services).
	for _, set := range serviceSets(fi) {
		tx.Add(set)
		if flushMaps {
			tx.Flush(&knftables.Set{Family: fam, Table: tbl, Name: set.Name})
		}
	}
	for _, set := range fixedSets(fi) {
		name := set.Name
		tx.Add(set)
		if flushMaps {
			tx.Flush(&knftables.Set{Family: fam, Table: tbl, Name: name})
			for _, e := range b.sets[name] {
				tx.Add(&knftables.Element{Family: fam, Table: tbl, Set: name, Key: []string{e}})
			}
		}
	}
	createFixedChains(tx, fi, b, inKernel != nil)
}

// createFixedChains adds (hooking the base chains) and, unless flushed already,
// flushes the fixed chains.
func createFixedChains(tx *knftables.Transaction, fi famInfo, b *baseObjects, flushed bool) {
	fam, tbl := fi.family, tableName
	for _, c := range b.chains {
		ch := &knftables.Chain{Family: fam, Table: tbl, Name: c.name}
		for _, bc := range baseChains {
			if bc.name == c.name {
				ch.Type, ch.Hook, ch.Priority = knftables.PtrTo(bc.typ), knftables.PtrTo(bc.hook), knftables.PtrTo(bc.priority)
			}
		}
		tx.Add(ch)
		if !flushed {
			tx.Flush(&knftables.Chain{Family: fam, Table: tbl, Name: c.name})
		}
	}
}

// linkBase adds the fixed chains' rules, leaves first.
func linkBase(tx *knftables.Transaction, fi famInfo, b *baseObjects) {
	for _, c := range b.chains {
		for _, r := range c.rules {
			tx.Add(&knftables.Rule{Family: fi.family, Table: tableName, Chain: c.name, Rule: r})
		}
	}
}

// namedType is a map's name and its type (or typeof) expression.
type namedType struct{ name, typ string }

// verdictMaps are the service dispatch maps (address or NodePort, protocol and
// port to a verdict), as writeBase and writeBaseApart declare them.
func verdictMaps(fi famInfo) []namedType {
	keyAddr := fi.addrT + " . inet_proto . inet_service : verdict"
	keyPort := "inet_proto . inet_service : verdict"
	return []namedType{
		{mapServiceIPs, keyAddr}, {mapFirewallIPs, keyAddr}, {mapNoEndpointServices, keyAddr},
		{mapServiceNodePorts, keyPort}, {mapNoEndpointNodePorts, keyPort},
	}
}

// endpointMaps are the endpoint maps by their typeof (see writeBase for why
// typeof, and why nft cannot re-declare them once they came from the kernel).
func endpointMaps(fi famInfo) []namedType {
	ip := fi.ipKW
	return []namedType{
		{mapEndpoints, ip + " daddr . meta l4proto . th dport . numgen random mod 1 : " + ip + " daddr . th dport"},
		{mapNodePortEndpoints, "meta l4proto . th dport . numgen random mod 1 : " + ip + " daddr . th dport"},
	}
}

// serviceSets are the sets whose elements the services own (use-counted: a
// ClusterIP serves several ports, an endpoint several services).
func serviceSets(fi famInfo) []*knftables.Set {
	fam, tbl := fi.family, tableName
	return []*knftables.Set{
		{Family: fam, Table: tbl, Name: setHairpin, Type: fi.addrT + " . " + fi.addrT + " . inet_proto . inet_service"},
		{Family: fam, Table: tbl, Name: setClusterIPs, Type: fi.addrT},
	}
}

// fixedSets are the sets of the node's own configuration (cluster CIDRs,
// NodePort addresses), rewritten from baseObjects on every full sync.
func fixedSets(fi famInfo) []*knftables.Set {
	fam, tbl := fi.family, tableName
	var out []*knftables.Set
	for _, name := range []string{setClusterCIDRs, setNodePortIPs} {
		set := &knftables.Set{Family: fam, Table: tbl, Name: name, Type: fi.addrT}
		if name == setClusterCIDRs {
			set.Flags = []knftables.SetFlag{knftables.IntervalFlag}
		}
		out = append(out, set)
	}
	return out
}
