package behaviour

import (
	"fmt"
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
)

// Namespace holds the table's objects.
const Namespace = "behaviour"

// Service is one Service of the table and its endpoints, written compactly:
// one port (80, or 53 for UDP) to the pods' EchoPort.
type Service struct {
	Name string
	// ClusterIPs: one per family, from the service ranges of the address plan.
	ClusterIPs []string
	// Type defaults to ClusterIP.
	Type corev1.ServiceType
	// UDP makes the port UDP 53.
	UDP bool
	// NodePort is the port's node port (a fixed one, so that probes can
	// name it; the API server accepts a requested node port).
	NodePort    int32
	ExternalIPs []string
	// Ingress are load-balancer ingress IPs with ipMode VIP; ProxyIngress
	// those with ipMode Proxy (the load balancer proxies: no rules).
	Ingress, ProxyIngress []string
	SourceRanges          []string
	ExternalLocal         bool
	InternalLocal         bool
	Affinity              bool
	Endpoints             []Endpoint
}

// Endpoint is a pod behind a Service, ready unless said otherwise.
type Endpoint struct {
	Pod Role
	// Terminating: not ready, still serving (a pod shutting down).
	Terminating bool
	// NotServing: neither ready nor serving.
	NotServing bool
}

// ready is the endpoints of pods, all ready.
func ready(pods ...Role) []Endpoint {
	out := make([]Endpoint, len(pods))
	for i, p := range pods {
		out[i] = Endpoint{Pod: p}
	}
	return out
}

// Host is where a role lives at one level: its addresses and, for pods,
// its node.
type Host struct {
	IP4, IP6 string
	NodeName string
}

// Hosts maps every role to its host at one level.
type Hosts map[Role]Host

// Addr is the role's address in the family of dst.
func (h Hosts) Addr(r Role, dst netip.Addr) netip.Addr {
	if dst.Unmap().Is4() {
		return netip.MustParseAddr(h[r].IP4)
	}
	return netip.MustParseAddr(h[r].IP6)
}

// RoleOf is the role an address belongs to ("" for none).
func (h Hosts) RoleOf(a netip.Addr) Role {
	a = a.Unmap()
	for r, host := range h {
		if a.String() == host.IP4 || (host.IP6 != "" && a == netip.MustParseAddr(host.IP6)) {
			return r
		}
	}
	return ""
}

// Objects are the Service and its EndpointSlices (one per family) as the
// API server and the EndpointSlice controller would hold them.
func (s Service) Objects(h Hosts) (*corev1.Service, []*discoveryv1.EndpointSlice) {
	port := corev1.ServicePort{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80, TargetPort: intstr.FromInt32(EchoPort),
		NodePort: s.NodePort}
	if s.UDP {
		port.Name, port.Protocol, port.Port = "dns", corev1.ProtocolUDP, 53
	}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: Namespace, Name: s.Name},
		Spec: corev1.ServiceSpec{Type: s.Type, ClusterIP: s.ClusterIPs[0], ClusterIPs: s.ClusterIPs,
			Ports: []corev1.ServicePort{port}, ExternalIPs: s.ExternalIPs, LoadBalancerSourceRanges: s.SourceRanges},
	}
	if svc.Spec.Type == "" {
		svc.Spec.Type = corev1.ServiceTypeClusterIP
	}
	for _, ip := range s.ClusterIPs {
		svc.Spec.IPFamilies = append(svc.Spec.IPFamilies, familyOf(ip))
	}
	if len(s.ClusterIPs) == 2 {
		svc.Spec.IPFamilyPolicy = ptr.To(corev1.IPFamilyPolicyRequireDualStack)
	}
	if svc.Spec.Type != corev1.ServiceTypeClusterIP || len(s.ExternalIPs) > 0 {
		svc.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyCluster
		if s.ExternalLocal {
			svc.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
		}
	}
	if s.InternalLocal {
		svc.Spec.InternalTrafficPolicy = ptr.To(corev1.ServiceInternalTrafficPolicyLocal)
	}
	if s.Affinity {
		svc.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
		svc.Spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: ptr.To[int32](600)}}
	}
	for _, ip := range s.Ingress {
		svc.Status.LoadBalancer.Ingress = append(svc.Status.LoadBalancer.Ingress,
			corev1.LoadBalancerIngress{IP: ip, IPMode: ptr.To(corev1.LoadBalancerIPModeVIP)})
	}
	for _, ip := range s.ProxyIngress {
		svc.Status.LoadBalancer.Ingress = append(svc.Status.LoadBalancer.Ingress,
			corev1.LoadBalancerIngress{IP: ip, IPMode: ptr.To(corev1.LoadBalancerIPModeProxy)})
	}
	return svc, s.slices(h, svc)
}

func familyOf(ip string) corev1.IPFamily {
	if netip.MustParseAddr(ip).Is4() {
		return corev1.IPv4Protocol
	}
	return corev1.IPv6Protocol
}

// slices are the Service's EndpointSlices, one per family of its ClusterIPs.
func (s Service) slices(h Hosts, svc *corev1.Service) []*discoveryv1.EndpointSlice {
	port := svc.Spec.Ports[0]
	var out []*discoveryv1.EndpointSlice
	for _, fam := range svc.Spec.IPFamilies {
		at, suffix := discoveryv1.AddressTypeIPv4, "ipv4"
		if fam == corev1.IPv6Protocol {
			at, suffix = discoveryv1.AddressTypeIPv6, "ipv6"
		}
		slice := &discoveryv1.EndpointSlice{
			ObjectMeta: metav1.ObjectMeta{Namespace: Namespace, Name: fmt.Sprintf("%s-%s", s.Name, suffix),
				Labels: map[string]string{discoveryv1.LabelServiceName: s.Name, discoveryv1.LabelManagedBy: "behaviour"}},
			AddressType: at,
			Ports:       []discoveryv1.EndpointPort{{Name: ptr.To(port.Name), Protocol: ptr.To(port.Protocol), Port: ptr.To[int32](EchoPort)}},
		}
		for _, e := range s.Endpoints {
			host := h[e.Pod]
			ip := host.IP4
			if at == discoveryv1.AddressTypeIPv6 {
				ip = host.IP6
			}
			slice.Endpoints = append(slice.Endpoints, discoveryv1.Endpoint{
				Addresses: []string{ip}, NodeName: ptr.To(host.NodeName),
				Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(!e.Terminating && !e.NotServing),
					Serving: ptr.To(!e.NotServing), Terminating: ptr.To(e.Terminating)},
			})
		}
		out = append(out, slice)
	}
	return out
}
