package nftables

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"sigs.k8s.io/knftables"

	"kpo.dev/kpo/nodeagent/model"
)

// Rendering of one ServicePort into nft objects. This is pure: it only builds
// values, so that the backend can diff them against what it programmed last
// time, and benchmarks can measure it without a kernel.

// chainDef is a regular chain and its rules, in order.
type chainDef struct {
	name  string
	rules []string
}

// setDef is a named set this service owns (ClientIP affinity).
type setDef struct {
	name    string
	timeout int64 // seconds
}

// elemDef is an element of one of the table's shared verdict maps.
type elemDef struct {
	mapName string
	key     []string
	value   string
}

func (e elemDef) id() string { return e.mapName + "|" + strings.Join(e.key, " . ") }

// svcObjects is everything one ServicePort owns in its family's table.
type svcObjects struct {
	chains []chainDef
	sets   []setDef
	elems  []elemDef
}

// count is what the service contributes to SyncResult.Rules.
func (o *svcObjects) count() int {
	n := len(o.elems)
	for _, c := range o.chains {
		n += len(c.rules)
	}
	return n
}

// famInfo is what differs between the ip and ip6 tables.
type famInfo struct {
	family knftables.Family
	ipKW   string // "ip" / "ip6", the payload keyword
	addrT  string // "ipv4_addr" / "ipv6_addr"
	lo     string // loopback range, never a NodePort address
}

var fams = map[model.Family]famInfo{
	model.IPv4: {family: knftables.IPv4Family, ipKW: "ip", addrT: "ipv4_addr", lo: "127.0.0.0/8"},
	model.IPv6: {family: knftables.IPv6Family, ipKW: "ip6", addrT: "ipv6_addr", lo: "::1"},
}

// renderCtx is the per-sync, per-family input of rendering besides the service.
type renderCtx struct {
	fi            famInfo
	masqAll       bool
	haveClusterCI bool // Node.ClusterCIDRs[family] is not empty
}

func itoa(i int64) string { return strconv.FormatInt(i, 10) }

func protoOf(sp *model.ServicePort) string { return strings.ToLower(string(sp.Protocol)) }

// dnatTarget renders "addr:port" for dnat, bracketing IPv6.
func dnatTarget(ep model.Endpoint) string {
	return ep.AddrPort().String()
}

// renderService renders one ServicePort. Layout (kube-proxy's, minus the
// anonymous vmaps, see docs/nftables-backend.md):
//
//	service-ips       ClusterIP . proto . port   : goto svc-…
//	service-ips       extIP/LBIP . proto . port  : goto ext-…
//	service-nodeports proto . nodePort           : goto ext-…
//	firewall-ips      LBIP . proto . port        : goto fw-…   (source ranges)
//	no-endpoint-*     … : goto reject-chain (nothing to send to)
//	svc-…  [masquerade off-cluster sources] [affinity] random endpoint choice
//	ext-…  [masquerade | eTP=Local short-circuits] endpoint choice | drop
//	ep-…   hairpin masquerade, [affinity update], dnat
func renderService(rc *renderCtx, sp *model.ServicePort) *svcObjects {
	o := &svcObjects{}
	k := sp.Key
	ipKW := rc.fi.ipKW
	proto := protoOf(sp)
	port := itoa(int64(sp.Port))
	timeout := int64(sp.AffinityTimeout.Seconds())
	if sp.AffinityTimeout > 0 && timeout == 0 {
		timeout = 1
	}

	// Endpoint chains, shared by the cluster and external choices.
	epChain := map[netip.AddrPort]string{}
	affSet := map[netip.AddrPort]string{}
	addEP := func(ep model.Endpoint) {
		ak := ep.AddrPort()
		if _, ok := epChain[ak]; ok {
			return
		}
		name := endpointChainName(k, ep)
		epChain[ak] = name
		c := chainDef{name: name}
		// Hairpin: a pod reaching itself through the service must be
		// masqueraded, or it would answer itself directly and drop the reply.
		c.rules = append(c.rules, fmt.Sprintf("%s saddr %s jump %s", ipKW, ep.IP, chainMarkMasq))
		if timeout > 0 {
			set := affinitySetName(k, ep, timeout)
			affSet[ak] = set
			o.sets = append(o.sets, setDef{name: set, timeout: timeout})
			c.rules = append(c.rules, fmt.Sprintf("update @%s { %s saddr }", set, ipKW))
		}
		c.rules = append(c.rules, fmt.Sprintf("meta l4proto %s dnat to %s", proto, dnatTarget(ep)))
		o.chains = append(o.chains, c)
	}
	for _, ep := range sp.ClusterEndpoints {
		addEP(ep)
	}
	for _, ep := range sp.ExternalEndpoints {
		addEP(ep)
	}

	// choose appends the affinity lookups and the uniform random choice.
	//
	// Uniform choice without a set: rule i (of n) matches with probability
	// 1/(n-i) given the previous ones did not, as iptables' statistic chains do.
	// kube-proxy uses `numgen random mod n vmap { … }`, but each anonymous set
	// costs the kernel a scan of every set name in the table when it allocates
	// "__mapN" (nf_tables_set_alloc_name): 10k services took 20 s of kernel
	// time. A shared named vmap (`numgen … offset k vmap @m`) is no better:
	// the commit-time loop check walks the whole map for every rule using it.
	choose := func(c *chainDef, eps []model.Endpoint) {
		if timeout > 0 {
			for _, ep := range eps {
				ak := ep.AddrPort()
				c.rules = append(c.rules, fmt.Sprintf("%s saddr @%s goto %s", ipKW, affSet[ak], epChain[ak]))
			}
		}
		n := len(eps)
		for i, ep := range eps {
			target := epChain[ep.AddrPort()]
			if i == n-1 {
				c.rules = append(c.rules, "goto "+target)
			} else {
				c.rules = append(c.rules, fmt.Sprintf("numgen random mod %d 0 goto %s", n-i, target))
			}
		}
	}

	svc := serviceChainName(k)
	hasCluster := len(sp.ClusterEndpoints) > 0
	if hasCluster {
		c := chainDef{name: svc}
		switch {
		case rc.masqAll:
			c.rules = append(c.rules, "jump "+chainMarkMasq)
		case rc.haveClusterCI:
			c.rules = append(c.rules, fmt.Sprintf("%s saddr != @%s jump %s", ipKW, setClusterCIDRs, chainMarkMasq))
		}
		choose(&c, sp.ClusterEndpoints)
		o.chains = append(o.chains, c)
		o.elems = append(o.elems, elemDef{mapServiceIPs, []string{sp.ClusterIP.String(), proto, port}, "goto " + svc})
	} else {
		o.elems = append(o.elems, elemDef{mapNoEndpointServices, []string{sp.ClusterIP.String(), proto, port}, "goto " + chainReject})
	}

	if !sp.HasExternal() {
		return o
	}
	// Where external traffic goes: an ext- chain, or nowhere (reject).
	extTarget := ""
	switch {
	case !sp.ExternalPolicyLocal && len(sp.ExternalEndpoints) > 0:
		c := chainDef{name: externalChainName(k)}
		c.rules = append(c.rules, "jump "+chainMarkMasq)
		choose(&c, sp.ExternalEndpoints)
		o.chains = append(o.chains, c)
		extTarget = c.name
	case sp.ExternalPolicyLocal && (hasCluster || len(sp.ExternalEndpoints) > 0):
		c := chainDef{name: externalChainName(k)}
		if hasCluster {
			// Pods and the node itself may use any endpoint (kube-proxy's
			// short-circuit); the node's own traffic is masqueraded so that the
			// reply comes back through this node.
			if rc.haveClusterCI {
				c.rules = append(c.rules, fmt.Sprintf("%s saddr @%s goto %s", ipKW, setClusterCIDRs, svc))
			}
			c.rules = append(c.rules, "fib saddr type local jump "+chainMarkMasq)
			c.rules = append(c.rules, "fib saddr type local goto "+svc)
		}
		if len(sp.ExternalEndpoints) > 0 {
			choose(&c, sp.ExternalEndpoints)
		} else {
			// No local endpoint: drop, so that the load balancer's health check
			// (not a reject) steers traffic elsewhere.
			c.rules = append(c.rules, "drop")
		}
		o.chains = append(o.chains, c)
		extTarget = c.name
	}

	vip := func(ip string) {
		if extTarget != "" {
			o.elems = append(o.elems, elemDef{mapServiceIPs, []string{ip, proto, port}, "goto " + extTarget})
		} else {
			o.elems = append(o.elems, elemDef{mapNoEndpointServices, []string{ip, proto, port}, "goto " + chainReject})
		}
	}
	for _, ip := range sp.ExternalIPs {
		vip(ip.String())
	}
	for _, ip := range sp.LoadBalancerIPs {
		vip(ip.String())
	}
	if sp.NodePort != 0 {
		np := itoa(int64(sp.NodePort))
		if extTarget != "" {
			o.elems = append(o.elems, elemDef{mapServiceNodePorts, []string{proto, np}, "goto " + extTarget})
		} else {
			o.elems = append(o.elems, elemDef{mapNoEndpointNodePorts, []string{proto, np}, "goto " + chainReject})
		}
	}

	// Source ranges: checked before DNAT in a filter chain (drop is a filter
	// decision), one rule per range so that no anonymous set is needed.
	if len(sp.LoadBalancerIPs) > 0 && len(sp.SourceRanges) > 0 {
		c := chainDef{name: firewallChainName(k)}
		for _, r := range sp.SourceRanges {
			c.rules = append(c.rules, fmt.Sprintf("%s saddr %s return", ipKW, r.Masked()))
		}
		c.rules = append(c.rules, "drop")
		o.chains = append(o.chains, c)
		for _, ip := range sp.LoadBalancerIPs {
			o.elems = append(o.elems, elemDef{mapFirewallIPs, []string{ip.String(), proto, port}, "goto " + c.name})
		}
	}
	return o
}

func secs(s int64) time.Duration { return time.Duration(s) * time.Second }
