//go:build vmtest

package inside

import (
	"net/netip"
	"testing"

	"kpo.dev/kpo/hack/netns"
	"kpo.dev/kpo/nodeagent/backend/ipvs"
)

// flushChain empties one of the companion's filter chains in the flavour the
// backend chose (the VM has no kubelet hint: iptables-nft), for the controls
// that show what the node did without the chain; the next full sync writes
// it again.
func flushChain(t *testing.T, e *env, chain string) {
	t.Helper()
	e.top.Node.MustRun(t, "iptables-nft", "-t", "filter", "-F", chain)
}

// TestHostPortFilter: every service IP is a local address on kpo-ipvs0, so a
// host daemon listening on all addresses (sshd on :22, here :2222) would
// answer on <ClusterIP>:2222 and <LB IP>:2222. As kube-proxy's
// KUBE-IPVS-FILTER, new connections to a service IP on a port no service
// serves are refused; the service ports, a health-check node port, and the
// node's own addresses are not. Control: with KPO-IPVS-FILTER flushed (the
// rules before it existed) the daemon answers on the ClusterIP.
func TestHostPortFilter(t *testing.T) {
	e := newEnv(t, 2, ipvs.Config{})
	node, pod, client := e.top.Node, e.top.Pods[0], e.top.Client
	node.ServeEcho(t, "tcp4", ":2222", "host-daemon")
	node.ServeEcho(t, "tcp4", ":32000", "health-check")
	sp := svc("web", clusterIP, 80, e.ep(0), e.ep(1))
	sp.LoadBalancerIPs = []netip.Addr{mustAddr(lbIP4)}
	sp.ExternalIPs = []netip.Addr{mustAddr(externalIP4)}
	sp.HealthCheckNodePort = 32000
	snap := snapOf(sp)
	e.sync(snap, true)

	dialN(t, pod.NS, clusterIP+":80", 2)
	dialN(t, client, lbIP4+":80", 2)
	for _, a := range []string{clusterIP + ":2222", lbIP4 + ":2222", externalIP4 + ":2222"} {
		mustFail(t, pod.NS, "tcp4", "", a, netns.ErrRefused)
		mustFail(t, client, "tcp4", "", a, netns.ErrRefused)
	}
	if seen := dialN(t, client, netns.NodeIP4+":2222", 1); seen["host-daemon"] != 1 {
		t.Errorf("the node's own address: %v", seen)
	}
	if seen := dialN(t, client, lbIP4+":32000", 1); seen["health-check"] != 1 {
		t.Errorf("health-check node port on the LB IP: %v", seen)
	}

	flushChain(t, e, "KPO-IPVS-FILTER")
	if seen := dialN(t, pod.NS, clusterIP+":2222", 1); seen["host-daemon"] != 1 {
		t.Errorf("control, filter flushed: %v", seen)
	}
	e.sync(snap, true)
	mustFail(t, pod.NS, "tcp4", "", clusterIP+":2222", netns.ErrRefused)
}

// TestForwardPolicyDrop: with the node's FORWARD policy DROP (a host
// firewall), node-port traffic still flows, as with kube-proxy's
// KUBE-FORWARD: IPVS's replies cross FORWARD as ESTABLISHED. Control: with
// KPO-IPVS-FORWARD flushed the node port times out.
func TestForwardPolicyDrop(t *testing.T) {
	e := newEnv(t, 1, ipvs.Config{})
	sp := svc("np", clusterIP, 80, e.ep(0))
	sp.NodePort = 30080
	snap := snapOf(sp)
	e.sync(snap, true)
	e.top.Node.MustRun(t, "iptables-nft", "-P", "FORWARD", "DROP")
	dialN(t, e.top.Client, netns.NodeIP4+":30080", 2)
	flushChain(t, e, "KPO-IPVS-FORWARD")
	mustFail(t, e.top.Client, "tcp4", "", netns.NodeIP4+":30080", netns.ErrTimeout)
	e.sync(snap, true)
	dialN(t, e.top.Client, netns.NodeIP4+":30080", 2)
}
