package nftables

import (
	"fmt"
	"net/netip"

	corev1 "k8s.io/api/core/v1"

	"kpo.dev/kpo/nodeagent/backend"
	"kpo.dev/kpo/nodeagent/model"
)

var testSettings = backend.Settings{MasqueradeBit: 14}

func key(ns, name string, fam model.Family) model.ServicePortKey {
	return model.ServicePortKey{ServicePortName: model.ServicePortName{Namespace: ns, Name: name, Protocol: corev1.ProtocolTCP}, Family: fam}
}

func ep(ip string, port int32, local bool) model.Endpoint {
	return model.Endpoint{IP: netip.MustParseAddr(ip), Port: port, Local: local, Ready: true}
}

// svc builds a TCP ServicePort; mutate the result for the other fields.
func svc(name, clusterIP string, port int32, eps ...model.Endpoint) *model.ServicePort {
	ip := netip.MustParseAddr(clusterIP)
	return &model.ServicePort{
		Key: key("default", name, model.FamilyOf(ip)), Protocol: corev1.ProtocolTCP,
		ClusterIP: ip, Port: port, ClusterEndpoints: eps, ExternalEndpoints: eps,
	}
}

func snapshot(node model.NodeInfo, sps ...*model.ServicePort) *model.Snapshot {
	s := &model.Snapshot{Services: map[model.ServicePortKey]*model.ServicePort{}, Node: node}
	for _, sp := range sps {
		s.Services[sp.Key] = sp
	}
	return s
}

func withSnap(s *model.Snapshot, sps ...*model.ServicePort) *model.Snapshot {
	n := &model.Snapshot{Services: map[model.ServicePortKey]*model.ServicePort{}, Node: s.Node}
	for k, v := range s.Services {
		n.Services[k] = v
	}
	for _, sp := range sps {
		n.Services[sp.Key] = sp
	}
	return n
}

var testNode = model.NodeInfo{
	Name: "node",
	ClusterCIDRs: map[model.Family][]netip.Prefix{
		model.IPv4: {netip.MustParsePrefix("10.244.0.0/16")},
		model.IPv6: {netip.MustParsePrefix("fd10:244::/48")},
	},
}

// bigSnapshot has n services with eps endpoints each (IPv4).
func bigSnapshot(n, eps int) *model.Snapshot {
	s := snapshot(testNode)
	for i := range n {
		var e []model.Endpoint
		for j := range eps {
			x := i*eps + j
			e = append(e, ep(fmt.Sprintf("10.244.%d.%d", (x>>8)&255, x&255), 8080, j == 0))
		}
		sp := svc(fmt.Sprintf("svc%d", i), fmt.Sprintf("10.96.%d.%d", (i>>8)&255, i&255), 80, e...)
		sp.NodePort = int32(30000 + i%2000)
		if i >= 2000 {
			sp.NodePort = 0
		}
		s.Services[sp.Key] = sp
	}
	return s
}
