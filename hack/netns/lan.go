package netns

import (
	"fmt"
	"strings"
)

// Addresses of the multi-node networks (shared/ARCHITECTURE.md's address plan).
const (
	// LANIP4/6 is the bridge's own address: where the local cluster's API server listens.
	LANIP4 = "198.51.100.254"
	LANIP6 = "2001:db8:1::254"
)

// NodeAddr4 and NodeAddr6 are node i's addresses on the node network.
func NodeAddr4(i int) string { return fmt.Sprintf("198.51.100.%d", i) }

// NodeAddr6 is NodeAddr4's IPv6 twin.
func NodeAddr6(i int) string { return fmt.Sprintf("2001:db8:1::%x", i) }

// PodCIDR4 and PodCIDR6 are node i's pod ranges. (ARCHITECTURE.md says
// fd10:244:N::/64 for IPv6, which lies outside the fd10:244::/48 pod network.)
func PodCIDR4(i int) string { return fmt.Sprintf("10.244.%d.0/24", i) }

// PodCIDR6 is PodCIDR4's IPv6 twin.
func PodCIDR6(i int) string { return fmt.Sprintf("fd10:244:0:%d::/64", i) }

// PodGateways are node i's addresses on each of its pod links.
func PodGateways(i int) (gw4, gw6 string) {
	return fmt.Sprintf("10.244.%d.1", i), fmt.Sprintf("fd10:244:0:%d::1", i)
}

// serviceAndExternal are the ranges a node hands to the proxy: the service
// ClusterIPs and the external / load-balancer IPs.
var serviceAndExternal = []string{"10.96.0.0/16", "203.0.113.0/24", "fd10:96::/112", "2001:db8:2::/64"}

// LAN is the node network: a bridge (br0) in a namespace of its own, so that
// nothing is created in the root namespace and two networks on the same
// addresses can coexist. The bridge itself holds LANIP4/6.
type LAN struct {
	*NS
}

// NewLAN creates the node network.
func NewLAN(t T) *LAN {
	t.Helper()
	l := &LAN{NS: New(t, "lan")}
	l.MustRun(t, "ip", "link", "add", "br0", "type", "bridge")
	l.MustRun(t, "ip", "link", "set", "br0", "up")
	l.AddAddr(t, "br0", LANIP4+"/24")
	l.AddAddr(t, "br0", LANIP6+"/64")
	return l
}

// Attach plugs a namespace into the bridge with a veth named eth0 (its bridge
// port is "p<tag>").
func (l *LAN) Attach(t T, ns *NS, tag string) {
	t.Helper()
	port := "p" + tag
	Veth(t, l.NS, port, ns, "eth0")
	l.MustRun(t, "ip", "link", "set", port, "master", "br0")
}

// AddClient adds an external client (198.51.100.200) that reaches the service
// and external ranges through node via.
func (l *LAN) AddClient(t T, via int) *NS {
	t.Helper()
	return l.AddClientAt(t, "client", via, 200)
}

// AddClientAt adds an external client named name at host number host of the
// node network (198.51.100.<host>, 2001:db8:1::<host>), reaching the service
// and external ranges through node via. Hosts 200 and up are clients.
func (l *LAN) AddClientAt(t T, name string, via, host int) *NS {
	t.Helper()
	c := New(t, name)
	l.Attach(t, c, fmt.Sprintf("c%d", host))
	c.AddAddr(t, "eth0", fmt.Sprintf("198.51.100.%d/24", host))
	c.AddAddr(t, "eth0", fmt.Sprintf("2001:db8:1::%d/64", host))
	for _, dst := range serviceAndExternal {
		gw := NodeAddr4(via)
		if strings.Contains(dst, ":") {
			gw = NodeAddr6(via)
		}
		c.Route(t, dst, gw, "eth0")
	}
	return c
}

// AddNode adds node i: a forwarding namespace on the bridge with NodeIP4/6(i)
// and no default route. The service and external ranges go into a sink (a
// veth whose peer is down), so that traffic no rule translates is a clean
// timeout and never leaves the sandbox.
func (l *LAN) AddNode(t T, i int) *NS {
	t.Helper()
	node := New(t, fmt.Sprintf("node%d", i))
	l.Attach(t, node, fmt.Sprintf("n%d", i))
	node.AddAddr(t, "eth0", NodeAddr4(i)+"/24")
	node.AddAddr(t, "eth0", NodeAddr6(i)+"/64")
	// default/forwarding too: links created later copy it.
	for _, k := range []string{"net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding", "net/ipv6/conf/default/forwarding"} {
		node.MustSysctl(t, k, "1")
	}
	addSink(t, node, fmt.Sprintf("sink%d", i))
	return node
}

// addSink routes the service and external ranges of node into a veth whose
// peer (namespace name) is down, with ARP off: what no rule translates is
// dropped there.
func addSink(t T, node *NS, name string) {
	t.Helper()
	sink := New(t, name)
	Veth(t, node, "sink0", sink, "sink1")
	node.MustRun(t, "ip", "link", "set", "sink0", "arp", "off")
	sink.MustRun(t, "ip", "link", "set", "sink1", "down")
	for _, dst := range serviceAndExternal {
		node.Route(t, dst, "", "sink0")
	}
}

// RoutePods makes the pod network flat, as a routed CNI plugin does: every
// node (and the LAN namespace itself, where an API server may run) reaches
// node i's pod ranges via node i. nodes maps node index to namespace.
func (l *LAN) RoutePods(t T, nodes map[int]*NS) {
	t.Helper()
	for i := range nodes {
		for j, ns := range nodes {
			if i != j {
				ns.Route(t, PodCIDR4(i), NodeAddr4(i), "eth0")
				ns.Route(t, PodCIDR6(i), NodeAddr6(i), "eth0")
			}
		}
		l.Route(t, PodCIDR4(i), NodeAddr4(i), "br0")
		l.Route(t, PodCIDR6(i), NodeAddr6(i), "br0")
	}
}
