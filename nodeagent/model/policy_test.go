package model

import (
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/utils/ptr"
)

// TestPoliciesAsKubeProxy covers what the conformance suite found different
// from kube-proxy v1.37: hints without trafficDistribution, hints read from
// ready endpoints only, the short-circuit set of externalTrafficPolicy Local,
// and drop vs reject.
func TestPoliciesAsKubeProxy(t *testing.T) {
	v4 := discoveryv1.AddressTypeIPv4
	zoned := func(ip, node, zone string) ep {
		return ep{ip: ip, node: node, ready: true, serving: true, zones: []string{zone}}
	}
	itpLocal := func(s *corev1.Service) {
		s.Spec.InternalTrafficPolicy = ptr.To(corev1.ServiceInternalTrafficPolicyLocal)
	}
	etpLocal := func(s *corev1.Service) { s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal }
	for _, tc := range []struct {
		name                         string
		svc                          *corev1.Service
		eps                          []ep
		wantCluster, wantExt, wantSC []string
		wantVerdict                  Verdict
	}{
		{"zone hints are used without trafficDistribution", service(),
			[]ep{zoned("10.244.1.5", thisNode, "a"), zoned("10.244.2.5", "node-2", "b")},
			[]string{"10.244.1.5"}, nil, nil, Drop},
		{"a terminating endpoint without hints does not disable them", service(),
			[]ep{zoned("10.244.1.5", thisNode, "a"), zoned("10.244.2.5", "node-2", "b"),
				{ip: "10.244.1.6", node: thisNode, serving: true, terminating: true}},
			[]string{"10.244.1.5"}, nil, nil, Drop},
		{"node hints are used without trafficDistribution", service(),
			[]ep{{ip: "10.244.1.5", node: thisNode, ready: true, serving: true, nodes: []string{thisNode}},
				{ip: "10.244.2.5", node: "node-2", ready: true, serving: true, nodes: []string{"node-2"}}},
			[]string{"10.244.1.5"}, nil, nil, Drop},
		{"iTP Local without local endpoints drops", service(itpLocal),
			[]ep{readyEP("10.244.2.5", "node-2")}, nil, nil, nil, Drop},
		{"no endpoints at all rejects, whatever the policies", service(asNodePort, itpLocal, etpLocal),
			nil, nil, nil, nil, Reject},
		{"eTP and iTP Local: pods and the node short-circuit to every endpoint", service(asNodePort, itpLocal, etpLocal),
			[]ep{readyEP("10.244.2.5", "node-2")}, nil, nil, []string{"10.244.2.5"}, Drop},
		{"eTP Local: short-circuit set with a local endpoint", service(asNodePort, etpLocal),
			[]ep{readyEP("10.244.1.5", thisNode), readyEP("10.244.2.5", "node-2")},
			[]string{"10.244.1.5", "10.244.2.5"}, []string{"10.244.1.5"}, []string{"10.244.1.5", "10.244.2.5"}, Drop},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var slices_ []*discoveryv1.EndpointSlice
			if tc.eps != nil {
				slices_ = append(slices_, slice(v4, 8080, tc.eps...))
			}
			sps, _ := BuildServicePorts(tc.svc, slices_, NodeContext{Name: thisNode, Zone: "a"})
			sp := sps[0]
			for _, c := range []struct {
				what      string
				got, want []string
			}{
				{"cluster", ips(sp.ClusterEndpoints), tc.wantCluster},
				{"external", ips(sp.ExternalEndpoints), tc.wantExt},
				{"short-circuit", ips(sp.ShortCircuitEndpoints), tc.wantSC},
			} {
				if !slices.Equal(c.got, c.want) {
					t.Errorf("%s endpoints %v, want %v", c.what, c.got, c.want)
				}
			}
			if got := sp.EmptyVerdict(); got != tc.wantVerdict {
				t.Errorf("verdict %v, want %v", got, tc.wantVerdict)
			}
		})
	}
}

// TestHealthCheckWithoutExternalAddresses: a LoadBalancer with eTP Local
// serves its health check before it has an ingress IP and without NodePorts,
// as kube-proxy (found by the conformance generator, seed 178).
func TestHealthCheckWithoutExternalAddresses(t *testing.T) {
	svc := service(func(s *corev1.Service) {
		s.Spec.Type = corev1.ServiceTypeLoadBalancer
		s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
		s.Spec.AllocateLoadBalancerNodePorts = ptr.To(false)
		s.Spec.HealthCheckNodePort = 30001
	})
	sps, _ := BuildServicePorts(svc, []*discoveryv1.EndpointSlice{slice(discoveryv1.AddressTypeIPv4, 8080, readyEP("10.244.1.5", thisNode))},
		NodeContext{Name: thisNode})
	if sp := sps[0]; sp.HealthCheckNodePort != 30001 || sp.LocalEndpointCount != 1 {
		t.Errorf("health check port %d with %d local endpoints, want 30001 with 1", sp.HealthCheckNodePort, sp.LocalEndpointCount)
	}
}
