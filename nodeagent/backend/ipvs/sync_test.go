package ipvs

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"testing"
	"time"

	"kpo.dev/kpo/nodeagent/backend/backendtest"
	"kpo.dev/kpo/nodeagent/model"
)

// TestRender checks the virtual servers, destinations and dummy addresses
// one service port gives, by VIP kind.
// renderCase is a service port and the virtual servers it must make.
type renderCase struct {
	name   string
	sp     func() *model.ServicePort
	cfg    Config
	vs     map[string][]string // VIP -> destinations
	dummy  []string
	sched  string
	persis uint32
}

var twoEps = []model.Endpoint{ep("10.244.1.5:8080"), ep("10.244.2.6:8080")}

var renderCases = []renderCase{{
	name:  "clusterIP",
	sp:    func() *model.ServicePort { return svc("a", "10.96.0.10", 80, twoEps...) },
	vs:    map[string][]string{"10.96.0.10:80": {"10.244.1.5:8080", "10.244.2.6:8080"}},
	dummy: []string{"10.96.0.10"},
	sched: "rr",
}, {
	name: "nodePort on node addresses, not bound to the dummy",
	sp: func() *model.ServicePort {
		sp := svc("a", "10.96.0.10", 80, twoEps...)
		sp.NodePort = 30080
		return sp
	},
	vs: map[string][]string{
		"10.96.0.10:80":      {"10.244.1.5:8080", "10.244.2.6:8080"},
		"198.51.100.1:30080": {"10.244.1.5:8080", "10.244.2.6:8080"},
	},
	dummy: []string{"10.96.0.10"},
	sched: "rr",
}, {
	name: "external and LB IPs use the external endpoints",
	sp: func() *model.ServicePort {
		sp := svc("a", "10.96.0.10", 80, twoEps...)
		sp.ExternalIPs = []netip.Addr{addr("203.0.113.1")}
		sp.LoadBalancerIPs = []netip.Addr{addr("198.51.100.7")}
		sp.ExternalPolicyLocal = true
		sp.ExternalEndpoints = twoEps[:1]
		return sp
	},
	vs: map[string][]string{
		"10.96.0.10:80":   {"10.244.1.5:8080", "10.244.2.6:8080"},
		"203.0.113.1:80":  {"10.244.1.5:8080"},
		"198.51.100.7:80": {"10.244.1.5:8080"},
	},
	dummy: []string{"10.96.0.10", "198.51.100.7", "203.0.113.1"},
	sched: "rr",
}, {
	name: "affinity is persistence, rounded up to seconds",
	sp: func() *model.ServicePort {
		sp := svc("a", "10.96.0.10", 80, twoEps...)
		sp.AffinityTimeout = 10800*time.Second + time.Millisecond
		return sp
	},
	cfg:    Config{Scheduler: "sh"},
	vs:     map[string][]string{"10.96.0.10:80": {"10.244.1.5:8080", "10.244.2.6:8080"}},
	dummy:  []string{"10.96.0.10"},
	sched:  "sh",
	persis: 10801,
}, {
	name:  "no endpoints: a virtual server without destinations",
	sp:    func() *model.ServicePort { return svc("a", "10.96.0.10", 80) },
	vs:    map[string][]string{"10.96.0.10:80": nil},
	dummy: []string{"10.96.0.10"},
	sched: "rr",
}, {
	name:  "IPv6",
	sp:    func() *model.ServicePort { return svc("a", "fd10:96::10", 80, ep("[fd10:244:0:1::5]:8080")) },
	vs:    map[string][]string{"[fd10:96::10]:80": {"[fd10:244:0:1::5]:8080"}},
	dummy: []string{"fd10:96::10"},
	sched: "rr",
}}

func TestRender(t *testing.T) {
	tests := renderCases
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, tt.cfg)
			e.sync(snapOf(tt.sp()), true)
			var got []string
			for _, k := range e.h.Keys() {
				got = append(got, netip.AddrPortFrom(k.Addr, k.Port).String())
			}
			if want := slices.Sorted(maps.Keys(tt.vs)); !slices.Equal(slices.Sorted(slices.Values(got)), want) {
				t.Fatalf("virtual servers %v, want %v", got, want)
			}
			for vip, want := range tt.vs {
				s, _, _ := e.h.Service(tcpKey(vip))
				if s.Scheduler != tt.sched || s.Persistent != (tt.persis != 0) || s.Timeout != tt.persis {
					t.Errorf("%s: %+v, want scheduler %s persistence %d", vip, s, tt.sched, tt.persis)
				}
				var ds []string
				for d, w := range e.dests(vip) {
					if w != 1 {
						t.Errorf("%s: %v weight %d", vip, d, w)
					}
					ds = append(ds, d.String())
				}
				slices.Sort(ds)
				if !slices.Equal(ds, want) {
					t.Errorf("%s: destinations %v, want %v", vip, ds, want)
				}
			}
			var dummy []string
			for _, a := range e.dummyAddrs() {
				dummy = append(dummy, a.String())
			}
			if !slices.Equal(dummy, tt.dummy) {
				t.Errorf("dummy addresses %v, want %v", dummy, tt.dummy)
			}
		})
	}
}

func TestNodePortAddresses(t *testing.T) {
	sp := svc("a", "10.96.0.10", 80, ep("10.244.1.5:8080"))
	sp.NodePort = 30080
	t.Run("snapshot NodePortIPs win", func(t *testing.T) {
		e := newEnv(t, Config{})
		s := snapOf(sp)
		s.Node.NodePortIPs = map[model.Family][]netip.Addr{model.IPv4: {addr("198.51.100.2"), addr("198.51.100.3")}}
		e.sync(s, true)
		if !e.hasVS("198.51.100.2:30080") || !e.hasVS("198.51.100.3:30080") || e.hasVS("198.51.100.1:30080") {
			t.Fatalf("virtual servers %v", e.h.Keys())
		}
	})
	t.Run("injected node addresses; a change rewrites the NodePorts", func(t *testing.T) {
		e := newEnv(t, Config{})
		ips := []netip.Addr{addr("172.16.0.1")}
		e.b = nil
		b, err := New(testSettings, Config{}, nil, WithHandle(e.h), WithLinks(e.l), WithRules(e.r),
			WithNodeAddrs(func(model.Family) ([]netip.Addr, error) { return ips, nil }))
		if err != nil {
			t.Fatal(err)
		}
		e.b = b
		s := snapOf(sp)
		e.sync(s, true)
		if !e.hasVS("172.16.0.1:30080") {
			t.Fatalf("virtual servers %v", e.h.Keys())
		}
		ips = []netip.Addr{addr("172.16.0.2")}
		// The agent sees no change; the backend finds the addresses moved
		// and rewrites the service ports with a NodePort.
		if res := e.sync(s, false); res.Full || res.ServicePortsWritten != 1 {
			t.Errorf("node address change: %+v", res)
		}
		if e.hasVS("172.16.0.1:30080") || !e.hasVS("172.16.0.2:30080") || !e.hasVS("10.96.0.10:80") {
			t.Fatalf("virtual servers %v", e.h.Keys())
		}
		vipPorts := SetName(model.IPv4, setVIPPorts)
		if e.r.Has(vipPorts, "172.16.0.1,tcp:30080") || !e.r.Has(vipPorts, "172.16.0.2,tcp:30080") {
			t.Fatalf("VIP-PORTS %v", e.r.Last.Sets[vipPorts])
		}
	})
}

// TestRestartWithoutFlush: a new backend over a kernel that already holds the
// right state makes no change, destructive or not, in its first full sync.
func TestRestartWithoutFlush(t *testing.T) {
	e := newEnv(t, Config{Timeouts: Timeouts{TCP: time.Hour}})
	a := svc("a", "10.96.0.10", 80, ep("10.244.1.5:8080"), ep("10.244.2.6:8080"))
	a.NodePort = 30080
	a.AffinityTimeout = time.Minute
	b := svc("b", "fd10:96::20", 53, ep("[fd10:244:0:1::5]:53"))
	c := svc("c", "10.96.0.30", 443)
	c.LoadBalancerIPs = []netip.Addr{addr("198.51.100.7")}
	s := snapOf(a, b, c)
	e.sync(s, true)
	e.h.ResetOps()
	e.l.Ops = map[string]int{}

	e.b = e.newBackend(Config{Timeouts: Timeouts{TCP: time.Hour}})
	e.sync(s, false) // the first sync is full whatever the caller says
	if n := e.h.Mutations(); n != 0 {
		t.Errorf("restart made %d IPVS changes: %v", n, e.h.Ops)
	}
	if e.l.Ops["AddAddr"]+e.l.Ops["DelAddr"]+e.l.Ops["DeleteDummy"] != 0 {
		t.Errorf("restart changed addresses: %v", e.l.Ops)
	}
	// The next partial sync only lists the node's addresses (a NodePort
	// service port exists and a node address may have changed).
	e.sync(s, false)
	if st := e.b.Stats(); st.NetlinkOps != 1 || st.Full || e.h.Mutations() != 0 {
		t.Errorf("idle partial sync: %v", st)
	}
}

// TestRestartRepairsDrift: the restart's full sync fixes what differs and
// leaves foreign and excluded virtual servers alone.
func TestRestartRepairsDrift(t *testing.T) {
	excl := netip.MustParsePrefix("10.100.0.0/16")
	e := newEnv(t, Config{ExcludeCIDRs: []netip.Prefix{excl}})
	a := svc("a", "10.96.0.10", 80, ep("10.244.1.5:8080"))
	s := snapOf(a)
	e.sync(s, true)
	// Drift while the agent was down: a stale kpo VIP on the dummy, a foreign
	// virtual server, an excluded one on the dummy, a wrong scheduler and a
	// stray destination.
	for _, vs := range []string{"10.96.0.99:80", "198.51.100.1:8080", "10.100.0.1:80"} {
		if err := e.h.NewService(Service{VSKey: tcpKey(vs), Scheduler: "rr"}); err != nil {
			t.Fatal(err)
		}
	}
	for _, a := range []string{"10.96.0.99", "10.100.0.1"} {
		if err := e.l.AddAddr(dummyName, addr(a)); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.h.UpdateService(Service{VSKey: tcpKey("10.96.0.10:80"), Scheduler: "lc"}); err != nil {
		t.Fatal(err)
	}
	if err := e.h.NewDestination(tcpKey("10.96.0.10:80"), Destination{Addr: ap("10.244.9.9:8080"), Weight: 1}); err != nil {
		t.Fatal(err)
	}

	e.b = e.newBackend(Config{ExcludeCIDRs: []netip.Prefix{excl}})
	e.sync(s, true)
	if e.hasVS("10.96.0.99:80") {
		t.Error("stale kpo virtual server kept")
	}
	if !e.hasVS("198.51.100.1:8080") || !e.hasVS("10.100.0.1:80") {
		t.Error("foreign or excluded virtual server deleted")
	}
	if s, _, _ := e.h.Service(tcpKey("10.96.0.10:80")); s.Scheduler != "rr" {
		t.Errorf("scheduler not repaired: %+v", s)
	}
	if got := e.dests("10.96.0.10:80"); got[ap("10.244.9.9:8080")] != 0 || got[ap("10.244.1.5:8080")] != 1 {
		t.Errorf("stray destination not quiesced: %v", got)
	}
	if got := e.dummyAddrs(); !slices.Equal(got, []netip.Addr{addr("10.96.0.10"), addr("10.100.0.1")}) {
		t.Errorf("dummy addresses %v", got)
	}
}

// TestGracefulTermination: a removed endpoint gets weight 0, then goes once
// drained, or at the bound; an endpoint that comes back is reweighted.
func TestGracefulTermination(t *testing.T) {
	vip := "10.96.0.10:80"
	e1, e2 := ep("10.244.1.5:8080"), ep("10.244.2.6:8080")
	tests := []struct {
		name      string
		conns     int
		advance   time.Duration
		comesBack bool
		wantGone  bool
	}{
		{name: "drained", conns: 0, wantGone: true},
		{name: "connections left, within bound", conns: 3, advance: 5 * time.Second},
		{name: "connections left, bound passed", conns: 3, advance: 16 * time.Second, wantGone: true},
		{name: "endpoint comes back", conns: 3, comesBack: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, Config{})
			a := svc("a", "10.96.0.10", 80, e1, e2)
			s := snapOf(a)
			e.sync(s, true)
			e.h.SetConnections(tcpKey(vip), e2.AddrPort(), tt.conns, 0)

			s = with(s, svc("a", "10.96.0.10", 80, e1))
			e.h.ResetOps()
			res := e.sync(s, false)
			if w, ok := e.dests(vip)[e2.AddrPort()]; !ok || w != 0 {
				if tt.conns > 0 || ok {
					t.Fatalf("removed endpoint: present %v weight %d, want weight 0", ok, w)
				}
			}
			if tt.conns > 0 && res.Draining != 1 {
				t.Fatalf("draining %d", res.Draining)
			}
			e.now = e.now.Add(tt.advance)
			if tt.comesBack {
				s = with(s, svc("a", "10.96.0.10", 80, e1, e2))
			}
			res = e.sync(s, false)
			w, ok := e.dests(vip)[e2.AddrPort()]
			switch {
			case tt.comesBack && (w != 1 || res.Draining != 0):
				t.Errorf("came back: weight %d draining %d", w, res.Draining)
			case tt.wantGone && (ok || res.Draining != 0):
				t.Errorf("not deleted: weight %d draining %d", w, res.Draining)
			case !tt.wantGone && !tt.comesBack && (!ok || w != 0):
				t.Errorf("deleted too early: present %v weight %d", ok, w)
			}
		})
	}
}

// TestGracefulTerminationSurvivesRestart: a draining destination found by a
// restarted agent still drains instead of being deleted or revived.
func TestGracefulTerminationSurvivesRestart(t *testing.T) {
	e := newEnv(t, Config{})
	vip := "10.96.0.10:80"
	s := snapOf(svc("a", "10.96.0.10", 80, ep("10.244.1.5:8080"), ep("10.244.2.6:8080")))
	e.sync(s, true)
	e.h.SetConnections(tcpKey(vip), ap("10.244.2.6:8080"), 1, 1)
	s = with(s, svc("a", "10.96.0.10", 80, ep("10.244.1.5:8080")))
	e.sync(s, false)

	e.b = e.newBackend(Config{})
	res := e.sync(s, true)
	if w, ok := e.dests(vip)[ap("10.244.2.6:8080")]; !ok || w != 0 || res.Draining != 1 {
		t.Fatalf("after restart: present %v weight %d draining %d", ok, w, res.Draining)
	}
	e.h.SetConnections(tcpKey(vip), ap("10.244.2.6:8080"), 0, 0)
	e.sync(s, false)
	if _, ok := e.dests(vip)[ap("10.244.2.6:8080")]; ok {
		t.Fatal("drained destination kept")
	}
}

// TestPartialSyncTouchesOnlyChanged: unchanged pointers cost nothing; a
// changed service port costs only its own operations; a removed one goes.
func TestPartialSyncTouchesOnlyChanged(t *testing.T) {
	e := newEnv(t, Config{})
	a := svc("a", "10.96.0.10", 80, ep("10.244.1.5:8080"))
	b := svc("b", "10.96.0.20", 80, ep("10.244.1.6:8080"))
	s := snapOf(a, b)
	e.sync(s, true)

	// Someone deletes b's virtual server behind our back: a partial sync of a
	// must not notice (nor repair) it, since it does not look at b.
	if err := e.h.DelService(tcpKey("10.96.0.20:80")); err != nil {
		t.Fatal(err)
	}
	a2 := svc("a", "10.96.0.10", 80, ep("10.244.1.5:8080"), ep("10.244.3.7:8080"))
	e.h.ResetOps()
	res := e.sync(with(s, a2), false)
	if res.ServicePortsWritten != 1 || res.Full {
		t.Errorf("result %+v", res)
	}
	if e.h.Ops["NewDestination"] != 1 || e.h.Mutations() != 1 || e.hasVS("10.96.0.20:80") {
		t.Errorf("ops %v", e.h.Ops)
	}
	// A full sync repairs it.
	e.sync(with(s, a2), true)
	if !e.hasVS("10.96.0.20:80") {
		t.Error("full sync did not repair")
	}
	// Removing a service port deletes its virtual server and its address.
	e.sync(without(with(s, a2), b), false)
	if e.hasVS("10.96.0.20:80") || slices.Contains(e.dummyAddrs(), addr("10.96.0.20")) {
		t.Errorf("removed service left %v, addresses %v", e.h.Keys(), e.dummyAddrs())
	}
}

// TestPartialSyncMovesVIPBetweenKeys: a virtual server whose service port
// changes key in one partial sync (a Service's only port gets a name when a
// second port is added; a VIP arbitrated from one Service to another) stays.
// The removal of the old key used to run after the new key had skipped the
// virtual server as another's, and deleted it until the next full sync
// (found by comparing syncs against the tracker's change sets).
func TestPartialSyncMovesVIPBetweenKeys(t *testing.T) {
	for _, order := range []string{"renamed", "swapped"} {
		t.Run(order, func(t *testing.T) {
			e := newEnv(t, Config{})
			old := svc("a", "10.96.0.10", 80, ep("10.244.1.5:8080"))
			other := svc("b", "10.96.0.20", 80, ep("10.244.1.6:8080"))
			s := snapOf(old, other)
			e.sync(s, true)
			renamed := svc("a", "10.96.0.10", 80, ep("10.244.1.5:8080"))
			renamed.Key.Port = "http"
			next := with(without(s, old), renamed)
			if order == "swapped" {
				// b takes a's ClusterIP:port while a moves to b's.
				a2, b2 := svc("a", "10.96.0.20", 80, ep("10.244.1.5:8080")), svc("b", "10.96.0.10", 80, ep("10.244.1.6:8080"))
				next = with(s, a2, b2)
			}
			for range 20 { // the change set's order varies
				e.sync(next, false)
				for _, vip := range []string{"10.96.0.10:80", "10.96.0.20:80"} {
					if !e.hasVS(vip) || len(e.dests(vip)) != 1 {
						t.Fatalf("%s lost: %v", vip, e.h.Keys())
					}
				}
				if !slices.Contains(e.dummyAddrs(), addr("10.96.0.10")) {
					t.Fatalf("address lost: %v", e.dummyAddrs())
				}
				e.sync(s, false)
			}
		})
	}
}

// TestSharedAddress: ports of one Service share the ClusterIP; removing one
// keeps the address on the dummy.
func TestSharedAddress(t *testing.T) {
	e := newEnv(t, Config{})
	p80 := svc("a", "10.96.0.10", 80, ep("10.244.1.5:8080"))
	p443 := svc("a", "10.96.0.10", 443, ep("10.244.1.5:8443"))
	p443.Key.Port = "https"
	s := snapOf(p80, p443)
	e.sync(s, false)
	e.sync(without(s, p443), false)
	if !slices.Contains(e.dummyAddrs(), addr("10.96.0.10")) || e.hasVS("10.96.0.10:443") {
		t.Fatalf("addresses %v, vs %v", e.dummyAddrs(), e.h.Keys())
	}
	e.sync(snapOf(), false)
	if len(e.dummyAddrs()) != 0 {
		t.Fatalf("addresses %v", e.dummyAddrs())
	}
}

// TestPartialSyncOpsAt1k counts the netlink operations of one-endpoint
// partial syncs among 1000 service ports (the question).
func TestPartialSyncOpsAt1k(t *testing.T) {
	e := newEnv(t, Config{})
	var sps []*model.ServicePort
	for i := range 1000 {
		sps = append(sps, svc(fmt.Sprint("s", i), fmt.Sprintf("10.96.%d.%d", i/250, i%250+1), 80,
			ep(fmt.Sprintf("10.244.%d.%d:8080", i/250, i%250+1))))
	}
	s := snapOf(sps...)
	e.sync(s, true)
	cold := e.b.Stats().NetlinkOps
	e.sync(s, true)
	warm := e.b.Stats().NetlinkOps
	// A full sync over a kernel that matches only reads: the dummy, its
	// addresses, the services, each one's destinations, the node's addresses.
	if warm != 1000+4 {
		t.Errorf("warm full sync: %d netlink ops", warm)
	}
	steps := []struct {
		name string
		sp   *model.ServicePort
		want int
	}{
		{"add an endpoint", svc("s500", "10.96.2.1", 80, ep("10.244.2.1:8080"), ep("10.244.9.9:8080")), 1},
		// Weight 0, then the drain check finds no connections: list, delete.
		{"remove it", svc("s500", "10.96.2.1", 80, ep("10.244.2.1:8080")), 3},
		{"add it back", svc("s500", "10.96.2.1", 80, ep("10.244.2.1:8080"), ep("10.244.9.9:8080")), 1},
	}
	for _, st := range steps {
		s = with(s, st.sp)
		e.sync(s, false)
		if got := e.b.Stats().NetlinkOps; got != st.want {
			t.Errorf("%s: %d netlink ops, want %d", st.name, got, st.want)
		}
	}
	// With connections left: quiesce now, then one listing per sync until
	// it drains, then a listing and the deletion.
	e.h.SetConnections(tcpKey("10.96.2.1:80"), ap("10.244.9.9:8080"), 1, 0)
	for i, want := range []int{2, 1, 2} {
		if i == 2 {
			e.h.SetConnections(tcpKey("10.96.2.1:80"), ap("10.244.9.9:8080"), 0, 0)
		}
		if i == 0 {
			s = with(s, svc("s500", "10.96.2.1", 80, ep("10.244.2.1:8080")))
		}
		e.sync(s, false)
		if got := e.b.Stats().NetlinkOps; got != want {
			t.Errorf("drain step %d: %d netlink ops, want %d", i, got, want)
		}
	}
	t.Logf("full sync of 1000 service ports: %d netlink ops cold, %d warm", cold, warm)
}

func TestTimeoutsAndSysctls(t *testing.T) {
	e := newEnv(t, Config{})
	set := e.l.Sysctls
	b, err := New(testSettings, Config{StrictARP: true, Timeouts: Timeouts{TCP: 900 * time.Second, UDP: 30 * time.Second}}, nil,
		WithHandle(e.h), WithLinks(e.l), WithRules(e.r))
	if err != nil {
		t.Fatal(err)
	}
	e.b = b
	e.sync(snapOf(), true)
	if got, _ := e.h.GetConfig(); got.TCP != 900*time.Second || got.UDP != 30*time.Second {
		t.Errorf("timeouts %+v", got)
	}
	for n, v := range map[string]string{"net/ipv4/vs/conntrack": "1", "net/ipv4/conf/all/arp_ignore": "1", "net/ipv4/conf/all/arp_announce": "2"} {
		if set[n] != v {
			t.Errorf("sysctl %s=%q, want %q", n, set[n], v)
		}
	}
	e.h.ResetOps()
	e.sync(snapOf(), true)
	if e.h.Ops["SetConfig"] != 0 {
		t.Error("timeouts rewritten although unchanged")
	}
}

func TestNewRejectsUnknownScheduler(t *testing.T) {
	if _, err := New(testSettings, Config{Scheduler: "nope"}, nil, WithHandle(NewFakeHandle())); err == nil {
		t.Fatal("unknown scheduler accepted")
	}
}

// TestFailedSyncForcesFull: an error leaves the state unknown; the next sync
// is full and repairs.
func TestFailedSyncForcesFull(t *testing.T) {
	e := newEnv(t, Config{})
	s := snapOf(svc("a", "10.96.0.10", 80, ep("10.244.1.5:8080")))
	e.sync(s, true)
	s2 := with(s, svc("b", "10.96.0.20", 80, ep("10.244.1.6:8080")))
	e.h.FailOn["NewDestination"] = true
	if _, err := backendtest.Sync(t.Context(), e.b, s2, false); err == nil {
		t.Fatal("sync succeeded")
	}
	delete(e.h.FailOn, "NewDestination")
	if res := e.sync(s2, false); !res.Full {
		t.Error("sync after failure not full")
	}
	if len(e.dests("10.96.0.20:80")) != 1 {
		t.Error("not repaired")
	}
}

func TestCleanup(t *testing.T) {
	e := newEnv(t, Config{})
	a := svc("a", "10.96.0.10", 80, ep("10.244.1.5:8080"))
	a.NodePort = 30080
	e.sync(snapOf(a), true)
	if err := e.h.NewService(Service{VSKey: tcpKey("198.51.100.1:8080"), Scheduler: "rr"}); err != nil {
		t.Fatal(err)
	}
	if err := e.b.Cleanup(t.Context()); err != nil {
		t.Fatal(err)
	}
	if got := e.h.Keys(); len(got) != 1 || got[0] != tcpKey("198.51.100.1:8080") {
		t.Errorf("left %v", got)
	}
	if e.l.HasLink(dummyName) || !e.r.Cleaned {
		t.Error("dummy or rules left")
	}
	// Nothing to remove: still fine.
	if err := e.newBackend(Config{}).Cleanup(t.Context()); err != nil {
		t.Fatal(err)
	}
}

// TestCleanupByAnotherAgent is a mode switch away from ipvs: the new agent's
// ipvs backend never synced, yet its Cleanup must find the node port on the
// node's address (no dummy address marks it as kpo's) through the VIP-PORTS
// record, and leave the foreign virtual server on the same address alone.
// Before the record, the node port's virtual server stayed, and kept
// answering for a Service deleted later.
func TestCleanupByAnotherAgent(t *testing.T) {
	e := newEnv(t, Config{})
	a := svc("a", "10.96.0.10", 80, ep("10.244.1.5:8080"))
	a.NodePort = 30080
	u := udp(svc("u", "10.96.0.11", 53, ep("10.244.1.5:53")))
	u.NodePort = 30053
	e.sync(snapOf(a, u), true)
	foreign := tcpKey("198.51.100.1:8080")
	if err := e.h.NewService(Service{VSKey: foreign, Scheduler: "rr"}); err != nil {
		t.Fatal(err)
	}
	if err := e.newBackend(Config{}).Cleanup(t.Context()); err != nil {
		t.Fatal(err)
	}
	if got := e.h.Keys(); len(got) != 1 || got[0] != foreign {
		t.Errorf("left %v, want only the foreign %v", got, foreign)
	}
}

// TestRestartCollectsStaleNodePort: a Service deleted while the agent was
// down leaves its node port's virtual server on a node address; the
// restarted agent's first sync removes it (the VIP-PORTS record), which the
// old ownership rule (on kpo-ipvs0, or made by this process) could not.
func TestRestartCollectsStaleNodePort(t *testing.T) {
	e := newEnv(t, Config{})
	a := svc("a", "10.96.0.10", 80, ep("10.244.1.5:8080"))
	a.NodePort = 30080
	b := svc("b", "10.96.0.12", 80, ep("10.244.1.5:8080"))
	e.sync(snapOf(a, b), true)
	e.b = e.newBackend(Config{})
	e.sync(snapOf(b), true)
	if e.hasVS("198.51.100.1:30080") || e.hasVS("10.96.0.10:80") {
		t.Errorf("stale virtual servers kept: %v", e.h.Keys())
	}
}
