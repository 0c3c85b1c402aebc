package nodeinfo

import (
	"net/netip"
	"reflect"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
	"kpo.dev/kpo/nodeagent/model"
)

// TestResolve: each detect-local mode gives the node's NodeInfo as
// kube-proxy's detect-local would tell pods apart, and nodePortAddresses
// resolves against the local addresses.
func TestResolve(t *testing.T) {
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-1"},
		Spec:   corev1.NodeSpec{PodCIDRs: []string{"10.244.1.0/24"}},
		Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "198.51.100.1"}}}}
	local := []netip.Addr{netip.MustParseAddr("198.51.100.1"), netip.MustParseAddr("10.244.1.1")}
	p := netip.MustParsePrefix
	tests := []struct {
		name      string
		cfg       kpov1.AgentConfiguration
		cidrs     []netip.Prefix
		iface     string
		prefix    bool
		nodePorts map[model.Family][]netip.Addr
	}{
		{name: "clusterCIDRs", cfg: kpov1.AgentConfiguration{Mode: kpov1.ModeIPTables, ProxySettings: kpov1.ProxySettings{ClusterCIDRs: []kpov1.CIDR{"10.244.0.0/16"}}},
			cidrs: []netip.Prefix{p("10.244.0.0/16")}, nodePorts: map[model.Family][]netip.Addr{}},
		{name: "NodeCIDR", cfg: kpov1.AgentConfiguration{Mode: kpov1.ModeIPTables, ProxySettings: kpov1.ProxySettings{
			ClusterCIDRs: []kpov1.CIDR{"10.244.0.0/16"}, DetectLocalMode: kpov1.DetectLocalNodeCIDR}},
			cidrs: []netip.Prefix{p("10.244.1.0/24")}, nodePorts: map[model.Family][]netip.Addr{}},
		{name: "InterfaceNamePrefix", cfg: kpov1.AgentConfiguration{Mode: kpov1.ModeIPTables, ProxySettings: kpov1.ProxySettings{
			DetectLocalMode: kpov1.DetectLocalInterfaceNamePrefix, DetectLocal: kpov1.DetectLocalSettings{InterfaceNamePrefix: "veth"}}},
			iface: "veth", prefix: true, nodePorts: map[model.Family][]netip.Addr{}},
		{name: "nftables: NodePorts on the primary address", cfg: kpov1.AgentConfiguration{Mode: kpov1.ModeNFTables, ProxySettings: kpov1.ProxySettings{
			DetectLocalMode: kpov1.DetectLocalBridgeInterface, DetectLocal: kpov1.DetectLocalSettings{BridgeInterface: "cbr0"}}},
			iface: "cbr0", nodePorts: map[model.Family][]netip.Addr{model.IPv4: {netip.MustParseAddr("198.51.100.1")}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			info := Resolve(&tc.cfg, "node-1", node, local, nil)
			if got := info.ClusterCIDRs[model.IPv4]; !reflect.DeepEqual(got, tc.cidrs) {
				t.Errorf("cluster CIDRs %v, want %v", got, tc.cidrs)
			}
			if info.LocalInterface != tc.iface || info.LocalInterfacePrefix != tc.prefix {
				t.Errorf("interface %q (prefix %v), want %q (%v)", info.LocalInterface, info.LocalInterfacePrefix, tc.iface, tc.prefix)
			}
			if !reflect.DeepEqual(info.NodePortIPs, tc.nodePorts) {
				t.Errorf("NodePort addresses %v, want %v", info.NodePortIPs, tc.nodePorts)
			}
		})
	}
}
