package ipvs

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"kpo.dev/kpo/nodeagent/backend/iptables"
	"kpo.dev/kpo/nodeagent/model"
	"kpo.dev/kpo/nodeagent/model/modeltest"
)

// companionEnv is the ipvs backend with the real companion rules over the
// iptables Fake and FakeIPSet (both refuse what the kernel refuses: a rule
// matching a missing set, an element of the wrong family…).
type companionEnv struct {
	*env
	ipt   *iptables.Fake
	ipset *FakeIPSet
}

func newCompanionEnv(t *testing.T) *companionEnv {
	e := &companionEnv{env: newEnv(t, Config{}), ipt: iptables.NewFake(), ipset: NewFakeIPSet()}
	e.ipt.SetExists = e.ipset.Has
	b, err := New(testSettings, Config{}, []model.Family{model.IPv4, model.IPv6},
		WithHandle(e.h), WithLinks(e.l), WithCompanion(e.ipt, e.ipset), WithClock(func() time.Time { return e.now }))
	if err != nil {
		t.Fatal(err)
	}
	e.b = b
	return e
}

func (e *companionEnv) members(set string) []string {
	e.t.Helper()
	ms, err := e.ipset.Members(set)
	if err != nil {
		e.t.Fatal(err)
	}
	return ms
}

// TestCompanionRules: the companion rules the ipvs mode writes are accepted
// by the strict fakes, follow the routes (reject, drop, masquerade,
// firewall, hairpin), change incrementally, and go with Cleanup, leaving
// the iptables mode's chains alone (make-before-break in a mode switch).
func TestCompanionRules(t *testing.T) {
	e := newCompanionEnv(t)
	withEps := svc("a", "10.96.0.10", 80, ep("10.244.1.5:8080"))
	withEps.NodePort = 30080
	lb := modeltest.LoadBalancer(svc("lb", "10.96.0.11", 80, ep("10.244.2.6:8080")), "203.0.113.11", "198.51.100.200/30")
	none := svc("none", "10.96.0.12", 80)
	s := snapOf(withEps, lb, none)
	e.sync(s, true)

	want := map[string][]string{
		"KPO-REJECT":    {"10.96.0.12,tcp:80"},
		"KPO-EXTERNAL":  {"198.51.100.1,tcp:30080", "203.0.113.11,tcp:80"},
		"KPO-FW":        {"203.0.113.11,tcp:80"},
		"KPO-FW-SRC":    {"203.0.113.11,tcp:80,198.51.100.200/30"},
		"KPO-LOOP-BACK": {"10.244.1.5,tcp:8080,10.244.1.5", "10.244.2.6,tcp:8080,10.244.2.6"},
	}
	for set, w := range want {
		if got := e.members(set); !slices.Equal(got, w) {
			t.Errorf("%s = %v, want %v", set, got, w)
		}
	}
	post, _ := e.ipt.Rules(model.IPv4, "nat", chainPostrouting)
	if !slices.Contains(post, "-j MASQUERADE --random-fully") {
		t.Errorf("KPO-IPVS-POSTROUTING %v: no fully random masquerade", post)
	}

	// A partial sync changes elements, not whole sets.
	none2 := svc("none", "10.96.0.12", 80, ep("10.244.1.7:8080"))
	n := len(e.ipset.Scripts)
	e.sync(with(s, none2), false)
	if got := e.members("KPO-REJECT"); len(got) != 0 {
		t.Errorf("KPO-REJECT = %v after the endpoint came", got)
	}
	if script := strings.Join(e.ipset.Scripts[n:], ""); strings.Contains(script, "swap") || !strings.Contains(script, "del KPO-REJECT 10.96.0.12,tcp:80") {
		t.Errorf("partial ipset script:\n%s", script)
	}

	// The iptables mode's rules in the same tables, as during a mode switch.
	ipt, err := iptables.New(testSettings, []model.Family{model.IPv4, model.IPv6}, iptables.WithKernel(e.ipt))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ipt.Sync(context.Background(), s, nil); err != nil {
		t.Fatal(err)
	}
	e.sync(with(s, none2), true) // a second full sync: no jump twice
	for _, table := range []string{"nat", "filter"} {
		if d := e.ipt.Dump(model.IPv4, table); strings.Count(d, `--comment "kpo ipvs" -j `+chainServices) != map[string]int{"nat": 2, "filter": 3}[table] {
			t.Errorf("%s jumps:\n%s", table, d)
		}
	}
	if err := e.b.Cleanup(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, f := range []model.Family{model.IPv4, model.IPv6} {
		for _, table := range []string{"nat", "filter"} {
			d := e.ipt.Dump(f, table)
			if strings.Contains(d, "KPO-IPVS") || !strings.Contains(d, ":KPO-SERVICES") {
				t.Errorf("%s %s after the ipvs cleanup:\n%s", f, table, d)
			}
		}
	}
	if names, _ := e.ipset.Names(); len(names) != 0 {
		t.Errorf("sets left: %v", names)
	}
}
