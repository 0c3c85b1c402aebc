//go:build vmtest

package inside

import (
	"context"
	"errors"
	"syscall"
	"testing"

	"kpo.dev/kpo/nodeagent/backend/backendtest"
	"kpo.dev/kpo/nodeagent/backend/ipvs"
)

// Addresses of these tests, from the address plan (shared/ARCHITECTURE.md):
// external and load-balancer IPs in 203.0.113.0/24.
const (
	externalIP4 = "203.0.113.10"
	lbIP4       = "203.0.113.20"
	// otherClient4 is a second external client on the node network (.200 and up).
	otherClient4 = "198.51.100.201"
)

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
