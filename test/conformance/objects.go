package conformance

import (
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"
)

// Namespace holds every case's objects.
const Namespace = "conformance"

// Case is one conformance case: Services and EndpointSlices, written once, that
// both proxies serve in turn. Probes are derived from the objects, never from
// what a proxy is expected to do: the reference is whatever kube-proxy does.
type Case struct {
	Name     string
	Services []*corev1.Service
	Slices   []*discoveryv1.EndpointSlice
	// Seed is set for generated cases.
	Seed int64
	// Steps change the objects while the proxy runs; each is followed by a
	// barrier and its own round of probes.
	Steps []Step
	// lateProbes are the case's own extra probes of a step, made once the
	// objects exist (for instance a UDP flow from a fixed source port, whose
	// conntrack entry must follow a change).
	lateProbes func(c *Case, step string) []Probe
	// specs are what the case was built from (for shrinking).
	specs []SvcSpec
}

// Step is a change to a case's objects during a run.
type Step struct {
	Name   string
	Change func(c *Case)
}

// YAML prints the case's objects, for a report.
func (c *Case) YAML() string {
	var b strings.Builder
	if c.Seed != 0 {
		fmt.Fprintf(&b, "# case %s, seed %d\n", c.Name, c.Seed)
	}
	for _, s := range c.Services {
		writeYAML(&b, "v1", "Service", s.DeepCopy())
	}
	for _, s := range c.Slices {
		writeYAML(&b, "discovery.k8s.io/v1", "EndpointSlice", s.DeepCopy())
	}
	return b.String()
}

func writeYAML(b *strings.Builder, apiVersion, kind string, obj metav1.Object) {
	// What the API server filled in is not part of the case.
	obj.SetManagedFields(nil)
	obj.SetUID("")
	obj.SetResourceVersion("")
	obj.SetGeneration(0)
	obj.SetCreationTimestamp(metav1.Time{})
	data, err := yaml.Marshal(obj)
	if err != nil {
		fmt.Fprintf(b, "# %v\n", err)
		return
	}
	// Drop the server-filled and empty fields: the case as one would write it.
	var lines []string
	for _, l := range strings.Split(string(data), "\n") {
		switch strings.TrimSpace(l) {
		case "creationTimestamp: null", "status: {}", "loadBalancer: {}", "metadata: {}", "":
			continue
		}
		lines = append(lines, l)
	}
	fmt.Fprintf(b, "---\napiVersion: %s\nkind: %s\n%s\n", apiVersion, kind, strings.Join(lines, "\n"))
}

// Addresses handed out to a run's cases, in order, so that a case's objects
// are the same whichever proxy reads them, and a printed case can be re-run.
type allocator struct {
	next     int // next service index
	nodePort int32
}

// Service indexes map into 10.96.<1+i/250>.<1+i%250> and the same two bytes of fd10:96::/112.
func (a *allocator) clusterIPs(families string) []string {
	i := a.next
	a.next++
	hi, lo := 1+i/250, 1+i%250
	v4 := fmt.Sprintf("10.96.%d.%d", hi, lo)
	v6 := fmt.Sprintf("fd10:96::%x", hi<<8|lo)
	switch families {
	case "6":
		return []string{v6}
	case "64":
		return []string{v6, v4}
	case "46":
		return []string{v4, v6}
	}
	return []string{v4}
}

// externalIP is an external address for service index i.
func externalIP(i int, family string) string {
	if family == "6" {
		return fmt.Sprintf("2001:db8:2::%x:%x", 1+i/250, 1+i%250)
	}
	return fmt.Sprintf("203.0.113.%d", 1+i%250)
}

func (a *allocator) nextNodePort() int32 {
	if a.nodePort == 0 {
		a.nodePort = 30000
	}
	a.nodePort++
	return a.nodePort
}

// SvcSpec is a compact description of one Service and its endpoints. Hand-written
// cases and the generator both describe Services this way.
type SvcSpec struct {
	Name string
	Type corev1.ServiceType
	// Families: "4", "6", "46" (dual-stack, IPv4 first) or "64".
	Families string
	Ports    []PortSpec
	// ExternalIPs and LBIPs: how many per family; LBProxyMode marks the
	// load-balancer IPs ipMode Proxy.
	ExternalIPs, LBIPs int
	// ExplicitExternalIPs are added as they are (conflict cases).
	ExplicitExternalIPs []string
	LBProxyMode         bool
	// SourceRanges restricts the load-balancer IPs: "", "in" (the first two
	// clients) or "other" (a range without any client).
	SourceRanges             string
	ExternalLocal            bool
	InternalLocal            bool
	AffinitySeconds          int32
	TrafficDistribution      string
	TopologyAnnotation       bool
	NoLBNodePorts            bool
	Endpoints                []EndpointSpec
	ExtraAnnotations, Labels map[string]string
}

// PortSpec is one service port; TargetPort defaults to 8080.
type PortSpec struct {
	Name       string
	Protocol   corev1.Protocol
	Port       int32
	TargetPort int32
}

// EndpointSpec is one endpoint: a pod (by name) or a node host ("node-1").
type EndpointSpec struct {
	Target string
	// NotReady, Serving and Terminating: conditions; the zero value is ready.
	NotReady, NotServing, Terminating bool
	// NoNodeName leaves nodeName unset.
	NoNodeName bool
	// ZoneHints and NodeHints; nil for none.
	ZoneHints, NodeHints []string
}

// Build turns specs into a Case with addresses from a.
func (w *World) Build(a *allocator, name string, specs ...SvcSpec) *Case {
	c := &Case{Name: name, specs: specs}
	for _, s := range specs {
		svc, slices := w.buildService(a, s)
		c.Services = append(c.Services, svc)
		c.Slices = append(c.Slices, slices...)
	}
	return c
}

func (w *World) buildService(a *allocator, s SvcSpec) (*corev1.Service, []*discoveryv1.EndpointSlice) {
	index := a.next
	if s.Families == "" {
		s.Families = "4"
	}
	if s.Type == "" {
		s.Type = corev1.ServiceTypeClusterIP
	}
	if len(s.Ports) == 0 {
		s.Ports = []PortSpec{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80}}
	}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: Namespace, Name: s.Name, Annotations: s.ExtraAnnotations, Labels: s.Labels},
		Spec: corev1.ServiceSpec{
			Type:       s.Type,
			ClusterIPs: a.clusterIPs(s.Families),
		},
	}
	svc.Spec.ClusterIP = svc.Spec.ClusterIPs[0]
	for _, ip := range svc.Spec.ClusterIPs {
		svc.Spec.IPFamilies = append(svc.Spec.IPFamilies, familyOf(ip))
	}
	if len(svc.Spec.ClusterIPs) == 2 {
		svc.Spec.IPFamilyPolicy = ptr.To(corev1.IPFamilyPolicyRequireDualStack)
	}
	for _, p := range s.Ports {
		if p.Protocol == "" {
			p.Protocol = corev1.ProtocolTCP
		}
		if p.TargetPort == 0 {
			p.TargetPort = 8080
		}
		sp := corev1.ServicePort{Name: p.Name, Protocol: p.Protocol, Port: p.Port, TargetPort: intstr.FromInt32(p.TargetPort)}
		if s.Type == corev1.ServiceTypeNodePort || (s.Type == corev1.ServiceTypeLoadBalancer && !s.NoLBNodePorts) {
			sp.NodePort = a.nextNodePort()
		}
		svc.Spec.Ports = append(svc.Spec.Ports, sp)
	}
	fams := familiesOf(svc)
	for _, f := range fams {
		for k := range s.ExternalIPs {
			svc.Spec.ExternalIPs = append(svc.Spec.ExternalIPs, externalIP(index*4+k, f))
		}
	}
	svc.Spec.ExternalIPs = append(svc.Spec.ExternalIPs, s.ExplicitExternalIPs...)
	if s.Type == corev1.ServiceTypeLoadBalancer {
		if s.NoLBNodePorts {
			svc.Spec.AllocateLoadBalancerNodePorts = ptr.To(false)
		}
		for _, f := range fams {
			for k := range s.LBIPs {
				ing := corev1.LoadBalancerIngress{IP: externalIP(index*4+2+k, f)}
				if s.LBProxyMode {
					ing.IPMode = ptr.To(corev1.LoadBalancerIPModeProxy)
				} else {
					ing.IPMode = ptr.To(corev1.LoadBalancerIPModeVIP)
				}
				svc.Status.LoadBalancer.Ingress = append(svc.Status.LoadBalancer.Ingress, ing)
			}
		}
		if s.ExternalLocal {
			svc.Spec.HealthCheckNodePort = a.nextNodePort()
		}
		switch s.SourceRanges {
		case "in":
			svc.Spec.LoadBalancerSourceRanges = []string{InRange4, InRange6}
		case "other":
			svc.Spec.LoadBalancerSourceRanges = []string{"198.51.100.100/32", "2001:db8:1::100/128"}
		}
	}
	if s.Type != corev1.ServiceTypeClusterIP || (s.ExternalLocal && len(svc.Spec.ExternalIPs) > 0) {
		svc.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyCluster
		if s.ExternalLocal {
			svc.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
		}
	}
	if s.InternalLocal {
		svc.Spec.InternalTrafficPolicy = ptr.To(corev1.ServiceInternalTrafficPolicyLocal)
	}
	if s.AffinitySeconds > 0 {
		svc.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
		svc.Spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: ptr.To(s.AffinitySeconds)}}
	}
	if s.TrafficDistribution != "" {
		svc.Spec.TrafficDistribution = ptr.To(s.TrafficDistribution)
	}
	if s.TopologyAnnotation {
		if svc.Annotations == nil {
			svc.Annotations = map[string]string{}
		}
		svc.Annotations["service.kubernetes.io/topology-mode"] = "Auto"
	}
	return svc, w.buildSlices(svc, s.Endpoints)
}

func familyOf(ip string) corev1.IPFamily {
	if strings.Contains(ip, ":") {
		return corev1.IPv6Protocol
	}
	return corev1.IPv4Protocol
}

func familiesOf(svc *corev1.Service) []string {
	var out []string
	for _, ip := range svc.Spec.ClusterIPs {
		if strings.Contains(ip, ":") {
			out = append(out, "6")
		} else {
			out = append(out, "4")
		}
	}
	return out
}

// buildSlices makes one EndpointSlice per family of the Service, as the
// EndpointSlice controller would, with the service's ports' target ports.
func (w *World) buildSlices(svc *corev1.Service, eps []EndpointSpec) []*discoveryv1.EndpointSlice {
	var out []*discoveryv1.EndpointSlice
	for _, f := range familiesOf(svc) {
		at := discoveryv1.AddressTypeIPv4
		if f == "6" {
			at = discoveryv1.AddressTypeIPv6
		}
		slice := &discoveryv1.EndpointSlice{
			ObjectMeta: metav1.ObjectMeta{Namespace: svc.Namespace, Name: svc.Name + "-ipv" + f,
				Labels: map[string]string{discoveryv1.LabelServiceName: svc.Name, discoveryv1.LabelManagedBy: "conformance"}},
			AddressType: at,
		}
		for _, p := range svc.Spec.Ports {
			slice.Ports = append(slice.Ports, discoveryv1.EndpointPort{Name: ptr.To(p.Name), Protocol: ptr.To(p.Protocol), Port: ptr.To(p.TargetPort.IntVal)})
		}
		for _, e := range eps {
			slice.Endpoints = append(slice.Endpoints, w.endpoint(e, f))
		}
		out = append(out, slice)
	}
	return out
}

func (w *World) endpoint(e EndpointSpec, family string) discoveryv1.Endpoint {
	var ip, node string
	if strings.HasPrefix(e.Target, "node-") {
		for _, n := range w.Nodes {
			if n.Name == e.Target {
				ip, node = n.IP4, n.Name
				if family == "6" {
					ip = n.IP6
				}
			}
		}
	} else {
		p := w.Pod(e.Target)
		ip, node = p.IP4, p.Node.Name
		if family == "6" {
			ip = p.IP6
		}
	}
	ep := discoveryv1.Endpoint{
		Addresses: []string{ip},
		Conditions: discoveryv1.EndpointConditions{
			Ready: ptr.To(!e.NotReady), Serving: ptr.To(!e.NotServing), Terminating: ptr.To(e.Terminating),
		},
	}
	if !e.NoNodeName {
		ep.NodeName = ptr.To(node)
		ep.Zone = ptr.To(Zone(int(node[len(node)-1] - '0')))
	}
	if e.ZoneHints != nil || e.NodeHints != nil {
		ep.Hints = &discoveryv1.EndpointHints{}
		for _, z := range e.ZoneHints {
			ep.Hints.ForZones = append(ep.Hints.ForZones, discoveryv1.ForZone{Name: z})
		}
		for _, n := range e.NodeHints {
			ep.Hints.ForNodes = append(ep.Hints.ForNodes, discoveryv1.ForNode{Name: n})
		}
	}
	return ep
}
