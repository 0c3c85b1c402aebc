package nftables

import (
	"fmt"
	"net/netip"
	"slices"

	"kpo.dev/kpo/nodeagent/model"
)

// renderChains renders a ServicePort into chains of its own: with ClientIP
// affinity (the layout every service had before the flat one; kube-proxy's,
// minus the anonymous vmaps, see docs/nftables-backend.md), or routes the
// shared pick chains do not render. Affinity needs them: the per-endpoint
// `update @aff-…` sets and the lookups before the random choice cannot be
// expressed with the shared data maps.
//
//	service-ips       ClusterIP . proto . port   : goto svc-…
//	service-ips       extIP/LBIP . proto . port  : goto ext-…
//	service-nodeports proto . nodePort           : goto ext-…
//	firewall-ips      LBIP . proto . port        : goto fw-…   (source ranges)
//	no-endpoint-*     … : goto reject-chain | drop (nothing to send to)
//	svc-…  [masquerade by source] [affinity] random endpoint choice
//	ext-…  [masquerade by source] [short-circuits by source] endpoint choice | drop
//	cpc-…  the short-circuit choice, when its endpoints differ from svc-'s
//	ep-…   [affinity update], dnat
func renderChains(rc *renderCtx, sp *model.ServicePort, routes *model.Routes) *svcObjects {
	o := &svcObjects{}
	o.shareCommon(sp, routes) // hairpin through the shared set, as the flat layout
	ch := newChainRenderer(rc, sp, o)
	for _, eps := range routeEndpoints(routes) {
		for _, ep := range eps {
			ch.endpoint(ep)
		}
	}
	key := func(m string, addr netip.Addr, port int32) elemKey {
		return elemKey{mapName: m, addr: addr, proto: protoNum(sp.Protocol), port: port}
	}

	// ClusterIP traffic: one endpoint set for every source (the model's).
	cluster := &routes.Cluster
	svc := ""
	if eps := cluster.Outside.Endpoints; len(eps) > 0 {
		c := chainDef{name: serviceChainName(sp.Key)}
		// Masquerade matches the ClusterIP, as kube-proxy's: external traffic
		// short-circuited through this chain keeps its source.
		vip := fmt.Sprintf("%s daddr %s", rc.fi.ipKW, sp.ClusterIP)
		for _, m := range rc.masqRules(cluster.Masqueraded()) {
			c.rules = append(c.rules, join(vip, m, "jump "+chainMarkMasq))
		}
		ch.choose(&c, eps)
		o.chains = append(o.chains, c)
		svc = c.name
		o.elems = append(o.elems, elemDef{key(mapServiceIPs, sp.ClusterIP, sp.Port), elemVal{verdict: "goto " + svc}})
	} else {
		o.elems = append(o.elems, elemDef{key(mapNoEndpointServices, sp.ClusterIP, sp.Port), elemVal{verdict: emptyVerdict(cluster.Outside.Empty)}})
	}

	if !sp.HasExternal() {
		return o
	}
	x := &routes.External
	// Where external traffic goes: an ext- chain, or nowhere (the verdict).
	extTarget := ""
	if x.HasEndpoints() {
		c := ch.externalChain(x, svc, cluster.Outside.Endpoints)
		o.chains = append(o.chains, c)
		extTarget = c.name
	}
	verdict := elemVal{verdict: emptyVerdict(x.Outside.Empty)}
	for _, ip := range slices.Concat(sp.ExternalIPs, sp.LoadBalancerIPs) {
		if extTarget != "" {
			o.elems = append(o.elems, elemDef{key(mapServiceIPs, ip, sp.Port), elemVal{verdict: "goto " + extTarget}})
		} else {
			o.elems = append(o.elems, elemDef{key(mapNoEndpointServices, ip, sp.Port), verdict})
		}
	}
	if sp.NodePort != 0 {
		if extTarget != "" {
			o.elems = append(o.elems, elemDef{key(mapServiceNodePorts, netip.Addr{}, sp.NodePort), elemVal{verdict: "goto " + extTarget}})
		} else {
			o.elems = append(o.elems, elemDef{key(mapNoEndpointNodePorts, netip.Addr{}, sp.NodePort), verdict})
		}
	}
	renderFirewall(rc, sp, routes, o)
	return o
}

// chainRenderer renders one service port's chains: an ep- chain per
// endpoint (with its affinity set), and the random choices among them.
type chainRenderer struct {
	rc      *renderCtx
	sp      *model.ServicePort
	o       *svcObjects
	timeout int64 // affinity, seconds; 0: none
	epChain map[netip.AddrPort]string
	affSet  map[netip.AddrPort]string
}

func newChainRenderer(rc *renderCtx, sp *model.ServicePort, o *svcObjects) *chainRenderer {
	timeout := int64(sp.AffinityTimeout.Seconds())
	if sp.AffinityTimeout > 0 && timeout == 0 {
		timeout = 1
	}
	return &chainRenderer{rc: rc, sp: sp, o: o, timeout: timeout,
		epChain: map[netip.AddrPort]string{}, affSet: map[netip.AddrPort]string{}}
}

// endpoint adds an endpoint's chain (once), shared by every choice.
func (ch *chainRenderer) endpoint(ep model.Endpoint) {
	ak := ep.AddrPort()
	if _, ok := ch.epChain[ak]; ok {
		return
	}
	name := endpointChainName(ch.sp.Key, ep)
	ch.epChain[ak] = name
	c := chainDef{name: name}
	if ch.timeout > 0 {
		set := affinitySetName(ch.sp.Key, ep, ch.timeout)
		ch.affSet[ak] = set
		ch.o.sets = append(ch.o.sets, setDef{name: set, timeout: ch.timeout})
		c.rules = append(c.rules, fmt.Sprintf("update @%s { %s saddr }", set, ch.rc.fi.ipKW))
	}
	c.rules = append(c.rules, fmt.Sprintf("meta l4proto %s dnat to %s", protoOf(ch.sp), dnatTarget(ep)))
	ch.o.chains = append(ch.o.chains, c)
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
func (ch *chainRenderer) choose(c *chainDef, eps []model.Endpoint) {
	if ch.timeout > 0 {
		for _, ep := range eps {
			ak := ep.AddrPort()
			c.rules = append(c.rules, fmt.Sprintf("%s saddr @%s goto %s", ch.rc.fi.ipKW, ch.affSet[ak], ch.epChain[ak]))
		}
	}
	n := len(eps)
	for i, ep := range eps {
		target := ch.epChain[ep.AddrPort()]
		if i == n-1 {
			c.rules = append(c.rules, "goto "+target)
		} else {
			c.rules = append(c.rules, fmt.Sprintf("numgen random mod %d 0 goto %s", n-i, target))
		}
	}
}

// externalChain renders the ext- chain of external routes: the sources
// whose endpoint set differs from the outside route's first (pods, then the
// node: externalTrafficPolicy Local's short-circuit), each to the chain of
// its set, masqueraded where their route says; then the outside route's
// masquerading and choice, or its verdict. svc is the service chain ("" for
// none), which serves a set with the same endpoints.
func (ch *chainRenderer) externalChain(x *model.SourceRoutes, svc string, cluster []model.Endpoint) chainDef {
	c := chainDef{name: externalChainName(ch.sp.Key)}
	rc := ch.rc
	if x.Uniform() {
		for _, m := range rc.masqRules(x.Masqueraded()) {
			c.rules = append(c.rules, join(m, "jump "+chainMarkMasq))
		}
		ch.choose(&c, x.Outside.Endpoints)
		return c
	}
	diverted := x.Diverted()
	for _, s := range model.Sources {
		r := x.From(s)
		if diverted&s == 0 || len(r.Endpoints) == 0 {
			continue
		}
		match := rc.sourceMatch(s)
		if r.Masquerade {
			c.rules = append(c.rules, join(match, "jump "+chainMarkMasq))
		}
		c.rules = append(c.rules, join(match, "goto "+ch.setChain(r.Endpoints, svc, cluster)))
	}
	if x.Outside.Masquerade {
		c.rules = append(c.rules, "jump "+chainMarkMasq)
	}
	if len(x.Outside.Endpoints) > 0 {
		ch.choose(&c, x.Outside.Endpoints)
	} else {
		// A nat chain cannot refuse; the model drops here (externalTrafficPolicy
		// Local without a local endpoint, while others have some), so that the
		// load balancer's health check steers traffic elsewhere.
		c.rules = append(c.rules, "drop")
	}
	return c
}

// setChain is the chain choosing among eps: the service chain when it
// holds the same endpoints, else a chain of its own (kube-proxy's cluster
// policy chain), made once.
func (ch *chainRenderer) setChain(eps []model.Endpoint, svc string, cluster []model.Endpoint) string {
	if svc != "" && slices.Equal(eps, cluster) {
		return svc
	}
	name := clusterPolicyChainName(ch.sp.Key)
	if !slices.ContainsFunc(ch.o.chains, func(c chainDef) bool { return c.name == name }) {
		c := chainDef{name: name}
		ch.choose(&c, eps)
		ch.o.chains = append(ch.o.chains, c)
	}
	return name
}
