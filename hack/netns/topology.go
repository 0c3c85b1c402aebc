package netns

import (
	"fmt"
)

// Addresses of the one-node topology, from the address plan in
// shared/ARCHITECTURE.md.
const (
	NodeIP4   = "198.51.100.1"
	NodeIP6   = "2001:db8:1::1"
	ClientIP4 = "198.51.100.200"
	ClientIP6 = "2001:db8:1::200"
	// PodGateway4/6 is the node's address on every pod link (point-to-point, as
	// routed CNI plugins do).
	PodGateway4 = "10.244.1.1"
	// Node N's IPv6 pods get fd10:244:0:N::/64. (ARCHITECTURE.md says
	// fd10:244:N::/64, which lies outside the fd10:244::/48 pod network.)
	PodGateway6 = "fd10:244:0:1::1"
)

// Pod is a pod namespace behind the node.
type Pod struct {
	*NS
	PodName string
	IP4     string
	IP6     string
}

// OneNode is a node namespace with pods behind it and an external client on the
// node network:
//
//	ext (198.51.100.200) ──eth0── node (198.51.100.1) ──vpN── podN (10.244.1.(10+N))
//
// The node forwards, has no default route, and routes the service and external
// ranges into a sink (a veth whose peer is down), so that traffic the proxy does
// not translate is dropped (a clean timeout) rather than leaving the sandbox.
type OneNode struct {
	Node, Client *NS
	Pods         []*Pod
}

// NewOneNode builds the topology with pods pods. Everything is removed when
// the test ends.
func NewOneNode(t T, pods int) *OneNode {
	t.Helper()
	node := New(t, "node")
	ext := New(t, "ext")
	// default/forwarding too: links created later copy it.
	for _, k := range []string{"net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding", "net/ipv6/conf/default/forwarding"} {
		node.MustSysctl(t, k, "1")
	}

	Veth(t, node, "eth0", ext, "eth0")
	node.AddAddr(t, "eth0", NodeIP4+"/24")
	node.AddAddr(t, "eth0", NodeIP6+"/64")
	ext.AddAddr(t, "eth0", ClientIP4+"/24")
	ext.AddAddr(t, "eth0", ClientIP6+"/64")
	for _, dst := range []string{"10.96.0.0/16", "203.0.113.0/24", "10.244.0.0/16"} {
		ext.Route(t, dst, NodeIP4, "eth0")
	}
	for _, dst := range []string{"fd10:96::/112", "2001:db8:2::/64", "fd10:244::/48"} {
		ext.Route(t, dst, NodeIP6, "eth0")
	}

	// The sink: service and external ranges that no rule translates end here.
	addSink(t, node, "sink")

	top := &OneNode{Node: node, Client: ext}
	for i := range pods {
		top.AddPod(t, fmt.Sprintf("pod%d", i))
	}
	return top
}

// AddPod adds a pod namespace behind the node and returns it.
func (o *OneNode) AddPod(t T, name string) *Pod {
	t.Helper()
	n := len(o.Pods)
	p := &Pod{
		NS:      New(t, name),
		PodName: name,
		IP4:     fmt.Sprintf("10.244.1.%d", 10+n),
		IP6:     fmt.Sprintf("fd10:244:0:1::%x", 10+n),
	}
	PlugPod(t, o.Node, fmt.Sprintf("vp%d", n), p.NS, p.IP4, p.IP6, PodGateway4, PodGateway6)
	o.Pods = append(o.Pods, p)
	return p
}

// PlugPod connects a pod namespace to its node the way routed CNI plugins do: a
// veth (link on the node, eth0 in the pod), the node's gateway addresses on the
// link, a /32 (/128) route to the pod on the node, and the pod's default routes
// via the gateway.
func PlugPod(t T, node *NS, link string, pod *NS, ip4, ip6, gw4, gw6 string) {
	t.Helper()
	Veth(t, node, link, pod, "eth0")
	node.AddAddr(t, link, gw4+"/32")
	node.AddAddr(t, link, gw6+"/128")
	node.Route(t, ip4+"/32", "", link)
	node.Route(t, ip6+"/128", "", link)
	pod.AddAddr(t, "eth0", ip4+"/32")
	pod.AddAddr(t, "eth0", ip6+"/128")
	pod.Route(t, gw4, "", "eth0")
	pod.Route(t, "default", gw4, "eth0")
	pod.Route(t, gw6, "", "eth0")
	pod.MustRun(t, "ip", "-6", "route", "add", "default", "via", gw6, "dev", "eth0")
}
