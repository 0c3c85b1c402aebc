package model

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
)

// TestSelection: the port's Selection names the choice behind each set
// (topology hints, terminating fallback), and changes nothing else: the
// sets are those of TestBuildServicePortsEndpoints.
func TestSelection(t *testing.T) {
	node := NodeContext{Name: thisNode, Zone: "zone-a"}
	tests := []struct {
		name string
		svc  *corev1.Service
		eps  []ep
		want Selection
	}{
		{"no hints", service(), []ep{readyEP("10.0.0.1", thisNode), readyEP("10.0.0.2", "node-2")}, Selection{}},
		{"zone hints", service(), []ep{
			{ip: "10.0.0.1", node: thisNode, ready: true, serving: true, zones: []string{"zone-a"}},
			{ip: "10.0.0.2", node: "node-2", ready: true, serving: true, zones: []string{"zone-b"}}}, Selection{Topology: TopologyZoneHints}},
		{"node hints", service(), []ep{
			{ip: "10.0.0.1", node: thisNode, ready: true, serving: true, nodes: []string{thisNode}},
			{ip: "10.0.0.2", node: "node-2", ready: true, serving: true, nodes: []string{"node-2"}}}, Selection{Topology: TopologyNodeHints}},
		{"hints for another zone only", service(), []ep{
			{ip: "10.0.0.2", node: "node-2", ready: true, serving: true, zones: []string{"zone-b"}}}, Selection{}},
		{"nothing ready anywhere", service(), []ep{{ip: "10.0.0.1", node: thisNode, serving: true, terminating: true}},
			Selection{ClusterTerminating: true, LocalTerminating: true}},
		{"nothing ready here", service(), []ep{{ip: "10.0.0.1", node: thisNode, serving: true, terminating: true}, readyEP("10.0.0.2", "node-2")},
			Selection{LocalTerminating: true}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sps, _ := BuildServicePorts(tc.svc, []*discoveryv1.EndpointSlice{slice(discoveryv1.AddressTypeIPv4, 8080, tc.eps...)}, node)
			if got := sps[0].Selection; got != tc.want {
				t.Errorf("selection %+v, want %+v", got, tc.want)
			}
		})
	}
}

// TestRouteWhy: every route says which policy or setting chose its set and
// its masquerade, consistently with the route itself.
func TestRouteWhy(t *testing.T) {
	eps := []ep{readyEP("10.0.0.1", thisNode), readyEP("10.0.0.2", "node-2")}
	build := func(local bool) *ServicePort {
		svc := service(asNodePort)
		if local {
			svc.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
		}
		sps, _ := BuildServicePorts(svc, []*discoveryv1.EndpointSlice{slice(discoveryv1.AddressTypeIPv4, 8080, eps...)}, NodeContext{Name: thisNode})
		return sps[0]
	}
	type why struct {
		set  SetReason
		masq MasqueradeReason
	}
	tests := []struct {
		name     string
		local    bool
		o        RouteOptions
		cluster  [3]why // pods, node, outside
		external [3]why
	}{
		{"eTP Cluster", false, RouteOptions{PodsKnown: true},
			[3]why{{SetClusterIP, KeepFromPod}, {SetClusterIP, MasqueradeNotFromPod}, {SetClusterIP, MasqueradeNotFromPod}},
			[3]why{{SetExternalCluster, MasqueradeExternalCluster}, {SetExternalCluster, MasqueradeExternalCluster}, {SetExternalCluster, MasqueradeExternalCluster}}},
		{"eTP Local", true, RouteOptions{PodsKnown: true},
			[3]why{{SetClusterIP, KeepFromPod}, {SetClusterIP, MasqueradeNotFromPod}, {SetClusterIP, MasqueradeNotFromPod}},
			[3]why{{SetShortCircuit, KeepShortCircuitPod}, {SetShortCircuit, MasqueradeShortCircuitNode}, {SetExternalLocal, KeepExternalLocal}}},
		{"masqueradeAll, no local detector", true, RouteOptions{MasqueradeAll: true},
			[3]why{{SetClusterIP, MasqueradeAllSetting}, {SetClusterIP, MasqueradeAllSetting}, {SetClusterIP, MasqueradeAllSetting}},
			[3]why{{SetPodsUnknown, KeepExternalLocal}, {SetShortCircuit, MasqueradeShortCircuitNode}, {SetExternalLocal, KeepExternalLocal}}},
		{"no local detector", false, RouteOptions{},
			[3]why{{SetClusterIP, KeepNoLocalDetector}, {SetClusterIP, KeepNoLocalDetector}, {SetClusterIP, KeepNoLocalDetector}},
			[3]why{{SetExternalCluster, MasqueradeExternalCluster}, {SetExternalCluster, MasqueradeExternalCluster}, {SetExternalCluster, MasqueradeExternalCluster}}},
		{"IPVS, eTP Local", true, RouteOptions{PodsKnown: true, Dialect: DialectIPVS},
			[3]why{{SetClusterIP, KeepFromPod}, {SetClusterIP, MasqueradeNotFromPod}, {SetClusterIP, MasqueradeNotFromPod}},
			[3]why{{SetIPVSOneSet, KeepExternalLocal}, {SetIPVSOneSet, KeepExternalLocal}, {SetExternalLocal, KeepExternalLocal}}},
	}
	keeps := map[MasqueradeReason]bool{KeepFromPod: true, KeepNoLocalDetector: true, KeepExternalLocal: true, KeepShortCircuitPod: true}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := build(tc.local).Routes(tc.o)
			for i, s := range Sources {
				for _, c := range []struct {
					routes *SourceRoutes
					want   why
				}{{&r.Cluster, tc.cluster[i]}, {&r.External, tc.external[i]}} {
					rt := c.routes.From(s)
					if got := (why{rt.Why.Set, rt.Why.Masquerade}); got != c.want {
						t.Errorf("source %d: why %+v, want %+v", s, got, c.want)
					}
					if keeps[rt.Why.Masquerade] == rt.Masquerade {
						t.Errorf("source %d: masquerade %v contradicts its reason %d", s, rt.Masquerade, rt.Why.Masquerade)
					}
				}
			}
		})
	}
}
