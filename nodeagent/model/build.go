package model

import (
	"net/netip"
	"slices"
	"strings"
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
// ServicePorts, one per port and IP family. It is a pure function.
func BuildServicePorts(svc *corev1.Service, endpointSlices []*discoveryv1.EndpointSlice, node NodeContext) []*ServicePort {
	if !Proxied(svc) {
		return nil
	}
	clusterIPs := svc.Spec.ClusterIPs
	if len(clusterIPs) == 0 {
		clusterIPs = []string{svc.Spec.ClusterIP}
	}
	var out []*ServicePort
	for _, ipStr := range clusterIPs {
		clusterIP, err := netip.ParseAddr(ipStr)
		if err != nil {
			continue
		}
		family := FamilyOf(clusterIP)
		for i := range svc.Spec.Ports {
			out = append(out, buildServicePort(svc, &svc.Spec.Ports[i], clusterIP.Unmap(), family, endpointSlices, node))
		}
	}
	return out
}

func buildServicePort(svc *corev1.Service, port *corev1.ServicePort, clusterIP netip.Addr, family Family,
	endpointSlices []*discoveryv1.EndpointSlice, node NodeContext) *ServicePort {
	protocol := port.Protocol
	if protocol == "" {
		protocol = corev1.ProtocolTCP
	}
	sp := &ServicePort{
		Key: ServicePortKey{
			ServicePortName: ServicePortName{Namespace: svc.Namespace, Name: svc.Name, Port: port.Name, Protocol: protocol},
			Family:          family,
		},
		Protocol:        protocol,
		ClusterIP:       clusterIP,
		Port:            port.Port,
		ExternalIPs:     parseAddrs(svc.Spec.ExternalIPs, family),
		LoadBalancerIPs: loadBalancerIPs(svc, family),
	}
	if svc.Spec.Type == corev1.ServiceTypeNodePort || svc.Spec.Type == corev1.ServiceTypeLoadBalancer {
		sp.NodePort = port.NodePort
	}
	if len(sp.LoadBalancerIPs) > 0 {
		sp.SourceRanges = sourceRanges(svc, family)
	}
	if svc.Spec.SessionAffinity == corev1.ServiceAffinityClientIP {
		sp.AffinityTimeout = defaultAffinityTimeout
		if c := svc.Spec.SessionAffinityConfig; c != nil && c.ClientIP != nil && c.ClientIP.TimeoutSeconds != nil {
			sp.AffinityTimeout = time.Duration(*c.ClientIP.TimeoutSeconds) * time.Second
		}
	}
	// The external policy matters only for ports reachable from outside.
	sp.ExternalPolicyLocal = svc.Spec.ExternalTrafficPolicy == corev1.ServiceExternalTrafficPolicyLocal && sp.HasExternal()
	sp.InternalPolicyLocal = svc.Spec.InternalTrafficPolicy != nil &&
		*svc.Spec.InternalTrafficPolicy == corev1.ServiceInternalTrafficPolicyLocal
	if sp.ExternalPolicyLocal && svc.Spec.Type == corev1.ServiceTypeLoadBalancer {
		sp.HealthCheckNodePort = svc.Spec.HealthCheckNodePort
	}

	all := collectEndpoints(port, family, endpointSlices, node)
	resolveEndpoints(sp, all, node)
	return sp
}

// candidate is an endpoint with what policy resolution needs.
type candidate struct {
	Endpoint
	serving, terminating bool
	zoneHints            []string
	nodeHints            []string
}

// collectEndpoints gathers the endpoints of one service port in one family from
// all of the Service's EndpointSlices, without duplicates (an endpoint can
// appear in two slices while the EndpointSlice controller moves it).
func collectEndpoints(port *corev1.ServicePort, family Family, endpointSlices []*discoveryv1.EndpointSlice, node NodeContext) []candidate {
	wantType := discoveryv1.AddressTypeIPv4
	if family == IPv6 {
		wantType = discoveryv1.AddressTypeIPv6
	}
	seen := map[netip.AddrPort]bool{}
	var out []candidate
	for _, slice := range endpointSlices {
		if slice.AddressType != wantType {
			continue
		}
		portNumber, ok := slicePort(slice, port)
		if !ok {
			continue
		}
		for i := range slice.Endpoints {
			ep := &slice.Endpoints[i]
			if len(ep.Addresses) == 0 {
				continue
			}
			// Like kube-proxy, only the first address: the others are the same pod's.
			ip, err := netip.ParseAddr(ep.Addresses[0])
			if err != nil {
				continue
			}
			ip = ip.Unmap()
			if seen[netip.AddrPortFrom(ip, uint16(portNumber))] {
				continue
			}
			seen[netip.AddrPortFrom(ip, uint16(portNumber))] = true
			// Conditions: nil ready means ready; nil serving means "as ready".
			ready := ep.Conditions.Ready == nil || *ep.Conditions.Ready
			serving := ready
			if ep.Conditions.Serving != nil {
				serving = *ep.Conditions.Serving
			}
			terminating := ep.Conditions.Terminating != nil && *ep.Conditions.Terminating
			c := candidate{
				Endpoint: Endpoint{
					IP: ip, Port: portNumber, Ready: ready,
					Local: ep.NodeName != nil && *ep.NodeName == node.Name,
				},
				serving: serving, terminating: terminating,
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
	slices.SortFunc(out, func(a, b candidate) int { return a.AddrPort().Compare(b.AddrPort()) })
	return out
}

// slicePort finds the target port of a service port in an EndpointSlice: the
// slice's port with the same name and protocol.
func slicePort(slice *discoveryv1.EndpointSlice, port *corev1.ServicePort) (int32, bool) {
	protocol := port.Protocol
	if protocol == "" {
		protocol = corev1.ProtocolTCP
	}
	for _, p := range slice.Ports {
		name := ""
		if p.Name != nil {
			name = *p.Name
		}
		pp := corev1.ProtocolTCP
		if p.Protocol != nil {
			pp = *p.Protocol
		}
		if name == port.Name && pp == protocol && p.Port != nil {
			return *p.Port, true
		}
	}
	return 0, false
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
func resolveEndpoints(sp *ServicePort, all []candidate, node NodeContext) {
	cluster := clusterWide(all, node)
	local := readyOrTerminating(filter(all, func(c candidate) bool { return c.Local }))
	for _, c := range all {
		if c.Local && c.Ready {
			sp.LocalEndpointCount++
		}
	}
	// The cluster-wide set is empty only when no endpoint anywhere is usable.
	sp.HasEndpoints = len(cluster) > 0
	if sp.InternalPolicyLocal {
		sp.ClusterEndpoints = endpoints(local)
	} else {
		sp.ClusterEndpoints = endpoints(cluster)
	}
	switch {
	case !sp.HasExternal():
	case sp.ExternalPolicyLocal:
		sp.ExternalEndpoints = endpoints(local)
		sp.ShortCircuitEndpoints = endpoints(cluster)
	default:
		// External traffic with the Cluster policy goes cluster-wide, even when
		// the internal policy is Local.
		sp.ExternalEndpoints = endpoints(cluster)
	}
}

func readyOrTerminating(cs []candidate) []candidate {
	ready := filter(cs, func(c candidate) bool { return c.Ready })
	if len(ready) > 0 {
		return ready
	}
	return filter(cs, func(c candidate) bool { return c.serving && c.terminating })
}

// clusterWide is kube-proxy's cluster endpoint set: the ready endpoints
// available for this node's topology, or, when none is ready, the serving
// and terminating ones.
func clusterWide(all []candidate, node NodeContext) []candidate {
	ready := filter(all, func(c candidate) bool { return c.Ready })
	if len(ready) == 0 {
		return filter(all, func(c candidate) bool { return c.serving && c.terminating })
	}
	switch topologyFromHints(ready, node) {
	case byNode:
		return filter(ready, func(c candidate) bool { return slices.Contains(c.nodeHints, node.Name) })
	case byZone:
		return filter(ready, func(c candidate) bool { return slices.Contains(c.zoneHints, node.Zone) })
	}
	return ready
}

type topology int

const (
	noTopology topology = iota
	byNode
	byZone
)

// topologyFromHints says which hints narrow the ready endpoints: hints are
// used whenever the EndpointSlices carry them, whatever the Service asks for
// (the EndpointSlice controller sets them from trafficDistribution or the
// topology annotation), all-or-nothing: node hints when every ready endpoint
// has them and one is for this node, else zone hints when every ready
// endpoint has them and one is for this node's zone (kube-proxy's
// topologyModeFromHints).
func topologyFromHints(ready []candidate, node NodeContext) topology {
	allNode, allZone, forNode, forZone := true, true, false, false
	for _, c := range ready {
		allNode = allNode && len(c.nodeHints) > 0
		allZone = allZone && len(c.zoneHints) > 0
		forNode = forNode || slices.Contains(c.nodeHints, node.Name)
		forZone = forZone || (node.Zone != "" && slices.Contains(c.zoneHints, node.Zone))
	}
	switch {
	case allNode && forNode:
		return byNode
	case allZone && forZone:
		return byZone
	}
	return noTopology
}

func filter(cs []candidate, keep func(candidate) bool) []candidate {
	var out []candidate
	for _, c := range cs {
		if keep(c) {
			out = append(out, c)
		}
	}
	return out
}

func endpoints(cs []candidate) []Endpoint {
	if len(cs) == 0 {
		return nil
	}
	out := make([]Endpoint, len(cs))
	for i, c := range cs {
		out[i] = c.Endpoint
	}
	return out
}

func parseAddrs(ss []string, family Family) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		a, err := netip.ParseAddr(strings.TrimSpace(s))
		if err == nil && FamilyOf(a) == family {
			out = append(out, a.Unmap())
		}
	}
	return out
}

// loadBalancerIPs are the ingress IPs the node must answer for: ipMode Proxy
// means the load balancer proxies to the node, so the node must not capture
// that IP (it would break hairpin traffic through the load balancer).
func loadBalancerIPs(svc *corev1.Service, family Family) []netip.Addr {
	if svc.Spec.Type != corev1.ServiceTypeLoadBalancer {
		return nil
	}
	var ips []string
	for _, ing := range svc.Status.LoadBalancer.Ingress {
		if ing.IP == "" || (ing.IPMode != nil && *ing.IPMode == corev1.LoadBalancerIPModeProxy) {
			continue
		}
		ips = append(ips, ing.IP)
	}
	return parseAddrs(ips, family)
}

func sourceRanges(svc *corev1.Service, family Family) []netip.Prefix {
	ranges := svc.Spec.LoadBalancerSourceRanges
	if len(ranges) == 0 {
		if v := svc.Annotations[AnnotationSourceRanges]; v != "" {
			ranges = strings.Split(v, ",")
		}
	}
	var out []netip.Prefix
	for _, r := range ranges {
		p, err := netip.ParsePrefix(strings.TrimSpace(r))
		if err != nil {
			continue
		}
		if (family == IPv4) == p.Addr().Is4() {
			out = append(out, p.Masked())
		}
	}
	return out
}
