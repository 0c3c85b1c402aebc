package nftables

import (
	"fmt"
	"net/netip"
	"slices"
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

// svcObjects is everything one ServicePort owns in its family's table, and
// what it uses of the shared objects (pick chains, elements of the hairpin
// and cluster-ips sets: kept while at least one service uses them).
type svcObjects struct {
	chains  []chainDef
	sets    []setDef
	elems   []elemDef
	classes []class
	shared  []sharedElem
}

// sharedElem is an element of a set that several service ports may need: a
// ClusterIP serves every port of its Service, an endpoint may back several.
type sharedElem struct {
	set  string // setHairpin or setClusterIPs
	addr netip.Addr
	// proto and port: the endpoint's, in the hairpin set only.
	proto uint8
	port  int32
}

// elem renders the element: the hairpin set's key is the endpoint twice
// (source and translated destination), its protocol and port.
func (e sharedElem) elem() elemDef {
	return elemDef{elemKey: elemKey{mapName: e.set, addr: e.addr, proto: e.proto, port: e.port}}
}

func (o *svcObjects) share(e sharedElem) {
	if !slices.Contains(o.shared, e) {
		o.shared = append(o.shared, e)
	}
}

// shareCommon adds what every rendering of sp shares: its ClusterIP (whose
// other ports are refused) and the hairpin elements of its local endpoints.
// A pod reaching itself through the service must be masqueraded, or it would
// answer itself directly and drop the reply; postrouting sees the translated
// packet, source == destination == the endpoint. Only local endpoints, as
// kube-proxy (its hairpin-connections set): only they send through this node
// without having been translated by their own node first.
//
// Keyed, as kube-proxy's, by the endpoint's protocol and port too: keyed by
// the address alone, one Service listing a pod with its nodeName made every
// other Service's hairpin to that pod masqueraded, also where kube-proxy
// leaves it alone (an endpoint without nodeName is not local: its hairpin
// times out). The conformance harness's random batch of seeds 251–275 found
// it (seed 257).
func (o *svcObjects) shareCommon(sp *model.ServicePort, routes *model.Routes) {
	o.share(sharedElem{set: setClusterIPs, addr: sp.ClusterIP})
	for _, eps := range routeEndpoints(routes) {
		for _, ep := range eps {
			if ep.Local {
				o.share(sharedElem{set: setHairpin, addr: ep.IP, proto: protoNum(sp.Protocol), port: ep.Port})
			}
		}
	}
}

// routeEndpoints are the endpoint lists the routes use: the ClusterIP's,
// the external traffic's from outside, and the short-circuit ones (the
// node's route).
func routeEndpoints(r *model.Routes) [][]model.Endpoint {
	return [][]model.Endpoint{r.Cluster.Outside.Endpoints, r.External.Outside.Endpoints, r.External.Node.Endpoints}
}

// emptyVerdict renders a route's verdict for the no-endpoint maps: refuse
// (a reject needs a filter chain), or drop.
func emptyVerdict(v model.Verdict) string {
	if v == model.Drop {
		return "drop"
	}
	return "goto " + chainReject
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
	fi   famInfo
	opts model.RouteOptions
	// isLocal and notLocal match traffic from pods (detect-local), "" when
	// the node has no detector.
	isLocal, notLocal string
}

// newRenderCtx is the rendering context of a family on a node.
func newRenderCtx(fam model.Family, node *model.NodeInfo, masqAll bool) *renderCtx {
	fi := fams[fam]
	rc := &renderCtx{fi: fi, opts: model.RouteOptions{MasqueradeAll: masqAll, PodsKnown: node.HasLocalDetector(fam),
		Dialect: model.DialectNFTables}}
	rc.isLocal, rc.notLocal = localMatch(fi, node, fam)
	return rc
}

// sourceMatch matches traffic from the sources in s: "" for every source,
// the not-local match for all but pods; one source at a time otherwise
// (masqRules splits other sets).
func (rc *renderCtx) sourceMatch(s model.Source) string {
	switch s {
	case model.AllSources:
		return ""
	case model.FromNode | model.FromOutside:
		return rc.notLocal
	case model.FromPods:
		return rc.isLocal
	case model.FromNode:
		return "fib saddr type local"
	}
	return strings.TrimSpace(rc.notLocal + " fib saddr type != local")
}

// masqRules are the matches (each to be followed by the jump to
// mark-for-masquerade) of the sources in set, as few as the matches allow.
func (rc *renderCtx) masqRules(set model.Source) []string {
	switch set {
	case 0:
		return nil
	case model.AllSources, model.FromNode | model.FromOutside:
		return []string{rc.sourceMatch(set)}
	}
	var out []string
	for _, s := range model.Sources {
		if set&s != 0 {
			out = append(out, rc.sourceMatch(s))
		}
	}
	return out
}

// join joins rule parts, skipping empty ones.
func join(parts ...string) string {
	var b strings.Builder
	for _, p := range parts {
		if p == "" {
			continue
		}
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(p)
	}
	return b.String()
}

// localMatch renders the detect-local matches of a family: the source in
// @cluster-cidrs, or the input interface (a prefix with "*").
func localMatch(fi famInfo, node *model.NodeInfo, fam model.Family) (isLocal, notLocal string) {
	switch {
	case node.LocalInterface != "":
		name := node.LocalInterface
		if node.LocalInterfacePrefix {
			name += "*"
		}
		return fmt.Sprintf("iifname %q", name), fmt.Sprintf("iifname != %q", name)
	case len(node.ClusterCIDRs[fam]) > 0:
		return fmt.Sprintf("%s saddr @%s", fi.ipKW, setClusterCIDRs), fmt.Sprintf("%s saddr != @%s", fi.ipKW, setClusterCIDRs)
	}
	return "", ""
}

func itoa(i int64) string { return strconv.FormatInt(i, 10) }

func protoOf(sp *model.ServicePort) string { return strings.ToLower(string(sp.Protocol)) }

// dnatTarget renders "addr:port" for dnat, bracketing IPv6.
func dnatTarget(ep model.Endpoint) string {
	return ep.AddrPort().String()
}

// The flat layout (docs/nftables-backend.md, "Flat layout"). A service
// without affinity owns no chain: its VIPs are elements of the verdict maps,
// pointing at a shared "pick" chain chosen by the kind of traffic and the
// endpoint counts, and its endpoints are elements of a data map:
//
//	service-ips          VIP . proto . port               : goto pick-cluster-N | pick-external-N | pick-external-local-M-N
//	service-nodeports    proto . nodePort                 : goto pick-nodeport-N | pick-nodeport-local-M-N
//	endpoints            VIP . proto . port . slot        : endpoint IP . port
//	nodeport-endpoints   proto . nodePort . slot          : endpoint IP . port
//	hairpin              endpoint IP . endpoint IP        (masqueraded in postrouting)
//	pick-cluster-N       [masquerade off-cluster sources] dnat to <daddr . proto . dport . numgen random mod N> map @endpoints
//
// Why: an endpoint change is then a change of data-map elements only, which
// does not make the kernel validate the whole table at commit (it does for
// any new rule with a verdict, nat, fib… expression and any new jump/goto map
// element: nft_table_validate walks every chain reachable from every base
// chain, 20 ms at 10k services in the per-service-chain layout). And a cold
// sync is mostly element lines, which nft parses far faster than chains and
// rules. Slots are 0…N-1 (offset M for the short-circuit choice of
// externalTrafficPolicy Local, whose local endpoints take slots 0…M-1), and
// `numgen random mod N` draws them uniformly, as kube-proxy's vmap does.

// Data maps and sets the flat layout fills (see base.go for their types).
func isDataMap(name string) bool { return name == mapEndpoints || name == mapNodePortEndpoints }
func isSet(name string) bool     { return name == setHairpin || name == setClusterIPs }

// class is a shared pick chain: the kind of traffic and the endpoint counts.
type class struct {
	kind string // clusterK, externalK, nodePortK, externalLocalK, nodePortLocalK
	m, n int    // m: local endpoints (…-local kinds), n: endpoints
}

const (
	clusterK       = "cluster"
	externalK      = "external"
	nodePortK      = "nodeport"
	externalLocalK = "external-local"
	nodePortLocalK = "nodeport-local"
)

func (c class) name() string {
	if c.kind == externalLocalK || c.kind == nodePortLocalK {
		return fmt.Sprintf("pick-%s-%d-%d", c.kind, c.m, c.n)
	}
	return fmt.Sprintf("pick-%s-%d", c.kind, c.n)
}

// classRules renders a pick chain.
func classRules(rc *renderCtx, c class) []string {
	ipKW := rc.fi.ipKW
	nodePort := c.kind == nodePortK || c.kind == nodePortLocalK
	// dnat picks slot off…off+n-1 of the service's endpoints. A lookup miss
	// (no such slot) ends the rule without a verdict; nothing follows but
	// the chain's end, i.e. no translation.
	dnat := func(n, off int) string {
		key, m := ipKW+" daddr . meta l4proto . th dport", mapEndpoints
		if nodePort {
			key, m = "meta l4proto . th dport", mapNodePortEndpoints
		}
		s := fmt.Sprintf("dnat %s to %s . numgen random mod %d", ipKW, key, n)
		if off > 0 {
			s += fmt.Sprintf(" offset %d", off)
		}
		return s + " map @" + m
	}
	var r []string
	switch c.kind {
	case clusterK:
		for _, m := range rc.masqRules(rc.opts.ClusterMasquerade()) {
			r = append(r, join(m, "jump "+chainMarkMasq))
		}
		r = append(r, dnat(c.n, 0))
	case externalK, nodePortK:
		r = append(r, "jump "+chainMarkMasq, dnat(c.n, 0))
	case externalLocalK, nodePortLocalK:
		// The short-circuit shape flatShape accepts: pods (when told
		// apart) to slots m…m+n-1, keeping their source; the node there too,
		// masqueraded; the rest to slots 0…m-1, or dropped.
		if c.n > 0 {
			if rc.isLocal != "" {
				r = append(r, rc.isLocal+" "+dnat(c.n, c.m))
			}
			r = append(r, "fib saddr type local jump "+chainMarkMasq, "fib saddr type local "+dnat(c.n, c.m))
		}
		if c.m > 0 {
			r = append(r, dnat(c.m, 0))
		} else {
			r = append(r, "drop")
		}
	}
	return r
}

// flatShape says which pick chains serve routes, or ok false when they take
// a shape the shared pick chains do not render (the port then gets chains of
// its own, renderChains, which render any). The pick chains render the
// shapes the model gives: ClusterIP traffic with the node's cluster
// masquerading; external traffic either the same for every source and
// masqueraded (externalTrafficPolicy Cluster), or short-circuited for pods
// (when told apart) and the node (masqueraded), with the rest kept to the
// outside route unmasqueraded and dropped when it has no endpoint (Local).
func flatShape(rc *renderCtx, r *model.Routes) (local, ok bool) {
	c := &r.Cluster
	if !c.Uniform() || c.Masqueraded() != rc.opts.ClusterMasquerade() {
		return false, false
	}
	x := &r.External
	if x.Uniform() {
		return false, !x.HasEndpoints() || x.Masqueraded() == model.AllSources
	}
	wantDiverted := model.FromNode
	if rc.isLocal != "" {
		wantDiverted |= model.FromPods
	}
	samePods := rc.isLocal == "" || x.Pods.Set == x.Node.Set
	return true, x.Diverted() == wantDiverted && x.Masqueraded() == model.FromNode && samePods &&
		(len(x.Outside.Endpoints) > 0 || x.Outside.Empty == model.Drop)
}

// renderService renders one ServicePort: into chains of its own with ClientIP
// affinity or routes the pick chains do not render (renderChains), flat
// otherwise.
func renderService(rc *renderCtx, sp *model.ServicePort) *svcObjects {
	routes := sp.Routes(rc.opts)
	var o *svcObjects
	if local, ok := flatShape(rc, &routes); ok && sp.AffinityTimeout == 0 {
		o = renderFlat(rc, sp, &routes, local)
	} else {
		o = renderChains(rc, sp, &routes)
	}
	if len(sp.ExternalIPs)+len(sp.LoadBalancerIPs) > 0 {
		o.elems = uniqueElems(o.elems) // the only source of repeats (below)
	}
	return o
}

// renderFlat renders a ServicePort without affinity into the shared maps:
// each destination's elements point at the pick chain of its routes' shape
// (local: the short-circuit one), or at the no-endpoint verdict.
func renderFlat(rc *renderCtx, sp *model.ServicePort, routes *model.Routes, local bool) *svcObjects {
	o := &svcObjects{elems: make([]elemDef, 0, flatElems(sp, routes, local))}
	proto, port := protoNum(sp.Protocol), sp.Port
	slots := func(m string, key elemKey, off int, eps []model.Endpoint) {
		key.mapName = m
		for i, ep := range eps {
			key.slot = uint32(off + i)
			o.elems = append(o.elems, elemDef{key, elemVal{dst: ep.IP, dstPort: ep.Port}})
		}
	}
	o.shareCommon(sp, routes)
	use := func(c class) elemVal {
		if !slices.Contains(o.classes, c) {
			o.classes = append(o.classes, c)
		}
		return elemVal{verdict: "goto " + c.name()}
	}
	verdictElem := func(m string, key elemKey, v elemVal) {
		key.mapName = m
		o.elems = append(o.elems, elemDef{key, v})
	}

	cluster := &routes.Cluster.Outside // the same for every source (flatShape)
	clusterKey := elemKey{addr: sp.ClusterIP, proto: proto, port: port}
	if n := len(cluster.Endpoints); n > 0 {
		verdictElem(mapServiceIPs, clusterKey, use(class{kind: clusterK, n: n}))
		slots(mapEndpoints, clusterKey, 0, cluster.Endpoints)
	} else {
		verdictElem(mapNoEndpointServices, clusterKey, elemVal{verdict: emptyVerdict(cluster.Empty)})
	}
	if !sp.HasExternal() {
		return o
	}

	// External traffic: the pick chain for an address and for a NodePort, or
	// none (no endpoint for any source). fill writes one destination's
	// slots: the outside route's, then the short-circuit one's.
	x := &routes.External
	outside, short := x.Outside.Endpoints, x.Node.Endpoints
	var addrC, npC *class
	var fill func(m string, key elemKey)
	switch {
	case !x.HasEndpoints():
	case !local:
		addrC, npC = &class{kind: externalK, n: len(outside)}, &class{kind: nodePortK, n: len(outside)}
		fill = func(m string, key elemKey) { slots(m, key, 0, outside) }
	default:
		addrC, npC = &class{kind: externalLocalK, m: len(outside), n: len(short)}, &class{kind: nodePortLocalK, m: len(outside), n: len(short)}
		fill = func(m string, key elemKey) {
			slots(m, key, 0, outside)
			slots(m, key, len(outside), short)
		}
	}
	empty := elemVal{verdict: emptyVerdict(x.Outside.Empty)}
	for _, ip := range slices.Concat(sp.ExternalIPs, sp.LoadBalancerIPs) {
		key := elemKey{addr: ip, proto: proto, port: port}
		if addrC == nil {
			verdictElem(mapNoEndpointServices, key, empty)
			continue
		}
		verdictElem(mapServiceIPs, key, use(*addrC))
		fill(mapEndpoints, key)
	}
	if sp.NodePort != 0 {
		key := elemKey{proto: proto, port: sp.NodePort}
		if npC == nil {
			verdictElem(mapNoEndpointNodePorts, key, empty)
		} else {
			verdictElem(mapServiceNodePorts, key, use(*npC))
			fill(mapNodePortEndpoints, key)
		}
	}
	renderFirewall(rc, sp, routes, o)
	return o
}

// flatElems is how many elements renderFlat renders (at most): one
// allocation for them all, not a growing slice (a full sync at 1k × 50
// renders 50k elements; their growth was a fifth of its garbage).
func flatElems(sp *model.ServicePort, routes *model.Routes, local bool) int {
	n := 1 + len(routes.Cluster.Outside.Endpoints)
	if !sp.HasExternal() {
		return n
	}
	x := &routes.External
	slots := 0
	if x.HasEndpoints() {
		slots = len(x.Outside.Endpoints)
		if local {
			slots += len(x.Node.Endpoints)
		}
	}
	dests := len(sp.ExternalIPs) + len(sp.LoadBalancerIPs)
	if sp.NodePort != 0 {
		dests++
	}
	return n + dests*(1+slots) + len(sp.LoadBalancerIPs) // firewall elements
}

// renderFirewall renders the source ranges: checked before DNAT in a filter
// chain of the service's own (drop is a filter decision), one rule per range
// so that no anonymous set is needed. Rare, and untouched by endpoint changes.
func renderFirewall(rc *renderCtx, sp *model.ServicePort, routes *model.Routes, o *svcObjects) {
	if routes.Firewall == nil {
		return
	}
	c := chainDef{name: firewallChainName(sp.Key)}
	for _, r := range routes.Firewall {
		c.rules = append(c.rules, fmt.Sprintf("%s saddr %s return", rc.fi.ipKW, r.Masked()))
	}
	c.rules = append(c.rules, "drop")
	o.chains = append(o.chains, c)
	for _, ip := range sp.LoadBalancerIPs {
		o.elems = append(o.elems, elemDef{elemKey{mapName: mapFirewallIPs, addr: ip, proto: protoNum(sp.Protocol), port: sp.Port},
			elemVal{verdict: "goto " + c.name}})
	}
}

func secs(s int64) time.Duration { return time.Duration(s) * time.Second }
