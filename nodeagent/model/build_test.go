package model

import (
	"net/netip"
	"reflect"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

const thisNode = "node-1"

// ep describes one endpoint of a test EndpointSlice.
type ep struct {
	ip                          string
	node                        string
	ready, serving, terminating bool
	zones, nodes                []string
}

func readyEP(ip, node string) ep { return ep{ip: ip, node: node, ready: true, serving: true} }

func slice(family discoveryv1.AddressType, port int32, eps ...ep) *discoveryv1.EndpointSlice {
	s := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "ns", Name: "svc-" + string(family)},
		AddressType: family,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To(port), Protocol: ptr.To(corev1.ProtocolTCP)}},
	}
	for _, e := range eps {
		d := discoveryv1.Endpoint{
			Addresses: []string{e.ip},
			NodeName:  ptr.To(e.node),
			Conditions: discoveryv1.EndpointConditions{
				Ready: ptr.To(e.ready), Serving: ptr.To(e.serving), Terminating: ptr.To(e.terminating),
			},
		}
		if e.zones != nil || e.nodes != nil {
			d.Hints = &discoveryv1.EndpointHints{}
			for _, z := range e.zones {
				d.Hints.ForZones = append(d.Hints.ForZones, discoveryv1.ForZone{Name: z})
			}
			for _, n := range e.nodes {
				d.Hints.ForNodes = append(d.Hints.ForNodes, discoveryv1.ForNode{Name: n})
			}
		}
		s.Endpoints = append(s.Endpoints, d)
	}
	return s
}

func service(mutate ...func(*corev1.Service)) *corev1.Service {
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "svc"},
		Spec: corev1.ServiceSpec{
			Type:       corev1.ServiceTypeClusterIP,
			ClusterIP:  "10.96.0.10",
			ClusterIPs: []string{"10.96.0.10"},
			Ports:      []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}},
		},
	}
	for _, m := range mutate {
		m(svc)
	}
	return svc
}

func asNodePort(svc *corev1.Service) {
	svc.Spec.Type = corev1.ServiceTypeNodePort
	svc.Spec.Ports[0].NodePort = 30080
}

func ips(eps []Endpoint) []string {
	var out []string
	for _, e := range eps {
		out = append(out, e.IP.String())
	}
	return out
}

// endpointCase is a Service with its EndpointSlices and the endpoint sets
// the model must resolve for it.
type endpointCase struct {
	name         string
	svc          *corev1.Service
	slices       []*discoveryv1.EndpointSlice
	zone         string
	wantCluster  []string
	wantExternal []string
	wantLocal    int
}

const v4 = discoveryv1.AddressTypeIPv4

var endpointCases = []endpointCase{
	{"ready endpoints, sorted", service(), []*discoveryv1.EndpointSlice{slice(v4, 8080,
		readyEP("10.244.2.5", "node-2"), readyEP("10.244.1.5", thisNode))},
		"", []string{"10.244.1.5", "10.244.2.5"}, nil, 1},
	{"no endpoints", service(), nil, "", nil, nil, 0},
	{"not-ready endpoints are skipped", service(), []*discoveryv1.EndpointSlice{slice(v4, 8080,
		readyEP("10.244.1.5", thisNode), ep{ip: "10.244.2.5", node: "node-2"})},
		"", []string{"10.244.1.5"}, nil, 1},
	{"only terminating: serving ones still answer", service(), []*discoveryv1.EndpointSlice{slice(v4, 8080,
		ep{ip: "10.244.1.5", node: thisNode, serving: true, terminating: true},
		ep{ip: "10.244.2.5", node: "node-2", serving: false, terminating: true})},
		"", []string{"10.244.1.5"}, nil, 0},
	{"terminating ignored while some are ready", service(), []*discoveryv1.EndpointSlice{slice(v4, 8080,
		readyEP("10.244.2.5", "node-2"), ep{ip: "10.244.1.5", node: thisNode, serving: true, terminating: true})},
		"", []string{"10.244.2.5"}, nil, 0},
	{"duplicate across slices", service(), []*discoveryv1.EndpointSlice{
		slice(v4, 8080, readyEP("10.244.1.5", thisNode)), slice(v4, 8080, readyEP("10.244.1.5", thisNode))},
		"", []string{"10.244.1.5"}, nil, 1},
	{"internal traffic policy Local", service(func(s *corev1.Service) {
		s.Spec.InternalTrafficPolicy = ptr.To(corev1.ServiceInternalTrafficPolicyLocal)
	}), []*discoveryv1.EndpointSlice{slice(v4, 8080, readyEP("10.244.1.5", thisNode), readyEP("10.244.2.5", "node-2"))},
		"", []string{"10.244.1.5"}, nil, 1},
	{"internal Local, no local endpoint: nothing", service(func(s *corev1.Service) {
		s.Spec.InternalTrafficPolicy = ptr.To(corev1.ServiceInternalTrafficPolicyLocal)
	}), []*discoveryv1.EndpointSlice{slice(v4, 8080, readyEP("10.244.2.5", "node-2"))},
		"", nil, nil, 0},
	{"NodePort, external Cluster", service(asNodePort), []*discoveryv1.EndpointSlice{slice(v4, 8080,
		readyEP("10.244.1.5", thisNode), readyEP("10.244.2.5", "node-2"))},
		"", []string{"10.244.1.5", "10.244.2.5"}, []string{"10.244.1.5", "10.244.2.5"}, 1},
	{"NodePort, external Local", service(asNodePort, func(s *corev1.Service) {
		s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
	}), []*discoveryv1.EndpointSlice{slice(v4, 8080, readyEP("10.244.1.5", thisNode), readyEP("10.244.2.5", "node-2"))},
		"", []string{"10.244.1.5", "10.244.2.5"}, []string{"10.244.1.5"}, 1},
	{"internal Local does not narrow external Cluster", service(asNodePort, func(s *corev1.Service) {
		s.Spec.InternalTrafficPolicy = ptr.To(corev1.ServiceInternalTrafficPolicyLocal)
	}), []*discoveryv1.EndpointSlice{slice(v4, 8080, readyEP("10.244.1.5", thisNode), readyEP("10.244.2.5", "node-2"))},
		"", []string{"10.244.1.5"}, []string{"10.244.1.5", "10.244.2.5"}, 1},
	{"external Local falls back to local terminating", service(asNodePort, func(s *corev1.Service) {
		s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
	}), []*discoveryv1.EndpointSlice{slice(v4, 8080,
		ep{ip: "10.244.1.5", node: thisNode, serving: true, terminating: true}, readyEP("10.244.2.5", "node-2"))},
		"", []string{"10.244.2.5"}, []string{"10.244.1.5"}, 0},
	{"PreferClose uses zone hints", service(func(s *corev1.Service) {
		s.Spec.TrafficDistribution = ptr.To(corev1.ServiceTrafficDistributionPreferClose)
	}), []*discoveryv1.EndpointSlice{slice(v4, 8080,
		ep{ip: "10.244.1.5", node: thisNode, ready: true, serving: true, zones: []string{"a"}},
		ep{ip: "10.244.2.5", node: "node-2", ready: true, serving: true, zones: []string{"b"}})},
		"a", []string{"10.244.1.5"}, nil, 1},
	{"zone hints ignored when one endpoint lacks them", service(func(s *corev1.Service) {
		s.Spec.TrafficDistribution = ptr.To(corev1.ServiceTrafficDistributionPreferClose)
	}), []*discoveryv1.EndpointSlice{slice(v4, 8080,
		ep{ip: "10.244.1.5", node: thisNode, ready: true, serving: true, zones: []string{"a"}},
		readyEP("10.244.2.5", "node-2"))},
		"a", []string{"10.244.1.5", "10.244.2.5"}, nil, 1},
	{"zone hints ignored when none fits", service(func(s *corev1.Service) {
		s.Spec.TrafficDistribution = ptr.To(corev1.ServiceTrafficDistributionPreferSameZone)
	}), []*discoveryv1.EndpointSlice{slice(v4, 8080,
		ep{ip: "10.244.2.5", node: "node-2", ready: true, serving: true, zones: []string{"b"}})},
		"a", []string{"10.244.2.5"}, nil, 0},
	{"PreferSameNode uses node hints", service(func(s *corev1.Service) {
		s.Spec.TrafficDistribution = ptr.To(corev1.ServiceTrafficDistributionPreferSameNode)
	}), []*discoveryv1.EndpointSlice{slice(v4, 8080,
		ep{ip: "10.244.1.5", node: thisNode, ready: true, serving: true, zones: []string{"a"}, nodes: []string{thisNode}},
		ep{ip: "10.244.1.6", node: "node-3", ready: true, serving: true, zones: []string{"a"}, nodes: []string{"node-3"}},
		ep{ip: "10.244.2.5", node: "node-2", ready: true, serving: true, zones: []string{"b"}, nodes: []string{"node-2"}})},
		"a", []string{"10.244.1.5"}, nil, 1},
	{"topology annotation Auto", service(func(s *corev1.Service) {
		s.Annotations = map[string]string{AnnotationTopologyMode: "Auto"}
	}), []*discoveryv1.EndpointSlice{slice(v4, 8080,
		ep{ip: "10.244.1.5", node: thisNode, ready: true, serving: true, zones: []string{"a"}},
		ep{ip: "10.244.2.5", node: "node-2", ready: true, serving: true, zones: []string{"b"}})},
		"b", []string{"10.244.2.5"}, nil, 1},
}

func TestBuildServicePortsEndpoints(t *testing.T) {
	for _, tc := range endpointCases {
		t.Run(tc.name, func(t *testing.T) {
			sps, rejected := BuildServicePorts(tc.svc, tc.slices, NodeContext{Name: thisNode, Zone: tc.zone})
			if len(rejected) > 0 {
				t.Errorf("valid input rejected: %v", rejected)
			}
			if len(sps) != 1 {
				t.Fatalf("%d service ports, want 1", len(sps))
			}
			sp := sps[0]
			if got := ips(sp.ClusterEndpoints); !slices.Equal(got, tc.wantCluster) {
				t.Errorf("cluster endpoints %v, want %v", got, tc.wantCluster)
			}
			if got := ips(sp.ExternalEndpoints); !slices.Equal(got, tc.wantExternal) {
				t.Errorf("external endpoints %v, want %v", got, tc.wantExternal)
			}
			if sp.LocalEndpointCount != tc.wantLocal {
				t.Errorf("local endpoint count %d, want %d", sp.LocalEndpointCount, tc.wantLocal)
			}
			for _, e := range sp.ClusterEndpoints {
				if e.Port != 8080 {
					t.Errorf("endpoint port %d, want the slice's 8080", e.Port)
				}
			}
		})
	}
}

func TestBuildServicePortsVIPs(t *testing.T) {
	lb := service(asNodePort, func(s *corev1.Service) {
		s.Spec.Type = corev1.ServiceTypeLoadBalancer
		s.Spec.ClusterIPs = []string{"10.96.0.10", "fd10:96::10"}
		s.Spec.ExternalIPs = []string{"203.0.113.5", "2001:db8:2::5"}
		s.Spec.LoadBalancerSourceRanges = []string{"198.51.100.0/24", " 2001:db8:1::/64"}
		s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
		s.Spec.HealthCheckNodePort = 32000
		s.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
		s.Spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: ptr.To[int32](60)}}
		s.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{
			{IP: "203.0.113.10"},
			{IP: "203.0.113.11", IPMode: ptr.To(corev1.LoadBalancerIPModeProxy)},
			{IP: "2001:db8:2::10", IPMode: ptr.To(corev1.LoadBalancerIPModeVIP)},
			{Hostname: "lb.example"},
		}
	})
	sps, rejected := BuildServicePorts(lb, nil, NodeContext{Name: thisNode})
	if len(rejected) > 0 {
		t.Errorf("valid input rejected: %v", rejected)
	}
	if len(sps) != 2 {
		t.Fatalf("%d service ports, want one per family", len(sps))
	}
	v4, v6 := sps[0], sps[1]
	if v4.Key.Family != IPv4 || v6.Key.Family != IPv6 {
		t.Fatalf("families %v %v", v4.Key.Family, v6.Key.Family)
	}
	check := func(name string, got, want any) {
		t.Helper()
		if !equalAny(got, want) {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	check("v4 cluster IP", v4.ClusterIP.String(), "10.96.0.10")
	check("v6 cluster IP", v6.ClusterIP.String(), "fd10:96::10")
	check("v4 external IPs", v4.ExternalIPs, []netip.Addr{netip.MustParseAddr("203.0.113.5")})
	check("v6 external IPs", v6.ExternalIPs, []netip.Addr{netip.MustParseAddr("2001:db8:2::5")})
	check("v4 LB IPs (ipMode Proxy skipped)", v4.LoadBalancerIPs, []netip.Addr{netip.MustParseAddr("203.0.113.10")})
	check("v6 LB IPs", v6.LoadBalancerIPs, []netip.Addr{netip.MustParseAddr("2001:db8:2::10")})
	check("v4 source ranges", v4.SourceRanges, []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")})
	check("v6 source ranges", v6.SourceRanges, []netip.Prefix{netip.MustParsePrefix("2001:db8:1::/64")})
	check("node port", v4.NodePort, int32(30080))
	check("affinity", v4.AffinityTimeout, 60*time.Second)
	check("external Local", v4.ExternalPolicyLocal, true)
	check("health check node port", v4.HealthCheckNodePort, int32(32000))
	check("key", v4.Key.String(), "ns/svc:http/TCP/IPv4")
}

func TestProxied(t *testing.T) {
	for _, tc := range []struct {
		name string
		svc  *corev1.Service
		want bool
	}{
		{"cluster IP", service(), true},
		{"headless", service(func(s *corev1.Service) { s.Spec.ClusterIP = corev1.ClusterIPNone }), false},
		{"external name", service(func(s *corev1.Service) { s.Spec.Type = corev1.ServiceTypeExternalName }), false},
		{"other proxy", service(func(s *corev1.Service) { s.Labels = map[string]string{LabelServiceProxyName: "other"} }), false},
		{"no cluster IP yet", service(func(s *corev1.Service) { s.Spec.ClusterIP = "" }), false},
	} {
		if got := Proxied(tc.svc); got != tc.want {
			t.Errorf("%s: Proxied = %v, want %v", tc.name, got, tc.want)
		}
		if sps, _ := BuildServicePorts(tc.svc, nil, NodeContext{}); !tc.want && sps != nil {
			t.Errorf("%s: built service ports for a service kpo must not proxy", tc.name)
		}
	}
}

func TestDefaultAffinityTimeout(t *testing.T) {
	svc := service(func(s *corev1.Service) { s.Spec.SessionAffinity = corev1.ServiceAffinityClientIP })
	if sps, _ := BuildServicePorts(svc, nil, NodeContext{}); sps[0].AffinityTimeout != 3*time.Hour {
		t.Errorf("default affinity timeout %v, want 3h", sps[0].AffinityTimeout)
	}
}

func equalAny(a, b any) bool { return reflect.DeepEqual(a, b) }

// TestSharedEndpointListsAreFull: sets resolved from the same candidates
// share one list (a NodePort with both policies Cluster: ClusterEndpoints
// and ExternalEndpoints), so every list must be full to its capacity: an
// append to one (a backend's, a test's) must copy, not write into the
// other.
func TestSharedEndpointListsAreFull(t *testing.T) {
	sps, _ := BuildServicePorts(service(asNodePort), []*discoveryv1.EndpointSlice{slice(v4, 8080,
		readyEP("10.244.1.5", thisNode), readyEP("10.244.2.5", "node-2"), readyEP("10.244.3.5", "node-3"))},
		NodeContext{Name: thisNode})
	if len(sps) != 1 {
		t.Fatalf("%d service ports", len(sps))
	}
	sp := sps[0]
	for name, eps := range map[string][]Endpoint{"cluster": sp.ClusterEndpoints, "external": sp.ExternalEndpoints} {
		if len(eps) != 3 || cap(eps) != len(eps) {
			t.Errorf("%s endpoints: len %d cap %d, want 3 and full", name, len(eps), cap(eps))
		}
	}
	_ = append(sp.ClusterEndpoints, Endpoint{IP: netip.MustParseAddr("10.244.9.9"), Port: 8080})
	if got := ips(sp.ExternalEndpoints); !slices.Equal(got, []string{"10.244.1.5", "10.244.2.5", "10.244.3.5"}) {
		t.Errorf("external endpoints after an append to the cluster ones: %v", got)
	}
}
