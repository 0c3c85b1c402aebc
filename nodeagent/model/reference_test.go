package model

import (
	"net/netip"
	"slices"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
)

// The model's endpoint resolution as it was before it was made to allocate
// less (one map per port for duplicates, one per port for OtherServing, a
// copy of the candidates per filter, hints copied per endpoint): kept as
// the reference the fuzz test compares the current code with
// (FuzzBuildServicePorts), so that the rewrite provably resolves the same
// sets. The rest of the build (validation, the ServicePort's other fields)
// is shared.

// ReferenceBuildServicePorts is BuildServicePorts with the reference
// endpoint resolution.
func ReferenceBuildServicePorts(svc *corev1.Service, endpointSlices []*discoveryv1.EndpointSlice, node NodeContext) ([]*ServicePort, []Rejection) {
	sps, rs := BuildServicePorts(svc, endpointSlices, node)
	if len(sps) == 0 {
		return sps, rs
	}
	var ignored rejections
	v := validateService(svc, &ignored)
	views := validateSlices(endpointSlices, &ignored, new(scratch))
	out := make([]*ServicePort, 0, len(sps))
	for _, built := range sps {
		ref := *built
		ref.ClusterEndpoints, ref.ExternalEndpoints, ref.ShortCircuitEndpoints, ref.OtherServing = nil, nil, nil, nil
		ref.LocalEndpointCount, ref.HasEndpoints, ref.Selection = 0, false, Selection{}
		port := &v.ports[slices.IndexFunc(v.ports, func(p portView) bool {
			return p.spec.Name == built.Key.Port && p.protocol == built.Key.Protocol
		})]
		refResolveEndpoints(&ref, refCollectEndpoints(port, built.Key.Family, views, node), node)
		out = append(out, &ref)
	}
	return out, rs
}

// refCandidate is an endpoint with what policy resolution needs.
type refCandidate struct {
	Endpoint
	serving, terminating bool
	zoneHints            []string
	nodeHints            []string
	nodeName             string
}

// refCollectEndpoints gathers the endpoints of one service port in one family from
// all of the Service's (validated) EndpointSlices, without duplicates (an
// endpoint can appear in two slices while the EndpointSlice controller moves it).
func refCollectEndpoints(port *portView, family Family, views []sliceView, node NodeContext) []refCandidate {
	seen := map[netip.AddrPort]bool{}
	var out []refCandidate
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
			ep := se.ep
			ap := netip.AddrPortFrom(se.ip, uint16(portNumber))
			if seen[ap] {
				continue
			}
			seen[ap] = true
			// Conditions: nil ready means ready; nil serving means "as ready".
			ready := ep.Conditions.Ready == nil || *ep.Conditions.Ready
			serving := ready
			if ep.Conditions.Serving != nil {
				serving = *ep.Conditions.Serving
			}
			terminating := ep.Conditions.Terminating != nil && *ep.Conditions.Terminating
			c := refCandidate{
				Endpoint: Endpoint{
					IP: se.ip, Port: portNumber, Ready: ready,
					Local:    ep.NodeName != nil && *ep.NodeName == node.Name,
					Unplaced: ep.NodeName == nil || *ep.NodeName == "",
				},
				serving: serving, terminating: terminating,
			}
			if ep.NodeName != nil {
				c.nodeName = *ep.NodeName
			}
			if ep.Hints != nil {
				for _, z := range ep.Hints.ForZones {
					c.zoneHints = append(c.zoneHints, z.Name)
				}
				for _, n := range ep.Hints.ForNodes {
					c.nodeHints = append(c.nodeHints, n.Name)
				}
			}
			out = append(out, c)
		}
	}
	// Stable order, so that unchanged input gives equal output (pointer reuse).
	slices.SortFunc(out, func(a, b refCandidate) int { return a.AddrPort().Compare(b.AddrPort()) })
	return out
}

// refResolveEndpoints applies readiness fallback, topology and traffic policies,
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
func refResolveEndpoints(sp *ServicePort, all []refCandidate, node NodeContext) {
	cluster, topo := refClusterWide(all, node)
	local := refReadyOrTerminating(refFilter(all, func(c refCandidate) bool { return c.Local }))
	sp.Selection = Selection{
		Topology:           topo,
		ClusterTerminating: len(cluster) > 0 && !cluster[0].Ready,
		LocalTerminating:   len(local) > 0 && !local[0].Ready,
	}
	for _, c := range all {
		if c.Local && c.Ready {
			sp.LocalEndpointCount++
		}
	}
	// The cluster-wide set is empty only when no endpoint anywhere is usable.
	sp.HasEndpoints = len(cluster) > 0
	if sp.InternalPolicyLocal {
		sp.ClusterEndpoints = refEndpoints(local)
	} else {
		sp.ClusterEndpoints = refEndpoints(cluster)
	}
	switch {
	case !sp.HasExternal():
	case sp.ExternalPolicyLocal:
		sp.ExternalEndpoints = refEndpoints(local)
		sp.ShortCircuitEndpoints = refEndpoints(cluster)
	default:
		// External traffic with the Cluster policy goes cluster-wide, even when
		// the internal policy is Local.
		sp.ExternalEndpoints = refEndpoints(cluster)
	}
	sp.OtherServing = refOtherServing(sp, all)
}

// refOtherServing are the serving endpoints the sets of sp leave out.
func refOtherServing(sp *ServicePort, all []refCandidate) []Endpoint {
	in := map[netip.AddrPort]bool{}
	for _, eps := range [][]Endpoint{sp.ClusterEndpoints, sp.ExternalEndpoints, sp.ShortCircuitEndpoints} {
		for _, e := range eps {
			in[e.AddrPort()] = true
		}
	}
	var out []Endpoint
	for _, c := range all {
		if c.serving && !in[c.AddrPort()] {
			out = append(out, c.Endpoint)
		}
	}
	return out
}

func refReadyOrTerminating(cs []refCandidate) []refCandidate {
	ready := refFilter(cs, func(c refCandidate) bool { return c.Ready })
	if len(ready) > 0 {
		return ready
	}
	return refFilter(cs, func(c refCandidate) bool { return c.serving && c.terminating })
}

// refClusterWide is kube-proxy's cluster endpoint set: the ready endpoints
// available for this node's topology, or, when none is ready, the serving
// and terminating ones.
// The Topology says which hints narrowed it.
func refClusterWide(all []refCandidate, node NodeContext) ([]refCandidate, Topology) {
	ready := refFilter(all, func(c refCandidate) bool { return c.Ready })
	if len(ready) == 0 {
		return refFilter(all, func(c refCandidate) bool { return c.serving && c.terminating }), NoTopology
	}
	switch t := refTopologyFromHints(ready, node); t {
	case TopologyNodeHints:
		return refFilter(ready, func(c refCandidate) bool { return slices.Contains(c.nodeHints, node.Name) }), t
	case TopologyZoneHints:
		return refFilter(ready, func(c refCandidate) bool { return slices.Contains(c.zoneHints, node.Zone) }), t
	}
	return ready, NoTopology
}

// refTopologyFromHints says which hints narrow the ready endpoints: hints are
// used whenever the EndpointSlices carry them, whatever the Service asks for
// (the EndpointSlice controller sets them from trafficDistribution or the
// topology annotation), all-or-nothing: node hints when every ready endpoint
// has them and one is for this node, else zone hints when every ready
// endpoint has them and one is for this node's zone (kube-proxy's
// topologyModeFromHints).
func refTopologyFromHints(ready []refCandidate, node NodeContext) Topology {
	allNode, allZone, forNode, forZone := true, true, false, false
	for _, c := range ready {
		allNode = allNode && len(c.nodeHints) > 0
		allZone = allZone && len(c.zoneHints) > 0
		forNode = forNode || slices.Contains(c.nodeHints, node.Name)
		forZone = forZone || (node.Zone != "" && slices.Contains(c.zoneHints, node.Zone))
	}
	switch {
	case allNode && forNode:
		return TopologyNodeHints
	case allZone && forZone:
		return TopologyZoneHints
	}
	return NoTopology
}

func refFilter(cs []refCandidate, keep func(refCandidate) bool) []refCandidate {
	var out []refCandidate
	for _, c := range cs {
		if keep(c) {
			out = append(out, c)
		}
	}
	return out
}

func refEndpoints(cs []refCandidate) []Endpoint {
	if len(cs) == 0 {
		return nil
	}
	out := make([]Endpoint, len(cs))
	for i, c := range cs {
		out[i] = c.Endpoint
	}
	return out
}

// ReferenceCandidates is Candidates with the reference collection.
func ReferenceCandidates(svc *corev1.Service, endpointSlices []*discoveryv1.EndpointSlice, node NodeContext) map[ServicePortKey][]Candidate {
	if !Proxied(svc) {
		return nil
	}
	var rs rejections
	v := validateService(svc, &rs)
	views := validateSlices(endpointSlices, &rs, new(scratch))
	out := map[ServicePortKey][]Candidate{}
	for _, clusterIP := range v.clusterIPs {
		family := FamilyOf(clusterIP)
		for i := range v.ports {
			port := &v.ports[i]
			key := ServicePortKey{ServicePortName: ServicePortName{Namespace: svc.Namespace, Name: svc.Name, Port: port.spec.Name, Protocol: port.protocol}, Family: family}
			for _, c := range refCollectEndpoints(port, family, views, node) {
				out[key] = append(out[key], Candidate{Endpoint: c.Endpoint, NodeName: c.nodeName, Serving: c.serving,
					Terminating: c.terminating, ZoneHints: c.zoneHints, NodeHints: c.nodeHints})
			}
		}
	}
	return out
}
