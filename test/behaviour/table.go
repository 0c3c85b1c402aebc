package behaviour

import (
	corev1 "k8s.io/api/core/v1"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
)

// Addresses of node-1 at every level (the address plan of
// shared/ARCHITECTURE.md): NodePorts are probed there.
const (
	node4 = "198.51.100.1"
	node6 = "[2001:db8:1::1]"
)

func tcp(from Role, to string, want Outcome) Probe { return Probe{From: from, To: to, Want: want} }

func udp(from Role, to string, want Outcome) Probe {
	return Probe{From: from, Proto: "udp", To: to, Want: want}
}

// except returns p with the outcome of mode replaced.
func except(p Probe, mode kpov1.Mode, o Outcome) Probe {
	m := map[kpov1.Mode]Outcome{mode: o}
	for k, v := range p.Except {
		m[k] = v
	}
	p.Except = m
	return p
}

// Table is the behaviour table.
func Table() []Case {
	return append(clusterCases(), append(externalCases(), stepCases()...)...)
}

// clusterCases are the cases of traffic to ClusterIPs.
func clusterCases() []Case {
	return []Case{{
		Name:     "ClusterIP, dual-stack",
		Services: []Service{{Name: "web", ClusterIPs: []string{"10.96.1.1", "fd10:96::101"}, Endpoints: ready(PodA, Remote)}},
		Probes: []Probe{
			tcp(ClientPod, "10.96.1.1:80", ServedBy(Kept, PodA, Remote)),
			tcp(Node, "10.96.1.1:80", ServedBy(AnySource, PodA, Remote)),
			tcp(Client, "10.96.1.1:80", ServedBy(Masqueraded, PodA, Remote)),
			// An endpoint reaching its own Service: only the connections
			// that come back to it are masqueraded.
			tcp(PodA, "10.96.1.1:80", ServedBy(Kept, PodA, Remote)),
			tcp(ClientPod, "[fd10:96::101]:80", ServedBy(Kept, PodA, Remote)),
			tcp(Node, "[fd10:96::101]:80", ServedBy(AnySource, PodA, Remote)),
			// A port the ClusterIP does not serve: refused, as kube-proxy
			// v1.37's nftables mode does (cluster-ips-check) and its IPVS
			// mode (the ClusterIP is a local address, KUBE-IPVS-FILTER
			// rejects); its iptables mode has no such rule, the packet
			// goes on untranslated.
			except(tcp(ClientPod, "10.96.1.1:81", refused), kpov1.ModeIPTables, dropped),
			except(tcp(PodA, "[fd10:96::101]:81", refused), kpov1.ModeIPTables, dropped),
		},
	}, {
		Name: "no endpoints: refused",
		Services: []Service{
			{Name: "empty", Type: corev1.ServiceTypeNodePort, ClusterIPs: []string{"10.96.1.2"}, NodePort: 30102},
			{Name: "empty-udp", ClusterIPs: []string{"10.96.1.3"}, UDP: true},
		},
		Probes: []Probe{
			tcp(ClientPod, "10.96.1.2:80", refused),
			tcp(Node, "10.96.1.2:80", refused),
			tcp(Client, "10.96.1.2:80", refused),
			tcp(Client, node4+":30102", refused),
			tcp(Node, node4+":30102", refused),
			udp(ClientPod, "10.96.1.3:53", refused),
		},
	}, {
		Name: "internalTrafficPolicy Local",
		Services: []Service{
			{Name: "itp", ClusterIPs: []string{"10.96.1.4"}, InternalLocal: true, Endpoints: ready(PodA, Remote)},
			{Name: "itp-remote", ClusterIPs: []string{"10.96.1.5"}, InternalLocal: true, Endpoints: ready(Remote)},
		},
		Probes: []Probe{
			tcp(ClientPod, "10.96.1.4:80", ServedBy(Kept, PodA)),
			tcp(Node, "10.96.1.4:80", ServedBy(AnySource, PodA)),
			// Endpoints elsewhere only: dropped, not refused (kube-proxy:
			// reject only when the service has no endpoint at all).
			tcp(ClientPod, "10.96.1.5:80", dropped),
		},
	}, {
		Name:     "ClientIP affinity",
		Services: []Service{{Name: "sticky", ClusterIPs: []string{"10.96.1.6"}, Affinity: true, Endpoints: ready(PodA, PodB, Remote)}},
		Probes: []Probe{
			tcp(ClientPod, "10.96.1.6:80", StickyTo(Kept, PodA, PodB, Remote)),
			tcp(Node, "10.96.1.6:80", StickyTo(AnySource, PodA, PodB, Remote)),
			tcp(Client, "10.96.1.6:80", StickyTo(Masqueraded, PodA, PodB, Remote)),
		},
	}, {
		Name:     "hairpin: a pod reaches itself through its Service",
		Services: []Service{{Name: "self", ClusterIPs: []string{"10.96.1.7"}, Endpoints: ready(PodA)}},
		Probes: []Probe{
			tcp(PodA, "10.96.1.7:80", ServedBy(Kept, PodA)),
			tcp(PodB, "10.96.1.7:80", ServedBy(Kept, PodA)),
		},
	}, {
		Name: "UDP",
		Services: []Service{{Name: "dns", Type: corev1.ServiceTypeNodePort, ClusterIPs: []string{"10.96.1.8"}, UDP: true,
			NodePort: 30108, Endpoints: ready(PodA, Remote)}},
		Probes: []Probe{
			udp(ClientPod, "10.96.1.8:53", ServedBy(Kept, PodA, Remote)),
			udp(Client, node4+":30108", ServedBy(Masqueraded, PodA, Remote)),
		},
	}, {
		Name: "terminating endpoints",
		Services: []Service{
			{Name: "term", ClusterIPs: []string{"10.96.1.9"}, Endpoints: []Endpoint{{Pod: PodA, Terminating: true}}},
			{Name: "term-mixed", ClusterIPs: []string{"10.96.1.10"}, Endpoints: []Endpoint{{Pod: PodA}, {Pod: PodB, Terminating: true}}},
			{Name: "unserving", ClusterIPs: []string{"10.96.1.11"}, Endpoints: []Endpoint{{Pod: PodA, NotServing: true}}},
		},
		Probes: []Probe{
			// Serving-terminating endpoints serve when none is ready.
			tcp(ClientPod, "10.96.1.9:80", ServedBy(Kept, PodA)),
			// Ignored while some are ready.
			tcp(ClientPod, "10.96.1.10:80", ServedBy(Kept, PodA)),
			tcp(ClientPod, "10.96.1.11:80", refused),
		},
	}}
}

// externalCases are the cases of NodePorts, external and load-balancer IPs.
func externalCases() []Case {
	return []Case{{
		Name: "NodePort, dual-stack",
		Services: []Service{{Name: "np", Type: corev1.ServiceTypeNodePort, ClusterIPs: []string{"10.96.2.1", "fd10:96::201"},
			NodePort: 30201, Endpoints: ready(PodA, Remote)}},
		Probes: []Probe{
			tcp(Client, node4+":30201", ServedBy(Masqueraded, PodA, Remote)),
			tcp(Client, node6+":30201", ServedBy(Masqueraded, PodA, Remote)),
			tcp(Node, node4+":30201", ServedBy(AnySource, PodA, Remote)),
			tcp(ClientPod, node4+":30201", ServedBy(Masqueraded, PodA, Remote)),
		},
	}, {
		Name: "externalIPs and load-balancer IPs",
		Services: []Service{{Name: "lb", Type: corev1.ServiceTypeLoadBalancer, ClusterIPs: []string{"10.96.2.2"}, NodePort: 30202,
			ExternalIPs: []string{"203.0.113.2"}, Ingress: []string{"203.0.113.102"}, ProxyIngress: []string{"203.0.113.202"},
			Endpoints: ready(PodA, Remote)}},
		Probes: []Probe{
			tcp(Client, "203.0.113.2:80", ServedBy(Masqueraded, PodA, Remote)),
			tcp(Client, "203.0.113.102:80", ServedBy(Masqueraded, PodA, Remote)),
			tcp(ClientPod, "203.0.113.102:80", ServedBy(Masqueraded, PodA, Remote)),
			// ipMode Proxy: the load balancer proxies, nothing is captured.
			tcp(Client, "203.0.113.202:80", dropped),
		},
	}, {
		Name: "IPv6 external IP, IPv6 without endpoints",
		Services: []Service{
			{Name: "ext6", ClusterIPs: []string{"10.96.2.6", "fd10:96::206"}, ExternalIPs: []string{"2001:db8:2::6"},
				Endpoints: ready(PodA, Remote)},
			{Name: "empty6", ClusterIPs: []string{"fd10:96::207"}},
		},
		Probes: []Probe{
			tcp(Client, "[2001:db8:2::6]:80", ServedBy(Masqueraded, PodA, Remote)),
			tcp(ClientPod, "[fd10:96::207]:80", refused),
		},
	}, {
		Name: "externalTrafficPolicy Local",
		Services: []Service{
			{Name: "local", Type: corev1.ServiceTypeLoadBalancer, ClusterIPs: []string{"10.96.2.3"}, NodePort: 30203,
				ExternalIPs: []string{"203.0.113.3"}, Ingress: []string{"203.0.113.103"}, ExternalLocal: true,
				Endpoints: ready(PodA, Remote)},
			{Name: "local-none", Type: corev1.ServiceTypeNodePort, ClusterIPs: []string{"10.96.2.4"}, NodePort: 30204,
				ExternalLocal: true, Endpoints: ready(Remote)},
		},
		Probes: localPolicyProbes(),
	}, {
		Name:     "load-balancer source ranges",
		Services: []Service{fenced([]string{"198.51.100.200/32"})},
		Probes: []Probe{
			tcp(Client, "203.0.113.105:80", ServedBy(Masqueraded, PodA, Remote)),
			// Dropped, not refused: a source outside the ranges learns nothing.
			tcp(OtherClient, "203.0.113.105:80", dropped),
			// The ranges fence the load-balancer IP only.
			tcp(OtherClient, node4+":30205", ServedBy(Masqueraded, PodA, Remote)),
		},
		Steps: []Step{{
			Name:     "ranges removed",
			Services: []Service{fenced(nil)},
			Probes:   []Probe{tcp(OtherClient, "203.0.113.105:80", ServedBy(Masqueraded, PodA, Remote))},
		}},
	}}
}

// fenced is the load balancer of the source-ranges case.
func fenced(ranges []string) Service {
	return Service{Name: "fenced", Type: corev1.ServiceTypeLoadBalancer, ClusterIPs: []string{"10.96.2.5"}, NodePort: 30205,
		Ingress: []string{"203.0.113.105"}, SourceRanges: ranges, Endpoints: ready(PodA, Remote)}
}

// localPolicyProbes: traffic from outside goes to the node's own endpoints
// and keeps its source, or is dropped when there is none; the node's pods
// and the node itself short-circuit to every endpoint, as if the traffic
// had gone out to the load balancer and back (kube-proxy's nftables and
// iptables modes). kube-proxy's IPVS mode has one set of destinations per
// virtual server: the node and its pods get the local endpoints as well
// (pkg/proxy/ipvs/proxier.go; model.DialectIPVS).
func localPolicyProbes() []Probe {
	ipvs := kpov1.ModeIPVS
	return []Probe{
		tcp(Client, node4+":30203", ServedBy(Kept, PodA)),
		tcp(Client, "203.0.113.3:80", ServedBy(Kept, PodA)),
		tcp(Client, "203.0.113.103:80", ServedBy(Kept, PodA)),
		except(tcp(ClientPod, "203.0.113.103:80", ServedBy(Kept, PodA, Remote)), ipvs, ServedBy(Kept, PodA)),
		except(tcp(Node, node4+":30203", ServedBy(AnySource, PodA, Remote)), ipvs, ServedBy(AnySource, PodA)),
		tcp(ClientPod, "10.96.2.3:80", ServedBy(Kept, PodA, Remote)),
		tcp(Client, node4+":30204", dropped),
		tcp(ClientPod, "10.96.2.4:80", ServedBy(Kept, Remote)),
	}
}

// stepCases are the cases whose Services change while the proxy runs: at
// the backend levels, each step is a partial sync.
func stepCases() []Case {
	churn := func(eps ...Endpoint) []Service {
		return []Service{{Name: "churn", Type: corev1.ServiceTypeNodePort, ClusterIPs: []string{"10.96.3.1"}, NodePort: 30301, Endpoints: eps}}
	}
	gone := []Service{{Name: "gone", ClusterIPs: []string{"10.96.3.2"}, Endpoints: ready(PodA)}}
	return []Case{{
		Name:     "endpoints come and go",
		Services: churn(),
		Probes:   []Probe{tcp(ClientPod, "10.96.3.1:80", refused)},
		Steps: []Step{{
			Name:     "endpoint added",
			Services: churn(ready(Remote)...),
			Probes: []Probe{
				tcp(ClientPod, "10.96.3.1:80", ServedBy(Kept, Remote)),
				tcp(Client, node4+":30301", ServedBy(Masqueraded, Remote)),
			},
		}, {
			Name:     "endpoint replaced",
			Services: churn(ready(PodB)...),
			Probes:   []Probe{tcp(ClientPod, "10.96.3.1:80", ServedBy(Kept, PodB))},
		}, {
			Name:     "only terminating",
			Services: churn(Endpoint{Pod: PodB, Terminating: true}),
			Probes:   []Probe{tcp(ClientPod, "10.96.3.1:80", ServedBy(Kept, PodB))},
		}, {
			Name:     "endpoint removed",
			Services: churn(),
			Probes: []Probe{
				tcp(ClientPod, "10.96.3.1:80", refused),
				tcp(Client, node4+":30301", refused),
			},
		}},
	}, {
		Name:     "Service deleted",
		Services: gone,
		Probes:   []Probe{tcp(ClientPod, "10.96.3.2:80", ServedBy(Kept, PodA))},
		Steps:    []Step{{Name: "deleted", Probes: []Probe{tcp(ClientPod, "10.96.3.2:80", dropped)}}},
	}}
}
