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

// newRenderer is the renderer of a family on a node.
func newRenderer(f model.Family, s backend.Settings, local []string) *renderer {
	return &renderer{fam: f, settings: s, local: local}
}

// routeOptions are the options the model resolves this family's routes with.
func (r *renderer) routeOptions() model.RouteOptions {
	return model.RouteOptions{MasqueradeAll: r.settings.MasqueradeAll, PodsKnown: len(r.local) > 0, Dialect: model.DialectIPTables}
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

// emptyVerdict renders a route's verdict for traffic with no endpoint.
func (r *renderer) emptyVerdict(v model.Verdict, p corev1.Protocol) string {
	if v == model.Drop {
		return "-j DROP"
	}
	return r.rejectWith(p)
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

// Matches and masquerade rules every service port uses, made once.
var (
	fromNodeMatches = []string{"-m addrtype --src-type LOCAL"}
	anyMatches      = []string{""}
	masqAllRules    = []string{"-j " + chainMarkMasq}
	masqNotPodRules = []string{"-j " + chainClusterMasq}
)

// sourceMatches are the matches of traffic from one source: each pod
// match, the node's own addresses, or nothing for the rest.
func (r *renderer) sourceMatches(s model.Source) []string {
	switch s {
	case model.FromPods:
		return r.local
	case model.FromNode:
		return fromNodeMatches
	}
	return anyMatches
}

// masqRules are the rules (after a match of their own) that mark the
// sources in set for masquerading: one jump for every source, the fixed
// KPO-CLUSTER-MASQ (which returns for pods) for all but pods, or a rule per
// source match otherwise. The result is shared: callers must not change it.
func (r *renderer) masqRules(set model.Source) []string {
	switch set {
	case 0:
		return nil
	case model.AllSources:
		return masqAllRules
	case model.FromNode | model.FromOutside:
		return masqNotPodRules
	}
	var out []string
	for _, s := range model.Sources {
		if set&s != 0 {
			for _, m := range r.sourceMatches(s) {
				out = append(out, strings.TrimPrefix(m+" -j "+chainMarkMasq, " "))
			}
		}
	}
	return out
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

// render computes the rules of one service port from its routes.
func (r *renderer) render(sp *model.ServicePort) *rendered {
	key := sp.Key.String()
	s := &svcRender{r: r, sp: sp, routes: sp.Routes(r.routeOptions()), out: &rendered{sp: sp},
		key: key, names: chainsForKey(key), pp: protoPort(sp.Protocol, sp.Port)}
	s.clusterChain()
	s.externalChain()
	s.out.nat = append(s.out.nat, s.sepChains...)
	s.dispatch()
	s.count()
	return s.out
}

// svcRender is the rendering of one service port.
type svcRender struct {
	r      *renderer
	sp     *model.ServicePort
	routes model.Routes
	out    *rendered
	key    string // sp.Key, formatted once
	names  serviceChains
	pp     string // "-p tcp -m tcp --dport 80"
	// inline: the cluster rules go straight into the destination bucket.
	inline bool
	// extTarget is the chain external traffic enters, "" when none.
	extTarget string
	seps      map[netip.AddrPort]string // made when needed (affinity)
	sepChains []chain
	hairpin   map[netip.Addr]bool // made when needed
}

// sep is the chain of one endpoint, only for session affinity: the "recent"
// list must be set when one endpoint is chosen and checked for that same
// endpoint, which takes a chain per endpoint. Without affinity every endpoint
// is a DNAT rule in the load-balancing chain itself: iptables-nft's restore
// time grows quadratically with the number of chains, and 1 + n chains per
// service was 30k chains at 10k services × 2 endpoints.
func (s *svcRender) sep(ep model.Endpoint) string {
	if name, ok := s.seps[ep.AddrPort()]; ok {
		return name
	}
	name := sepChainForKey(s.key, ep)
	if s.seps == nil {
		s.seps = map[netip.AddrPort]string{}
	}
	s.seps[ep.AddrPort()] = name
	s.sepChains = append(s.sepChains, chain{name: name, rules: []string{
		// Hairpin: a pod reaching itself through the service must be
		// masqueraded, or its reply would bypass conntrack's reverse NAT.
		"-s " + hostCIDR(ep.IP) + " -j " + chainMarkMasq,
		"-p " + protoName(s.sp.Protocol) + " -m recent --name " + name + " --set -j DNAT --to-destination " + ep.AddrPort().String(),
	}})
	return name
}

// needsHairpin: endpoints DNATed without a SEP chain get their hairpin
// check in nat POSTROUTING (KPO-HAIRPIN), after the one random choice, where
// the source equalling the new destination is visible. Only endpoints whose
// own packets can reach this node's service rules untranslated need it:
// local ones, unplaced ones (no nodeName: they may be local), and every one
// when an external route keeps the source of traffic from outside (a remote
// pod reaching this node's node port is sent on without masquerade). Remote
// pods' ClusterIP traffic is translated by their own node. kube-proxy checks
// every endpoint (KUBE-SEP "-s ep -j KUBE-MARK-MASQ"); skipping the ones
// placed on other nodes keeps the rule count of large clusters down and
// differs only when a slice names the wrong node.
func (s *svcRender) needsHairpin(ep model.Endpoint) bool {
	unmasqueraded := s.sp.HasExternal() && !s.routes.External.Outside.Masquerade
	return (ep.Local || ep.Unplaced || unmasqueraded) && !s.hairpin[ep.IP]
}

// lbRules are the rules load balancing over eps, after the masquerading
// rules masq. match prefixes every rule: "" inside a chain of the service,
// the dispatch match when the rules are inlined in a destination bucket.
func (s *svcRender) lbRules(match string, eps []model.Endpoint, masq []string) []string {
	var rules []string
	for _, m := range masq {
		rules = append(rules, strings.TrimPrefix(match+" "+m, " "))
	}
	if match == "" {
		match = "-p " + protoName(s.sp.Protocol) // DNAT to a port needs the protocol
	}
	if s.sp.AffinityTimeout <= 0 {
		for i, ep := range eps {
			if s.needsHairpin(ep) {
				if s.hairpin == nil {
					s.hairpin = map[netip.Addr]bool{}
				}
				s.hairpin[ep.IP] = true
				s.out.hairpin = append(s.out.hairpin, ep.IP)
			}
			stat := ""
			if i < len(eps)-1 {
				stat = " -m statistic --mode random --probability " + s.r.probability(len(eps)-i)
			}
			rules = append(rules, match+stat+" -j DNAT --to-destination "+ep.AddrPort().String())
		}
		return rules
	}
	targets := make([]string, len(eps))
	for i, ep := range eps {
		targets[i] = s.sep(ep)
	}
	secs := strconv.Itoa(int(math.Ceil(s.sp.AffinityTimeout.Seconds())))
	for _, t := range targets {
		rules = append(rules, "-m recent --name "+t+" --rcheck --seconds "+secs+" --reap -j "+t)
	}
	for i, t := range targets {
		if i < len(targets)-1 {
			rules = append(rules, "-m statistic --mode random --probability "+s.r.probability(len(targets)-i)+" -j "+t)
		} else {
			rules = append(rules, "-j "+t)
		}
	}
	return rules
}

// clusterChain renders the SVC chain of ClusterIP traffic (one endpoint set
// for every source, the model's), unless its rules go inline: a plain
// ClusterIP service (no affinity, nothing external jumping to its SVC
// chain) needs no chain of its own, its rules go straight into the
// destination bucket, each behind the VIP:port match. Only chains are
// expensive for iptables-nft; rules are not.
func (s *svcRender) clusterChain() {
	c := &s.routes.Cluster
	eps := c.Outside.Endpoints
	if len(eps) == 0 {
		return
	}
	s.inline = s.sp.AffinityTimeout <= 0 && !s.sp.HasExternal() && len(eps) <= maxInlineEndpoints
	if s.inline {
		return
	}
	svc := chain{name: s.names.svc}
	// The masquerade rules match the ClusterIP, as kube-proxy's, so that
	// external traffic sharing the chain keeps its source.
	for _, m := range s.r.masqRules(c.Masqueraded()) {
		svc.rules = append(svc.rules, "-d "+hostCIDR(s.sp.ClusterIP)+" "+s.pp+" "+m)
	}
	svc.rules = append(svc.rules, s.lbRules("", eps, nil)...)
	s.out.nat = append(s.out.nat, svc)
}

// lbChain is the chain choosing among eps: SVC when the ClusterIP's
// endpoints are the same, else a chain of its own (own), made once; ""
// for no endpoints.
func (s *svcRender) lbChain(eps []model.Endpoint, own string) string {
	cluster := s.routes.Cluster.Outside.Endpoints
	switch {
	case len(eps) == 0:
		return ""
	case len(cluster) > 0 && sameEndpoints(eps, cluster):
		return s.names.svc
	case slices.ContainsFunc(s.out.nat, func(c chain) bool { return c.name == own }):
		return own
	}
	s.out.nat = append(s.out.nat, chain{name: own, rules: s.lbRules("", eps, nil)})
	return own
}

// externalChain renders the EXT chain of external traffic (node ports,
// external IPs, load-balancer IPs): the sources whose endpoint set differs
// from the outside route's first (pods, then the node: the short-circuit of
// externalTrafficPolicy Local), each to the chain of its endpoints and
// masqueraded where its route says; then the outside route. The chains
// choosing among an endpoint set are shared when the sets are equal: SVC
// (cluster), SVX (external), SCC (short-circuit).
func (s *svcRender) externalChain() {
	x := &s.routes.External
	if !s.sp.HasExternal() || !x.HasEndpoints() {
		return
	}
	outside := x.Outside.Endpoints
	outsideLB := s.lbChain(outside, s.names.svx)
	ext := chain{name: s.names.ext}
	if x.Uniform() {
		if outsideLB != "" {
			ext.rules = append(slices.Clip(s.r.masqRules(x.Masqueraded())), "-j "+outsideLB)
		}
	} else {
		diverted := x.Diverted()
		for _, src := range model.Sources {
			r := x.From(src)
			if diverted&src == 0 || len(r.Endpoints) == 0 {
				continue
			}
			lb := outsideLB
			if lb == "" || !sameEndpoints(r.Endpoints, outside) {
				lb = s.lbChain(r.Endpoints, s.names.scc)
			}
			for _, m := range s.r.sourceMatches(src) {
				if r.Masquerade {
					ext.rules = append(ext.rules, strings.TrimPrefix(m+" -j "+chainMarkMasq, " "))
				}
				ext.rules = append(ext.rules, strings.TrimPrefix(m+" -j "+lb, " "))
			}
		}
		if outsideLB != "" {
			if x.Outside.Masquerade {
				ext.rules = append(ext.rules, "-j "+chainMarkMasq)
			}
			ext.rules = append(ext.rules, "-j "+outsideLB)
		}
	}
	if len(ext.rules) > 0 {
		s.out.nat = append(s.out.nat, ext)
		s.extTarget = s.names.ext
	}
}

// dispatch renders the rules in the shared chains: the destination buckets
// (DNAT, or the no-endpoint verdict in filter), node ports, and the filter
// table's verdicts for external traffic nat did not translate.
func (s *svcRender) dispatch() {
	sp, r, out := s.sp, s.r, s.out
	cluster := &s.routes.Cluster.Outside
	vip := "-d " + hostCIDR(sp.ClusterIP) + " " + s.pp
	switch {
	case s.inline:
		b := bucketOf(sp.ClusterIP)
		for _, rule := range s.lbRules(vip, cluster.Endpoints, r.masqRules(s.routes.Cluster.Masqueraded())) {
			out.natDispatch = append(out.natDispatch, dispatchRule{b, rule})
		}
	case len(cluster.Endpoints) > 0:
		out.natDispatch = append(out.natDispatch, dispatchRule{bucketOf(sp.ClusterIP), vip + " -j " + s.names.svc})
	default:
		out.filterDispatch = append(out.filterDispatch, dispatchRule{bucketOf(sp.ClusterIP), vip + " " + r.emptyVerdict(cluster.Empty, sp.Protocol)})
	}
	// What the filter table does with external traffic nat did not
	// translate: the outside route's verdict when it has no endpoint.
	noExt := ""
	if x := &s.routes.External.Outside; len(x.Endpoints) == 0 {
		noExt = r.emptyVerdict(x.Empty, sp.Protocol)
	}
	for _, ip := range sp.ExternalIPs {
		if s.extTarget != "" {
			out.natDispatch = append(out.natDispatch, dispatchRule{bucketOf(ip), "-d " + hostCIDR(ip) + " " + s.pp + " -j " + s.extTarget})
		}
		if noExt != "" {
			out.filterExternal = append(out.filterExternal, "-d "+hostCIDR(ip)+" "+s.pp+" "+noExt)
		}
	}
	s.dispatchLoadBalancer(noExt)
	if sp.NodePort != 0 {
		npp := protoPort(sp.Protocol, sp.NodePort)
		if s.extTarget != "" {
			out.natNodePort = npp + " -j " + s.extTarget
		}
		if noExt != "" {
			out.filterNodePort = npp + " " + noExt
		}
	}
}

// dispatchLoadBalancer renders the load-balancer IPs' rules: through the FW
// chain when the routes have a firewall (allowed sources continue to EXT;
// the others are not translated, and the filter table drops them, as
// kube-proxy's KUBE-PROXY-FIREWALL does on forward and output), and the
// external refusal (input and forward) without endpoints.
func (s *svcRender) dispatchLoadBalancer(noExt string) {
	if len(s.sp.LoadBalancerIPs) == 0 {
		return
	}
	fw := s.routes.Firewall
	lbTarget := s.extTarget
	if s.extTarget != "" && fw != nil {
		c := chain{name: s.names.fw}
		for _, p := range fw {
			c.rules = append(c.rules, "-s "+p.Masked().String()+" -j "+s.extTarget)
		}
		s.out.nat = append(s.out.nat, c)
		lbTarget = s.names.fw
	}
	for _, ip := range s.sp.LoadBalancerIPs {
		match := "-d " + hostCIDR(ip) + " " + s.pp
		if lbTarget != "" {
			s.out.natDispatch = append(s.out.natDispatch, dispatchRule{bucketOf(ip), match + " -j " + lbTarget})
		}
		if fw != nil {
			s.out.filterDispatch = append(s.out.filterDispatch, dispatchRule{bucketOf(ip), match + " -j DROP"})
		}
		if noExt != "" {
			s.out.filterExternal = append(s.out.filterExternal, match+" "+noExt)
		}
	}
}

// count sets the number of rules the service port contributes.
func (s *svcRender) count() {
	out := s.out
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

// fixedNAT are the nat chains whose content depends only on settings and
// node: KPO-MARK-MASQ; KPO-CLUSTER-MASQ, which marks all but pods' traffic
// (the translation of a route masquerading the node and outside); and
// KPO-POSTROUTING.
func (r *renderer) fixedNAT(randomFully bool) []chain {
	mark := r.settings.MasqueradeMark()
	m := fmt.Sprintf("%#x", mark)
	return []chain{
		{name: chainMarkMasq, rules: []string{MarkRule(mark)}},
		{name: chainClusterMasq, rules: UnlessPodsRules(r.local, chainMarkMasq)},
		{name: chainPostrouting, rules: append([]string{
			// Hairpin check for endpoints without SEP chain. Only first
			// packets of DNATed connections not already marked enter it.
			"-m mark ! --mark " + m + "/" + m + " -m conntrack --ctstate DNAT -j " + chainHairpin,
		}, MasqueradeRules(mark, randomFully)...)},
	}
}

// hairpinRule masquerades a connection DNATed to the address it came from: a
// pod reaching itself through a service must see another source, or its
// reply would bypass conntrack's reverse NAT. The port does not matter, as in
// kube-proxy's "-s <endpoint> -j KUBE-MARK-MASQ".
func hairpinRule(ip netip.Addr, randomFully bool) string {
	h := hostCIDR(ip)
	return "-s " + h + " -d " + h + " " + masquerade(randomFully)
}
