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
// ServicePorts, one per port and IP family, and says what it skipped as
// invalid (see validate.go). It is a pure function.
func BuildServicePorts(svc *corev1.Service, endpointSlices []*discoveryv1.EndpointSlice, node NodeContext) ([]*ServicePort, []Rejection) {
	if !Proxied(svc) {
		return nil, nil
	}
	var rs rejections
	v := validateService(svc, &rs)
	views := validateSlices(endpointSlices, &rs)
	out := make([]*ServicePort, 0, len(v.clusterIPs)*len(v.ports))
	for _, clusterIP := range v.clusterIPs {
		for i := range v.ports {
			out = append(out, buildServicePort(v, &v.ports[i], clusterIP, views, node))
		}
	}
	return out, rs.list
}

func buildServicePort(v *serviceView, port *portView, clusterIP netip.Addr, views []sliceView, node NodeContext) *ServicePort {
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
	if sp.ExternalPolicyLocal {
		sp.HealthCheckNodePort = v.healthCheckPort
	}

	all := collectEndpoints(port, family, views, node)
	resolveEndpoints(sp, all, topologyMode(svc), node)
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
// all of the Service's (validated) EndpointSlices, without duplicates (an
// endpoint can appear in two slices while the EndpointSlice controller moves it).
func collectEndpoints(port *portView, family Family, views []sliceView, node NodeContext) []candidate {
	seen := map[netip.AddrPort]bool{}
	var out []candidate
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
			c := candidate{
				Endpoint: Endpoint{
					IP: se.ip, Port: portNumber, Ready: ready,
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

// resolveEndpoints applies readiness fallback, topology and traffic policies,
// with kube-proxy's semantics (pkg/proxy/topology.go):
//   - ready endpoints; when none is ready, the serving-terminating ones, so that
//     a rolling update's last pods still answer;
//   - topology hints narrow the cluster-wide set when every endpoint carries
//     them and some fit this node or zone;
//   - internalTrafficPolicy Local keeps local endpoints for ClusterIP traffic;
//   - externalTrafficPolicy Local keeps local endpoints for external traffic.
func resolveEndpoints(sp *ServicePort, all []candidate, mode string, node NodeContext) {
	usable := readyOrTerminating(all)
	cluster := applyTopology(usable, mode, node)

	local := readyOrTerminating(filter(all, func(c candidate) bool { return c.Local }))
	for _, c := range all {
		if c.Local && c.Ready {
			sp.LocalEndpointCount++
		}
	}

	if sp.InternalPolicyLocal {
		sp.ClusterEndpoints = endpoints(local)
	} else {
		sp.ClusterEndpoints = endpoints(cluster)
	}
	switch {
	case !sp.HasExternal():
	case sp.ExternalPolicyLocal:
		sp.ExternalEndpoints = endpoints(local)
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

// topologyMode is the Service's topology preference: its trafficDistribution,
// or "Auto" from the older annotation.
func topologyMode(svc *corev1.Service) string {
	if svc.Spec.TrafficDistribution != nil && *svc.Spec.TrafficDistribution != "" {
		return *svc.Spec.TrafficDistribution
	}
	if v := svc.Annotations[AnnotationTopologyMode]; strings.EqualFold(v, "auto") {
		return "Auto"
	}
	return ""
}

func applyTopology(cs []candidate, mode string, node NodeContext) []candidate {
	if mode == "" || len(cs) == 0 {
		return cs
	}
	// Hints are all-or-nothing: one endpoint without them means the
	// EndpointSlice controller has not (or could not) assign them.
	if mode == corev1.ServiceTrafficDistributionPreferSameNode &&
		!slices.ContainsFunc(cs, func(c candidate) bool { return len(c.nodeHints) == 0 }) {
		if same := filter(cs, func(c candidate) bool { return slices.Contains(c.nodeHints, node.Name) }); len(same) > 0 {
			return same
		}
	}
	if node.Zone == "" || slices.ContainsFunc(cs, func(c candidate) bool { return len(c.zoneHints) == 0 }) {
		return cs
	}
	if same := filter(cs, func(c candidate) bool { return slices.Contains(c.zoneHints, node.Zone) }); len(same) > 0 {
		return same
	}
	return cs
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
