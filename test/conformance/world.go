package conformance

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"kpo.dev/kpo/hack/apiserver"
	"kpo.dev/kpo/hack/netns"
	"kpo.dev/kpo/test/testnet"
)

// Echo ports every pod (and every node host) serves on TCP and UDP. Each reply
// names the server and port, so a wrong targetPort mapping shows.
var echoPorts = []int{8080, 8081, 8082}

// World is what both proxies run against in one run: the test network (API
// server, node namespaces, pods with echo servers, external clients) and the
// API objects of the cases. Nothing in it belongs to either proxy.
type World struct {
	Net     *testnet.Net
	Nodes   []*testnet.Node
	Pods    []*testnet.Pod
	Clients []*Client
	// names maps addresses to what a report calls them (pods, nodes, clients).
	names map[netip.Addr]string
	// sysctls are each node's values before any proxy ran, restored after
	// each proxy so that neither inherits the other's settings.
	sysctls map[*testnet.Node]map[string]string
}

// Client is an external client on the node network. Traffic to the service
// and external ranges goes through node Via; NodePorts are reached directly.
type Client struct {
	*netns.NS
	Name     string
	IP4, IP6 string
	Via      int
}

// Two nodes in two zones, three pods each, and four external clients: two per
// gateway node, one inside the source ranges the cases use (InRange) and one
// outside.
const (
	worldNodes  = 2
	podsPerNode = 3
)

// InRange4/6 are source ranges holding the first two clients (.200, .201) and
// not the others (.202, .203).
const (
	InRange4 = "198.51.100.200/31"
	InRange6 = "2001:db8:1::200/127"
)

// sysctlsToRestore are the node settings a proxy may change.
var sysctlsToRestore = []string{
	"net/ipv4/conf/all/route_localnet", "net/ipv4/conf/default/route_localnet",
	"net/ipv4/conf/eth0/route_localnet", "net/ipv4/conf/lo/route_localnet",
	"net/ipv4/conf/all/arp_ignore", "net/ipv4/conf/all/arp_announce",
	"net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding",
	"net/netfilter/nf_conntrack_tcp_be_liberal",
	"net/netfilter/nf_conntrack_tcp_timeout_established",
	"net/netfilter/nf_conntrack_tcp_timeout_close_wait",
	"net/netfilter/nf_conntrack_udp_timeout", "net/netfilter/nf_conntrack_udp_timeout_stream",
}

// NewWorld builds the network. It is torn down when the test ends.
func NewWorld(t *testing.T, api *apiserver.Env, agentBin string) *World {
	t.Helper()
	tn := testnet.New(t, api, agentBin, worldNodes, podsPerNode)
	w := &World{Net: tn, Nodes: tn.Nodes, names: map[netip.Addr]string{}, sysctls: map[*testnet.Node]map[string]string{}}
	w.Clients = append(w.Clients, &Client{NS: tn.Client, Name: "client-200", IP4: "198.51.100.200", IP6: "2001:db8:1::200", Via: 1})
	for _, c := range []struct{ host, via int }{{201, 2}, {202, 1}, {203, 2}} {
		ns := tn.LAN.AddClientAt(t, fmt.Sprintf("client%d", c.host), c.via, c.host)
		w.Clients = append(w.Clients, &Client{NS: ns, Name: fmt.Sprintf("client-%d", c.host),
			IP4: fmt.Sprintf("198.51.100.%d", c.host), IP6: fmt.Sprintf("2001:db8:1::%d", c.host), Via: c.via})
	}
	for _, node := range tn.Nodes {
		w.name(node.IP4, node.Name)
		w.name(node.IP6, node.Name)
		gw4, gw6 := netns.PodGateways(node.Index)
		// A node masquerades with the address of the link a packet leaves by:
		// either address says "masqueraded by this node".
		w.name(gw4, node.Name)
		w.name(gw6, node.Name)
		for _, port := range echoPorts {
			for _, proto := range []string{"tcp", "udp"} {
				node.ServeEcho(t, proto, fmt.Sprintf(":%d", port), fmt.Sprintf("%s:%d", node.Name, port))
			}
		}
		for _, p := range node.Pods {
			w.Pods = append(w.Pods, p)
			w.name(p.IP4, p.Name)
			w.name(p.IP6, p.Name)
			for _, port := range echoPorts[1:] { // testnet serves 8080
				for _, proto := range []string{"tcp", "udp"} {
					p.ServeEcho(t, proto, fmt.Sprintf(":%d", port), fmt.Sprintf("%s:%d", p.Name, port))
				}
			}
		}
		w.sysctls[node] = readSysctls(t, node)
	}
	for _, c := range w.Clients {
		w.name(c.IP4, c.Name)
		w.name(c.IP6, c.Name)
	}
	w.name("127.0.0.1", "localhost")
	w.name("::1", "localhost")
	w.setZones(t, api)
	return w
}

func (w *World) name(addr, name string) { w.names[netip.MustParseAddr(addr)] = name }

// Name is what reports call an address: a pod, node or client name, else the address.
func (w *World) Name(addr string) string {
	a, err := netip.ParseAddr(addr)
	if err != nil {
		return addr
	}
	if n, ok := w.names[a.Unmap()]; ok {
		return n
	}
	return addr
}

// Zone of node i (1-based): node-1 is in zone-a, node-2 in zone-b.
func Zone(i int) string { return fmt.Sprintf("zone-%c", 'a'+i-1) }

// setZones labels each node with its own zone (testnet puts them all in zone-a).
func (w *World) setZones(t *testing.T, api *apiserver.Env) {
	t.Helper()
	ctx := context.Background()
	for _, node := range w.Nodes {
		obj := &corev1.Node{}
		if err := api.Client.Get(ctx, client.ObjectKey{Name: node.Name}, obj); err != nil {
			t.Fatal(err)
		}
		obj.Labels[corev1.LabelTopologyZone] = Zone(node.Index)
		if err := api.Client.Update(ctx, obj); err != nil {
			t.Fatal(err)
		}
	}
}

func readSysctls(t *testing.T, node *testnet.Node) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, k := range sysctlsToRestore {
		if v, err := node.ReadSysctl(k); err == nil {
			out[k] = strings.TrimSpace(v)
		}
	}
	return out
}

// reset returns every node to the state before any proxy ran: sysctls as they
// were, no conntrack entries (a flow of one proxy must not steer the other's
// packets). The proxies' own rules are removed by their Cleanup.
func (w *World) reset(t *testing.T) {
	t.Helper()
	for _, node := range w.Nodes {
		for k, v := range w.sysctls[node] {
			if cur, err := node.ReadSysctl(k); err == nil && strings.TrimSpace(cur) != v {
				if err := node.Sysctl(k, v); err != nil {
					t.Logf("restoring %s on %s: %v", k, node.Name, err)
				}
			}
		}
		_, _ = node.Run("conntrack", "-F")
		_, _ = node.Run("conntrack", "-F", "-f", "ipv6")
	}
}

// Pod finds a pod by name.
func (w *World) Pod(name string) *testnet.Pod {
	for _, p := range w.Pods {
		if p.Name == name {
			return p
		}
	}
	panic("no pod " + name)
}

// warmNeighbours resolves every link-layer neighbour a probe's answer or
// refusal may need (node ↔ client, node ↔ node, node ↔ own pods, both
// families) before probing. Otherwise the first proxy to run pays for
// neighbour discovery: an ICMPv6 error queued behind a resolution was seen
// lost, so one proxy's rejects read as timeouts and the other's not.
func (w *World) warmNeighbours() {
	var wg sync.WaitGroup
	for _, node := range w.Nodes {
		var targets []string
		for _, c := range w.Clients {
			targets = append(targets, net.JoinHostPort(c.IP4, "9"), net.JoinHostPort(c.IP6, "9"))
		}
		for _, other := range w.Nodes {
			if other != node {
				targets = append(targets, net.JoinHostPort(other.IP4, "8080"), net.JoinHostPort(other.IP6, "8080"))
			}
		}
		for _, p := range node.Pods {
			targets = append(targets, net.JoinHostPort(p.IP4, "8080"), net.JoinHostPort(p.IP6, "8080"))
		}
		for _, t := range targets {
			wg.Add(1)
			go func() {
				defer wg.Done()
				// Refused or answered: either way both ends have resolved.
				dial(Probe{Network: "tcp", Addr: t, ns: node.NS})
			}()
		}
	}
	wg.Wait()
}
