package iptables

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
	"kpo.dev/kpo/hack/netns"
	"kpo.dev/kpo/nodeagent/backend"
	"kpo.dev/kpo/nodeagent/backend/backendtest"
	"kpo.dev/kpo/nodeagent/model"
	"kpo.dev/kpo/test/behaviour"
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

// TestRealKernel runs the behaviour table (test/behaviour) against the
// backend on the real kernel, in both flavours of iptables, then what is
// particular to iptables: a full sync repairs drift (a foreign KPO- chain,
// a flushed bucket) and finds its jumps instead of inserting them again,
// and cleanup removes every KPO- chain (twice is fine).
func TestRealKernel(t *testing.T) {
	netns.Skip(t)
	for _, v := range []Variant{VariantNFT, VariantLegacy} {
		t.Run(string(v), func(t *testing.T) { testRealKernel(t, v) })
	}
}

func testRealKernel(t *testing.T, v Variant) {
	w, kb := behaviour.RunKernel(t, kpov1.ModeIPTables, behaviour.KernelTiming,
		func() (backend.Backend, error) { return New(testSettings, nil, WithVariant(v)) })
	b, node := kb.(*Backend), w.Node
	rb := realBackend{b, node}
	a, bb := w.Pod(behaviour.PodA), w.Pod(behaviour.PodB)
	cluster := svc("cluster", "10.96.0.10", 80, podEP(a, false), podEP(bb, false))
	t.Run("full sync repairs drift", func(t *testing.T) {
		bin, _ := v.binaries(model.IPv4)
		node.MustRun(t, bin, "-t", "nat", "-N", "KPO-SVC-LEFTOVER")
		node.MustRun(t, bin, "-t", "nat", "-F", bucketChain(bucketOf(cluster.ClusterIP)))
		rb.sync(t, snapOf(cluster), true)
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
		reachesAll(t, w.Pod(behaviour.ClientPod).NS, "10.96.0.10:80", string(behaviour.PodA), string(behaviour.PodB))
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
