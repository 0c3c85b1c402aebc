package iptables

import (
	"fmt"
	"math"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"kpo.dev/kpo/nodeagent/backend"
	"kpo.dev/kpo/nodeagent/model"
)

// chain is a chain's full content: rules are the arguments after "-A <name>".
type chain struct {
	name  string
	rules []string
}

// dispatchRule is one rule of a destination bucket chain (KPO-DST-xx).
type dispatchRule struct {
	bucket uint8
	rule   string
}

// rendered is everything one service port contributes to one family's tables.
// It is a pure function of the ServicePort and the renderer's (node) context,
// so it is kept between syncs and only recomputed when the pointer changes.
type rendered struct {
	sp  *model.ServicePort
	nat []chain // SVC, SVX, EXT, FW and SEP chains, in that order
	// Rules in the shared dispatch chains.
	natDispatch    []dispatchRule // nat KPO-DST-xx
	filterDispatch []dispatchRule // filter KPO-DST-xx (REJECT/DROP)
	natNodePort    string         // nat KPO-NODEPORTS ("" for none)
	filterNodePort string         // filter KPO-NODEPORTS ("" for none)
	filterExternal []string       // filter KPO-EXTERNAL-SERVICES (external and LB IPs)
	// Endpoint addresses DNATed without a SEP chain, for KPO-HAIRPIN.
	hairpin []netip.Addr
	rules   int
}

// maxInlineEndpoints bounds the services whose rules are inlined in their
// destination bucket. Inlining repeats the VIP:port match on every rule, which
// costs restore time and first-packet matching once a service has more than
// a few endpoints; a chain per such service is cheap (they are few).
const maxInlineEndpoints = 4

// renderer holds what rule generation needs beyond the ServicePort itself.
// Anything in here changing (node info) forces a full sync.
type renderer struct {
	fam      model.Family
	settings backend.Settings
	// local are the matches of traffic from pods (detect-local): one per
	// cluster CIDR ("-s 10.244.0.0/16"), or the input interface ("-i veth+").
	local []string
	probs map[int]string
}

// localMatches are the detect-local matches of a node's family view.
func localMatches(n nodeView) []string {
	if n.localIface != "" {
		return []string{"-i " + n.localIface}
	}
	out := make([]string, 0, len(n.clusterCIDRs))
	for _, c := range n.clusterCIDRs {
		out = append(out, "-s "+c.Masked().String())
	}
	return out
}

// emptyVerdict renders what happens to traffic with no endpoint to go to.
func (r *renderer) emptyVerdict(sp *model.ServicePort) string {
	if sp.EmptyVerdict() == model.Drop {
		return "-j DROP"
	}
	return r.rejectWith(sp.Protocol)
}

func (r *renderer) rejectWith(p corev1.Protocol) string {
	switch {
	case p == corev1.ProtocolTCP:
		// A RST makes connect() fail at once with ECONNREFUSED.
		return "-j REJECT --reject-with tcp-reset"
	case r.fam == model.IPv6:
		return "-j REJECT --reject-with icmp6-port-unreachable"
	default:
		return "-j REJECT --reject-with icmp-port-unreachable"
	}
}

// probability(n-i) is the --probability of rule i of n: picking endpoint i
// with 1/(n-i) after the earlier rules did not match gives each endpoint 1/n.
// Formatting floats is a visible part of rule generation, hence the cache.
func (r *renderer) probability(n int) string {
	if s, ok := r.probs[n]; ok {
		return s
	}
	s := strconv.FormatFloat(1.0/float64(n), 'f', 10, 64)
	if r.probs == nil {
		r.probs = map[int]string{}
	}
	r.probs[n] = s
	return s
}

func sameEndpoints(a, b []model.Endpoint) bool {
	return slices.EqualFunc(a, b, func(x, y model.Endpoint) bool { return x.AddrPort() == y.AddrPort() })
}

// render computes the rules of one service port.
func (r *renderer) render(sp *model.ServicePort) *rendered {
	out := &rendered{sp: sp}
	keyStr := sp.Key.String()
	names := chainsForKey(keyStr)
	pp := protoPort(sp.Protocol, sp.Port)

	proto := protoName(sp.Protocol)
	affinity := sp.AffinityTimeout > 0

	// Endpoint chains, only for session affinity: the "recent" list must be
	// set when one endpoint is chosen and checked for that same endpoint, which
	// takes a chain per endpoint. Without affinity every endpoint is a DNAT rule
	// in the load-balancing chain itself: iptables-nft's restore time grows
	// quadratically with the number of chains, and 1 + n chains per service
	// was 30k chains at 10k services × 2 endpoints.
	seps := map[netip.AddrPort]string{}
	var sepChains []chain
	addSEP := func(ep model.Endpoint) string {
		if name, ok := seps[ep.AddrPort()]; ok {
			return name
		}
		name := sepChainForKey(keyStr, ep)
		seps[ep.AddrPort()] = name
		sepChains = append(sepChains, chain{name: name, rules: []string{
			// Hairpin: a pod reaching itself through the service must be
			// masqueraded, or its reply would bypass conntrack's reverse NAT.
			"-s " + hostCIDR(ep.IP) + " -j " + chainMarkMasq,
			"-p " + proto + " -m recent --name " + name + " --set -j DNAT --to-destination " + ep.AddrPort().String(),
		}})
		return name
	}
	// Endpoints DNATed without a SEP chain get their hairpin check in nat
	// POSTROUTING (KPO-HAIRPIN), after the one random choice, where the
	// source equalling the new destination is visible. Only endpoints whose
	// own packets can reach this node's service rules untranslated need it:
	// local ones, and with policy Local every cluster endpoint, since a remote
	// pod reaching this node's node port is sent to the cluster endpoints
	// without masquerade. (Remote pods' ClusterIP traffic is translated by
	// their own node; policy Cluster external traffic is always masqueraded.)
	hairpin := map[netip.Addr]bool{}
	needsHairpin := func(ep model.Endpoint) bool {
		return (ep.Local || sp.ExternalPolicyLocal) && !hairpin[ep.IP]
	}
	// lbRules are the rules load balancing over eps. match prefixes every
	// rule: "" inside a chain of the service, the dispatch match when the
	// rules are inlined in a destination bucket.
	lbRules := func(match string, eps []model.Endpoint, masq string) []string {
		var rules []string
		if masq != "" {
			rules = append(rules, strings.TrimPrefix(match+" -j "+masq, " "))
		}
		if match == "" {
			match = "-p " + proto // DNAT to a port needs the protocol
		}
		if !affinity {
			for i, ep := range eps {
				if needsHairpin(ep) {
					hairpin[ep.IP] = true
					out.hairpin = append(out.hairpin, ep.IP)
				}
				stat := ""
				if i < len(eps)-1 {
					stat = " -m statistic --mode random --probability " + r.probability(len(eps)-i)
				}
				rules = append(rules, match+stat+" -j DNAT --to-destination "+ep.AddrPort().String())
			}
			return rules
		}
		targets := make([]string, len(eps))
		for i, ep := range eps {
			targets[i] = addSEP(ep)
		}
		secs := strconv.Itoa(int(math.Ceil(sp.AffinityTimeout.Seconds())))
		for _, t := range targets {
			rules = append(rules, "-m recent --name "+t+" --rcheck --seconds "+secs+" --reap -j "+t)
		}
		for i, t := range targets {
			if i < len(targets)-1 {
				rules = append(rules, "-m statistic --mode random --probability "+r.probability(len(targets)-i)+" -j "+t)
			} else {
				rules = append(rules, "-j "+t)
			}
		}
		return rules
	}
	lb := func(name string, eps []model.Endpoint, masq string) chain {
		return chain{name: name, rules: lbRules("", eps, masq)}
	}

	// Cluster traffic: masquerade sources outside the pod network (or all).
	// In the SVC chain the rule matches the ClusterIP, as kube-proxy's, so
	// that external traffic sharing the chain keeps its source.
	clusterMasq := ""
	switch {
	case r.settings.MasqueradeAll:
		clusterMasq = chainMarkMasq
	case len(r.local) > 0:
		clusterMasq = chainClusterMasq
	}
	hasCluster := len(sp.ClusterEndpoints) > 0
	// A plain ClusterIP service (no affinity, nothing external jumping to its
	// SVC chain) needs no chain of its own: its rules go straight into the
	// destination bucket, each behind the VIP:port match. Only chains are
	// expensive for iptables-nft; rules are not.
	inline := hasCluster && !affinity && !sp.HasExternal() && len(sp.ClusterEndpoints) <= maxInlineEndpoints
	if hasCluster && !inline {
		c := lb(names.svc, sp.ClusterEndpoints, "")
		if clusterMasq != "" {
			c.rules = append([]string{"-d " + hostCIDR(sp.ClusterIP) + " " + pp + " -j " + clusterMasq}, c.rules...)
		}
		out.nat = append(out.nat, c)
	}

	// External traffic (node ports, external IPs, load-balancer IPs). The
	// chains choosing among an endpoint set are shared when the sets are
	// equal: SVC (cluster), SVX (external), SCC (short-circuit).
	extTarget := "" // chain external traffic enters, "" when none
	if sp.HasExternal() {
		chainOf := func(eps []model.Endpoint, own string) string {
			switch {
			case len(eps) == 0:
				return ""
			case hasCluster && sameEndpoints(eps, sp.ClusterEndpoints):
				return names.svc
			}
			out.nat = append(out.nat, lb(own, eps, ""))
			return own
		}
		extLB := chainOf(sp.ExternalEndpoints, names.svx)
		ext := chain{name: names.ext}
		if sp.ExternalPolicyLocal {
			if sc := sp.ShortCircuitEndpoints; len(sc) > 0 {
				scLB := extLB
				if !sameEndpoints(sc, sp.ExternalEndpoints) {
					scLB = chainOf(sc, names.scc)
				}
				// Pods and the node itself reach external VIPs through every
				// usable endpoint, as kube-proxy does: otherwise a node without
				// local endpoints would black-hole its own pods' traffic. Pods
				// keep their source; the node's own traffic is masqueraded.
				for _, m := range r.local {
					ext.rules = append(ext.rules, m+" -j "+scLB)
				}
				ext.rules = append(ext.rules,
					"-m addrtype --src-type LOCAL -j "+chainMarkMasq,
					"-m addrtype --src-type LOCAL -j "+scLB)
			}
			// Outside clients: local endpoints only, source preserved.
			if extLB != "" {
				ext.rules = append(ext.rules, "-j "+extLB)
			}
		} else if extLB != "" {
			ext.rules = append(ext.rules, "-j "+chainMarkMasq, "-j "+extLB)
		}
		if len(ext.rules) > 0 {
			out.nat = append(out.nat, ext)
			extTarget = names.ext
		}
	}
	out.nat = append(out.nat, sepChains...)

	// Dispatch rules.
	if inline {
		b := bucketOf(sp.ClusterIP)
		for _, rule := range lbRules("-d "+hostCIDR(sp.ClusterIP)+" "+pp, sp.ClusterEndpoints, clusterMasq) {
			out.natDispatch = append(out.natDispatch, dispatchRule{b, rule})
		}
	} else if hasCluster {
		out.natDispatch = append(out.natDispatch, dispatchRule{bucketOf(sp.ClusterIP),
			"-d " + hostCIDR(sp.ClusterIP) + " " + pp + " -j " + names.svc})
	} else {
		out.filterDispatch = append(out.filterDispatch, dispatchRule{bucketOf(sp.ClusterIP),
			"-d " + hostCIDR(sp.ClusterIP) + " " + pp + " " + r.emptyVerdict(sp)})
	}
	// What the filter table does with external traffic nat did not translate:
	// reject when the service has no endpoints at all, drop when a policy
	// Local leaves this node without one (the model decides).
	noExt := ""
	if len(sp.ExternalEndpoints) == 0 {
		noExt = r.emptyVerdict(sp)
	}
	for _, ip := range sp.ExternalIPs {
		if extTarget != "" {
			out.natDispatch = append(out.natDispatch, dispatchRule{bucketOf(ip), "-d " + hostCIDR(ip) + " " + pp + " -j " + extTarget})
		}
		if noExt != "" {
			out.filterExternal = append(out.filterExternal, "-d "+hostCIDR(ip)+" "+pp+" "+noExt)
		}
	}
	if len(sp.LoadBalancerIPs) > 0 {
		lbTarget := extTarget
		if extTarget != "" && len(sp.SourceRanges) > 0 {
			// Allowed sources continue to EXT; the others are not translated and
			// the filter table drops them (the filter rule below only sees
			// packets that nat left alone).
			fw := chain{name: names.fw}
			for _, p := range sp.SourceRanges {
				fw.rules = append(fw.rules, "-s "+p.Masked().String()+" -j "+extTarget)
			}
			out.nat = append(out.nat, fw)
			lbTarget = names.fw
		}
		for _, ip := range sp.LoadBalancerIPs {
			match := "-d " + hostCIDR(ip) + " " + pp
			if lbTarget != "" {
				out.natDispatch = append(out.natDispatch, dispatchRule{bucketOf(ip), match + " -j " + lbTarget})
			}
			// With source ranges and endpoints, what nat did not let through is
			// dropped (kube-proxy's KUBE-PROXY-FIREWALL: forward and output);
			// without endpoints, the external refusal (input and forward).
			if len(sp.SourceRanges) > 0 && sp.HasEndpoints {
				out.filterDispatch = append(out.filterDispatch, dispatchRule{bucketOf(ip), match + " -j DROP"})
			}
			if noExt != "" {
				out.filterExternal = append(out.filterExternal, match+" "+noExt)
			}
		}
	}
	if sp.NodePort != 0 {
		npp := protoPort(sp.Protocol, sp.NodePort)
		if extTarget != "" {
			out.natNodePort = npp + " -j " + extTarget
		}
		if noExt != "" {
			out.filterNodePort = npp + " " + noExt
		}
	}

	out.rules = len(out.natDispatch) + len(out.filterDispatch) + len(out.filterExternal)
	if out.natNodePort != "" {
		out.rules++
	}
	if out.filterNodePort != "" {
		out.rules++
	}
	for _, c := range out.nat {
		out.rules += len(c.rules)
	}
	return out
}

// nodePortDispatch are the rules of KPO-SERVICES (both tables) that send
// traffic to local addresses on to KPO-NODEPORTS. They come after the buckets.
func (r *renderer) nodePortDispatch(nodePortIPs []netip.Addr, explicit bool) []string {
	if explicit {
		out := make([]string, 0, len(nodePortIPs))
		for _, ip := range nodePortIPs {
			if ip.IsLoopback() && (!r.settings.LocalhostNodePorts || r.fam != model.IPv4) {
				continue
			}
			out = append(out, "-d "+hostCIDR(ip)+" -j "+chainNodePorts)
		}
		return out
	}
	// Loopback destinations only work for IPv4 with route_localnet, and only
	// when asked for (kube-proxy's --iptables-localhost-nodeports).
	switch {
	case r.fam == model.IPv6:
		return []string{"-m addrtype --dst-type LOCAL ! -d ::1/128 -j " + chainNodePorts}
	case r.settings.LocalhostNodePorts:
		return []string{"-m addrtype --dst-type LOCAL -j " + chainNodePorts}
	default:
		return []string{"-m addrtype --dst-type LOCAL ! -d 127.0.0.0/8 -j " + chainNodePorts}
	}
}

// fixedNAT are the nat chains whose content depends only on settings and node.
func (r *renderer) fixedNAT(randomFully bool) []chain {
	mark := fmt.Sprintf("0x%x", r.settings.MasqueradeMark())
	masq := masquerade(randomFully)
	cm := chain{name: chainClusterMasq}
	for _, m := range r.local {
		cm.rules = append(cm.rules, m+" -j RETURN")
	}
	if len(r.local) > 0 {
		cm.rules = append(cm.rules, "-j "+chainMarkMasq)
	}
	return []chain{
		{name: chainMarkMasq, rules: []string{"-j MARK --or-mark " + mark}},
		cm,
		{name: chainPostrouting, rules: []string{
			// Hairpin check for endpoints without SEP chain. Only first
			// packets of DNATed connections not already marked enter it.
			"-m mark ! --mark " + mark + "/" + mark + " -m conntrack --ctstate DNAT -j " + chainHairpin,
			"-m mark ! --mark " + mark + "/" + mark + " -j RETURN",
			// Clear the bit so that a packet re-entering the stack (for
			// instance through a tunnel) is not masqueraded twice.
			"-j MARK --xor-mark " + mark,
			masq,
		}},
	}
}

func masquerade(randomFully bool) string {
	if randomFully {
		return "-j MASQUERADE --random-fully"
	}
	return "-j MASQUERADE"
}

// hairpinRule masquerades a connection DNATed to the address it came from: a
// pod reaching itself through a service must see another source, or its
// reply would bypass conntrack's reverse NAT. The port does not matter, as in
// kube-proxy's "-s <endpoint> -j KUBE-MARK-MASQ".
func hairpinRule(ip netip.Addr, randomFully bool) string {
	h := hostCIDR(ip)
	return "-s " + h + " -d " + h + " " + masquerade(randomFully)
}
