package model

import (
	"net/netip"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	netutils "k8s.io/utils/net"
)

// Validation of what the model takes from the API. The API server validates
// Services and EndpointSlices, but not everything (an EndpointSlice port of
// 70000 is accepted), and objects stored under older rules keep what those
// allowed. One such value would make the kernel refuse the whole transaction
// of a sync, and every later one: so each value is checked here, and what is
// bad is skipped at the smallest granularity that makes sense (one address,
// one endpoint, one slice port, one service port) with a Rejection that says
// why. Where kube-proxy (v1.37, pkg/proxy) skips a value itself, the model
// skips it the same way; where kube-proxy programs a value the kernel accepts,
// the model keeps it (docs/robustness.md has the table).

// Limits the API server puts on an EndpointSlice
// (pkg/apis/discovery/validation): a slice beyond them was not written
// through a validating API server, and is skipped whole.
const (
	maxSliceEndpoints = 1000
	maxSlicePorts     = 20000
)

// maxAffinitySeconds is the API's bound on the ClientIP affinity timeout
// (core.MaxClientIPServiceAffinitySeconds).
const maxAffinitySeconds = 86400

// parseIP parses an address as kube-proxy does (netutils.ParseIPSloppy: IPv4
// with leading zeros, as older API servers accepted, reads as decimal), and
// unmaps IPv4-mapped IPv6. Addresses with a zone do not parse: no rule can
// carry one.
func parseIP(s string) (netip.Addr, bool) {
	if a, err := netip.ParseAddr(s); err == nil {
		return a.Unmap(), a.Zone() == ""
	}
	ip := netutils.ParseIPSloppy(s)
	if ip == nil {
		return netip.Addr{}, false
	}
	a, ok := netip.AddrFromSlice(ip)
	return a.Unmap(), ok
}

// parsePrefix parses a CIDR as kube-proxy does (netutils.ParseCIDRSloppy,
// surrounding blanks trimmed), masked.
func parsePrefix(s string) (netip.Prefix, bool) {
	s = strings.TrimSpace(s)
	p, err := netip.ParsePrefix(s)
	if err != nil {
		_, n, err := netutils.ParseCIDRSloppy(s)
		if err != nil {
			return netip.Prefix{}, false
		}
		a, _ := netip.AddrFromSlice(n.IP)
		ones, _ := n.Mask.Size()
		p = netip.PrefixFrom(a, ones)
	}
	if p.Addr().Is4In6() {
		p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96) // invalid below /96
	}
	return p.Masked(), p.IsValid()
}

func validPort(p int32) bool { return p >= 1 && p <= 65535 }

func validProtocol(p corev1.Protocol) bool {
	return p == corev1.ProtocolTCP || p == corev1.ProtocolUDP || p == corev1.ProtocolSCTP
}

// serviceView is a Service's fields after validation, parsed once for all of
// its ports and families.
type serviceView struct {
	svc *corev1.Service
	// clusterIPs: at most one per family, in spec order.
	clusterIPs []netip.Addr
	ports      []portView
	// externalIPs and loadBalancerIPs are of both families, without
	// duplicates; an address in both lists is a load-balancer IP only (its
	// source ranges apply).
	externalIPs     []netip.Addr
	loadBalancerIPs []netip.Addr
	sourceRanges    []netip.Prefix
	affinity        time.Duration
	healthCheckPort int32
}

// portView is a valid service port.
type portView struct {
	spec     *corev1.ServicePort
	protocol corev1.Protocol
	// nodePort is 0 when the Service has none (or an invalid one).
	nodePort int32
}

func validateService(svc *corev1.Service, rs *rejections) *serviceView {
	v := &serviceView{svc: svc}
	reject := func(reason, format string, args ...any) {
		rs.add(KindService, svc.Namespace, svc.Name, reason, format, args...)
	}
	clusterIPs := svc.Spec.ClusterIPs
	if len(clusterIPs) == 0 {
		clusterIPs = []string{svc.Spec.ClusterIP}
	}
	for _, s := range clusterIPs {
		ip, ok := parseIP(s)
		switch {
		case !ok:
			reject(ReasonInvalidClusterIP, "clusterIP %q is not an IP address", s)
		case slices.ContainsFunc(v.clusterIPs, func(a netip.Addr) bool { return FamilyOf(a) == FamilyOf(ip) }):
			// kube-proxy uses the first of a family (GetClusterIPByFamily).
			reject(ReasonDuplicateClusterIPFamily, "clusterIP %q: the Service has an %s clusterIP already", s, FamilyOf(ip))
		default:
			v.clusterIPs = append(v.clusterIPs, ip)
		}
	}
	v.ports = validatePorts(svc, reject)
	v.externalIPs = parseAddrList(svc.Spec.ExternalIPs, func(s string) {
		reject(ReasonInvalidExternalIP, "externalIP %q is not an IP address", s)
	})
	v.loadBalancerIPs = loadBalancerIPs(svc, reject)
	v.externalIPs = slices.DeleteFunc(v.externalIPs, func(a netip.Addr) bool { return slices.Contains(v.loadBalancerIPs, a) })
	v.sourceRanges = sourceRanges(svc, reject)
	v.affinity = affinityTimeout(svc, reject)
	if needsHealthCheck(svc) {
		v.healthCheckPort = svc.Spec.HealthCheckNodePort
		if v.healthCheckPort != 0 && !validPort(v.healthCheckPort) {
			reject(ReasonInvalidHealthCheckNodePort, "healthCheckNodePort %d is outside 1-65535", v.healthCheckPort)
			v.healthCheckPort = 0
		}
	}
	return v
}

// validatePorts keeps the service ports with a valid number and protocol, once
// per name and protocol (the key of a ServicePort).
func validatePorts(svc *corev1.Service, reject func(reason, format string, args ...any)) []portView {
	out := make([]portView, 0, len(svc.Spec.Ports))
	hasNodePorts := svc.Spec.Type == corev1.ServiceTypeNodePort || svc.Spec.Type == corev1.ServiceTypeLoadBalancer
	for i := range svc.Spec.Ports {
		p := &svc.Spec.Ports[i]
		pv := portView{spec: p, protocol: p.Protocol}
		if pv.protocol == "" {
			pv.protocol = corev1.ProtocolTCP
		}
		switch {
		case !validProtocol(pv.protocol):
			reject(ReasonInvalidProtocol, "port %q: protocol %q is not TCP, UDP or SCTP", p.Name, p.Protocol)
			continue
		case !validPort(p.Port):
			reject(ReasonInvalidPort, "port %q: %d is outside 1-65535", p.Name, p.Port)
			continue
		case slices.ContainsFunc(out, func(o portView) bool { return o.spec.Name == p.Name && o.protocol == pv.protocol }):
			reject(ReasonDuplicatePort, "port %q (%s) appears twice: the first is used", p.Name, pv.protocol)
			continue
		}
		if hasNodePorts && p.NodePort != 0 {
			if validPort(p.NodePort) {
				pv.nodePort = p.NodePort
			} else {
				reject(ReasonInvalidNodePort, "port %q: nodePort %d is outside 1-65535", p.Name, p.NodePort)
			}
		}
		out = append(out, pv)
	}
	return out
}

// parseAddrList parses addresses, skipping (and reporting) those that do not
// parse and dropping duplicates.
func parseAddrList(ss []string, bad func(string)) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		a, ok := parseIP(s)
		switch {
		case !ok:
			bad(s)
		case !slices.Contains(out, a):
			out = append(out, a)
		}
	}
	return out
}

// loadBalancerIPs are the ingress IPs the node must answer for: as in
// kube-proxy (proxyutil.IsVIPMode), those whose ipMode is unset or VIP. ipMode
// Proxy means the load balancer proxies to the node, so the node must not
// capture that IP (it would break hairpin traffic through the load balancer).
func loadBalancerIPs(svc *corev1.Service, reject func(reason, format string, args ...any)) []netip.Addr {
	if svc.Spec.Type != corev1.ServiceTypeLoadBalancer {
		return nil
	}
	var ips []string
	for _, ing := range svc.Status.LoadBalancer.Ingress {
		if ing.IP == "" {
			continue
		}
		if ing.IPMode != nil && *ing.IPMode != corev1.LoadBalancerIPModeVIP {
			if *ing.IPMode != corev1.LoadBalancerIPModeProxy {
				reject(ReasonInvalidLoadBalancerIPMode, "load-balancer IP %s: ipMode %q is neither VIP nor Proxy", ing.IP, *ing.IPMode)
			}
			continue
		}
		ips = append(ips, ing.IP)
	}
	return parseAddrList(ips, func(s string) {
		reject(ReasonInvalidLoadBalancerIP, "load-balancer IP %q is not an IP address", s)
	})
}

// sourceRanges are spec.loadBalancerSourceRanges or, without them, the older
// annotation; ranges that do not parse are skipped, as kube-proxy does
// (proxyutil.MapCIDRsByIPFamily).
func sourceRanges(svc *corev1.Service, reject func(reason, format string, args ...any)) []netip.Prefix {
	ranges := svc.Spec.LoadBalancerSourceRanges
	if len(ranges) == 0 {
		if v := svc.Annotations[AnnotationSourceRanges]; v != "" {
			ranges = strings.Split(v, ",")
		}
	}
	var out []netip.Prefix
	for _, r := range ranges {
		p, ok := parsePrefix(r)
		switch {
		case !ok:
			reject(ReasonInvalidSourceRange, "load-balancer source range %q is not a CIDR", r)
		case !slices.Contains(out, p):
			out = append(out, p)
		}
	}
	return out
}

// affinityTimeout is the ClientIP affinity timeout, 0 without affinity. A
// timeout outside the API's 1s-86400s (which would make the kernel refuse the
// affinity set or rule) falls back to the default.
func affinityTimeout(svc *corev1.Service, reject func(reason, format string, args ...any)) time.Duration {
	if svc.Spec.SessionAffinity != corev1.ServiceAffinityClientIP {
		return 0
	}
	c := svc.Spec.SessionAffinityConfig
	if c == nil || c.ClientIP == nil || c.ClientIP.TimeoutSeconds == nil {
		return defaultAffinityTimeout
	}
	secs := *c.ClientIP.TimeoutSeconds
	if secs < 1 || secs > maxAffinitySeconds {
		reject(ReasonInvalidAffinityTimeout, "sessionAffinityConfig timeout %ds is outside 1-%d: the default %s is used",
			secs, maxAffinitySeconds, defaultAffinityTimeout)
		return defaultAffinityTimeout
	}
	return time.Duration(secs) * time.Second
}

// needsHealthCheck: a healthCheckNodePort is served for LoadBalancer Services
// with externalTrafficPolicy Local (apiservice.NeedsHealthCheck).
func needsHealthCheck(svc *corev1.Service) bool {
	return svc.Spec.Type == corev1.ServiceTypeLoadBalancer &&
		svc.Spec.ExternalTrafficPolicy == corev1.ServiceExternalTrafficPolicyLocal
}

// sliceView is an EndpointSlice after validation: the ports and endpoints the
// model may use.
type sliceView struct {
	family    Family
	ports     []slicePort
	endpoints []sliceEndpoint
}

type slicePort struct {
	name     string
	protocol corev1.Protocol
	port     int32
}

type sliceEndpoint struct {
	ip netip.Addr
	ep *discoveryv1.Endpoint
}

// validateSlices validates a Service's EndpointSlices. Slices of other address
// types (FQDN) hold nothing to proxy: kube-proxy ignores them too. The views'
// endpoints are carved out of sc's buffer: they live as long as the build.
func validateSlices(endpointSlices []*discoveryv1.EndpointSlice, rs *rejections, sc *scratch) []sliceView {
	out := make([]sliceView, 0, len(endpointSlices))
	n := 0
	for _, s := range endpointSlices {
		n += min(len(s.Endpoints), maxSliceEndpoints+1)
	}
	sc.endpoints = slices.Grow(sc.endpoints[:0], n)
	for _, s := range endpointSlices {
		if v, ok := validateSlice(s, rs, &sc.endpoints); ok {
			out = append(out, v)
		}
	}
	return out
}

// validateSlice validates one EndpointSlice; its valid endpoints are
// appended to buf, and the view's endpoints are that part of it.
func validateSlice(s *discoveryv1.EndpointSlice, rs *rejections, buf *[]sliceEndpoint) (sliceView, bool) {
	v := sliceView{family: IPv4}
	switch s.AddressType {
	case discoveryv1.AddressTypeIPv4:
	case discoveryv1.AddressTypeIPv6:
		v.family = IPv6
	default:
		return v, false
	}
	reject := func(reason, format string, args ...any) {
		rs.add(KindEndpointSlice, s.Namespace, s.Name, reason, format, args...)
	}
	if len(s.Endpoints) > maxSliceEndpoints {
		reject(ReasonTooManyEndpoints, "%d endpoints, more than the API's limit of %d", len(s.Endpoints), maxSliceEndpoints)
		return v, false
	}
	if len(s.Ports) > maxSlicePorts {
		reject(ReasonTooManyEndpointPorts, "%d ports, more than the API's limit of %d", len(s.Ports), maxSlicePorts)
		return v, false
	}
	v.ports = make([]slicePort, 0, len(s.Ports))
	for _, p := range s.Ports {
		// kube-proxy skips ports without a name or number
		// (EndpointSliceCache.endpointInfoByServicePort), and would program
		// the rest, whatever the kernel thinks of it.
		switch {
		case p.Name == nil:
			reject(ReasonInvalidEndpointPort, "a port without a name")
			continue
		case p.Port == nil || *p.Port == 0:
			reject(ReasonInvalidEndpointPort, "port %q has no number", *p.Name)
			continue
		case !validPort(*p.Port):
			reject(ReasonInvalidEndpointPort, "port %q: %d is outside 1-65535", *p.Name, *p.Port)
			continue
		}
		sp := slicePort{name: *p.Name, protocol: corev1.ProtocolTCP, port: *p.Port}
		if p.Protocol != nil {
			sp.protocol = *p.Protocol
		}
		if !validProtocol(sp.protocol) {
			reject(ReasonInvalidEndpointProtocol, "port %q: protocol %q is not TCP, UDP or SCTP", sp.name, sp.protocol)
			continue
		}
		v.ports = append(v.ports, sp)
	}
	if len(v.ports) == 0 {
		return v, true // nothing to use, but nothing more to report either
	}
	start := len(*buf)
	for i := range s.Endpoints {
		ep := &s.Endpoints[i]
		if len(ep.Addresses) == 0 {
			reject(ReasonInvalidEndpointAddress, "endpoint %d has no address", i)
			continue
		}
		// Like kube-proxy, only the first address: the others are the same pod's.
		ip, ok := parseIP(ep.Addresses[0])
		switch {
		case !ok:
			reject(ReasonInvalidEndpointAddress, "endpoint address %q is not an IP address", ep.Addresses[0])
			continue
		case FamilyOf(ip) != v.family:
			reject(ReasonEndpointFamilyMismatch, "endpoint address %q in a slice of addressType %s", ep.Addresses[0], s.AddressType)
			continue
		}
		*buf = append(*buf, sliceEndpoint{ip: ip, ep: ep})
	}
	v.endpoints = (*buf)[start:len(*buf):len(*buf)]
	return v, true
}

// port finds the target port of a service port in the slice: the port with
// the same name and protocol.
func (v *sliceView) port(name string, protocol corev1.Protocol) (int32, bool) {
	for _, p := range v.ports {
		if p.name == name && p.protocol == protocol {
			return p.port, true
		}
	}
	return 0, false
}
