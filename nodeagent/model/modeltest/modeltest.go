// Package modeltest builds node-local model snapshots for the backends' tests
// (unit, real-kernel and in-VM), so that every backend is tested against
// snapshots of the same shape.
package modeltest

import (
	"net/netip"

	corev1 "k8s.io/api/core/v1"

	"kpo.dev/kpo/nodeagent/model"
)

// ServicePort is a TCP service port whose cluster and external endpoints are
// eps; tests mutate the result for everything else.
func ServicePort(namespace, name, clusterIP string, port int32, eps ...model.Endpoint) *model.ServicePort {
	ip := netip.MustParseAddr(clusterIP)
	return &model.ServicePort{
		Key: model.ServicePortKey{
			ServicePortName: model.ServicePortName{Namespace: namespace, Name: name, Protocol: corev1.ProtocolTCP},
			Family:          model.FamilyOf(ip),
		},
		Protocol: corev1.ProtocolTCP, ClusterIP: ip, Port: port,
		ClusterEndpoints: eps, ExternalEndpoints: eps, HasEndpoints: len(eps) > 0,
	}
}

// LocalPolicy gives sp externalTrafficPolicy Local, as the model resolves it:
// external traffic goes to local, pods and the node short-circuit to the
// cluster endpoints.
func LocalPolicy(sp *model.ServicePort, local ...model.Endpoint) *model.ServicePort {
	sp.ExternalPolicyLocal = true
	sp.ShortCircuitEndpoints = sp.ClusterEndpoints
	sp.ExternalEndpoints = local
	return sp
}

// PodNetworks are the address plan's pod networks, as a node's cluster CIDRs.
func PodNetworks() map[model.Family][]netip.Prefix {
	return map[model.Family][]netip.Prefix{
		model.IPv4: {netip.MustParsePrefix("10.244.0.0/16")},
		model.IPv6: {netip.MustParsePrefix("fd10:244::/48")},
	}
}

// ServiceNetworks are the address plan's service ranges, by family.
func ServiceNetworks() map[model.Family][]netip.Prefix {
	return map[model.Family][]netip.Prefix{
		model.IPv4: {netip.MustParsePrefix("10.96.0.0/16")},
		model.IPv6: {netip.MustParsePrefix("fd10:96::/112")},
	}
}

// Snapshot is a snapshot of node with sps.
func Snapshot(node model.NodeInfo, sps ...*model.ServicePort) *model.Snapshot {
	return With(&model.Snapshot{Node: node}, sps...)
}

// With is a copy of s with sps added or replaced; the other ServicePort
// pointers are kept, as the tracker keeps unchanged ones.
func With(s *model.Snapshot, sps ...*model.ServicePort) *model.Snapshot {
	c := *s
	c.Services = make(map[model.ServicePortKey]*model.ServicePort, len(s.Services)+len(sps))
	for k, v := range s.Services {
		c.Services[k] = v
	}
	for _, sp := range sps {
		c.Services[sp.Key] = sp
	}
	return &c
}

// Without is a copy of s without sps.
func Without(s *model.Snapshot, sps ...*model.ServicePort) *model.Snapshot {
	c := With(s)
	for _, sp := range sps {
		delete(c.Services, sp.Key)
	}
	return c
}

// LoadBalancer gives sp a load-balancer IP and the source ranges allowed to
// reach it.
func LoadBalancer(sp *model.ServicePort, ip string, sourceRanges ...string) *model.ServicePort {
	sp.LoadBalancerIPs = append(sp.LoadBalancerIPs, netip.MustParseAddr(ip))
	for _, r := range sourceRanges {
		sp.SourceRanges = append(sp.SourceRanges, netip.MustParsePrefix(r))
	}
	return sp
}
