package nftables

import (
	"fmt"
	"net/netip"
	"slices"

	"kpo.dev/kpo/nodeagent/model"
)

// renderChains renders a ServicePort with ClientIP affinity into chains of
// its own (the layout every service had before the flat one; kube-proxy's,
// minus the anonymous vmaps, see docs/nftables-backend.md). Affinity needs
// them: the per-endpoint `update @aff-…` sets and the lookups before the
// random choice cannot be expressed with the shared data maps.
//
//	service-ips       ClusterIP . proto . port   : goto svc-…
//	service-ips       extIP/LBIP . proto . port  : goto ext-…
//	service-nodeports proto . nodePort           : goto ext-…
//	firewall-ips      LBIP . proto . port        : goto fw-…   (source ranges)
//	no-endpoint-*     … : goto reject-chain (nothing to send to)
//	svc-…  [masquerade off-cluster sources] [affinity] random endpoint choice
//	ext-…  [masquerade | eTP=Local short-circuits] endpoint choice | drop
//	ep-…   [affinity update], dnat
func renderChains(rc *renderCtx, sp *model.ServicePort) *svcObjects {
	o := &svcObjects{}
	o.shareCommon(sp) // hairpin through the shared set, as the flat layout
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
	for _, ep := range sp.ShortCircuitEndpoints {
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
		// Masquerade matches the ClusterIP, as kube-proxy's: external traffic
		// short-circuited through this chain keeps its source.
		vip := fmt.Sprintf("%s daddr %s", ipKW, sp.ClusterIP)
		switch {
		case rc.masqAll:
			c.rules = append(c.rules, vip+" jump "+chainMarkMasq)
		case rc.notLocal != "":
			c.rules = append(c.rules, vip+" "+rc.notLocal+" jump "+chainMarkMasq)
		}
		choose(&c, sp.ClusterEndpoints)
		o.chains = append(o.chains, c)
		o.elems = append(o.elems, elemDef{mapServiceIPs, []string{sp.ClusterIP.String(), proto, port}, "goto " + svc})
	} else {
		o.elems = append(o.elems, elemDef{mapNoEndpointServices, []string{sp.ClusterIP.String(), proto, port}, emptyVerdict(sp)})
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
	case sp.ExternalPolicyLocal && sp.HasEndpoints:
		c := chainDef{name: externalChainName(k)}
		// Pods and the node itself short-circuit to every usable endpoint
		// (the service chain when it holds them); the node's own traffic is
		// masqueraded so that the reply comes back through this node.
		sc := svc
		if !slices.Equal(sp.ShortCircuitEndpoints, sp.ClusterEndpoints) {
			sc = clusterPolicyChainName(k)
			cpc := chainDef{name: sc}
			choose(&cpc, sp.ShortCircuitEndpoints)
			o.chains = append(o.chains, cpc)
		}
		if rc.isLocal != "" {
			c.rules = append(c.rules, rc.isLocal+" goto "+sc)
		}
		c.rules = append(c.rules, "fib saddr type local jump "+chainMarkMasq)
		c.rules = append(c.rules, "fib saddr type local goto "+sc)
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
			o.elems = append(o.elems, elemDef{mapNoEndpointServices, []string{ip, proto, port}, emptyVerdict(sp)})
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
			o.elems = append(o.elems, elemDef{mapNoEndpointNodePorts, []string{proto, np}, emptyVerdict(sp)})
		}
	}

	renderFirewall(rc, sp, o)
	return o
}
