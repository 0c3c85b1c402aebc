package conformance

import (
	"net"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"kpo.dev/kpo/hack/netns"
	"kpo.dev/kpo/test/testnet"
)

// vantage is where a probe starts.
type vantage struct {
	name       string
	ns         *netns.NS
	kind       string // pod, node, client
	isEndpoint bool
}

// probesFor derives every probe of a case from its objects: each address of
// each service port, from pods (endpoints and others, on both nodes), node
// hosts and external clients.
func (w *World) probesFor(c *Case, step string) []Probe {
	var out []Probe
	for _, svc := range c.Services {
		if svc.Spec.ClusterIP == "" || svc.Spec.ClusterIP == corev1.ClusterIPNone {
			continue
		}
		all := w.vantages(c, svc)
		for _, port := range svc.Spec.Ports {
			for _, cip := range svc.Spec.ClusterIPs {
				out = append(out, w.portProbes(c, svc, port, cip, all, step)...)
			}
		}
		if hc := svc.Spec.HealthCheckNodePort; hc != 0 {
			for _, node := range w.Nodes {
				for _, ip := range []string{node.IP4, node.IP6} {
					out = append(out, Probe{Case: c.Name, Service: svc.Name, Target: "healthCheckNodePort@" + node.Name,
						Network: "http", Addr: net.JoinHostPort(ip, strconv.Itoa(int(hc))), Path: "/",
						From: w.Clients[0].Name, ns: w.Clients[0].NS, Step: step})
				}
			}
		}
	}
	return out
}

func (w *World) portProbes(c *Case, svc *corev1.Service, port corev1.ServicePort, cip string, all []vantage, step string) []Probe {
	v6 := strings.Contains(cip, ":")
	network := strings.ToLower(string(port.Protocol))
	if network != "tcp" && network != "udp" {
		return nil // SCTP: no client here
	}
	base := Probe{Case: c.Name, Service: svc.Name, Port: port.Name, Network: network, Step: step,
		Sticky: svc.Spec.SessionAffinity == corev1.ServiceAffinityClientIP}
	var out []Probe
	add := func(target, host string, p int32, from []vantage) {
		for _, v := range from {
			pr := base
			pr.Target, pr.Addr, pr.From, pr.ns = target, net.JoinHostPort(host, strconv.Itoa(int(p))), v.name, v.ns
			pr.FromEndpoint = v.isEndpoint
			out = append(out, pr)
		}
	}
	add("clusterIP", cip, port.Port, all)
	add("clusterIP wrong port", cip, wrongPort(svc, port.Port), pick(all, "pod", "node", "client"))
	for _, ip := range sameFamily(svc.Spec.ExternalIPs, v6) {
		add("externalIP", ip, port.Port, all)
		add("externalIP wrong port", ip, wrongPort(svc, port.Port), pick(all, "pod", "client"))
	}
	for _, ing := range svc.Status.LoadBalancer.Ingress {
		if ing.IP != "" && strings.Contains(ing.IP, ":") == v6 {
			add("loadBalancerIP", ing.IP, port.Port, all)
		}
	}
	if port.NodePort != 0 {
		for _, node := range w.Nodes {
			ip := node.IP4
			if v6 {
				ip = node.IP6
			}
			add("nodePort@"+node.Name, ip, port.NodePort, all)
			// The node's address on its pod links: a local address, not its primary one.
			gw4, gw6 := netns.PodGateways(node.Index)
			gw := gw4
			if v6 {
				gw = gw6
			}
			add("nodePort@"+node.Name+"(pod-gw)", gw, port.NodePort, pick(all, "pod", "node"))
		}
		lo := "127.0.0.1"
		if v6 {
			lo = "::1"
		}
		add("nodePort@localhost", lo, port.NodePort, filter(all, "node"))
	}
	return out
}

// vantages are the pods (per node: one endpoint of the service and one other
// pod, when there are), the node hosts and the clients.
func (w *World) vantages(c *Case, svc *corev1.Service) []vantage {
	endpoints := map[string]bool{}
	for _, s := range c.Slices {
		if s.Labels["kubernetes.io/service-name"] != svc.Name {
			continue
		}
		for _, e := range s.Endpoints {
			endpoints[w.Name(e.Addresses[0])] = true
		}
	}
	var out []vantage
	for _, node := range w.Nodes {
		var ep, other *testnet.Pod
		for _, p := range node.Pods {
			if endpoints[p.Name] && ep == nil {
				ep = p
			}
			if !endpoints[p.Name] && other == nil {
				other = p
			}
		}
		for _, p := range []*testnet.Pod{ep, other} {
			if p != nil {
				out = append(out, vantage{name: p.Name, ns: p.NS, kind: "pod", isEndpoint: p == ep})
			}
		}
	}
	for _, node := range w.Nodes {
		out = append(out, vantage{name: node.Name, ns: node.NS, kind: "node", isEndpoint: endpoints[node.Name]})
	}
	for _, cl := range w.Clients {
		out = append(out, vantage{name: cl.Name, ns: cl.NS, kind: "client"})
	}
	return out
}

func filter(vs []vantage, kind string) []vantage {
	var out []vantage
	for _, v := range vs {
		if v.kind == kind {
			out = append(out, v)
		}
	}
	return out
}

// pick takes the first vantage point of each kind.
func pick(vs []vantage, kinds ...string) []vantage {
	var out []vantage
	for _, k := range kinds {
		if f := filter(vs, k); len(f) > 0 {
			out = append(out, f[0])
		}
	}
	return out
}

func sameFamily(ips []string, v6 bool) []string {
	var out []string
	for _, ip := range ips {
		if strings.Contains(ip, ":") == v6 {
			out = append(out, ip)
		}
	}
	return out
}

// wrongPort is a port the service does not serve.
func wrongPort(svc *corev1.Service, port int32) int32 {
	for p := port + 1; ; p++ {
		used := false
		for _, sp := range svc.Spec.Ports {
			used = used || sp.Port == p
		}
		if !used {
			return p
		}
	}
}

// Addresses no Service holds: inside the service CIDRs, and a free NodePort.
const (
	unallocated4 = "10.96.250.250"
	unallocated6 = "fd10:96::fafa"
	freeNodePort = 32700
)

// globalProbes are the probes about the node rather than a Service: addresses
// no Service holds, and the proxy's own health endpoints.
func (w *World) globalProbes() []Probe {
	var out []Probe
	client := w.Clients[0]
	for _, network := range []string{"tcp", "udp"} {
		for _, ip := range []string{unallocated4, unallocated6} {
			for _, from := range []vantage{{w.Pods[0].Name, w.Pods[0].NS, "pod", false}, {w.Nodes[0].Name, w.Nodes[0].NS, "node", false},
				{client.Name, client.NS, "client", false}} {
				out = append(out, Probe{Case: "node", Service: "-", Target: "unallocated service IP", Network: network,
					Addr: net.JoinHostPort(ip, "80"), From: from.name, ns: from.ns})
			}
		}
		for _, node := range w.Nodes {
			out = append(out, Probe{Case: "node", Service: "-", Target: "free nodePort@" + node.Name, Network: network,
				Addr: net.JoinHostPort(node.IP4, strconv.Itoa(freeNodePort)), From: client.Name, ns: client.NS})
		}
	}
	for _, node := range w.Nodes {
		for _, path := range []string{"/healthz", "/livez"} {
			out = append(out, Probe{Case: "node", Service: "-", Target: "health@" + node.Name, Network: "http",
				Addr: net.JoinHostPort(node.IP4, "10256"), Path: path, From: client.Name, ns: client.NS})
		}
	}
	return out
}
