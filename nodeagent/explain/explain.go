package explain

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
	"kpo.dev/kpo/nodeagent/model"
)

// Node is one node as its agent sees it.
type Node struct {
	Name string
	// Zone is the node's topology.kubernetes.io/zone label.
	Zone string
	// Info is what the agent resolves before each sync (nodeinfo.Resolve).
	Info model.NodeInfo
	// Mode is the mode the node runs (its ProxyNodeStatus' activeMode,
	// else the configuration's).
	Mode kpov1.Mode
	// MasqueradeAll and LocalhostNodePorts are the configuration's settings.
	MasqueradeAll      bool
	LocalhostNodePorts bool
	// NodePortAddresses is the setting as written, for reasons.
	NodePortAddresses []string
	// Addrs are the node's local addresses: where NodePorts answer when
	// nodePortAddresses leaves a family to every local address.
	Addrs []netip.Addr
	// Hairpin is the node's hairpin set (HairpinSet); nil: judged from
	// the explained port alone.
	Hairpin map[HairpinKey]bool
}

// Options are the route options the node's backend uses in family f (as
// nftables/render.go, iptables/render.go and ipvs/desired.go set them).
func (n *Node) Options(f model.Family) model.RouteOptions {
	o := model.RouteOptions{MasqueradeAll: n.MasqueradeAll, PodsKnown: n.Info.HasLocalDetector(f)}
	switch n.Mode {
	case kpov1.ModeIPTables:
		o.Dialect = model.DialectIPTables
	case kpov1.ModeIPVS:
		o.Dialect = model.DialectIPVS
	default:
		o.Dialect = model.DialectNFTables
	}
	return o
}

// Explain says what node n does with the traffic of q to service port sp,
// whose endpoints as the EndpointSlices list them are cands
// (model.Candidates).
func Explain(sp *model.ServicePort, cands []model.Candidate, n *Node, q Query) Explanation {
	e := Explanation{Node: n.Name, Service: sp.Key.String(), Query: q, Reasons: []Reason{}}
	f := sp.Key.Family
	o := n.Options(f)
	q.Source = n.sourceOf(q)
	e.Query = q
	class, why := n.classify(q.Source, f)
	e.SourceClass = sourceName(class)
	e.Reasons = append(e.Reasons, why)
	routes := sp.Routes(o)
	if r, ok := n.accepts(sp, q); !ok {
		e.Outcome = NotHandled
		e.Reasons = append(e.Reasons, r)
		n.nodePortFilter(sp, &routes, q, &e)
		return e
	}
	if q.Target == ToLoadBalancerIP && routes.Firewall != nil {
		if !slices.ContainsFunc(routes.Firewall, func(p netip.Prefix) bool { return p.Contains(q.Source.IP) }) {
			e.Outcome = Dropped
			e.Reasons = append(e.Reasons, Reason{ReasonSourceRanges, "spec.loadBalancerSourceRanges",
				fmt.Sprintf("%s is outside %s: dropped before any endpoint is chosen", q.Source.IP, prefixes(routes.Firewall))})
			return e
		}
		e.Reasons = append(e.Reasons, Reason{ReasonSourceRanges, "spec.loadBalancerSourceRanges",
			fmt.Sprintf("%s is inside %s: allowed", q.Source.IP, prefixes(routes.Firewall))})
	}
	sr := &routes.External
	if q.Target == ToClusterIP {
		sr = &routes.Cluster
	}
	r := sr.From(class)
	e.Reasons = append(e.Reasons, setReasons(sp, r)...)
	e.Endpoints, e.Excluded = n.endpoints(sp, &routes, cands, r, q.Source)
	if len(r.Endpoints) == 0 {
		e.Reasons = append(e.Reasons, emptyReason(sp, r))
		switch {
		case o.Dialect == model.DialectIPTables && class == model.FromNode && (q.Target == ToExternalIP || q.Target == ToLoadBalancerIP):
			// iptables/iptables.go: KPO-EXTERNAL-SERVICES hooks input and
			// forward only, as kube-proxy's KUBE-EXTERNAL-SERVICES.
			e.Outcome = NotHandled
			e.Reasons = append(e.Reasons, Reason{ReasonIPTablesOutput, "spec.mode: iptables",
				"the iptables mode refuses external addresses on input and forward only: the node's own traffic is routed as usual"})
		case r.Empty == model.Drop:
			e.Outcome = Dropped
		default:
			e.Outcome = Refused
		}
		return e
	}
	e.Outcome = Forwarded
	e.Masquerade = r.Masquerade
	e.Reasons = append(e.Reasons, masqueradeReason(r))
	for _, ep := range e.Endpoints {
		switch {
		case ep.Hairpin:
			e.Reasons = append(e.Reasons, Reason{ReasonHairpin, "", fmt.Sprintf(
				"a connection to %s, the sender itself, is masqueraded (or the pod would answer itself directly)", ep.Address)})
		case !e.Masquerade && q.Source.Kind == FromPod && netip.MustParseAddrPort(ep.Address).Addr() == q.Source.IP:
			e.Reasons = append(e.Reasons, Reason{ReasonHairpin, "", fmt.Sprintf(
				"a connection to %s, the sender itself, is not masqueraded: it is not in this node's hairpin set for this port (its EndpointSlice does not place it on this node), so the pod answers itself directly and drops the answer: it times out", ep.Address)})
		}
	}
	if sp.AffinityTimeout > 0 {
		e.Affinity = fmt.Sprintf("ClientIP %s", sp.AffinityTimeout)
		e.Reasons = append(e.Reasons, Reason{ReasonAffinity, "spec.sessionAffinity: ClientIP", fmt.Sprintf(
			"a client sticks to the endpoint it first reached for %s (spec.sessionAffinityConfig.clientIP.timeoutSeconds)", sp.AffinityTimeout)})
	}
	return e
}

// nodePortFilter: in the iptables mode, the refusal (or drop) of a
// NodePort without endpoints for traffic from outside applies on every local
// address, whatever nodePortAddresses says, and also where NodePorts are not
// translated (loopback), as kube-proxy's KUBE-EXTERNAL-SERVICES
// (iptables/state.go writeExternal).
func (n *Node) nodePortFilter(sp *model.ServicePort, routes *model.Routes, q Query, e *Explanation) {
	out := &routes.External.Outside
	if n.Mode != kpov1.ModeIPTables || q.Target != ToNodePort || sp.NodePort == 0 || q.Port != sp.NodePort || len(out.Endpoints) > 0 {
		return
	}
	if !q.Addr.IsLoopback() && !slices.Contains(n.Addrs, q.Addr) {
		return
	}
	e.Reasons = append(e.Reasons, emptyReason(sp, out), Reason{ReasonIPTablesNodePortFilter, "spec.mode: iptables",
		"the iptables mode refuses or drops a NodePort without endpoints on every local address, whatever nodePortAddresses says"})
	e.Outcome = Refused
	if out.Empty == model.Drop {
		e.Outcome = Dropped
	}
}

// sourceOf is the source as the node sees it: its own traffic to one of its
// own addresses leaves from that address (the local route's preferred
// source), whatever address the query names for the node.
func (n *Node) sourceOf(q Query) Source {
	s := q.Source
	if s.Kind == FromNode && s.Node == n.Name && slices.Contains(n.Addrs, q.Addr) {
		s.IP = q.Addr
	}
	return s
}

// classify is how the node sees the source (kube-proxy's detect-local).
func (n *Node) classify(s Source, f model.Family) (model.Source, Reason) {
	if s.Kind == FromNode && s.Node == n.Name {
		// kube-proxy's rules ask "from a pod?" (the cluster CIDR) before
		// "from this node?" (a local source): the node's own traffic from
		// an address inside the cluster CIDR (its pod gateway) is pods'.
		if p, ok := n.podCIDROf(s.IP, f); ok {
			return model.FromPods, Reason{ReasonDetectLocal, "spec.detectLocalMode / clusterCIDRs", fmt.Sprintf(
				"the node's own traffic, but from %s, inside %s: counted as pods' traffic (the pod check comes first)", s.IP, p)}
		}
		return model.FromNode, Reason{ReasonDetectLocal, "", "the node's own traffic (a local source address)"}
	}
	if !n.Info.HasLocalDetector(f) {
		return model.FromOutside, Reason{ReasonPodsUnknown, "spec.detectLocalMode", fmt.Sprintf(
			"detect-local tells no pods apart in %s (no cluster CIDR of the family): %s counts as outside", f, s.IP)}
	}
	if n.Info.LocalInterface != "" {
		setting := fmt.Sprintf("spec.detectLocal.bridgeInterface %q", n.Info.LocalInterface)
		if n.Info.LocalInterfacePrefix {
			setting = fmt.Sprintf("spec.detectLocal.interfaceNamePrefix %q", n.Info.LocalInterface)
		}
		iface, assumed := s.Interface, false
		if iface == "" && s.Kind == FromPod && s.Node == n.Name {
			iface, assumed = n.Info.LocalInterface, true
		}
		match := iface != "" && (iface == n.Info.LocalInterface || n.Info.LocalInterfacePrefix && strings.HasPrefix(iface, n.Info.LocalInterface))
		switch {
		case match && assumed:
			return model.FromPods, Reason{ReasonDetectLocal, setting, "a pod of this node: its traffic arrives on the pod interface (assumed)"}
		case match:
			return model.FromPods, Reason{ReasonDetectLocal, setting, fmt.Sprintf("arrives on %s: counted as this node's pods", iface)}
		}
		return model.FromOutside, Reason{ReasonDetectLocal, setting, "does not arrive on a pod interface of this node: counted as outside"}
	}
	if p, ok := n.podCIDROf(s.IP, f); ok {
		return model.FromPods, Reason{ReasonDetectLocal, "spec.detectLocalMode / clusterCIDRs", fmt.Sprintf(
			"%s is inside %s: counted as this node's pods' traffic", s.IP, p)}
	}
	return model.FromOutside, Reason{ReasonDetectLocal, "spec.detectLocalMode / clusterCIDRs", fmt.Sprintf(
		"%s is outside %s: counted as outside", s.IP, prefixes(n.Info.ClusterCIDRs[f]))}
}

// accepts says whether the node's rules take traffic to q's address and port
// for sp at all.
func (n *Node) accepts(sp *model.ServicePort, q Query) (Reason, bool) {
	switch q.Target {
	case ToClusterIP:
		if q.Addr == sp.ClusterIP && q.Port == sp.Port {
			return Reason{}, true
		}
	case ToExternalIP:
		if slices.Contains(sp.ExternalIPs, q.Addr) && q.Port == sp.Port {
			return Reason{}, true
		}
	case ToLoadBalancerIP:
		if slices.Contains(sp.LoadBalancerIPs, q.Addr) && q.Port == sp.Port {
			return Reason{}, true
		}
		return Reason{ReasonNotServed, "status.loadBalancer.ingress", fmt.Sprintf(
			"%s is not a load-balancer VIP of the port here (ipMode Proxy, or lost to another Service): not translated", q.Addr)}, false
	case ToNodePort:
		if sp.NodePort == 0 || q.Port != sp.NodePort {
			return Reason{ReasonNotServed, "spec.ports[].nodePort", fmt.Sprintf("the port has no NodePort %d", q.Port)}, false
		}
		return n.acceptsNodePort(q.Addr)
	}
	return Reason{ReasonNotServed, "spec", fmt.Sprintf("%s:%d is not a %s of the port", q.Addr, q.Port, q.Target)}, false
}

// acceptsNodePort says whether NodePorts answer on addr on this node, as the
// backends match them (nftables/base.go nodeport-ips; iptables/render.go
// nodePortDispatch; ipvs/desired.go).
func (n *Node) acceptsNodePort(addr netip.Addr) (Reason, bool) {
	f := model.FamilyOf(addr)
	ips, ok := n.Info.NodePortIPs[f]
	explicit := ok && ips != nil
	setting := "spec.nodePortAddresses"
	if len(n.NodePortAddresses) > 0 {
		setting += " " + strings.Join(n.NodePortAddresses, ",")
	}
	if addr.IsLoopback() {
		if n.Mode != kpov1.ModeIPTables || f != model.IPv4 || !n.LocalhostNodePorts {
			return Reason{ReasonLocalhostNodePort, "spec.iptables.localhostNodePorts", fmt.Sprintf(
				"NodePorts answer on %s only in the iptables mode, IPv4, with localhostNodePorts (kube-proxy's rule): the node answers for itself", addr)}, false
		}
		if explicit && !slices.Contains(ips, addr) {
			return Reason{ReasonNodePortAddress, setting, fmt.Sprintf("%s is not among the NodePort addresses %v", addr, ips)}, false
		}
		return Reason{}, true
	}
	if explicit {
		if slices.Contains(ips, addr) {
			return Reason{}, true
		}
		return Reason{ReasonNodePortAddress, setting, fmt.Sprintf(
			"%s is not among this node's NodePort addresses %v: the node answers for itself", addr, ips)}, false
	}
	if slices.Contains(n.Addrs, addr) {
		return Reason{}, true
	}
	return Reason{ReasonNodePortAddress, setting, fmt.Sprintf("%s is not an address of this node", addr)}, false
}

func prefixes(ps []netip.Prefix) string {
	if len(ps) == 0 {
		return "[]"
	}
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, ",")
}

// podCIDROf is the cluster CIDR holding ip, when the node tells pods apart
// by address (detect-local ClusterCIDR or NodeCIDR).
func (n *Node) podCIDROf(ip netip.Addr, f model.Family) (netip.Prefix, bool) {
	if n.Info.LocalInterface != "" {
		return netip.Prefix{}, false
	}
	for _, p := range n.Info.ClusterCIDRs[f] {
		if p.Contains(ip) {
			return p, true
		}
	}
	return netip.Prefix{}, false
}
