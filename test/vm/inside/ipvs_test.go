//go:build vmtest

package inside

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"kpo.dev/kpo/nodeagent/backend/ipvs"
	"kpo.dev/kpo/nodeagent/model"
)

const clusterIP = "10.96.0.10"

func TestCheck(t *testing.T) {
	e := newEnv(t, 0, ipvs.Config{})
	if err := e.node(func() error { return e.b.Check(context.Background()) }); err != nil {
		t.Fatalf("Check on a kernel with IPVS: %v", err)
	}
}

// TestGracefulTermination: a removed endpoint with connections first gets
// weight 0 (no new connections), then is deleted at the termination bound.
func TestGracefulTermination(t *testing.T) {
	e := newEnv(t, 3, ipvs.Config{TerminationBound: 2 * time.Second})
	h := e.ipvsHandle()
	e.sync(snapOf(svc("web", clusterIP, 80, e.ep(1), e.ep(2))), true)
	// Connections to both: the closed ones linger in IPVS as inactive.
	dialN(t, e.top.Pods[0].NS, clusterIP+":80", 4)

	res := e.sync(snapOf(svc("web", clusterIP, 80, e.ep(1))), false)
	removed := fmt.Sprintf("%s:%d", e.top.Pods[2].IP4, echoPort)
	ds := e.dests(h, clusterIP, 80)
	if w, ok := ds[removed]; !ok || w != 0 {
		t.Fatalf("removed endpoint: destinations %v, want %s at weight 0", ds, removed)
	}
	if res.Draining != 1 {
		t.Errorf("Draining = %d, want 1", res.Draining)
	}
	if seen := dialN(t, e.top.Pods[0].NS, clusterIP+":80", 4); seen["pod2"] != 0 {
		t.Fatalf("new connections reached the draining endpoint: %v", seen)
	}

	time.Sleep(2500 * time.Millisecond)
	res = e.sync(snapOf(svc("web", clusterIP, 80, e.ep(1))), false)
	if ds := e.dests(h, clusterIP, 80); len(ds) != 1 {
		t.Fatalf("after the bound: destinations %v, want only pod1", ds)
	}
	if res.Draining != 0 {
		t.Errorf("Draining = %d after the bound", res.Draining)
	}
}

// TestRestartWithoutFlush: a new backend over the same kernel state (an agent
// restart) changes nothing, and an established connection keeps working.
func TestRestartWithoutFlush(t *testing.T) {
	e := newEnv(t, 2, ipvs.Config{})
	serveLines(t, e.top.Pods[1].NS, ":9090", "lines1")
	h := e.ipvsHandle()
	snap := snapOf(svc("lines", clusterIP, 90, model.Endpoint{
		IP: mustAddr(e.top.Pods[1].IP4), Port: 9090, Ready: true, Local: true}))
	e.sync(snap, true)
	c := dialLines(t, e.top.Pods[0].NS, clusterIP+":90")
	if name, err := c.roundTrip("before"); err != nil || name != "lines1" {
		t.Fatalf("before restart: %q %v", name, err)
	}
	before := e.dests(h, clusterIP, 90)

	e.b = e.newBackend()
	e.sync(snap, true)
	// Only reads (docs/ipvs-backend.md, "full sync, state already right"):
	// GetServices, GetDestinations, EnsureDummy and kpo-ipvs0's address dump;
	// NodePortIPs is set, so no node address dump. A write would add to it.
	if ops := e.b.Stats().NetlinkOps; ops != 4 {
		t.Errorf("restart sync made %d netlink requests, want the 4 reads", ops)
	}
	after := e.dests(h, clusterIP, 90)
	if fmt.Sprint(before) != fmt.Sprint(after) {
		t.Fatalf("restart changed destinations: %v -> %v", before, after)
	}
	if name, err := c.roundTrip("after"); err != nil || name != "lines1" {
		t.Fatalf("established connection after restart: %q %v", name, err)
	}
	if name, err := dialLines(t, e.top.Pods[0].NS, clusterIP+":90").roundTrip("new"); err != nil || name != "lines1" {
		t.Fatalf("new connection after restart: %q %v", name, err)
	}
}

// TestCleanup: Cleanup removes kpo's virtual servers, kpo-ipvs0, the chains
// and the sets, and leaves a foreign virtual server alone.
func TestCleanup(t *testing.T) {
	e := newEnv(t, 2, ipvs.Config{})
	h := e.ipvsHandle()
	sp := svc("web", clusterIP, 80, e.ep(1))
	sp.NodePort = 30080
	e.sync(snapOf(sp, svc("empty", "10.96.0.11", 80)), true)
	foreign := addForeignVS(t, h, "203.0.113.250", 443)
	if n := e.vsCount(h); n != 4 {
		t.Fatalf("before cleanup: %d virtual servers, want 4 (2 ClusterIP, 1 NodePort, 1 foreign)", n)
	}
	if out := e.top.Node.MustRun(t, "ipset", "list", "-n"); !strings.Contains(out, "KPO-") {
		t.Fatalf("no KPO- sets before cleanup: %q", out)
	}

	if err := e.node(func() error { return e.b.Cleanup(context.Background()) }); err != nil {
		t.Fatalf("Cleanup: %v", err)
	}
	if n := e.vsCount(h); n != 1 {
		t.Fatalf("after cleanup: %d virtual servers, want only the foreign %v", n, foreign)
	}
	if _, err := e.top.Node.NL.LinkByName("kpo-ipvs0"); err == nil {
		t.Error("kpo-ipvs0 still exists")
	}
	for _, tool := range []string{"iptables-nft", "iptables-legacy"} {
		if out := e.top.Node.MustRun(t, tool+"-save"); strings.Contains(out, "KPO-IPVS") {
			t.Errorf("%s still has kpo rules:\n%s", tool, out)
		}
	}
	if out := e.top.Node.MustRun(t, "ipset", "list", "-n"); strings.Contains(out, "KPO") {
		t.Errorf("sets left: %q", out)
	}
}

// TestHostHasIPVS guards the harness: these tests are meaningless on a
// kernel without IPVS (a broken module list in hack/vm/build.sh).
func TestHostHasIPVS(t *testing.T) {
	if _, err := os.Stat("/proc/net/ip_vs"); err != nil {
		t.Fatalf("no IPVS in the VM's kernel: %v", err)
	}
}
