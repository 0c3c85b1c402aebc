package explain

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
)

// The world of these tests: node-1 (zone-a, 198.51.100.1) and node-2
// (zone-b); pods 10.244.1.x on node-1, 10.244.2.x on node-2.
const (
	node1IP  = "198.51.100.1"
	vip      = "10.96.0.10"
	lbIP     = "203.0.113.10"
	clientIP = "198.51.100.200"
)

type svcOpt func(*corev1.Service)

func service(opts ...svcOpt) *corev1.Service {
	s := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web"},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeClusterIP, ClusterIP: vip, ClusterIPs: []string{vip},
			Ports: []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP, TargetPort: intstr.FromInt32(8080)}}},
	}
	for _, o := range opts {
		o(s)
	}
	return s
}

func nodePort(local bool) svcOpt {
	return func(s *corev1.Service) {
		s.Spec.Type = corev1.ServiceTypeNodePort
		s.Spec.Ports[0].NodePort = 30080
		if local {
			s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
		}
	}
}

func loadBalancer(ranges ...string) svcOpt {
	return func(s *corev1.Service) {
		nodePort(false)(s)
		s.Spec.Type = corev1.ServiceTypeLoadBalancer
		s.Spec.LoadBalancerSourceRanges = ranges
		s.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: lbIP}}
	}
}

// ep is an endpoint: address, node, and conditions.
type ep struct {
	ip, node                    string
	ready, serving, terminating bool
	zones, nodes                []string
}

func ready(ip, node string) ep { return ep{ip: ip, node: node, ready: true, serving: true} }

func slice(eps ...ep) *discoveryv1.EndpointSlice {
	s := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "ns", Name: "web-1", Labels: map[string]string{discoveryv1.LabelServiceName: "web"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](8080), Protocol: ptr.To(corev1.ProtocolTCP)}},
	}
	for _, e := range eps {
		x := discoveryv1.Endpoint{Addresses: []string{e.ip}, Conditions: discoveryv1.EndpointConditions{
			Ready: ptr.To(e.ready), Serving: ptr.To(e.serving), Terminating: ptr.To(e.terminating)}}
		if e.node != "" {
			x.NodeName = ptr.To(e.node)
		}
		if len(e.zones)+len(e.nodes) > 0 {
			x.Hints = &discoveryv1.EndpointHints{}
			for _, z := range e.zones {
				x.Hints.ForZones = append(x.Hints.ForZones, discoveryv1.ForZone{Name: z})
			}
			for _, n := range e.nodes {
				x.Hints.ForNodes = append(x.Hints.ForNodes, discoveryv1.ForNode{Name: n})
			}
		}
		s.Endpoints = append(s.Endpoints, x)
	}
	return s
}

func config(mode kpov1.Mode, f func(*kpov1.AgentConfiguration)) *kpov1.AgentConfiguration {
	c := &kpov1.AgentConfiguration{Mode: mode}
	c.ClusterCIDRs = []kpov1.CIDR{"10.244.0.0/16"}
	if f != nil {
		f(c)
	}
	c.Default()
	return c
}

func node1() *corev1.Node {
	return &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: "node-1", Labels: map[string]string{corev1.LabelTopologyZone: "zone-a"}},
		Status:     corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: node1IP}}},
	}
}

var (
	fromPod     = Source{Kind: FromPod, Name: "ns/client", IP: netip.MustParseAddr("10.244.1.50"), Node: "node-1"}
	fromNode    = Source{Kind: FromNode, Name: "node-1", IP: netip.MustParseAddr(node1IP), Node: "node-1"}
	fromOutside = Source{Kind: FromExternal, IP: netip.MustParseAddr(clientIP)}
)

func toClusterIP(s Source) Query {
	return Query{Target: ToClusterIP, Addr: netip.MustParseAddr(vip), Port: 80, Source: s}
}

func toNodePort(addr string, s Source) Query {
	return Query{Target: ToNodePort, Addr: netip.MustParseAddr(addr), Port: 30080, Source: s}
}

func toLB(s Source) Query {
	return Query{Target: ToLoadBalancerIP, Addr: netip.MustParseAddr(lbIP), Port: 80, Source: s}
}

func TestExplain(t *testing.T) {
	local1, local2 := ready("10.244.1.2", "node-1"), ready("10.244.2.2", "node-2")
	terminating := ep{ip: "10.244.2.3", node: "node-2", serving: true, terminating: true}
	notReady := ep{ip: "10.244.2.4", node: "node-2"}
	tests := []struct {
		name    string
		svc     *corev1.Service
		slice   *discoveryv1.EndpointSlice
		cfg     *kpov1.AgentConfiguration
		q       Query
		outcome Outcome
		masq    bool
		eps     []string // addresses used
		codes   []string // reasons that must be there
		// excluded: an excluded endpoint's why must contain this.
		excluded string
	}{
		{name: "ClusterIP from a pod keeps the source", svc: service(), slice: slice(local1, local2), q: toClusterIP(fromPod),
			outcome: Forwarded, eps: []string{"10.244.1.2:8080", "10.244.2.2:8080"}, codes: []string{ReasonDetectLocal, ReasonClusterIP, ReasonKeepSource}},
		{name: "ClusterIP from outside is masqueraded", svc: service(), slice: slice(local1), q: toClusterIP(fromOutside),
			outcome: Forwarded, masq: true, eps: []string{"10.244.1.2:8080"}, codes: []string{ReasonMasquerade}},
		{name: "masqueradeAll", svc: service(), slice: slice(local1), q: toClusterIP(fromPod),
			cfg:     config(kpov1.ModeNFTables, func(c *kpov1.AgentConfiguration) { c.MasqueradeAll = true }),
			outcome: Forwarded, masq: true, eps: []string{"10.244.1.2:8080"}, codes: []string{ReasonMasqueradeAll}},
		{name: "iTP Local without a local endpoint drops", svc: service(func(s *corev1.Service) {
			s.Spec.InternalTrafficPolicy = ptr.To(corev1.ServiceInternalTrafficPolicyLocal)
		}), slice: slice(local2), q: toClusterIP(fromPod),
			outcome: Dropped, codes: []string{ReasonInternalPolicyLocal, ReasonNoLocalEndpoints}, excluded: "on node node-2"},
		{name: "no endpoint ready refuses", svc: service(), slice: slice(notReady), q: toClusterIP(fromPod),
			outcome: Refused, codes: []string{ReasonNoEndpoints}, excluded: "not ready, not serving"},
		{name: "terminating fallback", svc: service(), slice: slice(terminating, notReady), q: toClusterIP(fromPod),
			outcome: Forwarded, eps: []string{"10.244.2.3:8080"}, codes: []string{ReasonTerminatingFallback}},
		{name: "terminating while others are ready", svc: service(), slice: slice(local1, terminating), q: toClusterIP(fromPod),
			outcome: Forwarded, eps: []string{"10.244.1.2:8080"}, excluded: "terminating: used only when no endpoint is ready"},
		{name: "zone hints", svc: service(), slice: slice(
			ep{ip: "10.244.1.2", node: "node-1", ready: true, serving: true, zones: []string{"zone-a"}},
			ep{ip: "10.244.2.2", node: "node-2", ready: true, serving: true, zones: []string{"zone-b"}}),
			q: toClusterIP(fromPod), outcome: Forwarded, eps: []string{"10.244.1.2:8080"}, codes: []string{ReasonTopologyZone},
			excluded: "hints.forZones [zone-b]"},
		{name: "node hints", svc: service(), slice: slice(
			ep{ip: "10.244.1.2", node: "node-1", ready: true, serving: true, nodes: []string{"node-1"}},
			ep{ip: "10.244.2.2", node: "node-2", ready: true, serving: true, nodes: []string{"node-2"}}),
			q: toClusterIP(fromPod), outcome: Forwarded, eps: []string{"10.244.1.2:8080"}, codes: []string{ReasonTopologyNode},
			excluded: "hints.forNodes [node-2]"},
		{name: "eTP Local NodePort without a local endpoint drops outside traffic", svc: service(nodePort(true)), slice: slice(local2),
			q: toNodePort(node1IP, fromOutside), outcome: Dropped, codes: []string{ReasonExternalLocal, ReasonNoLocalEndpoints}},
		{name: "eTP Local: a pod short-circuits, keeping its source", svc: service(nodePort(true)), slice: slice(local2),
			q: toNodePort(node1IP, fromPod), outcome: Forwarded, eps: []string{"10.244.2.2:8080"}, codes: []string{ReasonShortCircuit, ReasonKeepSource}},
		{name: "eTP Local: the node short-circuits, masqueraded", svc: service(nodePort(true)), slice: slice(local2),
			q: toNodePort(node1IP, fromNode), outcome: Forwarded, masq: true, eps: []string{"10.244.2.2:8080"}, codes: []string{ReasonShortCircuit, ReasonMasquerade}},
		{name: "eTP Local from outside keeps the source", svc: service(nodePort(true)), slice: slice(local1, local2),
			q: toNodePort(node1IP, fromOutside), outcome: Forwarded, eps: []string{"10.244.1.2:8080"}, codes: []string{ReasonExternalLocal, ReasonKeepSource}},
		{name: "eTP Cluster masquerades", svc: service(nodePort(false)), slice: slice(local2),
			q: toNodePort(node1IP, fromOutside), outcome: Forwarded, masq: true, eps: []string{"10.244.2.2:8080"}, codes: []string{ReasonExternalCluster, ReasonMasquerade}},
		{name: "NodePort on an address nodePortAddresses leaves out", svc: service(nodePort(false)), slice: slice(local1),
			q: toNodePort("10.244.1.1", fromPod), outcome: NotHandled, codes: []string{ReasonNodePortAddress}},
		{name: "NodePort on localhost in nftables mode", svc: service(nodePort(false)), slice: slice(local1),
			q: toNodePort("127.0.0.1", fromNode), outcome: NotHandled, codes: []string{ReasonLocalhostNodePort}},
		{name: "NodePort on localhost in iptables mode", svc: service(nodePort(false)), slice: slice(local1), cfg: config(kpov1.ModeIPTables, nil),
			q: toNodePort("127.0.0.1", fromNode), outcome: Forwarded, masq: true, eps: []string{"10.244.1.2:8080"}},
		{name: "iptables: a NodePort without endpoints is dropped on addresses it does not translate", svc: service(nodePort(true)), slice: slice(local2),
			cfg: config(kpov1.ModeIPTables, func(c *kpov1.AgentConfiguration) { c.IPTables.LocalhostNodePorts = ptr.To(false) }),
			q:   toNodePort("127.0.0.1", fromNode), outcome: Dropped, codes: []string{ReasonLocalhostNodePort, ReasonIPTablesNodePortFilter}},
		{name: "load-balancer source ranges keep a client out", svc: service(loadBalancer("198.51.100.201/32")), slice: slice(local1),
			q: toLB(fromOutside), outcome: Dropped, codes: []string{ReasonSourceRanges}},
		{name: "load-balancer source ranges let a client in", svc: service(loadBalancer("198.51.100.200/31")), slice: slice(local1),
			q: toLB(fromOutside), outcome: Forwarded, masq: true, eps: []string{"10.244.1.2:8080"}, codes: []string{ReasonSourceRanges}},
		{name: "iptables: the node's own traffic to an LB IP without endpoints is routed", svc: service(loadBalancer()), slice: slice(notReady),
			cfg: config(kpov1.ModeIPTables, nil), q: toLB(fromNode), outcome: NotHandled, codes: []string{ReasonNoEndpoints, ReasonIPTablesOutput}},
		{name: "ipMode Proxy is not translated", svc: service(loadBalancer(), func(s *corev1.Service) {
			s.Status.LoadBalancer.Ingress[0].IPMode = ptr.To(corev1.LoadBalancerIPModeProxy)
		}), slice: slice(local1), q: toLB(fromOutside), outcome: NotHandled, codes: []string{ReasonNotServed}},
		{name: "no detect-local: pods are not told apart", svc: service(nodePort(true)), slice: slice(local2),
			cfg: config(kpov1.ModeNFTables, func(c *kpov1.AgentConfiguration) { c.ClusterCIDRs = nil }),
			q:   toNodePort(node1IP, fromPod), outcome: Dropped, codes: []string{ReasonPodsUnknown, ReasonNoLocalEndpoints}},
		{name: "IPVS: one set for every source", svc: service(nodePort(true)), slice: slice(local1, local2), cfg: config(kpov1.ModeIPVS, nil),
			q: toNodePort(node1IP, fromPod), outcome: Forwarded, eps: []string{"10.244.1.2:8080"}, codes: []string{ReasonIPVSOneSet}},
		{name: "affinity", svc: service(func(s *corev1.Service) { s.Spec.SessionAffinity = corev1.ServiceAffinityClientIP }),
			slice: slice(local1), q: toClusterIP(fromPod), outcome: Forwarded, eps: []string{"10.244.1.2:8080"}, codes: []string{ReasonAffinity}},
		{name: "hairpin", svc: service(), slice: slice(ready("10.244.1.50", "node-1")), q: toClusterIP(fromPod),
			outcome: Forwarded, eps: []string{"10.244.1.50:8080"}, codes: []string{ReasonHairpin}},
		{name: "a rejected EndpointSlice is named", svc: service(), slice: func() *discoveryv1.EndpointSlice {
			s := slice(local1)
			s.Ports[0].Port = ptr.To[int32](70000)
			return s
		}(), q: toClusterIP(fromPod), outcome: Refused, codes: []string{ReasonRejected, ReasonNoEndpoints}},
	}
	seen := map[string]bool{}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := tc.cfg
			if cfg == nil {
				cfg = config(kpov1.ModeNFTables, nil)
			}
			objs := &Objects{Services: []*corev1.Service{tc.svc}, Slices: []*discoveryv1.EndpointSlice{tc.slice}}
			m := BuildNode(objs, NodeFacts{Node: node1(), Config: cfg})
			sp, err := m.Find("ns", "web", "http", ToClusterIP, tc.q.Addr)
			if err != nil {
				t.Fatal(err)
			}
			e := m.Explain(sp, tc.q)
			text := Text(&e, false)
			if e.Outcome != tc.outcome || e.Outcome == Forwarded && e.Masquerade != tc.masq {
				t.Errorf("outcome %s, masquerade %v; want %s, %v\n%s", e.Outcome, e.Masquerade, tc.outcome, tc.masq, text)
			}
			var got []string
			for _, x := range e.Endpoints {
				got = append(got, x.Address)
			}
			if !slices.Equal(got, tc.eps) {
				t.Errorf("endpoints %v, want %v\n%s", got, tc.eps, text)
			}
			for _, c := range tc.codes {
				if !slices.ContainsFunc(e.Reasons, func(r Reason) bool { return r.Code == c }) {
					t.Errorf("no reason %s\n%s", c, text)
				}
			}
			if tc.excluded != "" && !slices.ContainsFunc(e.Excluded, func(x Endpoint) bool { return strings.Contains(x.Why, tc.excluded) }) {
				t.Errorf("no excluded endpoint because %q\n%s", tc.excluded, text)
			}
			for _, r := range e.Reasons {
				seen[r.Code] = true
			}
		})
	}
	// Every reason the package can give is shown by some case.
	for _, c := range []string{ReasonNotServed, ReasonNodePortAddress, ReasonLocalhostNodePort, ReasonDetectLocal, ReasonSourceRanges,
		ReasonClusterIP, ReasonInternalPolicyLocal, ReasonExternalCluster, ReasonExternalLocal, ReasonShortCircuit, ReasonPodsUnknown,
		ReasonIPVSOneSet, ReasonTopologyNode, ReasonTopologyZone, ReasonTerminatingFallback, ReasonNoEndpoints, ReasonNoLocalEndpoints,
		ReasonIPTablesOutput, ReasonIPTablesNodePortFilter, ReasonMasqueradeAll, ReasonMasquerade, ReasonKeepSource, ReasonHairpin, ReasonAffinity, ReasonRejected} {
		if !seen[c] {
			t.Errorf("no case shows reason %s", c)
		}
	}
}

func TestHash(t *testing.T) {
	objs := &Objects{Services: []*corev1.Service{service()}, Slices: []*discoveryv1.EndpointSlice{slice(ready("10.244.1.2", "node-1"))}}
	cfg := config(kpov1.ModeNFTables, nil)
	a := BuildNode(objs, NodeFacts{Node: node1(), Config: cfg})
	b := BuildNode(objs, NodeFacts{Node: node1(), Config: cfg})
	if Hash(a.Snapshot) != Hash(b.Snapshot) || ServiceHash(a.Snapshot, "ns", "web") != ServiceHash(b.Snapshot, "ns", "web") {
		t.Fatal("the same objects give different hashes")
	}
	objs.Slices[0].Endpoints[0].Conditions.Ready = ptr.To(false)
	c := BuildNode(objs, NodeFacts{Node: node1(), Config: cfg})
	if Hash(a.Snapshot) == Hash(c.Snapshot) || ServiceHash(a.Snapshot, "ns", "web") == ServiceHash(c.Snapshot, "ns", "web") {
		t.Fatal("an endpoint that is no longer ready does not change the hash")
	}
	if ServiceHash(a.Snapshot, "ns", "other") != "" {
		t.Fatal("a Service the model lacks has a hash")
	}
}

// TestNodeOwnTrafficFromItsPodGateway: the node reaching its pod-gateway
// address's NodePort sends from that address, inside the cluster CIDR, and
// kube-proxy's pod check comes before its local-source check: the traffic
// counts as pods', short-circuited without masquerade (conformance random
// seeds 776 and 779, iptables).
func TestNodeOwnTrafficFromItsPodGateway(t *testing.T) {
	objs := &Objects{Services: []*corev1.Service{service(nodePort(true))}, Slices: []*discoveryv1.EndpointSlice{slice(ready("10.244.2.2", "node-2"))}}
	var addrs []netip.Addr
	for _, a := range []string{node1IP, "10.244.1.1", "127.0.0.1"} {
		addrs = append(addrs, netip.MustParseAddr(a))
	}
	m := BuildNode(objs, NodeFacts{Node: node1(), Config: config(kpov1.ModeIPTables, nil), Addrs: addrs})
	for _, tc := range []struct {
		addr, class string
		masq        bool
	}{{"10.244.1.1", "pods", false}, {node1IP, "node", true}} {
		q := toNodePort(tc.addr, fromNode)
		sp, err := m.Find("ns", "web", "http", ToNodePort, q.Addr)
		if err != nil {
			t.Fatal(err)
		}
		e := m.Explain(sp, q)
		if e.Outcome != Forwarded || e.SourceClass != tc.class || e.Masquerade != tc.masq || e.Query.Source.IP != netip.MustParseAddr(tc.addr) {
			t.Errorf("to %s: %s from %s (%s), masquerade %v; want forwarded from %s (%s), masquerade %v\n%s", tc.addr,
				e.Outcome, e.Query.Source.IP, e.SourceClass, e.Masquerade, tc.addr, tc.class, tc.masq, Text(&e, false))
		}
	}
}

// TestHairpinSetIsPerPort: the pod 10.244.1.50 is local to "web" on 8080
// and listed without a node by "other" on 9090. Reaching itself through
// "other", nftables does not masquerade (its hairpin set is keyed by
// address, protocol and port, and "other" does not place it here: random
// seed 257); iptables does (KPO-HAIRPIN is by address, and an unplaced
// endpoint is checked too).
func TestHairpinSetIsPerPort(t *testing.T) {
	other := service(func(s *corev1.Service) {
		s.Name, s.Spec.ClusterIP, s.Spec.ClusterIPs = "other", "10.96.0.11", []string{"10.96.0.11"}
		s.Spec.Ports[0].TargetPort = intstr.FromInt32(9090)
	})
	otherSlice := slice(ep{ip: "10.244.1.50", ready: true, serving: true})
	otherSlice.Name, otherSlice.Labels[discoveryv1.LabelServiceName] = "other-1", "other"
	otherSlice.Ports[0].Port = ptr.To[int32](9090)
	objs := &Objects{Services: []*corev1.Service{service(), other},
		Slices: []*discoveryv1.EndpointSlice{slice(ready("10.244.1.50", "node-1")), otherSlice}}
	for mode, want := range map[kpov1.Mode]bool{kpov1.ModeNFTables: false, kpov1.ModeIPTables: true} {
		m := BuildNode(objs, NodeFacts{Node: node1(), Config: config(mode, nil)})
		q := Query{Target: ToClusterIP, Addr: netip.MustParseAddr("10.96.0.11"), Port: 80, Source: fromPod}
		sp, err := m.Find("ns", "other", "http", ToClusterIP, q.Addr)
		if err != nil {
			t.Fatal(err)
		}
		e := m.Explain(sp, q)
		if len(e.Endpoints) != 1 || e.Endpoints[0].Hairpin != want {
			t.Errorf("%s: hairpin %v, want %v\n%s", mode, len(e.Endpoints) == 1 && e.Endpoints[0].Hairpin, want, Text(&e, false))
		}
	}
}
