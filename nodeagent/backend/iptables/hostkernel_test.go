package iptables

import (
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"

	"kpo.dev/kpo/hack/netns"
	"kpo.dev/kpo/nodeagent/backend"
	"kpo.dev/kpo/nodeagent/model"
)

// absence bounds the wait for a packet that must not come: a packet that
// does come crosses two veths in well under a millisecond.
const absence = 500 * time.Millisecond

// TestHostRulesRealKernel checks with packets, in both iptables flavours,
// the rules kube-proxy's iptables mode adds for the host: KPO-FORWARD accepts
// service traffic where the FORWARD policy drops and drops what conntrack
// calls INVALID; KPO-FIREWALL keeps the network off 127.0.0.0/8 once
// route_localnet is set. Each case ends with a control: with the rule's
// chain flushed (as before these rules existed) the packet goes through, so
// the case fails on a node without them.
func TestHostRulesRealKernel(t *testing.T) {
	netns.Skip(t)
	for _, v := range []Variant{VariantNFT, VariantLegacy} {
		t.Run(string(v), func(t *testing.T) { testHostRules(t, v) })
	}
}

// hostRig is a node with kpo's host rules and one node port to a pod.
type hostRig struct {
	node, client *netns.NS
	pod          *netns.Pod
	rb           realBackend
	bin          string
	snap         *model.Snapshot
}

// flushed runs fn with one of kpo's filter chains emptied, then repairs it.
func (r *hostRig) flushed(t *testing.T, chain string, fn func()) {
	t.Helper()
	r.node.MustRun(t, r.bin, "-t", "filter", "-F", chain)
	fn()
	r.rb.sync(t, r.snap, true)
}

func testHostRules(t *testing.T, v Variant) {
	top := netns.NewOneNode(t, 1)
	pod := top.Pods[0]
	pod.ServeEcho(t, "tcp", ":8080", pod.PodName)
	s := backend.Settings{MasqueradeBit: 14, LocalhostNodePorts: true}
	b, err := New(s, []model.Family{model.IPv4}, WithVariant(v))
	if err != nil {
		t.Fatal(err)
	}
	np := svc("np", "10.96.0.10", 80, podEP(pod, false))
	np.NodePort = 30080
	bin, _ := v.binaries(model.IPv4)
	r := &hostRig{node: top.Node, client: top.Client, pod: pod, rb: realBackend{b, top.Node}, bin: bin, snap: snapOf(np)}
	r.rb.sync(t, r.snap, true)
	t.Run("forward policy drop", func(t *testing.T) { hostForwardPolicyDrop(t, r) })
	t.Run("invalid dropped", func(t *testing.T) { hostInvalidDropped(t, r) })
	t.Run("localnet guard", func(t *testing.T) { hostLocalnetGuard(t, r) })
}

// hostForwardPolicyDrop: node ports work under a FORWARD policy DROP
// (KPO-FORWARD accepts them).
func hostForwardPolicyDrop(t *testing.T, r *hostRig) {
	node, client, bin := r.node, r.client, r.bin
	node.MustRun(t, bin, "-P", "FORWARD", "DROP")
	defer node.MustRun(t, bin, "-P", "FORWARD", "ACCEPT")
	if _, err := client.Dial("tcp", netns.NodeIP4+":30080", 2*time.Second); err != nil {
		t.Errorf("node port with FORWARD policy DROP: %v", err)
	}
	r.flushed(t, chainForward, func() {
		if _, err := client.Dial("tcp", netns.NodeIP4+":30080", absence); !errors.Is(err, netns.ErrTimeout) {
			t.Errorf("control, KPO-FORWARD flushed: %v, want a timeout", err)
		}
	})
}

// hostInvalidDropped: a conntrack-INVALID segment is not forwarded.
func hostInvalidDropped(t *testing.T, r *hostRig) {
	node, client, pod := r.node, r.client, r.pod
	w := newWire(t, client, "eth0", node, "eth0")
	c := newCapture(t, pod.NS, "eth0")
	from, to := netip.MustParseAddr(netns.ClientIP4), netip.MustParseAddr(pod.IP4)
	// SYN+FIN is no valid TCP flag combination: conntrack marks it INVALID.
	bad := segment{src: from, dst: to, sport: 40001, dport: 8080, seq: 1001, flags: tcpSYN | tcpFIN}
	arrives := func(s segment) func(segment) bool {
		return func(got segment) bool { return got.seq == s.seq && got.sport == s.sport && got.dst == s.dst }
	}
	w.send(t, bad)
	if got, ok := c.wait(t, absence, arrives(bad)); ok {
		t.Errorf("INVALID segment forwarded to the pod: %v", got)
	}
	good := segment{src: from, dst: to, sport: 40002, dport: 8080, seq: 2002, flags: tcpSYN}
	w.send(t, good)
	if _, ok := c.wait(t, 2*time.Second, arrives(good)); !ok {
		t.Fatal("a valid SYN on the same path did not arrive: the capture is broken")
	}
	r.flushed(t, chainForward, func() {
		bad.sport, bad.seq = 40003, 3003
		w.send(t, bad)
		if _, ok := c.wait(t, 2*time.Second, arrives(bad)); !ok {
			t.Error("control, KPO-FORWARD flushed: the INVALID segment did not arrive")
		}
	})
}

// hostLocalnetGuard: with route_localnet on for localhost node ports, the
// network cannot reach a loopback-only daemon (KPO-FIREWALL's guard).
func hostLocalnetGuard(t *testing.T, r *hostRig) {
	node, client, pod := r.node, r.client, r.pod
	if got, err := node.ReadSysctl(sysctlRouteLocalnet); err != nil || got != "1" {
		t.Fatalf("route_localnet %q, %v", got, err)
	}
	// Node ports still answer on localhost, from the node itself.
	if r, err := node.Dial("tcp", "127.0.0.1:30080", 2*time.Second); err != nil || r.Server != pod.PodName {
		t.Errorf("localhost node port from the node: %+v, %v", r, err)
	}
	// A daemon that listens on loopback only, and a client on the
	// network sending it a SYN (sockets cannot: 127.0.0.1 is martian).
	var l net.Listener
	if err := node.Do(func() error {
		var err error
		l, err = net.Listen("tcp4", "127.0.0.1:9999")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = l.Close() }()
	w := newWire(t, client, "eth0", node, "eth0")
	c := newCapture(t, client, "eth0")
	syn := segment{src: netip.MustParseAddr(netns.ClientIP4), dst: netip.MustParseAddr("127.0.0.1"),
		sport: 40010, dport: 9999, seq: 4004, flags: tcpSYN}
	synAck := func(s segment) func(segment) bool {
		return func(got segment) bool {
			return got.sport == 9999 && got.dport == s.sport && got.flags&(tcpSYN|tcpACK) == tcpSYN|tcpACK
		}
	}
	w.send(t, syn)
	if got, ok := c.wait(t, absence, synAck(syn)); ok {
		t.Errorf("the loopback-only daemon answered the network: %v", got)
	}
	r.flushed(t, chainFirewall, func() {
		syn.sport, syn.seq = 40011, 5005
		w.send(t, syn)
		if _, ok := c.wait(t, 2*time.Second, synAck(syn)); !ok {
			t.Error("control, KPO-FIREWALL flushed: no SYN-ACK from the loopback-only daemon")
		}
	})
}
