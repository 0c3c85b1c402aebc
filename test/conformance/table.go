package conformance

import (
	"net"
	"strconv"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/utils/ptr"
)

// Pods of the world: nXpY is pod Y on node X.
const (
	n1p0, n1p1, n1p2 = "n1p0", "n1p1", "n1p2"
	n2p0, n2p1, n2p2 = "n2p0", "n2p1", "n2p2"
)

func ready(targets ...string) []EndpointSpec {
	out := make([]EndpointSpec, len(targets))
	for i, t := range targets {
		out[i] = EndpointSpec{Target: t}
	}
	return out
}

var (
	tcp80  = PortSpec{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80}
	udp53  = PortSpec{Name: "dns", Protocol: corev1.ProtocolUDP, Port: 53, TargetPort: 8082}
	tcp443 = PortSpec{Name: "alt", Protocol: corev1.ProtocolTCP, Port: 443, TargetPort: 8081}
)

const (
	clusterIP    = corev1.ServiceTypeClusterIP
	nodePort     = corev1.ServiceTypeNodePort
	loadBalancer = corev1.ServiceTypeLoadBalancer
)

// table is the hand-written conformance table: one case per row of the
// feature table (README), each as Services and EndpointSlices. What the
// proxies must do is not written here: kube-proxy's answer is the reference.
func (w *World) table() []*Case {
	a := &allocator{}
	var cases []*Case
	add := func(name string, specs ...SvcSpec) *Case {
		c := w.Build(a, name, specs...)
		cases = append(cases, c)
		return c
	}
	add("clusterIP", SvcSpec{Name: "basic", Families: "46", Endpoints: ready(n1p0, n2p0)})
	add("clusterIP, IPv6 primary", SvcSpec{Name: "v6first", Families: "64", Endpoints: ready(n1p1, n2p1)})
	add("clusterIP, IPv6 only", SvcSpec{Name: "v6only", Families: "6", Endpoints: ready(n2p2)})
	add("no endpoints", SvcSpec{Name: "empty", Families: "46", Ports: []PortSpec{tcp80, udp53}})
	add("multi-port, multi-protocol", SvcSpec{Name: "multi", Families: "46", Ports: []PortSpec{tcp80, tcp443, udp53},
		Endpoints: ready(n1p1, n2p1)})
	add("hairpin", SvcSpec{Name: "hairpin", Endpoints: ready(n1p0)})
	add("hostNetwork endpoints", SvcSpec{Name: "hostnet", Type: nodePort, Families: "46", Endpoints: ready("node-1", "node-2")})
	add("service-proxy-name label: not ours", SvcSpec{Name: "other-proxy", Endpoints: ready(n1p0),
		Labels: map[string]string{"service.kubernetes.io/service-proxy-name": "other"}})

	add("NodePort", SvcSpec{Name: "np", Type: nodePort, Families: "46", Ports: []PortSpec{tcp80, udp53}, Endpoints: ready(n1p0, n2p0)})
	add("NodePort, eTP Local, endpoints on both nodes", SvcSpec{Name: "np-local", Type: nodePort, Families: "46", ExternalLocal: true,
		Endpoints: ready(n1p0, n2p0)})
	add("NodePort, eTP Local, endpoint on node-2 only", SvcSpec{Name: "np-local-n2", Type: nodePort, ExternalLocal: true,
		Ports: []PortSpec{tcp80, udp53}, Endpoints: ready(n2p1)})
	add("NodePort, eTP Local, no endpoints", SvcSpec{Name: "np-local-none", Type: nodePort, ExternalLocal: true})
	add("NodePort, iTP Local, endpoint on node-2 only", SvcSpec{Name: "np-itp", Type: nodePort, InternalLocal: true, Endpoints: ready(n2p0)})
	add("NodePort, eTP and iTP Local", SvcSpec{Name: "np-both-local", Type: nodePort, ExternalLocal: true, InternalLocal: true,
		Endpoints: ready(n1p1)})
	add("NodePort, affinity", SvcSpec{Name: "np-sticky", Type: nodePort, AffinitySeconds: 600, Endpoints: ready(n1p0, n1p1, n2p0)})

	add("LoadBalancer", SvcSpec{Name: "lb", Type: loadBalancer, Families: "46", ExternalIPs: 1, LBIPs: 1, Endpoints: ready(n1p0, n2p1)})
	add("LoadBalancer, eTP Local, endpoint on node-1", SvcSpec{Name: "lb-local", Type: loadBalancer, Families: "46", LBIPs: 1,
		ExternalLocal: true, Endpoints: ready(n1p2)})
	add("LoadBalancer, eTP Local, endpoint on node-2", SvcSpec{Name: "lb-local-n2", Type: loadBalancer, LBIPs: 1,
		ExternalLocal: true, Endpoints: ready(n2p2)})
	add("LoadBalancer, source ranges with clients", SvcSpec{Name: "lb-ranges", Type: loadBalancer, Families: "46", LBIPs: 1,
		SourceRanges: "in", Endpoints: ready(n2p0)})
	add("LoadBalancer, source ranges without clients", SvcSpec{Name: "lb-ranges-other", Type: loadBalancer, LBIPs: 1,
		SourceRanges: "other", Endpoints: ready(n1p0)})
	// Found by the generator (seed 14): no firewall drop without endpoints.
	add("LoadBalancer, source ranges, no endpoints", SvcSpec{Name: "lb-ranges-empty", Type: loadBalancer, LBIPs: 1,
		SourceRanges: "in", Ports: []PortSpec{tcp80, tcp443}})
	add("LoadBalancer, source ranges, eTP Local", SvcSpec{Name: "lb-ranges-local", Type: loadBalancer, LBIPs: 1,
		SourceRanges: "in", ExternalLocal: true, Endpoints: ready(n1p1)})
	add("LoadBalancer, ipMode Proxy", SvcSpec{Name: "lb-proxy", Type: loadBalancer, LBIPs: 1, LBProxyMode: true, Endpoints: ready(n1p0)})
	add("LoadBalancer without NodePorts", SvcSpec{Name: "lb-no-np", Type: loadBalancer, LBIPs: 1, NoLBNodePorts: true, Endpoints: ready(n2p0)})
	add("LoadBalancer, no endpoints", SvcSpec{Name: "lb-empty", Type: loadBalancer, LBIPs: 1, Ports: []PortSpec{tcp80, udp53}})
	add("LoadBalancer, eTP Local, no endpoints", SvcSpec{Name: "lb-local-empty", Type: loadBalancer, LBIPs: 1, ExternalLocal: true})

	add("externalIPs", SvcSpec{Name: "eip", Families: "46", ExternalIPs: 2, Ports: []PortSpec{tcp80, udp53}, Endpoints: ready(n1p2, n2p2)})
	add("externalIPs, eTP Local", SvcSpec{Name: "eip-local", ExternalIPs: 1, ExternalLocal: true, Endpoints: ready(n2p1)})

	add("iTP Local, endpoints on both nodes", SvcSpec{Name: "itp", Families: "46", InternalLocal: true, Endpoints: ready(n1p0, n2p0)})
	add("iTP Local, endpoint on node-2 only", SvcSpec{Name: "itp-n2", InternalLocal: true, Ports: []PortSpec{tcp80, udp53},
		Endpoints: ready(n2p1)})

	add("affinity", SvcSpec{Name: "sticky", Families: "46", AffinitySeconds: 600, Endpoints: ready(n1p0, n1p1, n2p0)})

	add("terminating: serving ones used when none is ready", SvcSpec{Name: "term", Type: nodePort, Endpoints: []EndpointSpec{
		{Target: n1p0, NotReady: true, Terminating: true}, {Target: n2p0, NotReady: true, NotServing: true, Terminating: true}}})
	add("terminating: ignored while some are ready", SvcSpec{Name: "term-mixed", Endpoints: []EndpointSpec{
		{Target: n1p0, NotReady: true, Terminating: true}, {Target: n2p0}}})
	add("terminating, eTP Local: local serving-terminating used", SvcSpec{Name: "term-local", Type: nodePort, ExternalLocal: true,
		Endpoints: []EndpointSpec{{Target: n1p1, NotReady: true, Terminating: true}, {Target: n2p1}}})
	add("not ready, not serving", SvcSpec{Name: "unready", Endpoints: []EndpointSpec{{Target: n1p0, NotReady: true, NotServing: true}}})
	add("endpoint without nodeName, eTP Local", SvcSpec{Name: "no-node", Type: nodePort, ExternalLocal: true,
		Endpoints: []EndpointSpec{{Target: n1p0, NoNodeName: true}, {Target: n2p0}}})

	zoneHinted := []EndpointSpec{{Target: n1p0, ZoneHints: []string{"zone-a"}}, {Target: n2p0, ZoneHints: []string{"zone-b"}}}
	add("trafficDistribution PreferClose with zone hints", SvcSpec{Name: "topo", TrafficDistribution: "PreferClose", Endpoints: zoneHinted})
	add("zone hints without trafficDistribution", SvcSpec{Name: "topo-hints-only", Endpoints: zoneHinted})
	add("topology annotation Auto with zone hints", SvcSpec{Name: "topo-auto", TopologyAnnotation: true, Endpoints: zoneHinted})
	add("zone hints, one endpoint without", SvcSpec{Name: "topo-partial", TrafficDistribution: "PreferClose",
		Endpoints: []EndpointSpec{{Target: n1p0, ZoneHints: []string{"zone-a"}}, {Target: n2p0}}})
	add("zone hints, none for node-1's zone", SvcSpec{Name: "topo-elsewhere", TrafficDistribution: "PreferClose",
		Endpoints: []EndpointSpec{{Target: n1p0, ZoneHints: []string{"zone-b"}}, {Target: n2p0, ZoneHints: []string{"zone-b"}}}})
	add("zone hints on a terminating endpoint", SvcSpec{Name: "topo-term", TrafficDistribution: "PreferClose",
		Endpoints: []EndpointSpec{{Target: n1p0, ZoneHints: []string{"zone-a"}}, {Target: n2p0, ZoneHints: []string{"zone-b"}},
			{Target: n1p1, NotReady: true, Terminating: true}}})
	add("PreferSameNode with node hints", SvcSpec{Name: "same-node", TrafficDistribution: "PreferSameNode", Endpoints: []EndpointSpec{
		{Target: n1p0, ZoneHints: []string{"zone-a"}, NodeHints: []string{"node-1"}},
		{Target: n2p0, ZoneHints: []string{"zone-b"}, NodeHints: []string{"node-2"}},
		{Target: n2p1, ZoneHints: []string{"zone-b"}, NodeHints: []string{"node-2"}}}})
	add("node hints without trafficDistribution", SvcSpec{Name: "node-hints-only", Endpoints: []EndpointSpec{
		{Target: n1p0, NodeHints: []string{"node-1"}}, {Target: n2p0, NodeHints: []string{"node-2"}}}})

	w.addSteps(a, add)
	return cases
}

// addSteps adds the cases whose objects change while the proxy runs.
func (w *World) addSteps(_ *allocator, add func(string, ...SvcSpec) *Case) {
	n2 := w.Nodes[1]
	udp := add("UDP endpoint replaced: the flow follows", SvcSpec{Name: "udp-stale", Ports: []PortSpec{udp53}, Endpoints: ready(n1p0)})
	udpNP := add("UDP NodePort endpoint replaced: the flow follows", SvcSpec{Name: "udp-np-stale", Type: nodePort,
		Ports: []PortSpec{udp53}, Endpoints: ready(n1p0)})
	for _, c := range []*Case{udp, udpNP} {
		c.Steps = append(c.Steps, Step{Name: "endpoint replaced", Change: func(c *Case) { setEndpoints(w, c, ready(n1p1)) }})
	}
	// A flow from a fixed source port, before and after: its conntrack entry
	// must not keep it on the old endpoint.
	fixed := func(c *Case, step, addr, from string) Probe {
		p := Probe{Case: c.Name, Service: c.Services[0].Name, Port: "dns", Target: "fixed-source flow", Network: "udp",
			Addr: addr, Step: step}
		switch from {
		case "pod":
			pod := w.Pod(n2p1)
			p.From, p.ns, p.LocalAddr = pod.Name, pod.NS, net.JoinHostPort(pod.IP4, "5353")
		default:
			cl := w.Clients[0]
			p.From, p.ns, p.LocalAddr = cl.Name, cl.NS, net.JoinHostPort(cl.IP4, "5354")
		}
		return p
	}
	udpAddr := func(c *Case) string { return net.JoinHostPort(c.Services[0].Spec.ClusterIP, "53") }
	udpNPAddr := func(c *Case) string {
		return net.JoinHostPort(n2.IP4, strconv.Itoa(int(c.Services[0].Spec.Ports[0].NodePort)))
	}
	udp.Steps = append([]Step{{Name: "flow started", Change: func(*Case) {}}}, udp.Steps...)
	udpNP.Steps = append([]Step{{Name: "flow started", Change: func(*Case) {}}}, udpNP.Steps...)
	udp.lateProbes = func(c *Case, step string) []Probe { return []Probe{fixed(c, step, udpAddr(c), "pod")} }
	udpNP.lateProbes = func(c *Case, step string) []Probe { return []Probe{fixed(c, step, udpNPAddr(c), "client")} }

	churn := add("endpoints added and removed", SvcSpec{Name: "churn", Type: nodePort, Families: "46", Ports: []PortSpec{tcp80, udp53}})
	churn.Steps = []Step{
		{Name: "first endpoint", Change: func(c *Case) { setEndpoints(w, c, ready(n2p0)) }},
		{Name: "second endpoint", Change: func(c *Case) { setEndpoints(w, c, ready(n2p0, n1p2)) }},
		{Name: "only terminating", Change: func(c *Case) {
			setEndpoints(w, c, []EndpointSpec{{Target: n2p0, NotReady: true, Terminating: true}, {Target: n1p2, NotReady: true, Terminating: true}})
		}},
		{Name: "all removed", Change: func(c *Case) { setEndpoints(w, c, nil) }},
	}
	lb := add("LoadBalancer ingress IP appears", SvcSpec{Name: "lb-late", Type: loadBalancer, Endpoints: ready(n1p0)})
	lb.Steps = []Step{{Name: "ingress assigned", Change: func(c *Case) {
		c.Services[0].Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: "203.0.113.250", IPMode: ptr.To(corev1.LoadBalancerIPModeVIP)}}
	}}}
}

// setEndpoints replaces a case's (single) Service's endpoints.
func setEndpoints(w *World, c *Case, eps []EndpointSpec) {
	fresh := w.buildSlices(c.Services[0], eps)
	byName := map[string]*discoveryv1.EndpointSlice{}
	for _, s := range fresh {
		byName[s.Name] = s
	}
	for i, s := range c.Slices {
		if f, ok := byName[s.Name]; ok {
			c.Slices[i] = f
		}
	}
}
