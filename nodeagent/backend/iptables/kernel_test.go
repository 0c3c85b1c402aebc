package iptables

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"kpo.dev/kpo/nodeagent/backend/backendtest"
	"kpo.dev/kpo/nodeagent/model"
	"kpo.dev/kpo/nodeagent/model/modeltest"
	"kpo.dev/kpo/test/netns"
)

// realBackend runs the backend's commands inside the node namespace.
type realBackend struct {
	*Backend
	node *netns.NS
}

func (r realBackend) sync(t *testing.T, s *model.Snapshot, full bool) {
	t.Helper()
	err := r.node.Do(func() error {
		_, err := backendtest.Sync(context.Background(), r.Backend, s, full)
		return err
	})
	if err != nil {
		t.Fatalf("sync: %v", err)
	}
}

// servers dials addr from ns n times and returns who answered and the client
// address the server saw, failing the test on any error.
func servers(t *testing.T, ns *netns.NS, addr string, n int) (map[string]int, map[string]int) {
	t.Helper()
	who, clients := map[string]int{}, map[string]int{}
	for range n {
		r, err := ns.Dial("tcp", addr, 2*time.Second)
		if err != nil {
			t.Fatalf("dial %s from %s: %v", addr, ns.Name, err)
		}
		who[r.Server]++
		clients[r.ClientIP()]++
	}
	return who, clients
}

// reachesAll dials until every server in want answered (bounded).
func reachesAll(t *testing.T, ns *netns.NS, addr string, want ...string) {
	t.Helper()
	seen := map[string]bool{}
	for range 200 {
		r, err := ns.Dial("tcp", addr, 2*time.Second)
		if err != nil {
			t.Fatalf("dial %s from %s: %v", addr, ns.Name, err)
		}
		seen[r.Server] = true
		if len(seen) == len(want) {
			break
		}
	}
	for _, w := range want {
		if !seen[w] {
			t.Errorf("%s from %s: %s never answered (saw %v)", addr, ns.Name, w, seen)
		}
	}
}

func podEP(p *netns.Pod, v6 bool) model.Endpoint {
	ip := p.IP4
	if v6 {
		ip = p.IP6
	}
	return model.Endpoint{IP: netip.MustParseAddr(ip), Port: 8080, Ready: true, Local: true}
}

func TestRealKernel(t *testing.T) {
	netns.Skip(t)
	for _, v := range []Variant{VariantNFT, VariantLegacy} {
		t.Run(string(v), func(t *testing.T) { testRealKernel(t, v) })
	}
}

func testRealKernel(t *testing.T, v Variant) {
	top := netns.NewOneNode(t, 3)
	node, client := top.Node, top.Client
	p0, p1, p2 := top.Pods[0], top.Pods[1], top.Pods[2]
	for _, p := range top.Pods {
		p.ServeEcho(t, "tcp", ":8080", p.PodName)
	}
	b, err := New(testSettings, nil, WithVariant(v))
	if err != nil {
		t.Fatal(err)
	}
	rb := realBackend{b, node}
	if err := node.Do(func() error { return b.Check(context.Background()) }); err != nil {
		t.Fatal(err)
	}

	both := []model.Endpoint{podEP(p0, false), podEP(p1, false)}
	cluster := svc("cluster", "10.96.0.10", 80, both...)
	empty := svc("empty", "10.96.0.11", 80)
	ext := svc("ext", "10.96.0.12", 80, both...)
	ext.NodePort, ext.ExternalIPs, ext.LoadBalancerIPs = 30080, []netip.Addr{addr("203.0.113.5")}, []netip.Addr{addr("203.0.113.6")}
	local := svc("local", "10.96.0.13", 80, both...)
	modeltest.LocalPolicy(local, podEP(p0, false)).NodePort = 30081
	sticky := svc("sticky", "10.96.0.14", 80, both...)
	sticky.AffinityTimeout = time.Minute
	fenced := svc("fenced", "10.96.0.15", 80, both...)
	fenced.LoadBalancerIPs = []netip.Addr{addr("203.0.113.7")}
	fenced.SourceRanges = []netip.Prefix{netip.MustParsePrefix("198.51.100.0/25")}
	open := svc("open", "10.96.0.16", 80, both...)
	open.LoadBalancerIPs = []netip.Addr{addr("203.0.113.8")}
	open.SourceRanges = []netip.Prefix{netip.MustParsePrefix("198.51.100.200/32")}
	self := svc("self", "10.96.0.17", 80, podEP(p0, false))
	v6 := svc("v6", "fd10:96::10", 80, podEP(p0, true), podEP(p1, true))
	s := snapOf(cluster, empty, ext, local, sticky, fenced, open, self, v6)
	rb.sync(t, s, true)

	t.Run("cluster IP from node and pod", func(t *testing.T) {
		reachesAll(t, node, "10.96.0.10:80", "pod0", "pod1")
		reachesAll(t, p2.NS, "10.96.0.10:80", "pod0", "pod1")
		// Pod sources are not masqueraded, the node's are.
		if _, c := servers(t, p2.NS, "10.96.0.10:80", 3); c[p2.IP4] != 3 {
			t.Errorf("pod client seen as %v", c)
		}
	})
	t.Run("no endpoints refused at once", func(t *testing.T) {
		for _, ns := range []*netns.NS{node, p2.NS, client} {
			start := time.Now()
			_, err := ns.Dial("tcp", "10.96.0.11:80", 3*time.Second)
			if !errors.Is(err, netns.ErrRefused) || time.Since(start) > time.Second {
				t.Errorf("from %s: %v after %v, want refused at once", ns.Name, err, time.Since(start))
			}
		}
	})
	t.Run("node port, external IP, LB IP", func(t *testing.T) {
		for _, a := range []string{netns.NodeIP4 + ":30080", "203.0.113.5:80", "203.0.113.6:80"} {
			reachesAll(t, client, a, "pod0", "pod1")
			if _, c := servers(t, client, a, 2); c[netns.ClientIP4] != 0 {
				t.Errorf("%s: policy Cluster kept the client address: %v", a, c)
			}
		}
	})
	t.Run("policy Local", func(t *testing.T) {
		who, c := servers(t, client, netns.NodeIP4+":30081", 10)
		if who["pod0"] != 10 || c[netns.ClientIP4] != 10 {
			t.Errorf("servers %v, clients %v: want only pod0, seeing %s", who, c, netns.ClientIP4)
		}
		// The node itself uses every endpoint.
		reachesAll(t, node, netns.NodeIP4+":30081", "pod0", "pod1")
	})
	t.Run("affinity", func(t *testing.T) {
		for _, ns := range []*netns.NS{p2.NS, node} {
			if who, _ := servers(t, ns, "10.96.0.14:80", 10); len(who) != 1 {
				t.Errorf("from %s: %v, want one server", ns.Name, who)
			}
		}
	})
	t.Run("source ranges", func(t *testing.T) {
		if _, err := client.Dial("tcp", "203.0.113.7:80", 500*time.Millisecond); !errors.Is(err, netns.ErrTimeout) {
			t.Errorf("outside the ranges: %v, want dropped", err)
		}
		servers(t, client, "203.0.113.8:80", 2)
	})
	t.Run("hairpin", func(t *testing.T) {
		if who, _ := servers(t, p0.NS, "10.96.0.17:80", 3); who["pod0"] != 3 {
			t.Errorf("hairpin %v", who)
		}
		// Two endpoints, one of them the client: the hairpin check follows the
		// one random choice, so only connections that came back to pod0 are
		// masqueraded and pod1 sees pod0's own address.
		seen := map[string]bool{}
		for i := 0; i < 200 && len(seen) < 2; i++ {
			r, err := p0.Dial("tcp", "10.96.0.10:80", 2*time.Second)
			if err != nil {
				t.Fatalf("dial from pod0: %v", err)
			}
			seen[r.Server] = true
			if masqueraded := r.ClientIP() != p0.IP4; masqueraded != (r.Server == "pod0") {
				t.Errorf("pod0 -> %s seen as %s", r.Server, r.ClientIP())
			}
		}
		if len(seen) < 2 {
			t.Errorf("servers %v", seen)
		}
	})
	t.Run("IPv6", func(t *testing.T) {
		reachesAll(t, node, "[fd10:96::10]:80", "pod0", "pod1")
		reachesAll(t, p2.NS, "[fd10:96::10]:80", "pod0", "pod1")
	})
	t.Run("partial sync", func(t *testing.T) {
		s2 := clone(s)
		c := *cluster
		c.ClusterEndpoints = []model.Endpoint{podEP(p1, false)}
		c.ExternalEndpoints = c.ClusterEndpoints
		s2.Services[c.Key] = &c
		e := *empty
		e.ClusterEndpoints = []model.Endpoint{podEP(p2, false)}
		e.ExternalEndpoints = e.ClusterEndpoints
		s2.Services[e.Key] = &e
		delete(s2.Services, self.Key)
		var r struct{ written int }
		err := node.Do(func() error {
			res, err := backendtest.Sync(context.Background(), b, s2, false)
			r.written = res.ServicePortsWritten
			return err
		})
		if err != nil || r.written != 2 {
			t.Fatalf("partial sync wrote %d: %v", r.written, err)
		}
		if who, _ := servers(t, p2.NS, "10.96.0.10:80", 10); who["pod1"] != 10 {
			t.Errorf("after endpoint change: %v", who)
		}
		if who, _ := servers(t, node, "10.96.0.11:80", 2); who["pod2"] != 2 {
			t.Errorf("service that gained endpoints: %v", who)
		}
		if _, err := p0.Dial("tcp", "10.96.0.17:80", 500*time.Millisecond); !errors.Is(err, netns.ErrTimeout) {
			t.Errorf("removed service still answers: %v", err)
		}
		s = s2
	})
	t.Run("full sync repairs drift", func(t *testing.T) {
		bin, _ := v.binaries(model.IPv4)
		node.MustRun(t, bin, "-t", "nat", "-N", "KPO-SVC-LEFTOVER")
		node.MustRun(t, bin, "-t", "nat", "-F", bucketChain(bucketOf(cluster.ClusterIP)))
		rb.sync(t, s, true)
		out := node.MustRun(t, bin+"-save", "-t", "nat")
		if strings.Contains(out, "KPO-SVC-LEFTOVER") {
			t.Error("stale chain kept")
		}
		// The jumps are found in the listing, not inserted again.
		if n := strings.Count(out, `"kpo service portals"`); n != 2 {
			t.Errorf("%d service portal jumps:\n%s", n, out)
		}
		filter := node.MustRun(t, bin+"-save", "-t", "filter")
		if n := strings.Count(filter, `"kpo service rejects"`); n != 2 {
			t.Errorf("%d service reject jumps (forward, output)", n)
		}
		if n := strings.Count(filter, `"kpo external service rejects"`); n != 2 {
			t.Errorf("%d external service reject jumps (input, forward)", n)
		}
		servers(t, p2.NS, "10.96.0.10:80", 2)
	})
	t.Run("cleanup", func(t *testing.T) {
		if err := node.Do(func() error { return b.Cleanup(context.Background()) }); err != nil {
			t.Fatal(err)
		}
		for _, f := range []model.Family{model.IPv4, model.IPv6} {
			bin, _ := v.binaries(f)
			if out := node.MustRun(t, bin+"-save"); strings.Contains(out, "KPO-") {
				t.Errorf("%s left:\n%s", f, out)
			}
		}
		if err := node.Do(func() error { return b.Cleanup(context.Background()) }); err != nil {
			t.Errorf("second cleanup: %v", err)
		}
	})
}
