package model

import (
	"cmp"
	"net/netip"
	"slices"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
)

// Labels and annotations of Services and EndpointSlices the model reads.
const (
	// LabelServiceProxyName on a Service hands it to another proxy: kpo ignores it.
	LabelServiceProxyName = "service.kubernetes.io/service-proxy-name"
	// LabelHeadless marks the EndpointSlices of headless Services.
	LabelHeadless = "service.kubernetes.io/headless"
	// AnnotationTopologyMode is the older switch for topology-aware routing.
	AnnotationTopologyMode = "service.kubernetes.io/topology-mode"
	// AnnotationSourceRanges is the older form of spec.loadBalancerSourceRanges.
	AnnotationSourceRanges = "service.beta.kubernetes.io/load-balancer-source-ranges"

	// defaultAffinityTimeout is Kubernetes' default ClientIP affinity timeout.
	defaultAffinityTimeout = 10800 * time.Second
)

// NodeContext is what resolving policies needs to know about this node.
type NodeContext struct {
	Name string
	// Zone is the node's topology.kubernetes.io/zone label.
	Zone string
}

// Proxied reports whether kpo proxies a Service at all: not headless, not
// ExternalName, not handed to another proxy, and with a cluster IP.
func Proxied(svc *corev1.Service) bool {
	if _, other := svc.Labels[LabelServiceProxyName]; other {
		return false
	}
	if svc.Spec.Type == corev1.ServiceTypeExternalName {
		return false
	}
	ip := svc.Spec.ClusterIP
	return ip != "" && ip != corev1.ClusterIPNone
}

// BuildServicePorts resolves one Service with its EndpointSlices into
// ServicePorts, one per port and IP family, and says what it skipped as
// invalid (see validate.go). It is a pure function.
func BuildServicePorts(svc *corev1.Service, endpointSlices []*discoveryv1.EndpointSlice, node NodeContext) ([]*ServicePort, []Rejection) {
	if !Proxied(svc) {
		return nil, nil
	}
	sc := getScratch()
	defer sc.put()
	var rs rejections
	v := validateService(svc, &rs)
	views := validateSlices(endpointSlices, &rs, sc)
	out := make([]*ServicePort, 0, len(v.clusterIPs)*len(v.ports))
	for _, clusterIP := range v.clusterIPs {
		for i := range v.ports {
			out = append(out, buildServicePort(v, &v.ports[i], clusterIP, views, node, sc))
		}
	}
	return out, rs.list
}

// scratch is the working memory of one build: the validated endpoints of
// the Service's EndpointSlices and one port's candidates at a time. Nothing
// in it outlives the build (ServicePorts get copies), so builds reuse it
// through scratchPool: at a cold start of 5k Services × 50 endpoints it was
// most of the model's garbage.
type scratch struct {
	endpoints  []sliceEndpoint
	candidates []candidate
}

var scratchPool = sync.Pool{New: func() any { return new(scratch) }}

func getScratch() *scratch { return scratchPool.Get().(*scratch) }

// put returns sc to the pool, without the pointers into the build's
// objects, which would otherwise keep deleted EndpointSlices alive.
func (sc *scratch) put() {
	clear(sc.endpoints[:cap(sc.endpoints)])
	clear(sc.candidates[:cap(sc.candidates)])
	sc.endpoints, sc.candidates = sc.endpoints[:0], sc.candidates[:0]
	scratchPool.Put(sc)
}

func buildServicePort(v *serviceView, port *portView, clusterIP netip.Addr, views []sliceView, node NodeContext, sc *scratch) *ServicePort {
	svc := v.svc
	family := FamilyOf(clusterIP)
	sp := &ServicePort{
		Key: ServicePortKey{
			ServicePortName: ServicePortName{Namespace: svc.Namespace, Name: svc.Name, Port: port.spec.Name, Protocol: port.protocol},
			Family:          family,
		},
		Protocol:        port.protocol,
		ClusterIP:       clusterIP,
		Port:            port.spec.Port,
		NodePort:        port.nodePort,
		ExternalIPs:     ofFamily(v.externalIPs, family),
		LoadBalancerIPs: ofFamily(v.loadBalancerIPs, family),
		AffinityTimeout: v.affinity,
	}
	if len(sp.LoadBalancerIPs) > 0 {
		for _, p := range v.sourceRanges {
			if FamilyOf(p.Addr()) == family {
				sp.SourceRanges = append(sp.SourceRanges, p)
			}
		}
	}
	// The external policy matters only for ports reachable from outside.
	sp.ExternalPolicyLocal = svc.Spec.ExternalTrafficPolicy == corev1.ServiceExternalTrafficPolicyLocal && sp.HasExternal()
	sp.InternalPolicyLocal = svc.Spec.InternalTrafficPolicy != nil &&
		*svc.Spec.InternalTrafficPolicy == corev1.ServiceInternalTrafficPolicyLocal
	// The health check is the Service's (LoadBalancer, eTP Local), served
	// whether or not the port has external addresses yet, as kube-proxy's
	// (apiservice.NeedsHealthCheck): a load balancer may probe before its
	// ingress IP is published, and without NodePorts.
	sp.HealthCheckNodePort = v.healthCheckPort

	sc.candidates = collectEndpoints(port, family, views, node, sc.candidates)
	resolveEndpoints(sp, sc.candidates, node)
	return sp
}

// candidate is an endpoint with what policy resolution needs. It points at
// its EndpointSlice's hints rather than copying them: a port's candidates
// are garbage once its sets are resolved, and at 5k Services × 50 endpoints
// every copy of a cold start's candidates costs megabytes.
type candidate struct {
	Endpoint
	serving, terminating bool
	// order is the endpoint's place in the Service's slices: of two copies
	// of an endpoint, the first is kept.
	order    int32
	nodeName string
	hints    *discoveryv1.EndpointHints
}

// hintedForNode and hintedForZone: the endpoint's hints name the node or zone.
func (c *candidate) hintedForNode(name string) bool {
	return c.hints != nil && slices.ContainsFunc(c.hints.ForNodes, func(n discoveryv1.ForNode) bool { return n.Name == name })
}

func (c *candidate) hintedForZone(zone string) bool {
	return c.hints != nil && slices.ContainsFunc(c.hints.ForZones, func(z discoveryv1.ForZone) bool { return z.Name == zone })
}

// hasNodeHints and hasZoneHints: the endpoint carries hints of the kind.
func (c *candidate) hasNodeHints() bool { return c.hints != nil && len(c.hints.ForNodes) > 0 }
func (c *candidate) hasZoneHints() bool { return c.hints != nil && len(c.hints.ForZones) > 0 }

// Candidate is one endpoint of a service port as its EndpointSlices give
// it, before any policy: what explanations (nodeagent/explain) name when
// they say why an endpoint is in a set or not.
type Candidate struct {
	Endpoint
	// NodeName is the endpoint's nodeName ("" when not set).
	NodeName             string
	Serving, Terminating bool
	ZoneHints, NodeHints []string
}

// Candidates are the endpoints BuildServicePorts considers for each of the
// Service's ports and families: validated, without duplicates, in its order.
func Candidates(svc *corev1.Service, endpointSlices []*discoveryv1.EndpointSlice, node NodeContext) map[ServicePortKey][]Candidate {
	if !Proxied(svc) {
		return nil
	}
	sc := getScratch()
	defer sc.put()
	var rs rejections
	v := validateService(svc, &rs)
	views := validateSlices(endpointSlices, &rs, sc)
	out := map[ServicePortKey][]Candidate{}
	for _, clusterIP := range v.clusterIPs {
		family := FamilyOf(clusterIP)
		for i := range v.ports {
			port := &v.ports[i]
			key := ServicePortKey{ServicePortName: ServicePortName{Namespace: svc.Namespace, Name: svc.Name, Port: port.spec.Name, Protocol: port.protocol}, Family: family}
			sc.candidates = collectEndpoints(port, family, views, node, sc.candidates)
			for _, c := range sc.candidates {
				out[key] = append(out[key], Candidate{Endpoint: c.Endpoint, NodeName: c.nodeName, Serving: c.serving,
					Terminating: c.terminating, ZoneHints: c.zoneHints(), NodeHints: c.nodeHints()})
			}
		}
	}
	return out
}

// zoneHints and nodeHints are the names the hints give (nil without).
func (c *candidate) zoneHints() []string {
	var out []string
	if c.hints != nil {
		for _, z := range c.hints.ForZones {
			out = append(out, z.Name)
		}
	}
	return out
}

func (c *candidate) nodeHints() []string {
	var out []string
	if c.hints != nil {
		for _, n := range c.hints.ForNodes {
			out = append(out, n.Name)
		}
	}
	return out
}

// collectEndpoints gathers the endpoints of one service port in one family from
// all of the Service's (validated) EndpointSlices, sorted, without duplicates
// (an endpoint can appear in two slices while the EndpointSlice controller
// moves it): of an endpoint listed twice, the first copy in slice order wins.
// The result reuses buf (the previous port's candidates, which are done
// with); duplicates go by sorting rather than by a map.
func collectEndpoints(port *portView, family Family, views []sliceView, node NodeContext, buf []candidate) []candidate {
	n := 0
	for i := range views {
		if _, ok := views[i].port(port.spec.Name, port.protocol); ok && views[i].family == family {
			n += len(views[i].endpoints)
		}
	}
	out := slices.Grow(buf[:0], n)
	for i := range views {
		view := &views[i]
		if view.family != family {
			continue
		}
		portNumber, ok := view.port(port.spec.Name, port.protocol)
		if !ok {
			continue
		}
		for _, se := range view.endpoints {
			c := newCandidate(se, portNumber, node)
			c.order = int32(len(out))
			out = append(out, c)
		}
	}
	// Sorted, so that unchanged input gives equal output (pointer reuse);
	// of equal endpoints the first copy comes first and is the one kept.
	slices.SortFunc(out, func(a, b candidate) int {
		if c := a.AddrPort().Compare(b.AddrPort()); c != 0 {
			return c
		}
		return cmp.Compare(a.order, b.order)
	})
	return slices.CompactFunc(out, func(a, b candidate) bool { return a.AddrPort() == b.AddrPort() })
}

func newCandidate(se sliceEndpoint, portNumber int32, node NodeContext) candidate {
	ep := se.ep
	// Conditions: nil ready means ready; nil serving means "as ready".
	ready := ep.Conditions.Ready == nil || *ep.Conditions.Ready
	serving := ready
	if ep.Conditions.Serving != nil {
		serving = *ep.Conditions.Serving
	}
	c := candidate{
		Endpoint: Endpoint{
			IP: se.ip, Port: portNumber, Ready: ready,
			Local:    ep.NodeName != nil && *ep.NodeName == node.Name,
			Unplaced: ep.NodeName == nil || *ep.NodeName == "",
		},
		serving:     serving,
		terminating: ep.Conditions.Terminating != nil && *ep.Conditions.Terminating,
		hints:       ep.Hints,
	}
	if ep.NodeName != nil {
		c.nodeName = *ep.NodeName
	}
	return c
}

// resolveEndpoints applies readiness fallback, topology and traffic policies,
// with kube-proxy's semantics (pkg/proxy/topology.go CategorizeEndpoints):
//   - the cluster-wide set: ready endpoints, narrowed by topology hints when
//     they apply; when none is ready, the serving-terminating ones (a rolling
//     update's last pods still answer), without topology;
//   - the local set: this node's ready endpoints, or else its
//     serving-terminating ones;
//   - internalTrafficPolicy Local gives ClusterIP traffic the local set,
//     externalTrafficPolicy Local gives external traffic the local set, and
//     external traffic from this node's pods and from the node itself the
//     cluster-wide set (ShortCircuitEndpoints).
//
// Sets resolved from the same candidates share one []Endpoint (a
// ServicePort is immutable, and routes share them already).
func resolveEndpoints(sp *ServicePort, all []candidate, node NodeContext) {
	cluster, topo := clusterWide(all, node)
	local := readyOrTerminating(filter(all, func(c *candidate) bool { return c.Local }))
	sp.Selection = Selection{
		Topology:           topo,
		ClusterTerminating: len(cluster) > 0 && !cluster[0].Ready,
		LocalTerminating:   len(local) > 0 && !local[0].Ready,
	}
	for i := range all {
		if all[i].Local && all[i].Ready {
			sp.LocalEndpointCount++
		}
	}
	// The cluster-wide set is empty only when no endpoint anywhere is usable.
	sp.HasEndpoints = len(cluster) > 0
	// Each list made only if some set uses it, once.
	external := sp.HasExternal()
	var clusterEndpoints, localEndpoints []Endpoint
	if !sp.InternalPolicyLocal || external {
		clusterEndpoints = endpoints(cluster)
	}
	if sp.InternalPolicyLocal || external && sp.ExternalPolicyLocal {
		localEndpoints = endpoints(local)
	}
	if sp.InternalPolicyLocal {
		sp.ClusterEndpoints = localEndpoints
	} else {
		sp.ClusterEndpoints = clusterEndpoints
	}
	switch {
	case !external:
	case sp.ExternalPolicyLocal:
		sp.ExternalEndpoints = localEndpoints
		sp.ShortCircuitEndpoints = clusterEndpoints
	default:
		// External traffic with the Cluster policy goes cluster-wide, even when
		// the internal policy is Local.
		sp.ExternalEndpoints = clusterEndpoints
	}
	sp.OtherServing = otherServing(sp, all)
}

// otherServing are the serving endpoints the sets of sp leave out. Every set
// is a sorted subset of all (which is sorted, without duplicates), so one
// walk along each tells what is in them.
func otherServing(sp *ServicePort, all []candidate) []Endpoint {
	sets := [...][]Endpoint{sp.ClusterEndpoints, sp.ExternalEndpoints, sp.ShortCircuitEndpoints}
	var next [len(sets)]int
	var out []Endpoint
	for i := range all {
		c := &all[i]
		ap := c.AddrPort()
		in := false
		for s, set := range sets {
			for next[s] < len(set) && set[next[s]].AddrPort().Compare(ap) < 0 {
				next[s]++
			}
			in = in || next[s] < len(set) && set[next[s]].AddrPort() == ap
		}
		if c.serving && !in {
			out = append(out, c.Endpoint)
		}
	}
	return out
}

func readyOrTerminating(cs []candidate) []candidate {
	ready := filter(cs, func(c *candidate) bool { return c.Ready })
	if len(ready) > 0 {
		return ready
	}
	return filter(cs, func(c *candidate) bool { return c.serving && c.terminating })
}

// clusterWide is kube-proxy's cluster endpoint set: the ready endpoints
// available for this node's topology, or, when none is ready, the serving
// and terminating ones.
// The Topology says which hints narrowed it.
func clusterWide(all []candidate, node NodeContext) ([]candidate, Topology) {
	ready := filter(all, func(c *candidate) bool { return c.Ready })
	if len(ready) == 0 {
		return filter(all, func(c *candidate) bool { return c.serving && c.terminating }), NoTopology
	}
	switch t := topologyFromHints(ready, node); t {
	case TopologyNodeHints:
		return filter(ready, func(c *candidate) bool { return c.hintedForNode(node.Name) }), t
	case TopologyZoneHints:
		return filter(ready, func(c *candidate) bool { return c.hintedForZone(node.Zone) }), t
	}
	return ready, NoTopology
}

// Topology is which topology hints narrowed a port's cluster-wide endpoints.
type Topology uint8

const (
	// NoTopology: no hints apply (none, not on every ready endpoint, or none
	// for this node or zone): every ready endpoint is used.
	NoTopology Topology = iota
	// TopologyNodeHints: the ready endpoints hinted for this node (hints.forNodes).
	TopologyNodeHints
	// TopologyZoneHints: the ready endpoints hinted for this node's zone (hints.forZones).
	TopologyZoneHints
)

// Selection says why a port's endpoint sets are what they are: the choices
// resolveEndpoints made besides the traffic policies. Backends ignore it;
// kubectl kpo explain names it (nodeagent/explain). It is a function of the
// same input as the sets, so it never makes an unchanged port look changed.
type Selection struct {
	// Topology narrowed the cluster-wide set (ready endpoints only).
	Topology Topology
	// ClusterTerminating: no endpoint is ready anywhere, so the cluster-wide
	// set is the serving-terminating ones (kube-proxy's fallback).
	ClusterTerminating bool
	// LocalTerminating: no local endpoint is ready, so the local set (the
	// Local policies') is this node's serving-terminating ones.
	LocalTerminating bool
}

// topologyFromHints says which hints narrow the ready endpoints: hints are
// used whenever the EndpointSlices carry them, whatever the Service asks for
// (the EndpointSlice controller sets them from trafficDistribution or the
// topology annotation), all-or-nothing: node hints when every ready endpoint
// has them and one is for this node, else zone hints when every ready
// endpoint has them and one is for this node's zone (kube-proxy's
// topologyModeFromHints).
func topologyFromHints(ready []candidate, node NodeContext) Topology {
	allNode, allZone, forNode, forZone := true, true, false, false
	for i := range ready {
		c := &ready[i]
		allNode = allNode && c.hasNodeHints()
		allZone = allZone && c.hasZoneHints()
		forNode = forNode || c.hintedForNode(node.Name)
		forZone = forZone || (node.Zone != "" && c.hintedForZone(node.Zone))
	}
	switch {
	case allNode && forNode:
		return TopologyNodeHints
	case allZone && forZone:
		return TopologyZoneHints
	}
	return NoTopology
}

// filter are the candidates keep keeps, nil for none. When it keeps them
// all, it returns cs itself: candidates are not changed once collected, and
// most ports' sets are all of their endpoints.
func filter(cs []candidate, keep func(*candidate) bool) []candidate {
	n := 0
	for i := range cs {
		if keep(&cs[i]) {
			n++
		}
	}
	switch n {
	case 0:
		return nil
	case len(cs):
		return cs
	}
	out := make([]candidate, 0, n)
	for i := range cs {
		if keep(&cs[i]) {
			out = append(out, cs[i])
		}
	}
	return out
}

// endpoints are the candidates' endpoints, nil for none, with no room to
// append: several sets of a ServicePort may share the result.
func endpoints(cs []candidate) []Endpoint {
	if len(cs) == 0 {
		return nil
	}
	out := make([]Endpoint, len(cs))
	for i := range cs {
		out[i] = cs[i].Endpoint
	}
	return out
}

// ofFamily are the addresses of one family.
func ofFamily(addrs []netip.Addr, family Family) []netip.Addr {
	var out []netip.Addr
	for _, a := range addrs {
		if FamilyOf(a) == family {
			out = append(out, a)
		}
	}
	return out
}
