//go:build vmtest

package inside

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"syscall"
	"testing"

	"kpo.dev/kpo/nodeagent/backend/backendtest"
	"kpo.dev/kpo/nodeagent/backend/ipvs"
	"kpo.dev/kpo/nodeagent/model"
	"kpo.dev/kpo/test/netns"
)

// Addresses of these tests, from the address plan (shared/ARCHITECTURE.md):
// external and load-balancer IPs in 203.0.113.0/24, a second external client
// on the node network (.200 and up).
const (
	externalIP4  = "203.0.113.10"
	lbIP4        = "203.0.113.20"
	otherClient4 = "198.51.100.201"
)

// TestExternalAndLoadBalancerIPs: external and load-balancer IPs are VIPs on
// kpo-ipvs0 that reach the endpoints from outside the node (masqueraded, policy
// Cluster). loadBalancerSourceRanges let the allowed source reach the LB IP and
// drop the others (the companion FW/FW-SRC sets), and only on the LB IP.
func TestExternalAndLoadBalancerIPs(t *testing.T) {
	e := newEnv(t, 2, ipvs.Config{})
	// A second external client address, outside the source range.
	e.top.Client.AddAddr(t, "eth0", otherClient4+"/24")
	allowed, other := netns.ClientIP4+":0", otherClient4+":0"
	sp := svc("lb", clusterIP, 80, e.ep(0), e.ep(1))
	sp.ExternalIPs = []netip.Addr{mustAddr(externalIP4)}
	sp.LoadBalancerIPs = []netip.Addr{mustAddr(lbIP4)}
	sp.SourceRanges = []netip.Prefix{netip.MustParsePrefix(netns.ClientIP4 + "/32")}
	e.sync(snapOf(sp), true)

	dummy := e.dummyAddrs()
	for _, a := range []string{clusterIP, externalIP4, lbIP4} {
		if !slices.Contains(dummy, a) {
			t.Errorf("kpo-ipvs0 holds %v, want %s among them", dummy, a)
		}
	}
	client := e.top.Client
	if seen := dialFrom(t, client, "tcp4", other, externalIP4+":80", 4); len(seen) != 2 {
		t.Fatalf("external IP: want both endpoints, got %v", seen)
	}
	if seen := dialFrom(t, client, "tcp4", allowed, lbIP4+":80", 4); len(seen) != 2 {
		t.Fatalf("LB IP from the allowed source: want both endpoints, got %v", seen)
	}
	r, err := client.DialFrom("tcp4", allowed, lbIP4+":80", dialTimeout)
	if err != nil {
		t.Fatal(err)
	}
	if r.ClientIP() == netns.ClientIP4 {
		t.Errorf("LB IP, policy Cluster: endpoint saw the client's own %s, want masquerade", r.ClientIP())
	}
	// DROP, not REJECT: a source outside the ranges learns nothing.
	mustFail(t, client, "tcp4", other, lbIP4+":80", netns.ErrTimeout)

	// Without source ranges (a partial sync), anyone reaches the LB IP.
	open := *sp
	open.SourceRanges = nil
	e.sync(snapOf(&open), false)
	if seen := dialFrom(t, client, "tcp4", other, lbIP4+":80", 2); len(seen) == 0 {
		t.Fatalf("LB IP without source ranges: %v", seen)
	}
}

// TestExternalPolicyLocal: with externalTrafficPolicy Local, external traffic
// goes only to the local endpoints and keeps the client's address; with no
// local endpoint it is dropped (a timeout, the companion DROP set: IPVS alone
// would answer an ICMP error), while the ClusterIP still reaches every
// endpoint.
func TestExternalPolicyLocal(t *testing.T) {
	e := newEnv(t, 3, ipvs.Config{})
	h := e.ipvsHandle()
	remote := e.ep(2)
	remote.Local = false // stands for an endpoint on another node
	sp := svc("local", clusterIP, 80, e.ep(1), remote)
	sp.NodePort = 30090
	sp.ExternalIPs = []netip.Addr{mustAddr(externalIP4)}
	sp.ExternalPolicyLocal = true
	sp.ExternalEndpoints = sp.ClusterEndpoints[:1]
	e.sync(snapOf(sp), true)

	if ds := e.dests(h, netns.NodeIP4, 30090); len(ds) != 1 {
		t.Fatalf("NodePort virtual server: destinations %v, want the local endpoint only", ds)
	}
	if ds := e.dests(h, clusterIP, 80); len(ds) != 2 {
		t.Fatalf("ClusterIP virtual server: destinations %v, want both endpoints", ds)
	}
	client := e.top.Client
	for _, addr := range []string{netns.NodeIP4 + ":30090", externalIP4 + ":80"} {
		if seen := dialN(t, client, addr, 4); len(seen) != 1 || seen["pod1"] != 4 {
			t.Fatalf("%s, policy Local: want pod1 only, got %v", addr, seen)
		}
		r, err := client.Dial("tcp4", addr, dialTimeout)
		if err != nil {
			t.Fatal(err)
		}
		if r.ClientIP() != netns.ClientIP4 {
			t.Errorf("%s, policy Local: endpoint saw %s, want the client's own %s", addr, r.ClientIP(), netns.ClientIP4)
		}
	}

	// No local endpoint left: external traffic is dropped, in-cluster
	// traffic to the ClusterIP is not affected.
	none := *sp
	none.ExternalEndpoints = nil
	e.sync(snapOf(&none), false)
	mustFail(t, client, "tcp4", "", netns.NodeIP4+":30090", netns.ErrTimeout)
	mustFail(t, client, "tcp4", "", externalIP4+":80", netns.ErrTimeout)
	if seen := dialN(t, e.top.Pods[0].NS, clusterIP+":80", 4); len(seen) != 2 {
		t.Fatalf("ClusterIP with no local endpoint: want both endpoints, got %v", seen)
	}
}

// TestHairpin: a pod reaching itself through its Service works, because the
// companion LOOP-BACK set masquerades it (else the pod would answer itself
// over its own address and the connection would never complete); another
// pod keeps its address.
func TestHairpin(t *testing.T) {
	e := newEnv(t, 2, ipvs.Config{})
	e.sync(snapOf(svc("self", clusterIP, 80, e.ep(0))), true)
	r, err := e.top.Pods[0].Dial("tcp4", clusterIP+":80", dialTimeout)
	if err != nil {
		t.Fatalf("pod0 to its own service: %v", err)
	}
	if r.Server != "pod0" || r.ClientIP() != netns.PodGateway4 {
		t.Errorf("hairpin: %+v, want pod0 seeing the node's %s", r, netns.PodGateway4)
	}
	r, err = e.top.Pods[1].Dial("tcp4", clusterIP+":80", dialTimeout)
	if err != nil {
		t.Fatal(err)
	}
	if r.ClientIP() != e.top.Pods[1].IP4 {
		t.Errorf("pod1 to pod0's service: endpoint saw %s, want pod1's own %s", r.ClientIP(), e.top.Pods[1].IP4)
	}
	// The control: without the LOOP-BACK element, the pod gets its own SYN
	// from its own address (a martian, dropped) and the connection hangs.
	e.top.Node.MustRun(t, "ipset", "flush", ipvs.SetName(model.IPv4, "LOOP-BACK"))
	mustFail(t, e.top.Pods[0].NS, "tcp4", "", clusterIP+":80", netns.ErrTimeout)
}

// TestUDP: a UDP service spreads datagrams of new flows over its endpoints
// (ClusterIP keeps the pod's address, NodePort masquerades the external
// client), replies come back from the VIP (a connected UDP socket drops
// anything else), and a UDP service without endpoints is refused (ICMP port
// unreachable from the companion REJECT).
func TestUDP(t *testing.T) {
	e := newEnv(t, 3, ipvs.Config{})
	h := e.ipvsHandle()
	for _, p := range e.top.Pods {
		p.ServeEcho(t, "udp4", ":8080", p.PodName)
	}
	sp := udp(svc("dns", clusterIP, 53, e.ep(1), e.ep(2)))
	sp.NodePort = 30053
	e.sync(snapOf(sp, udp(svc("empty", "10.96.0.11", 53))), true)

	if v := e.vs(h, clusterIP, 53); v == nil || v.Protocol != syscall.IPPROTO_UDP {
		t.Fatalf("virtual server %s:53: %+v, want UDP", clusterIP, v)
	}
	pod := e.top.Pods[0]
	if seen := dialFrom(t, pod.NS, "udp4", "", clusterIP+":53", 6); len(seen) != 2 {
		t.Fatalf("UDP ClusterIP: want both endpoints, got %v", seen)
	}
	r, err := pod.Dial("udp4", clusterIP+":53", dialTimeout)
	if err != nil {
		t.Fatal(err)
	}
	if r.ClientIP() != pod.IP4 {
		t.Errorf("UDP ClusterIP: endpoint saw %s, want the pod's own %s", r.ClientIP(), pod.IP4)
	}
	if seen := dialFrom(t, e.top.Client, "udp4", "", netns.NodeIP4+":30053", 4); len(seen) != 2 {
		t.Fatalf("UDP NodePort: want both endpoints, got %v", seen)
	}
	r, err = e.top.Client.Dial("udp4", netns.NodeIP4+":30053", dialTimeout)
	if err != nil {
		t.Fatal(err)
	}
	if r.ClientIP() == netns.ClientIP4 {
		t.Errorf("UDP NodePort, policy Cluster: endpoint saw the client's own %s", r.ClientIP())
	}
	mustFail(t, pod.NS, "udp4", "", "10.96.0.11:53", netns.ErrRefused)
}

// TestSchedulers: every scheduler the CR offers is programmed into the kernel
// (read back from the virtual server) and carries traffic; a restarted agent
// with another scheduler updates the virtual server in place. Where the
// scheduler's choice is deterministic for one client making sequential
// connections to two equal endpoints, it is checked: rr, wrr, lc and wlc
// spread them; sh, mh and dh hash addresses, lblc and lblcr keep a
// destination's server while it is not overloaded, fo fails over by weight,
// so those use one endpoint. sed, nq and ovf depend on whether the previous
// connection still counts as active, so only their traffic is checked.
func TestSchedulers(t *testing.T) {
	e := newEnv(t, 3, ipvs.Config{})
	h := e.ipvsHandle()
	snap := snapOf(svc("web", clusterIP, 80, e.ep(1), e.ep(2)))
	const spread, one, unchecked = 2, 1, 0
	// lc and wlc right after wrr, while both endpoints hold as many finished
	// connections: they alternate too.
	for _, tc := range []struct {
		sched string
		want  int
	}{
		{"wrr", spread}, {"lc", spread}, {"wlc", spread}, {"sh", one}, {"mh", one}, {"dh", one},
		{"lblc", one}, {"lblcr", one}, {"fo", one}, {"sed", unchecked}, {"nq", unchecked}, {"ovf", unchecked}, {"rr", spread},
	} {
		e.cfg.Scheduler = tc.sched
		e.b = e.newBackend()
		e.sync(snap, true)
		if v := e.vs(h, clusterIP, 80); v == nil || v.SchedName != tc.sched {
			t.Fatalf("%s: kernel virtual server %+v", tc.sched, v)
		}
		seen := dialN(t, e.top.Pods[0].NS, clusterIP+":80", 6)
		if tc.want != unchecked && len(seen) != tc.want {
			t.Errorf("%s: want %d endpoint(s), got %v", tc.sched, tc.want, seen)
		}
	}

	// twos is in the CR but came with Linux 6.2: the kernel refuses it (no
	// ip_vs_twos module), the sync reports it, and the virtual server keeps
	// its scheduler and its traffic.
	e.cfg.Scheduler = "twos"
	e.b = e.newBackend()
	err := e.node(func() error { _, err := backendtest.Sync(context.Background(), e.b, snap, true); return err })
	t.Logf("sync with twos: %v", err)
	if !errors.Is(err, syscall.ENOENT) {
		t.Fatalf("sync with an unavailable scheduler: %v, want the kernel's ENOENT", err)
	}
	if v := e.vs(h, clusterIP, 80); v == nil || v.SchedName != "rr" {
		t.Fatalf("after the failed sync: %+v, want rr kept", v)
	}
	if seen := dialN(t, e.top.Pods[0].NS, clusterIP+":80", 2); len(seen) != 2 {
		t.Fatalf("after the failed sync: %v", seen)
	}
}
