package explain

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
	"kpo.dev/kpo/nodeagent/model"
)

// localSet reports whether route r uses the port's local set (a traffic
// policy Local), rather than the cluster-wide one.
func localSet(sp *model.ServicePort, r *model.Route) bool {
	switch r.Set {
	case model.ClusterSet:
		return sp.InternalPolicyLocal
	case model.ExternalSet:
		return sp.ExternalPolicyLocal
	}
	return false // the short-circuit uses every endpoint
}

// policyField names the policy that makes r's set local.
func policyField(sp *model.ServicePort, r *model.Route) string {
	if r.Set == model.ClusterSet {
		return "spec.internalTrafficPolicy: Local"
	}
	return "spec.externalTrafficPolicy: Local"
}

// setReasons say why the route uses its endpoint set: the route's RouteWhy,
// then the port's Selection (topology, terminating fallback).
func setReasons(sp *model.ServicePort, r *model.Route) []Reason {
	var out []Reason
	switch r.Why.Set {
	case model.SetClusterIP:
		if sp.InternalPolicyLocal {
			out = append(out, Reason{ReasonInternalPolicyLocal, "spec.internalTrafficPolicy: Local", "ClusterIP traffic goes to this node's endpoints only"})
		} else {
			out = append(out, Reason{ReasonClusterIP, "spec.internalTrafficPolicy: Cluster", "ClusterIP traffic goes to the cluster-wide endpoints"})
		}
	case model.SetExternalCluster:
		out = append(out, Reason{ReasonExternalCluster, "spec.externalTrafficPolicy: Cluster", "external traffic goes to the cluster-wide endpoints"})
	case model.SetExternalLocal:
		out = append(out, Reason{ReasonExternalLocal, "spec.externalTrafficPolicy: Local", "external traffic goes to this node's endpoints only"})
	case model.SetShortCircuit:
		out = append(out, Reason{ReasonShortCircuit, "spec.externalTrafficPolicy: Local",
			"traffic from this node or its pods is short-circuited to the cluster-wide endpoints, as if it had gone out to the load balancer and come back"})
	case model.SetPodsUnknown:
		out = append(out, Reason{ReasonPodsUnknown, "spec.externalTrafficPolicy: Local, spec.detectLocalMode",
			"detect-local cannot tell pods apart in this family: their traffic takes the route from outside (this node's endpoints only)"})
	case model.SetIPVSOneSet:
		out = append(out, Reason{ReasonIPVSOneSet, "spec.externalTrafficPolicy: Local, spec.mode: ipvs",
			"an IPVS virtual server has one set of destinations for every source: this node's endpoints only"})
	}
	local := localSet(sp, r)
	sel := sp.Selection
	if !local {
		switch sel.Topology {
		case model.TopologyNodeHints:
			out = append(out, Reason{ReasonTopologyNode, "EndpointSlice hints.forNodes",
				"every ready endpoint has node hints (set from spec.trafficDistribution) and some name this node: only those are used"})
		case model.TopologyZoneHints:
			out = append(out, Reason{ReasonTopologyZone, "EndpointSlice hints.forZones",
				"every ready endpoint has zone hints (set from spec.trafficDistribution or the topology-mode annotation) and some name this node's zone: only those are used"})
		}
	}
	if local && sel.LocalTerminating || !local && sel.ClusterTerminating {
		scope := "anywhere"
		if local {
			scope = "on this node"
		}
		out = append(out, Reason{ReasonTerminatingFallback, "EndpointSlice conditions",
			fmt.Sprintf("no endpoint is ready %s: the serving and terminating ones are used", scope)})
	}
	return out
}

// emptyReason says why traffic with an empty set is refused or dropped.
func emptyReason(sp *model.ServicePort, r *model.Route) Reason {
	if r.Empty == model.Drop {
		return Reason{ReasonNoLocalEndpoints, policyField(sp, r),
			"this node has no usable endpoint while other nodes have: dropped (a refusal would reset clients a load balancer is about to steer elsewhere)"}
	}
	return Reason{ReasonNoEndpoints, "EndpointSlice conditions",
		"no endpoint of the port is ready, nor serving and terminating, on any node: refused"}
}

// masqueradeReason says why the route masquerades or keeps the source.
func masqueradeReason(r *model.Route) Reason {
	switch r.Why.Masquerade {
	case model.MasqueradeAllSetting:
		return Reason{ReasonMasqueradeAll, "spec.masqueradeAll", "masqueraded: every source of ClusterIP traffic is"}
	case model.MasqueradeNotFromPod:
		return Reason{ReasonMasquerade, "spec.detectLocalMode", "masqueraded: ClusterIP traffic not from this node's pods is, so that replies come back through this node"}
	case model.KeepFromPod:
		return Reason{ReasonKeepSource, "spec.detectLocalMode", "source kept: ClusterIP traffic from this node's pods is not masqueraded"}
	case model.KeepNoLocalDetector:
		return Reason{ReasonKeepSource, "spec.detectLocalMode", "source kept: without a way to tell pods apart, ClusterIP traffic is not masqueraded"}
	case model.MasqueradeExternalCluster:
		return Reason{ReasonMasquerade, "spec.externalTrafficPolicy: Cluster", "masqueraded: the endpoint may be on another node"}
	case model.KeepExternalLocal:
		return Reason{ReasonKeepSource, "spec.externalTrafficPolicy: Local", "source kept: the endpoint is on this node"}
	case model.MasqueradeShortCircuitNode:
		return Reason{ReasonMasquerade, "spec.externalTrafficPolicy: Local", "masqueraded: the node's own short-circuited traffic is, so that the reply comes back through it"}
	}
	return Reason{ReasonKeepSource, "spec.externalTrafficPolicy: Local", "source kept: a pod's short-circuited traffic keeps its address"}
}

// hairpinMasqueraded says whether the node masquerades a connection it
// sends back to the endpoint it came from: the endpoint is in the node's
// hairpin set (Hairpin), or, in the iptables mode, the port has affinity
// (each endpoint's SEP chain masquerades its own address, as kube-proxy's
// KUBE-SEP "-s ep -j KUBE-MARK-MASQ").
func (n *Node) hairpinMasqueraded(sp *model.ServicePort, routes *model.Routes, ep model.Endpoint) bool {
	if n.Mode == kpov1.ModeIPTables && sp.AffinityTimeout > 0 {
		return true
	}
	if n.Hairpin != nil {
		return n.Hairpin[hairpinKeyOf(n.Mode, sp, ep)]
	}
	return hairpinChecked(n.Mode, sp, routes, ep)
}

// HairpinKey is an entry of a node's hairpin set. nftables and IPVS key it
// by the endpoint's address, protocol and port (kube-proxy's
// hairpin-connections set and KUBE-LOOP-BACK: a pod listed as local on one
// port is not masqueraded reaching itself on another, random seed 257);
// iptables by the address alone (KPO-HAIRPIN matches any connection DNATed
// back to its source).
type HairpinKey struct {
	IP    netip.Addr
	Proto corev1.Protocol
	Port  int32
}

func hairpinKeyOf(mode kpov1.Mode, sp *model.ServicePort, ep model.Endpoint) HairpinKey {
	if mode == kpov1.ModeIPTables {
		return HairpinKey{IP: ep.IP}
	}
	return HairpinKey{IP: ep.IP, Proto: sp.Protocol, Port: ep.Port}
}

// hairpinChecked says whether a backend puts ep into the node's hairpin
// set for sp. The set is shared by every service port: which endpoints get
// the check is the one decision backends still make per mode: nftables
// this node's endpoints (nftables/render.go shareCommon, kube-proxy's
// hairpin-connections set); iptables, for ports without affinity, local and
// unplaced ones and every one when external traffic keeps its source
// (iptables/render.go needsHairpin); IPVS (when judged without the set)
// local ones.
func hairpinChecked(mode kpov1.Mode, sp *model.ServicePort, routes *model.Routes, ep model.Endpoint) bool {
	if mode != kpov1.ModeIPTables {
		return ep.Local
	}
	return sp.AffinityTimeout <= 0 && (ep.Local || ep.Unplaced || sp.HasExternal() && !routes.External.Outside.Masquerade)
}

// HairpinSet is the node's hairpin set: the endpoints whose connections
// back to themselves it masquerades, across every service port.
func HairpinSet(snap *model.Snapshot, n *Node) map[HairpinKey]bool {
	out := map[HairpinKey]bool{}
	for _, sp := range snap.Services {
		routes := sp.Routes(n.Options(sp.Key.Family))
		x := &routes.External
		lists := [][]model.Endpoint{routes.Cluster.Outside.Endpoints, x.Outside.Endpoints, x.Node.Endpoints, x.Pods.Endpoints}
		if n.Mode == kpov1.ModeIPVS {
			lists = ipvsLoopBack(sp, &routes)
		}
		for _, eps := range lists {
			for _, ep := range eps {
				if n.Mode == kpov1.ModeIPVS || hairpinChecked(n.Mode, sp, &routes, ep) {
					out[hairpinKeyOf(n.Mode, sp, ep)] = true
				}
			}
		}
	}
	return out
}

// ipvsLoopBack are the endpoints the IPVS backend puts into its loop-back
// set (ipvs/rules.go): every cluster endpoint, and the external ones when
// external traffic keeps its source. (kube-proxy's IPVS mode takes local
// endpoints only; the superset also answers a pod its slice does not
// place on a node.)
func ipvsLoopBack(sp *model.ServicePort, routes *model.Routes) [][]model.Endpoint {
	lists := [][]model.Endpoint{routes.Cluster.Outside.Endpoints}
	if sp.HasExternal() && !routes.External.Outside.Masquerade {
		lists = append(lists, routes.External.Outside.Endpoints)
	}
	return lists
}

// endpoints sorts the candidates into those route r may use and the others,
// each with why.
func (n *Node) endpoints(sp *model.ServicePort, routes *model.Routes, cands []model.Candidate, r *model.Route, src Source) (in, out []Endpoint) {
	local := localSet(sp, r)
	for _, c := range cands {
		e := Endpoint{Address: c.AddrPort().String(), Node: c.NodeName, Ready: c.Ready}
		if slices.ContainsFunc(r.Endpoints, func(x model.Endpoint) bool { return x.AddrPort() == c.AddrPort() }) {
			e.Why = inWhy(sp, c, local)
			e.Hairpin = src.IP == c.IP && n.hairpinMasqueraded(sp, routes, c.Endpoint)
			in = append(in, e)
			continue
		}
		e.Why = outWhy(sp, c, r, local)
		out = append(out, e)
	}
	return in, out
}

func inWhy(sp *model.ServicePort, c model.Candidate, local bool) string {
	var parts []string
	if c.Ready {
		parts = append(parts, "ready")
	} else {
		parts = append(parts, "serving and terminating")
	}
	if local {
		parts = append(parts, "on this node")
	} else {
		switch sp.Selection.Topology {
		case model.TopologyNodeHints:
			parts = append(parts, "hinted for this node")
		case model.TopologyZoneHints:
			parts = append(parts, "hinted for this zone")
		}
	}
	return strings.Join(parts, ", ")
}

func outWhy(sp *model.ServicePort, c model.Candidate, r *model.Route, local bool) string {
	if local && !c.Local {
		where := "on node " + c.NodeName
		if c.NodeName == "" {
			where = "no nodeName"
		}
		return fmt.Sprintf("%s: %s uses this node's endpoints only", where, policyField(sp, r))
	}
	switch {
	case c.Ready:
	case !c.Serving && c.Terminating:
		return "terminating, not serving"
	case !c.Serving:
		return "not ready, not serving"
	case !c.Terminating:
		return "not ready, serving but not terminating"
	default:
		return "terminating: used only when no endpoint is ready"
	}
	switch sp.Selection.Topology {
	case model.TopologyNodeHints:
		return fmt.Sprintf("hints.forNodes %v does not name this node", c.NodeHints)
	case model.TopologyZoneHints:
		return fmt.Sprintf("hints.forZones %v does not include this node's zone", c.ZoneHints)
	}
	return "not in the route's set"
}
