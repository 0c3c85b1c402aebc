package model

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/utils/ptr"
)

// summary is what a test compares of the built ports: one line per port.
func summary(sps []*ServicePort) []string {
	var out []string
	for _, sp := range sps {
		s := fmt.Sprintf("%s %s:%d", sp.Key, sp.ClusterIP, sp.Port)
		if sp.NodePort != 0 {
			s += fmt.Sprintf(" np=%d", sp.NodePort)
		}
		if sp.HealthCheckNodePort != 0 {
			s += fmt.Sprintf(" hc=%d", sp.HealthCheckNodePort)
		}
		if len(sp.ExternalIPs) > 0 {
			s += fmt.Sprintf(" ext=%v", sp.ExternalIPs)
		}
		if len(sp.LoadBalancerIPs) > 0 {
			s += fmt.Sprintf(" lb=%v", sp.LoadBalancerIPs)
		}
		if len(sp.SourceRanges) > 0 {
			s += fmt.Sprintf(" ranges=%v", sp.SourceRanges)
		}
		if sp.AffinityTimeout != 0 {
			s += fmt.Sprintf(" affinity=%s", sp.AffinityTimeout)
		}
		if len(sp.ClusterEndpoints) > 0 {
			var eps []string
			for _, e := range sp.ClusterEndpoints {
				eps = append(eps, e.String())
			}
			s += " eps=" + strings.Join(eps, ",")
		}
		out = append(out, s)
	}
	return out
}

func reasons(rs []Rejection) []string {
	var out []string
	for _, r := range rs {
		out = append(out, r.Kind+"/"+r.Name+"/"+r.Reason)
	}
	slices.Sort(out)
	return out
}

func withPorts(ports ...corev1.ServicePort) func(*corev1.Service) {
	return func(s *corev1.Service) { s.Spec.Ports = ports }
}

func asLoadBalancer(ingress ...corev1.LoadBalancerIngress) func(*corev1.Service) {
	return func(s *corev1.Service) {
		s.Spec.Type = corev1.ServiceTypeLoadBalancer
		s.Status.LoadBalancer.Ingress = ingress
	}
}

func affinity(secs int32) func(*corev1.Service) {
	return func(s *corev1.Service) {
		s.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
		s.Spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: ptr.To(secs)}}
	}
}

// Every Service field the model takes from the API: a bad value is skipped
// (at the smallest granularity) and reported; the rest is built.
func TestValidateService(t *testing.T) {
	svcRej := func(reason string) string { return "Service/svc/" + reason }
	for _, tc := range []struct {
		name    string
		svc     *corev1.Service
		want    []string
		rejects []string
	}{
		{"a valid Service: nothing rejected", service(), []string{"ns/svc:http/TCP/IPv4 10.96.0.10:80"}, nil},
		{"clusterIP that does not parse: that family skipped, the other kept",
			service(func(s *corev1.Service) { s.Spec.ClusterIPs = []string{"10.96.0.300", "fd10:96::10"} }),
			[]string{"ns/svc:http/TCP/IPv6 fd10:96::10:80"}, []string{svcRej(ReasonInvalidClusterIP)}},
		{"clusterIP with a zone", service(func(s *corev1.Service) { s.Spec.ClusterIPs = []string{"fd10:96::10%eth0"} }),
			nil, []string{svcRej(ReasonInvalidClusterIP)}},
		{"clusterIP with leading zeros reads as decimal, as in kube-proxy (ParseIPSloppy)",
			service(func(s *corev1.Service) { s.Spec.ClusterIPs = []string{"010.096.000.010"} }),
			[]string{"ns/svc:http/TCP/IPv4 10.96.0.10:80"}, nil},
		{"two clusterIPs of one family: the first is used, as in kube-proxy",
			service(func(s *corev1.Service) { s.Spec.ClusterIPs = []string{"10.96.0.10", "10.96.0.11"} }),
			[]string{"ns/svc:http/TCP/IPv4 10.96.0.10:80"}, []string{svcRej(ReasonDuplicateClusterIPFamily)}},
		{"service ports out of range: each skipped, the valid one kept",
			service(withPorts(corev1.ServicePort{Name: "zero", Port: 0}, corev1.ServicePort{Name: "big", Port: 70000},
				corev1.ServicePort{Name: "neg", Port: -1}, corev1.ServicePort{Name: "ok", Port: 65535})),
			[]string{"ns/svc:ok/TCP/IPv4 10.96.0.10:65535"},
			[]string{svcRej(ReasonInvalidPort), svcRej(ReasonInvalidPort), svcRej(ReasonInvalidPort)}},
		{"unknown protocol", service(withPorts(corev1.ServicePort{Name: "icmp", Port: 1, Protocol: "ICMP"},
			corev1.ServicePort{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP})),
			[]string{"ns/svc:dns/UDP/IPv4 10.96.0.10:53"}, []string{svcRej(ReasonInvalidProtocol)}},
		{"the same port name and protocol twice: the first is used",
			service(withPorts(corev1.ServicePort{Name: "http", Port: 80}, corev1.ServicePort{Name: "http", Port: 81, Protocol: corev1.ProtocolTCP})),
			[]string{"ns/svc:http/TCP/IPv4 10.96.0.10:80"}, []string{svcRej(ReasonDuplicatePort)}},
		{"nodePort out of range: the port is kept without it",
			service(asNodePort, func(s *corev1.Service) { s.Spec.Ports[0].NodePort = 70000 }),
			[]string{"ns/svc:http/TCP/IPv4 10.96.0.10:80"}, []string{svcRej(ReasonInvalidNodePort)}},
		{"healthCheckNodePort out of range: no health check server",
			service(asNodePort, asLoadBalancer(), func(s *corev1.Service) {
				s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
				s.Spec.HealthCheckNodePort = 70000
			}),
			[]string{"ns/svc:http/TCP/IPv4 10.96.0.10:80 np=30080"}, []string{svcRej(ReasonInvalidHealthCheckNodePort)}},
		{"externalIPs: one that does not parse is skipped, duplicates merged, IPv4-mapped unmapped",
			service(func(s *corev1.Service) {
				s.Spec.ExternalIPs = []string{"203.0.113.5", "not-an-ip", "203.0.113.5", "::ffff:203.0.113.7"}
			}),
			[]string{"ns/svc:http/TCP/IPv4 10.96.0.10:80 ext=[203.0.113.5 203.0.113.7]"}, []string{svcRej(ReasonInvalidExternalIP)}},
		{"load-balancer IPs: one that does not parse, an unknown ipMode (not captured, as in kube-proxy)",
			service(asNodePort, asLoadBalancer(corev1.LoadBalancerIngress{IP: "203.0.113.300"},
				corev1.LoadBalancerIngress{IP: "203.0.113.9", IPMode: ptr.To(corev1.LoadBalancerIPMode("Bogus"))},
				corev1.LoadBalancerIngress{IP: "203.0.113.10", IPMode: ptr.To(corev1.LoadBalancerIPModeVIP)})),
			[]string{"ns/svc:http/TCP/IPv4 10.96.0.10:80 np=30080 lb=[203.0.113.10]"},
			[]string{svcRej(ReasonInvalidLoadBalancerIP), svcRej(ReasonInvalidLoadBalancerIPMode)}},
		{"an address both externalIP and load-balancer IP is a load-balancer IP (its source ranges apply)",
			service(asNodePort, asLoadBalancer(corev1.LoadBalancerIngress{IP: "203.0.113.10"}), func(s *corev1.Service) {
				s.Spec.ExternalIPs = []string{"203.0.113.10", "203.0.113.11"}
				s.Spec.LoadBalancerSourceRanges = []string{"198.51.100.0/24"}
			}),
			[]string{"ns/svc:http/TCP/IPv4 10.96.0.10:80 np=30080 ext=[203.0.113.11] lb=[203.0.113.10] ranges=[198.51.100.0/24]"}, nil},
		{"source ranges: one that does not parse is skipped, the others masked",
			service(asNodePort, asLoadBalancer(corev1.LoadBalancerIngress{IP: "203.0.113.10"}), func(s *corev1.Service) {
				s.Spec.LoadBalancerSourceRanges = []string{"198.51.100.0/24", "bogus", "10.1.2.3/8", "::ffff:0:0/64",
					"::ffff:172.16.0.0/108", "020.0.0.0/8"}
			}),
			[]string{"ns/svc:http/TCP/IPv4 10.96.0.10:80 np=30080 lb=[203.0.113.10] ranges=[198.51.100.0/24 10.0.0.0/8 172.16.0.0/12 20.0.0.0/8]"},
			[]string{svcRej(ReasonInvalidSourceRange), svcRej(ReasonInvalidSourceRange)}},
		{"affinity timeout 0: the default", service(affinity(0)),
			[]string{"ns/svc:http/TCP/IPv4 10.96.0.10:80 affinity=3h0m0s"}, []string{svcRej(ReasonInvalidAffinityTimeout)}},
		{"affinity timeout above a day: the default", service(affinity(86401)),
			[]string{"ns/svc:http/TCP/IPv4 10.96.0.10:80 affinity=3h0m0s"}, []string{svcRej(ReasonInvalidAffinityTimeout)}},
		{"affinity timeout of a day is valid", service(affinity(86400)),
			[]string{"ns/svc:http/TCP/IPv4 10.96.0.10:80 affinity=24h0m0s"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sps, rejected := BuildServicePorts(tc.svc, nil, NodeContext{Name: thisNode})
			if got := summary(sps); !slices.Equal(got, tc.want) {
				t.Errorf("built\n  %v\nwant\n  %v", strings.Join(got, "\n  "), strings.Join(tc.want, "\n  "))
			}
			if got := reasons(rejected); !slices.Equal(got, tc.rejects) {
				t.Errorf("rejected %v, want %v (%v)", got, tc.rejects, rejected)
			}
		})
	}
}

// sliceWith is an IPv4 slice of one port with the given endpoints.
func sliceWith(name string, port discoveryv1.EndpointPort, addrs ...string) *discoveryv1.EndpointSlice {
	s := slice(discoveryv1.AddressTypeIPv4, 8080)
	s.Name = name
	s.Ports = []discoveryv1.EndpointPort{port}
	for _, a := range addrs {
		s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{Addresses: []string{a}, NodeName: ptr.To(thisNode)})
	}
	return s
}

func httpPort(n int32) discoveryv1.EndpointPort {
	return discoveryv1.EndpointPort{Name: ptr.To("http"), Port: ptr.To(n), Protocol: ptr.To(corev1.ProtocolTCP)}
}

// Every EndpointSlice field the model takes from the API. A second, valid
// slice ("good") shows that the rest of the Service is still built.
func TestValidateEndpointSlices(t *testing.T) {
	good := sliceWith("good", httpPort(8080), "10.244.1.5")
	sliceRej := func(reason string) string { return "EndpointSlice/bad/" + reason }
	base := "ns/svc:http/TCP/IPv4 10.96.0.10:80 eps="
	for _, tc := range []struct {
		name    string
		bad     *discoveryv1.EndpointSlice
		eps     string
		rejects []string
	}{
		{"port 70000 (the API server accepts it; kube-proxy's whole sync fails on it)",
			sliceWith("bad", httpPort(70000), "10.244.1.6"), "10.244.1.5:8080", []string{sliceRej(ReasonInvalidEndpointPort)}},
		{"negative port", sliceWith("bad", httpPort(-1), "10.244.1.6"), "10.244.1.5:8080", []string{sliceRej(ReasonInvalidEndpointPort)}},
		{"port 0 (kube-proxy skips it)", sliceWith("bad", httpPort(0), "10.244.1.6"), "10.244.1.5:8080",
			[]string{sliceRej(ReasonInvalidEndpointPort)}},
		{"port without a number (kube-proxy skips it)",
			sliceWith("bad", discoveryv1.EndpointPort{Name: ptr.To("http"), Protocol: ptr.To(corev1.ProtocolTCP)}, "10.244.1.6"),
			"10.244.1.5:8080", []string{sliceRej(ReasonInvalidEndpointPort)}},
		{"port without a name (kube-proxy skips it)",
			sliceWith("bad", discoveryv1.EndpointPort{Port: ptr.To[int32](8080), Protocol: ptr.To(corev1.ProtocolTCP)}, "10.244.1.6"),
			"10.244.1.5:8080", []string{sliceRej(ReasonInvalidEndpointPort)}},
		{"unknown protocol",
			sliceWith("bad", discoveryv1.EndpointPort{Name: ptr.To("http"), Port: ptr.To[int32](8080), Protocol: ptr.To(corev1.Protocol("ICMP"))}, "10.244.1.6"),
			"10.244.1.5:8080", []string{sliceRej(ReasonInvalidEndpointProtocol)}},
		{"an address that does not parse: that endpoint skipped",
			sliceWith("bad", httpPort(8080), "10.244.1.6", "bogus"), "10.244.1.5:8080,10.244.1.6:8080",
			[]string{sliceRej(ReasonInvalidEndpointAddress)}},
		{"an address with a zone", func() *discoveryv1.EndpointSlice {
			s := sliceWith("bad", httpPort(8080), "10.244.1.6")
			s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{Addresses: []string{"10.244.1.7%eth0"}})
			return s
		}(), "10.244.1.5:8080,10.244.1.6:8080", []string{sliceRej(ReasonInvalidEndpointAddress)}},
		{"an IPv6 address in an IPv4 slice", sliceWith("bad", httpPort(8080), "10.244.1.6", "fd10:244::6"),
			"10.244.1.5:8080,10.244.1.6:8080", []string{sliceRej(ReasonEndpointFamilyMismatch)}},
		{"an endpoint without addresses", func() *discoveryv1.EndpointSlice {
			s := sliceWith("bad", httpPort(8080), "10.244.1.6")
			s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{})
			return s
		}(), "10.244.1.5:8080,10.244.1.6:8080", []string{sliceRej(ReasonInvalidEndpointAddress)}},
		{"more endpoints than the API allows: the slice skipped", func() *discoveryv1.EndpointSlice {
			s := sliceWith("bad", httpPort(8080))
			for i := range maxSliceEndpoints + 1 {
				s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{Addresses: []string{fmt.Sprintf("10.244.%d.%d", 100+i/250, 1+i%250)}})
			}
			return s
		}(), "10.244.1.5:8080", []string{sliceRej(ReasonTooManyEndpoints)}},
		{"more ports than the API allows: the slice skipped", func() *discoveryv1.EndpointSlice {
			s := sliceWith("bad", httpPort(8080), "10.244.1.6")
			for i := range maxSlicePorts {
				s.Ports = append(s.Ports, discoveryv1.EndpointPort{Name: ptr.To(fmt.Sprint("p", i)), Port: ptr.To[int32](1000)})
			}
			return s
		}(), "10.244.1.5:8080", []string{sliceRej(ReasonTooManyEndpointPorts)}},
		{"an FQDN slice is nothing to proxy, as in kube-proxy: no rejection", func() *discoveryv1.EndpointSlice {
			s := sliceWith("bad", httpPort(8080), "example.com")
			s.AddressType = discoveryv1.AddressTypeFQDN
			return s
		}(), "10.244.1.5:8080", nil},
		{"leading zeros read as decimal, IPv4-mapped unmapped (kube-proxy's ParseIPSloppy)",
			sliceWith("bad", httpPort(8080), "010.244.001.006", "::ffff:10.244.1.7"), "10.244.1.5:8080,10.244.1.6:8080,10.244.1.7:8080", nil},
		// The API server refuses these since 1.x (ValidateEndpointIP), but old
		// objects may hold them. kube-proxy programs them and the kernel
		// accepts the rules: kept, to translate exactly as kube-proxy does.
		{"loopback, unspecified, link-local and multicast addresses are kept, as kube-proxy keeps them",
			sliceWith("bad", httpPort(8080), "127.0.0.1", "0.0.0.0", "169.254.1.1", "224.0.0.1", "239.1.1.1"),
			"0.0.0.0:8080,10.244.1.5:8080,127.0.0.1:8080,169.254.1.1:8080,224.0.0.1:8080,239.1.1.1:8080", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sps, rejected := BuildServicePorts(service(), []*discoveryv1.EndpointSlice{good, tc.bad}, NodeContext{Name: thisNode})
			want := []string{base + tc.eps}
			if got := summary(sps); !slices.Equal(got, want) {
				t.Errorf("built %v, want %v", got, want)
			}
			if got := reasons(rejected); !slices.Equal(got, tc.rejects) {
				t.Errorf("rejected %v, want %v (%v)", got, tc.rejects, rejected)
			}
		})
	}
}

// An IPv6 slice's addresses must be IPv6; a zone never parses.
func TestValidateIPv6Slice(t *testing.T) {
	svc := service(func(s *corev1.Service) { s.Spec.ClusterIPs = []string{"fd10:96::10"} })
	s := slice(discoveryv1.AddressTypeIPv6, 8080, readyEP("fd10:244:0:1::5", thisNode), readyEP("10.244.1.5", thisNode),
		readyEP("fe80::1%eth0", thisNode))
	sps, rejected := BuildServicePorts(svc, []*discoveryv1.EndpointSlice{s}, NodeContext{Name: thisNode})
	if got := summary(sps); !slices.Equal(got, []string{"ns/svc:http/TCP/IPv6 fd10:96::10:80 eps=[fd10:244:0:1::5]:8080"}) {
		t.Errorf("built %v", got)
	}
	want := []string{"EndpointSlice/svc-IPv6/" + ReasonEndpointFamilyMismatch, "EndpointSlice/svc-IPv6/" + ReasonInvalidEndpointAddress}
	if got := reasons(rejected); !slices.Equal(got, want) {
		t.Errorf("rejected %v, want %v", got, want)
	}
}

// One bad slice port of a Service with several ports affects only the
// service port it belongs to.
func TestBadSlicePortAffectsOnlyItsServicePort(t *testing.T) {
	svc := service(withPorts(corev1.ServicePort{Name: "http", Port: 80}, corev1.ServicePort{Name: "metrics", Port: 9090}))
	s := slice(discoveryv1.AddressTypeIPv4, 8080, readyEP("10.244.1.5", thisNode))
	s.Ports = append(s.Ports, discoveryv1.EndpointPort{Name: ptr.To("metrics"), Port: ptr.To[int32](99999), Protocol: ptr.To(corev1.ProtocolTCP)})
	sps, rejected := BuildServicePorts(svc, []*discoveryv1.EndpointSlice{s}, NodeContext{Name: thisNode})
	want := []string{"ns/svc:http/TCP/IPv4 10.96.0.10:80 eps=10.244.1.5:8080", "ns/svc:metrics/TCP/IPv4 10.96.0.10:9090"}
	if got := summary(sps); !slices.Equal(got, want) {
		t.Errorf("built %v, want %v", got, want)
	}
	if len(rejected) != 1 || !strings.Contains(rejected[0].Message, `"metrics": 99999 is outside 1-65535`) {
		t.Errorf("rejected %v", rejected)
	}
}

// Without takes external destinations away and resolves what depends on them.
func TestServicePortWithout(t *testing.T) {
	ext, lb := netip.MustParseAddr("203.0.113.5"), netip.MustParseAddr("203.0.113.10")
	eps := []Endpoint{{IP: netip.MustParseAddr("10.244.1.5"), Port: 8080, Local: true, Ready: true}}
	sp := &ServicePort{NodePort: 30080, ExternalIPs: []netip.Addr{ext}, LoadBalancerIPs: []netip.Addr{lb},
		SourceRanges: []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")}, ExternalPolicyLocal: true,
		HealthCheckNodePort: 32000, ClusterEndpoints: eps, ExternalEndpoints: eps, AffinityTimeout: time.Minute}

	noLB := sp.Without(nil, []netip.Addr{lb}, false)
	if noLB.LoadBalancerIPs != nil || noLB.SourceRanges != nil || !noLB.ExternalPolicyLocal || noLB.ExternalEndpoints == nil {
		t.Errorf("without its LB IP: %+v", noLB)
	}
	none := sp.Without([]netip.Addr{ext}, []netip.Addr{lb}, true)
	// The health check stays: it is the Service's, whatever addresses it keeps.
	if none.HasExternal() || none.ExternalPolicyLocal || none.ExternalEndpoints != nil || none.HealthCheckNodePort != 32000 {
		t.Errorf("without every external destination: %+v", none)
	}
	if none.ClusterEndpoints == nil || none.AffinityTimeout != time.Minute || sp.NodePort != 30080 || len(sp.ExternalIPs) != 1 {
		t.Errorf("Without changed what it must keep, or the original: %+v / %+v", none, sp)
	}
}
