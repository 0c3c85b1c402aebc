package nftables

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"kpo.dev/kpo/nodeagent/backend/backendtest"
	"kpo.dev/kpo/nodeagent/model"
	"kpo.dev/kpo/nodeagent/model/modeltest"
	"kpo.dev/kpo/test/netns"
)

const dialTimeout = 2 * time.Second

// poll calls fn until it returns nil or the deadline passes.
func poll(t *testing.T, what string, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := fn()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// spread dials until every server in want answered.
func spread(t *testing.T, from *netns.NS, addr string, want ...string) {
	t.Helper()
	seen := map[string]bool{}
	poll(t, "reaching "+addr+" from "+from.Name, func() error {
		r, err := from.Dial("tcp", addr, dialTimeout)
		if err != nil {
			return err
		}
		seen[r.Server] = true
		for _, w := range want {
			if !seen[w] {
				return errors.New("not yet seen " + w)
			}
		}
		return nil
	})
}

func kernelSync(t *testing.T, node *netns.NS, b *Backend, s *model.Snapshot, full bool) {
	t.Helper()
	if err := node.Do(func() error { _, err := backendtest.Sync(context.Background(), b, s, full); return err }); err != nil {
		t.Fatal(err)
	}
}

func TestKernel(t *testing.T) {
	netns.Skip(t)
	top := netns.NewOneNode(t, 2)
	node, client := top.Node, top.Client
	pod0, pod1 := top.Pods[0], top.Pods[1]
	pod0.ServeEcho(t, "tcp", ":8080", "pod0")
	pod1.ServeEcho(t, "tcp", ":8080", "pod1")
	pod0.ServeEcho(t, "udp", ":8053", "pod0")

	e0 := ep(pod0.IP4, 8080, true)
	// Pretend pod1 runs on another node: it is never a client here, since a
	// remote pod's service traffic is translated by its own node.
	e1 := ep(pod1.IP4, 8080, false)
	both := []model.Endpoint{e0, e1}

	cluster := svc("cluster", "10.96.0.10", 80, both...)
	none := svc("none", "10.96.0.11", 80)
	none.NodePort = 30011
	np := svc("np", "10.96.0.12", 80, both...)
	np.NodePort = 30012
	ext := svc("ext", "10.96.0.13", 80, both...)
	ext.ExternalIPs = []netip.Addr{netip.MustParseAddr("203.0.113.13")}
	ext.LoadBalancerIPs = []netip.Addr{netip.MustParseAddr("203.0.113.113")}
	local := svc("local", "10.96.0.14", 80, both...)
	modeltest.LocalPolicy(local, e0)
	local.NodePort = 30014
	local.ExternalIPs = []netip.Addr{netip.MustParseAddr("203.0.113.14")}
	aff := svc("aff", "10.96.0.15", 80, both...)
	aff.AffinityTimeout = time.Hour
	fw := svc("fw", "10.96.0.16", 80, both...)
	fw.LoadBalancerIPs = []netip.Addr{netip.MustParseAddr("203.0.113.16")}
	fw.SourceRanges = []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}
	hair := svc("hairpin", "10.96.0.17", 80, e0)
	v6 := svc("v6", "fd10:96::18", 80, ep(pod0.IP6, 8080, true), ep(pod1.IP6, 8080, false))
	udp := svc("udp", "10.96.0.19", 53, ep(pod0.IP4, 8053, true))
	udp.Protocol, udp.Key.Protocol = "UDP", "UDP"

	var b *Backend
	if err := node.Do(func() error {
		var err error
		b, err = New(testSettings, nil)
		if err != nil {
			return err
		}
		return b.Check(context.Background())
	}); err != nil {
		t.Fatal(err)
	}
	s1 := snapshot(testNode, cluster, none, np, ext, local, aff, fw, hair, v6, udp)
	kernelSync(t, node, b, s1, true)

	t.Run("ClusterIP", func(t *testing.T) {
		spread(t, node, "10.96.0.10:80", "pod0", "pod1")
		spread(t, pod0.NS, "10.96.0.10:80", "pod0", "pod1")
		spread(t, client, "10.96.0.10:80", "pod0", "pod1")
	})
	t.Run("NoEndpointsRefused", func(t *testing.T) {
		for _, from := range []*netns.NS{node, pod0.NS, client} {
			start := time.Now()
			_, err := from.Dial("tcp", "10.96.0.11:80", dialTimeout)
			if !errors.Is(err, netns.ErrRefused) || time.Since(start) > time.Second {
				t.Errorf("from %s: want a quick refusal, got %v after %v", from.Name, err, time.Since(start))
			}
		}
		if _, err := client.Dial("tcp", net.JoinHostPort(netns.NodeIP4, "30011"), dialTimeout); !errors.Is(err, netns.ErrRefused) {
			t.Errorf("NodePort without endpoints: %v", err)
		}
	})
	t.Run("NodePort", func(t *testing.T) {
		spread(t, client, net.JoinHostPort(netns.NodeIP4, "30012"), "pod0", "pod1")
		spread(t, node, net.JoinHostPort(netns.NodeIP4, "30012"), "pod0", "pod1")
	})
	t.Run("ExternalAndLBIP", func(t *testing.T) {
		spread(t, client, "203.0.113.13:80", "pod0", "pod1")
		spread(t, client, "203.0.113.113:80", "pod0", "pod1")
		r, err := client.Dial("tcp", "203.0.113.13:80", dialTimeout)
		if err != nil || r.ClientIP() == netns.ClientIP4 {
			t.Errorf("eTP=Cluster must masquerade: %+v %v", r, err)
		}
	})
	t.Run("ExternalPolicyLocal", func(t *testing.T) {
		for _, addr := range []string{net.JoinHostPort(netns.NodeIP4, "30014"), "203.0.113.14:80"} {
			for range 10 {
				r, err := client.Dial("tcp", addr, dialTimeout)
				if err != nil {
					t.Fatalf("%s: %v", addr, err)
				}
				if r.Server != "pod0" || r.ClientIP() != netns.ClientIP4 {
					t.Fatalf("%s: want pod0 seeing %s, got %+v", addr, netns.ClientIP4, r)
				}
			}
		}
		// Pods short-circuit to every endpoint.
		spread(t, pod0.NS, "203.0.113.14:80", "pod0", "pod1")
	})
	t.Run("Affinity", func(t *testing.T) {
		first, err := client.Dial("tcp", "10.96.0.15:80", dialTimeout)
		if err != nil {
			t.Fatal(err)
		}
		for range 20 {
			r, err := client.Dial("tcp", "10.96.0.15:80", dialTimeout)
			if err != nil || r.Server != first.Server {
				t.Fatalf("affinity broken: %+v %v (first %s)", r, err, first.Server)
			}
		}
	})
	t.Run("SourceRanges", func(t *testing.T) {
		if _, err := client.Dial("tcp", "203.0.113.16:80", 500*time.Millisecond); !errors.Is(err, netns.ErrTimeout) {
			t.Errorf("client outside the source ranges: want a drop (timeout), got %v", err)
		}
		spread(t, pod0.NS, "203.0.113.16:80", "pod0", "pod1")
	})
	t.Run("Hairpin", func(t *testing.T) {
		r, err := pod0.Dial("tcp", "10.96.0.17:80", dialTimeout)
		if err != nil || r.Server != "pod0" || r.ClientIP() == pod0.IP4 {
			t.Fatalf("hairpin: %+v %v", r, err)
		}
	})
	t.Run("IPv6", func(t *testing.T) {
		spread(t, node, "[fd10:96::18]:80", "pod0", "pod1")
		// From pod0, a local endpoint (pod1 stands for a remote one here).
		spread(t, pod0.NS, "[fd10:96::18]:80", "pod0", "pod1")
	})
	t.Run("ClusterIPChecks", func(t *testing.T) {
		// A port the ClusterIP does not serve is refused (kube-proxy v1.37).
		// (Unallocated addresses are dropped: in this topology they would
		// time out anyway; TestRendering and the conformance suite see it.)
		if _, err := client.Dial("tcp", "10.96.0.10:81", dialTimeout); !errors.Is(err, netns.ErrRefused) {
			t.Errorf("ClusterIP, wrong port: want refused, got %v", err)
		}
		if _, err := pod0.Dial("tcp", "[fd10:96::18]:81", dialTimeout); !errors.Is(err, netns.ErrRefused) {
			t.Errorf("IPv6 ClusterIP, wrong port: want refused, got %v", err)
		}
	})
	t.Run("UDP", func(t *testing.T) {
		poll(t, "udp", func() error { _, err := pod1.Dial("udp", "10.96.0.19:53", dialTimeout); return err })
	})
	t.Run("PartialSync", func(t *testing.T) {
		c2 := *cluster
		c2.ClusterEndpoints = []model.Endpoint{e1}
		c2.ExternalEndpoints = c2.ClusterEndpoints
		kernelSync(t, node, b, withSnap(s1, &c2), false)
		// New connections only reach pod1 (earlier conntrack entries are closed).
		for range 20 {
			r, err := client.Dial("tcp", "10.96.0.10:80", dialTimeout)
			if err != nil || r.Server != "pod1" {
				t.Fatalf("after partial sync: %+v %v", r, err)
			}
		}
		// Everything else still works.
		spread(t, client, net.JoinHostPort(netns.NodeIP4, "30012"), "pod0", "pod1")
	})
	t.Run("FullSyncRepairsDrift", func(t *testing.T) {
		node.MustRun(t, "nft", "add chain ip kpo intruder")
		node.MustRun(t, "nft", "add element ip kpo service-ips { 10.96.0.99 . tcp . 80 : goto intruder }")
		kernelSync(t, node, b, withSnap(s1), true)
		out := node.MustRun(t, "nft", "list", "table", "ip", "kpo")
		if strings.Contains(out, "intruder") || strings.Contains(out, "10.96.0.99") {
			t.Fatalf("drift left:\n%s", out)
		}
		spread(t, client, "10.96.0.10:80", "pod0", "pod1")
	})
	t.Run("Cleanup", func(t *testing.T) {
		if err := node.Do(func() error { return b.Cleanup(context.Background()) }); err != nil {
			t.Fatal(err)
		}
		out := node.MustRun(t, "nft", "list", "tables")
		if strings.Contains(out, "kpo") {
			t.Fatalf("tables left: %s", out)
		}
		if err := node.Do(func() error { return b.Cleanup(context.Background()) }); err != nil {
			t.Fatalf("second cleanup: %v", err)
		}
	})
}
