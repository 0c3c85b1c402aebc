package model

import (
	"net/netip"
	"slices"
)

// Routes: what every kind of traffic to a service port gets, decided here
// once for every backend. A backend translates routes into its kernel's
// objects and decides nothing itself: which endpoints, masquerade or not,
// drop or reject, and whom the load-balancer source ranges keep out are all
// answered by ServicePort.Routes.

// Source is where traffic comes from, as far as a node can tell. The
// constants are bits: a Source may hold several (a set of sources).
type Source uint8

const (
	// FromPods is traffic from this node's pods, told apart by detect-local
	// (NodeInfo.ClusterCIDRs or LocalInterface).
	FromPods Source = 1 << iota
	// FromNode is traffic this node sends itself (a local source address).
	FromNode
	// FromOutside is everything else: other nodes, their pods, clients
	// outside the cluster.
	FromOutside

	// AllSources is every source.
	AllSources = FromPods | FromNode | FromOutside
)

// Sources lists the sources in the order routes are tried: pods, then the
// node, then the rest.
var Sources = []Source{FromPods, FromNode, FromOutside}

// Dialect is the kube-proxy mode whose decisions the routes mirror where the
// modes differ (kpo answers exactly as kube-proxy does in the same mode).
type Dialect int

const (
	// DialectNFTables: pkg/proxy/nftables/proxier.go.
	DialectNFTables Dialect = iota
	// DialectIPTables: pkg/proxy/iptables/proxier.go. The load-balancer
	// source ranges apply only while the service has endpoints
	// (usesFWChain := hasEndpoints && …); without, external traffic from
	// any source gets the no-endpoint verdict.
	DialectIPTables
	// DialectIPVS: pkg/proxy/ipvs/proxier.go. A virtual server has one set
	// of destinations for every source: external traffic from this node and
	// its pods is not short-circuited, it takes the route from outside.
	DialectIPVS
)

// RouteOptions is what resolving routes needs besides the service port:
// the same for every service port of a family, and fixed between full
// syncs (a change of the node's settings makes the next sync full).
type RouteOptions struct {
	// MasqueradeAll is kube-proxy's masqueradeAll.
	MasqueradeAll bool
	// PodsKnown: detect-local can tell this node's pods' traffic apart in
	// the family (NodeInfo.HasLocalDetector).
	PodsKnown bool
	Dialect   Dialect
}

// ClusterMasquerade is which sources of ClusterIP traffic are masqueraded,
// for every service port alike (kube-proxy: masqueradeAll masquerades
// everything; otherwise, with a local detector, everything but the pods'
// traffic; without one, nothing, since pods cannot be told apart). External
// traffic short-circuited to the cluster endpoints is not ClusterIP traffic:
// its routes say for themselves.
func (o RouteOptions) ClusterMasquerade() Source {
	switch {
	case o.MasqueradeAll:
		return AllSources
	case o.PodsKnown:
		return FromNode | FromOutside
	}
	return 0
}

// EndpointSet names which of a service port's endpoint lists a route uses.
// Routes with the same set use the same endpoints: backends share what they
// build for one set (a chain, data-map slots) between those routes.
type EndpointSet uint8

const (
	ClusterSet      EndpointSet = iota // ServicePort.ClusterEndpoints
	ExternalSet                        // ServicePort.ExternalEndpoints
	ShortCircuitSet                    // ServicePort.ShortCircuitEndpoints
)

// Route is what one kind of traffic from one source gets.
//
// A connection a route sends back to the pod it came from (hairpin) is
// always masqueraded, whatever Masquerade says: otherwise the pod would
// answer itself directly and drop the reply. Backends check it where such a
// connection can reach this node's rules untranslated.
type Route struct {
	// Set and Endpoints: the endpoints to choose from, uniformly (sticking
	// to one per client with the port's affinity).
	Set       EndpointSet
	Endpoints []Endpoint
	// Masquerade: the connection leaves with this node's address, so that
	// the replies come back through this node.
	Masquerade bool
	// Empty is what happens to the traffic when Endpoints is empty.
	Empty Verdict
	// Why says which policy or setting chose Set and Masquerade, for
	// explanations (nodeagent/explain); backends ignore it.
	Why RouteWhy
}

// RouteWhy is why a route is what it is.
type RouteWhy struct {
	Set        SetReason
	Masquerade MasqueradeReason
}

// SetReason is why a route uses its endpoint set.
type SetReason uint8

const (
	// SetClusterIP: ClusterIP traffic uses ClusterEndpoints (this node's
	// endpoints with internalTrafficPolicy Local, else cluster-wide).
	SetClusterIP SetReason = iota
	// SetExternalCluster: externalTrafficPolicy Cluster, the cluster-wide set.
	SetExternalCluster
	// SetExternalLocal: externalTrafficPolicy Local, this node's endpoints.
	SetExternalLocal
	// SetShortCircuit: externalTrafficPolicy Local, traffic from this node or
	// its pods goes to every endpoint as if it had come back from the load
	// balancer.
	SetShortCircuit
	// SetPodsUnknown: externalTrafficPolicy Local, and detect-local cannot
	// tell this node's pods apart in the family: their traffic takes the
	// route from outside.
	SetPodsUnknown
	// SetIPVSOneSet: externalTrafficPolicy Local in the IPVS mode: a virtual
	// server has one set for every source, the local endpoints.
	SetIPVSOneSet
)

// MasqueradeReason is why a route masquerades or keeps the source.
type MasqueradeReason uint8

const (
	// MasqueradeAll: the masqueradeAll setting.
	MasqueradeAllSetting MasqueradeReason = iota
	// MasqueradeNotFromPod: ClusterIP traffic that detect-local does not
	// count as this node's pods' is masqueraded.
	MasqueradeNotFromPod
	// KeepFromPod: ClusterIP traffic from this node's pods keeps its source.
	KeepFromPod
	// KeepNoLocalDetector: detect-local cannot tell pods apart in the
	// family, so ClusterIP traffic is not masqueraded at all.
	KeepNoLocalDetector
	// MasqueradeExternalCluster: externalTrafficPolicy Cluster masquerades
	// external traffic (the endpoint may be on another node).
	MasqueradeExternalCluster
	// KeepExternalLocal: externalTrafficPolicy Local keeps the client's source.
	KeepExternalLocal
	// MasqueradeShortCircuitNode: the node's own short-circuited traffic is
	// masqueraded, so that the reply comes back through it.
	MasqueradeShortCircuitNode
	// KeepShortCircuitPod: a pod's short-circuited traffic keeps its source.
	KeepShortCircuitPod
)

// SourceRoutes are the routes of one destination kind by source.
type SourceRoutes struct {
	Pods, Node, Outside Route
}

// From is the route of traffic from s.
func (r *SourceRoutes) From(s Source) *Route {
	switch s {
	case FromPods:
		return &r.Pods
	case FromNode:
		return &r.Node
	}
	return &r.Outside
}

// Masqueraded is the set of sources whose traffic is masqueraded.
func (r *SourceRoutes) Masqueraded() Source {
	var m Source
	for _, s := range Sources {
		if r.From(s).Masquerade {
			m |= s
		}
	}
	return m
}

// Uniform reports whether every source uses the same endpoint set: then
// only masquerading may depend on the source.
func (r *SourceRoutes) Uniform() bool {
	return r.Pods.Set == r.Outside.Set && r.Node.Set == r.Outside.Set
}

// Diverted is the set of sources (pods, the node) whose endpoint set
// differs from the route from outside: a backend matches them, in the order
// of Sources, before the route from outside.
func (r *SourceRoutes) Diverted() Source {
	var d Source
	for _, s := range []Source{FromPods, FromNode} {
		if r.From(s).Set != r.Outside.Set {
			d |= s
		}
	}
	return d
}

// HasEndpoints reports whether traffic from some source has endpoints.
func (r *SourceRoutes) HasEndpoints() bool {
	return len(r.Pods.Endpoints) > 0 || len(r.Node.Endpoints) > 0 || len(r.Outside.Endpoints) > 0
}

// Routes are the routes of a service port.
type Routes struct {
	// Cluster is traffic to the ClusterIP.
	Cluster SourceRoutes
	// External is traffic to the NodePort, the external IPs and the
	// load-balancer IPs; zero when the port has none (HasExternal).
	External SourceRoutes
	// Firewall: traffic to the load-balancer IPs from a source outside
	// these ranges is dropped, before any endpoint choice. nil: no
	// firewall (no source ranges, no load-balancer IPs, or, in the iptables
	// dialect, no endpoints).
	Firewall []netip.Prefix
}

// Routes resolves what every kind of traffic to the port gets, as
// kube-proxy does (pkg/proxy/{nftables,iptables}/proxier.go, syncProxyRules:
// the cluster, external, cluster-policy and local-policy chains;
// pkg/proxy/ipvs/proxier.go for the IPVS dialect):
//   - ClusterIP traffic goes to ClusterEndpoints from every source, and is
//     masqueraded as ClusterMasquerade says;
//   - external traffic with externalTrafficPolicy Cluster goes to
//     ExternalEndpoints (cluster-wide) from every source, masqueraded: the
//     endpoint may be on another node;
//   - with externalTrafficPolicy Local, traffic from outside goes to the
//     local ExternalEndpoints and keeps its source; traffic from this
//     node's pods and from the node itself goes to ShortCircuitEndpoints,
//     as if it had gone out to the load balancer and come back (pods keep
//     their source, the node's own traffic is masqueraded so that the reply
//     comes back through it);
//   - traffic whose endpoint set is empty is refused when the port has no
//     usable endpoint anywhere, and dropped when a policy Local leaves this
//     node without one (EmptyVerdict).
func (sp *ServicePort) Routes(o RouteOptions) Routes {
	empty := sp.EmptyVerdict()
	var r Routes
	cm := o.ClusterMasquerade()
	for _, s := range Sources {
		*r.Cluster.From(s) = Route{Set: ClusterSet, Endpoints: sp.ClusterEndpoints, Masquerade: cm&s != 0, Empty: empty,
			Why: RouteWhy{Set: SetClusterIP, Masquerade: o.clusterMasqueradeReason(s)}}
	}
	if sp.HasExternal() {
		r.External = sp.externalRoutes(o, empty)
	}
	if len(sp.LoadBalancerIPs) > 0 && len(sp.SourceRanges) > 0 && (o.Dialect != DialectIPTables || sp.HasEndpoints) {
		r.Firewall = slices.Clip(sp.SourceRanges)
	}
	return r
}

func (sp *ServicePort) externalRoutes(o RouteOptions, empty Verdict) SourceRoutes {
	outside := Route{Set: ExternalSet, Endpoints: sp.ExternalEndpoints, Masquerade: !sp.ExternalPolicyLocal, Empty: empty,
		Why: RouteWhy{Set: SetExternalCluster, Masquerade: MasqueradeExternalCluster}}
	if sp.ExternalPolicyLocal {
		outside.Why = RouteWhy{Set: SetExternalLocal, Masquerade: KeepExternalLocal}
	}
	r := SourceRoutes{Pods: outside, Node: outside, Outside: outside}
	if !sp.ExternalPolicyLocal {
		return r
	}
	if o.Dialect == DialectIPVS {
		r.Pods.Why.Set, r.Node.Why.Set = SetIPVSOneSet, SetIPVSOneSet
		return r
	}
	short := Route{Set: ShortCircuitSet, Endpoints: sp.ShortCircuitEndpoints, Empty: empty,
		Why: RouteWhy{Set: SetShortCircuit, Masquerade: KeepShortCircuitPod}}
	if o.PodsKnown {
		r.Pods = short
	} else {
		r.Pods.Why.Set = SetPodsUnknown
	}
	r.Node = short
	r.Node.Masquerade = true
	r.Node.Why.Masquerade = MasqueradeShortCircuitNode
	return r
}

// clusterMasqueradeReason is why ClusterMasquerade includes s or not.
func (o RouteOptions) clusterMasqueradeReason(s Source) MasqueradeReason {
	switch {
	case o.MasqueradeAll:
		return MasqueradeAllSetting
	case !o.PodsKnown:
		return KeepNoLocalDetector
	case s == FromPods:
		return KeepFromPod
	}
	return MasqueradeNotFromPod
}
