package nodeports

import (
	"net/netip"
	"reflect"
	"testing"

	corev1 "k8s.io/api/core/v1"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
	"kpo.dev/kpo/nodeagent/model"
)

func addrs(ss ...string) []netip.Addr {
	out := []netip.Addr{}
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

func TestResolve(t *testing.T) {
	node := &corev1.Node{Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{
		{Type: corev1.NodeHostName, Address: "node-1"},
		{Type: corev1.NodeExternalIP, Address: "203.0.113.1"},
		{Type: corev1.NodeInternalIP, Address: "198.51.100.1"},
		{Type: corev1.NodeInternalIP, Address: "2001:db8:1::1"},
	}}}
	// The node's interfaces: lo, eth0 (both families), a pod link.
	local := addrs("127.0.0.1", "::1", "198.51.100.1", "2001:db8:1::1", "10.244.1.1", "fd10:244:0:1::1", "fe80::1")
	all := map[model.Family][]netip.Addr{}
	for _, tc := range []struct {
		name    string
		setting []string
		mode    kpov1.Mode
		want    map[model.Family][]netip.Addr
	}{
		{"empty, iptables: every local address", nil, kpov1.ModeIPTables, all},
		{"empty, nftables: the primary IPs (kube-proxy's default there)", nil, kpov1.ModeNFTables,
			map[model.Family][]netip.Addr{model.IPv4: addrs("198.51.100.1"), model.IPv6: addrs("2001:db8:1::1")}},
		{"primary: InternalIP before ExternalIP", []string{"primary"}, kpov1.ModeIPTables,
			map[model.Family][]netip.Addr{model.IPv4: addrs("198.51.100.1"), model.IPv6: addrs("2001:db8:1::1")}},
		{"a CIDR selects interface addresses; the other family is open", []string{"10.244.0.0/16"}, kpov1.ModeIPTables,
			map[model.Family][]netip.Addr{model.IPv4: addrs("10.244.1.1")}},
		{"a CIDR matching nothing opens nothing in its family", []string{"203.0.113.0/24"}, kpov1.ModeNFTables,
			map[model.Family][]netip.Addr{model.IPv4: {}}},
		{"both families", []string{"198.51.100.0/24", "fd10:244::/48"}, kpov1.ModeIPTables,
			map[model.Family][]netip.Addr{model.IPv4: addrs("198.51.100.1"), model.IPv6: addrs("fd10:244:0:1::1")}},
		{"localhost", []string{"localhost"}, kpov1.ModeIPTables,
			map[model.Family][]netip.Addr{model.IPv4: addrs("127.0.0.1"), model.IPv6: addrs("::1")}},
		{"all", []string{"all"}, kpov1.ModeNFTables, all},
		{"a zero CIDR opens its family", []string{"0.0.0.0/0", "2001:db8:1::/64"}, kpov1.ModeIPTables,
			map[model.Family][]netip.Addr{model.IPv6: addrs("2001:db8:1::1")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := Resolve(tc.setting, tc.mode, node, local)
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("Resolve(%v, %s) = %v, want %v", tc.setting, tc.mode, got, tc.want)
			}
		})
	}
}

func TestPrimaryWithoutNode(t *testing.T) {
	// Without a known node IP, "primary" pins nothing: both families stay open,
	// as kube-proxy does when it falls back to loopback.
	if got := Resolve([]string{"primary"}, kpov1.ModeNFTables, nil, addrs("198.51.100.1")); len(got) != 0 {
		t.Errorf("got %v, want every address of both families", got)
	}
}
