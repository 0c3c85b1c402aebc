// Package model is the node-local, backend-neutral view of the Services a node
// must proxy. Everything that depends on Kubernetes semantics — traffic
// policies, topology, terminating fallback, which VIPs apply — is resolved here,
// once, by pure functions; backends (iptables, nftables, ipvs) only render a
// Snapshot into kernel objects.
package model

import (
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// Family is an IP family. Backends keep one table (or rule set) per family.
type Family int

const (
	IPv4 Family = 4
	IPv6 Family = 6
)

func (f Family) String() string {
	if f == IPv6 {
		return "IPv6"
	}
	return "IPv4"
}

// FamilyOf returns the family of an address.
func FamilyOf(a netip.Addr) Family {
	if a.Is4() || a.Is4In6() {
		return IPv4
	}
	return IPv6
}

// ServicePortName names one port of one Service.
type ServicePortName struct {
	Namespace string
	Name      string
	Port      string // the port's name; "" for a single unnamed port
	Protocol  corev1.Protocol
}

func (n ServicePortName) String() string {
	return fmt.Sprintf("%s/%s:%s/%s", n.Namespace, n.Name, n.Port, n.Protocol)
}

// ServicePortKey identifies a ServicePort in a Snapshot: a dual-stack Service
// port is two ServicePorts, one per family.
type ServicePortKey struct {
	ServicePortName
	Family Family
}

func (k ServicePortKey) String() string {
	return fmt.Sprintf("%s/%s", k.ServicePortName, k.Family)
}

// Endpoint is one backend of a service port.
type Endpoint struct {
	IP   netip.Addr
	Port int32
	// Local is true when the endpoint runs on this node.
	Local bool
	// Unplaced: the EndpointSlice names no node, so the endpoint may run on
	// this one although it is not Local (iptables masquerades its hairpin
	// traffic, as kube-proxy's iptables mode does for every endpoint).
	Unplaced bool
	// Ready is false for a serving-but-terminating endpoint used as a fallback.
	Ready bool
}

func (e Endpoint) String() string {
	return netip.AddrPortFrom(e.IP, uint16(e.Port)).String()
}

// AddrPort is the endpoint's address and port.
func (e Endpoint) AddrPort() netip.AddrPort { return netip.AddrPortFrom(e.IP, uint16(e.Port)) }

// ServicePort is one port of one Service in one IP family, with its traffic
// policies already resolved into endpoint lists for this node.
//
// A ServicePort in a Snapshot is immutable: the builder makes a new one when
// anything about it changes and reuses the pointer otherwise, so that backends
// find what changed since their last sync by comparing pointers.
type ServicePort struct {
	Key      ServicePortKey
	Protocol corev1.Protocol

	// ClusterIP and Port: the Service's virtual address in this family.
	ClusterIP netip.Addr
	Port      int32
	// NodePort is 0 when the Service has none.
	NodePort int32
	// ExternalIPs are spec.externalIPs of this family.
	ExternalIPs []netip.Addr
	// LoadBalancerIPs are status.loadBalancer.ingress IPs of this family whose
	// ipMode is VIP (ipMode Proxy means the load balancer proxies: no rules here).
	LoadBalancerIPs []netip.Addr
	// SourceRanges restrict who may reach the LoadBalancerIPs (empty: anyone).
	SourceRanges []netip.Prefix

	// AffinityTimeout is the ClientIP session affinity timeout; 0 means no affinity.
	AffinityTimeout time.Duration

	// ExternalPolicyLocal: externalTrafficPolicy Local. External traffic (NodePort,
	// external and load-balancer IPs, from outside the node) goes only to
	// ExternalEndpoints, and keeps its source address.
	ExternalPolicyLocal bool
	// InternalPolicyLocal: internalTrafficPolicy Local. ClusterEndpoints are local ones.
	InternalPolicyLocal bool
	// HealthCheckNodePort serves the count of local endpoints for load balancers
	// (externalTrafficPolicy Local only); 0 when none.
	HealthCheckNodePort int32

	// ClusterEndpoints serve traffic to the ClusterIP, and external traffic when
	// the external policy is Cluster. Empty means "reject".
	ClusterEndpoints []Endpoint
	// ExternalEndpoints serve external traffic; with the Local policy these are
	// the local endpoints only. Empty means "drop" (Local) or "reject" (Cluster).
	ExternalEndpoints []Endpoint
	// ShortCircuitEndpoints, with the external policy Local only, serve external
	// traffic from this node's pods (source kept) and from the node itself
	// (masqueraded): every usable endpoint, as if the traffic had gone out to
	// the load balancer and come back (kube-proxy's short-circuit, which uses
	// its cluster endpoints whatever the internal policy).
	ShortCircuitEndpoints []Endpoint
	// OtherServing are the serving endpoints in none of the sets above (kept
	// out by a policy or topology, or terminating while others are ready):
	// their UDP flows are not stale (ServingEndpoints).
	OtherServing []Endpoint
	// HasEndpoints: some endpoint, on any node, is usable. Traffic that finds
	// its endpoint set empty is refused when there is none at all, and dropped
	// when a policy Local leaves this node without one (EmptyVerdict).
	HasEndpoints bool
	// LocalEndpointCount is what the healthCheckNodePort server reports.
	LocalEndpointCount int
	// Selection says why the endpoint sets are what they are (topology,
	// terminating fallback); for explanations only.
	Selection Selection
}

// ServingEndpoints are every serving endpoint of the port, whatever the
// policies: a UDP flow to one of them is not stale (kube-proxy's conntrack
// reconcile).
func (sp *ServicePort) ServingEndpoints() []Endpoint {
	seen := map[netip.AddrPort]bool{}
	var out []Endpoint
	for _, eps := range [][]Endpoint{sp.ClusterEndpoints, sp.ExternalEndpoints, sp.ShortCircuitEndpoints, sp.OtherServing} {
		for _, e := range eps {
			if !seen[e.AddrPort()] {
				seen[e.AddrPort()] = true
				out = append(out, e)
			}
		}
	}
	return out
}

// Verdict is what happens to traffic with no endpoint to go to.
type Verdict int

const (
	// Reject refuses (TCP reset, ICMP port unreachable): the service has no
	// usable endpoint at all.
	Reject Verdict = iota
	// Drop: a traffic policy Local and no endpoint on this node, while other
	// nodes have some. A refusal would reset the connections of clients that
	// a load balancer's health check is about to steer elsewhere.
	Drop
)

func (v Verdict) String() string {
	if v == Drop {
		return "drop"
	}
	return "reject"
}

// EmptyVerdict is the verdict for traffic whose endpoint set is empty, as
// kube-proxy decides it (pkg/proxy/nftables/proxier.go: reject with no
// endpoints at all, else drop).
func (sp *ServicePort) EmptyVerdict() Verdict {
	if sp.HasEndpoints {
		return Drop
	}
	return Reject
}

// HasExternal reports whether the port accepts traffic other than to its ClusterIP.
func (sp *ServicePort) HasExternal() bool {
	return sp.NodePort != 0 || len(sp.ExternalIPs) > 0 || len(sp.LoadBalancerIPs) > 0
}

// Without is a copy of sp without some of its external destinations (the ones
// another Service won; see package arbiter): the listed external and
// load-balancer IPs, and its NodePort if nodePort is set. What depends on
// having external destinations at all follows, as BuildServicePorts would
// have resolved it.
func (sp *ServicePort) Without(externalIPs, loadBalancerIPs []netip.Addr, nodePort bool) *ServicePort {
	c := *sp
	keep := func(from, drop []netip.Addr) []netip.Addr {
		var out []netip.Addr
		for _, a := range from {
			if !slices.Contains(drop, a) {
				out = append(out, a)
			}
		}
		return out
	}
	c.ExternalIPs = keep(sp.ExternalIPs, externalIPs)
	c.LoadBalancerIPs = keep(sp.LoadBalancerIPs, loadBalancerIPs)
	if nodePort {
		c.NodePort = 0
	}
	if len(c.LoadBalancerIPs) == 0 {
		c.SourceRanges = nil
	}
	if !c.HasExternal() {
		c.ExternalPolicyLocal = false
		c.ExternalEndpoints = nil
		c.ShortCircuitEndpoints = nil
	}
	return &c
}

// Snapshot is everything a backend needs for one sync.
type Snapshot struct {
	// Services by key. Pointers are shared between consecutive snapshots when the
	// service port did not change (see ServicePort).
	Services map[ServicePortKey]*ServicePort
	Node     NodeInfo
}

// NodeInfo is what the backends need to know about this node.
type NodeInfo struct {
	Name string
	// NodePortIPs are the addresses that accept NodePort traffic, by family. Nil
	// for a family means "every local address" (the default of nodePortAddresses).
	NodePortIPs map[Family][]netip.Addr
	// ServiceCIDRs are the cluster's service ranges (ServiceCIDR objects) by
	// family: traffic to an address in them that no Service holds is dropped.
	ServiceCIDRs map[Family][]netip.Prefix
	// ClusterCIDRs and LocalInterface say which traffic comes from pods
	// (kube-proxy's detect-local): a source in ClusterCIDRs (the cluster's pod
	// networks, or this node's podCIDRs), or, when LocalInterface is set, a
	// packet arriving on that interface (a name prefix when
	// LocalInterfacePrefix). Pods reaching a ClusterIP keep their address, other
	// sources are masqueraded; pods short-circuit external traffic of services
	// with externalTrafficPolicy Local. Neither set: nothing is told apart.
	ClusterCIDRs         map[Family][]netip.Prefix
	LocalInterface       string
	LocalInterfacePrefix bool
}

// Equal reports whether two NodeInfos are the same: a sync after a change of
// the node's settings must be full.
func (n NodeInfo) Equal(o NodeInfo) bool { return reflect.DeepEqual(n, o) }

// HasLocalDetector reports whether pods' traffic can be told apart in family f.
func (n NodeInfo) HasLocalDetector(f Family) bool {
	return n.LocalInterface != "" || len(n.ClusterCIDRs[f]) > 0
}

// Counts is what a snapshot holds, for status and metrics.
type Counts struct {
	ServicePorts int
	Endpoints    int
}

// Count counts service ports and their (cluster) endpoints.
func (s *Snapshot) Count() Counts {
	c := Counts{ServicePorts: len(s.Services)}
	for _, sp := range s.Services {
		c.Endpoints += len(sp.ClusterEndpoints)
	}
	return c
}
