package iptables

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"kpo.dev/kpo/nodeagent/backend/backendtest"
	"kpo.dev/kpo/nodeagent/model"
)

// declared lists the chains a restore input declares (writes or deletes).
func declared(data string) []string {
	var out []string
	for _, l := range strings.Split(data, "\n") {
		if name, ok := strings.CutPrefix(l, ":"); ok {
			out = append(out, strings.Fields(name)[0])
		}
	}
	slices.Sort(out)
	return out
}

// rulesWith counts the rules of a nat chain containing substr.
func rulesWith(f *Fake, chain, substr string) int {
	rules, _ := f.Rules(model.IPv4, tableNAT, chain)
	n := 0
	for _, r := range rules {
		if strings.Contains(r, substr) {
			n++
		}
	}
	return n
}

func kpoRules(f *Fake) int {
	return f.RuleCount(model.IPv4, chainPrefix) + f.RuleCount(model.IPv6, chainPrefix)
}

func TestPartialSyncTouchesOnlyChangedService(t *testing.T) {
	b, f := newFakeBackend(t, testSettings)
	s1 := bigSnapshot(300, 2)
	r := mustSync(t, b, s1, false) // first sync is full anyway
	if !r.Full || r.ServicePortsWritten != 300 || r.Rules != kpoRules(f) {
		t.Fatalf("first sync %+v, fake holds %d rules", r, kpoRules(f))
	}

	// One service gets a third endpoint, on this node.
	s2 := clone(s1)
	var changed *model.ServicePort
	for _, sp := range s2.Services {
		if sp.Key.Name == "svc7" {
			c := *sp
			c.ClusterEndpoints = append(slices.Clone(sp.ClusterEndpoints), ep("10.244.9.9:8080", true))
			c.ExternalEndpoints = c.ClusterEndpoints
			changed = &c
		}
	}
	s2.Services[changed.Key] = changed
	n := len(f.Restores)
	r = mustSync(t, b, s2, false)
	if r.Full || r.ServicePortsWritten != 1 || r.Rules != kpoRules(f) {
		t.Fatalf("partial sync %+v, fake holds %d rules", r, kpoRules(f))
	}
	if len(f.Restores) != n+1 {
		t.Fatalf("%d restores, want 1", len(f.Restores)-n)
	}
	// A plain ClusterIP service has no chain of its own: its rules live in its
	// destination bucket, and the new local endpoint adds a hairpin check (the
	// first one: bigSnapshot's endpoints are remote).
	bucket := bucketChain(bucketOf(changed.ClusterIP))
	want := []string{bucket, chainHairpin, hairpinChain(9)}
	slices.Sort(want)
	if got := declared(f.Restores[n].Data); !slices.Equal(got, want) {
		t.Errorf("partial restore declares %v, want %v\n%s", got, want, f.Restores[n].Data)
	}
	if got := rulesWith(f, hairpinChain(9), "-s 10.244.9.9/32 -d 10.244.9.9/32 "); got != 1 {
		t.Errorf("%d hairpin rules for the local endpoint", got)
	}
	vip := "-d " + hostCIDR(changed.ClusterIP) + " "
	if got := rulesWith(f, bucket, vip); got != 4 { // cluster masq + 3 endpoints
		t.Errorf("%d rules for the changed service in %s", got, bucket)
	}

	// Nothing changed: no restore at all.
	n = len(f.Restores)
	if r = mustSync(t, b, s2, false); r.ServicePortsWritten != 0 || len(f.Restores) != n {
		t.Errorf("no-op sync %+v wrote %d restores", r, len(f.Restores)-n)
	}

	// Removing a service removes its rules and its endpoints' hairpin checks.
	s3 := clone(s2)
	delete(s3.Services, changed.Key)
	mustSync(t, b, s3, false)
	if got := rulesWith(f, bucket, vip); got != 0 {
		t.Errorf("removed service: %d rules left in %s", got, bucket)
	}
	for _, e := range changed.ClusterEndpoints {
		if got := rulesWith(f, hairpinChain(bucketOf(e.IP)), "-s "+hostCIDR(e.IP)+" "); got != 0 {
			t.Errorf("removed service: hairpin check of %s kept", e.IP)
		}
	}

	removeAffinityService(t, b, f, s3)
}

// removeAffinityService: with session affinity a service has SVC and SEP
// chains, and removing it (a partial sync) deletes them.
func removeAffinityService(t *testing.T, b *Backend, f *Fake, s3 *model.Snapshot) {
	s4 := clone(s3)
	var sticky *model.ServicePort
	for _, sp := range s4.Services {
		if sp.Key.Name == "svc8" {
			c := *sp
			c.AffinityTimeout = time.Hour
			sticky = &c
		}
	}
	s4.Services[sticky.Key] = sticky
	mustSync(t, b, s4, false)
	chains := []string{chainsFor(sticky.Key).svc}
	for _, e := range sticky.ClusterEndpoints {
		chains = append(chains, sepChain(sticky.Key, e))
	}
	for _, c := range chains {
		if rules, _ := f.Rules(model.IPv4, tableNAT, c); len(rules) == 0 {
			t.Errorf("affinity: chain %s empty or missing", c)
		}
	}
	s5 := clone(s4)
	delete(s5.Services, sticky.Key)
	mustSync(t, b, s5, false)
	data := f.Restores[len(f.Restores)-1].Data
	for _, c := range chains {
		if !strings.Contains(data, "-X "+c+"\n") {
			t.Errorf("removed service: %s not deleted:\n%s", c, data)
		}
		if _, ok := f.Rules(model.IPv4, tableNAT, c); ok {
			t.Errorf("chain %s still exists", c)
		}
	}
	if r := mustSync(t, b, s5, false); r.Rules != kpoRules(f) {
		t.Errorf("rules %d, fake %d", r.Rules, kpoRules(f))
	}
}

func TestEndpointsComeAndGo(t *testing.T) {
	// A service losing all endpoints moves from nat (DNAT) to filter (REJECT)
	// and its now-empty bucket chain is deleted; then it comes back.
	b, f := newFakeBackend(t, testSettings)
	with := svc("a", "10.96.0.10", 80, ep("10.244.1.10:8080", true))
	mustSync(t, b, snapOf(with), true)
	without := svc("a", "10.96.0.10", 80)
	mustSync(t, b, snapOf(without), false)
	if _, ok := f.Rules(model.IPv4, tableNAT, bucketChain(10)); ok {
		t.Error("empty nat bucket chain kept")
	}
	if got := f.TraceFilter(model.IPv4, "FORWARD", pkt("10.244.3.3", "10.96.0.10", 80)); got["REJECT"] != 1 {
		t.Errorf("filter %v", got)
	}
	r := mustSync(t, b, snapOf(with), false)
	if got := f.TraceFilter(model.IPv4, "FORWARD", pkt("10.244.3.3", "10.96.0.10", 80)); got["ACCEPT"] != 1 {
		t.Errorf("filter %v", got)
	}
	if r.Rules != kpoRules(f) {
		t.Errorf("rules %d, fake %d", r.Rules, kpoRules(f))
	}
}

func TestFailedRestoreKeepsPreviousRules(t *testing.T) {
	b, f := newFakeBackend(t, testSettings)
	s1 := bigSnapshot(20, 2)
	mustSync(t, b, s1, true)
	before := f.Dump(model.IPv4, tableNAT)

	s2 := clone(s1)
	for k, sp := range s2.Services {
		c := *sp
		c.ClusterEndpoints = nil
		s2.Services[k] = &c
		break
	}
	f.FailRestore = func(model.Family, string) error { return errors.New("injected") }
	if _, err := backendtest.Sync(context.Background(), b, s2, false); err == nil {
		t.Fatal("sync succeeded")
	}
	if after := f.Dump(model.IPv4, tableNAT); after != before {
		t.Error("failed restore changed the table")
	}
	f.FailRestore = nil
	r := mustSync(t, b, s2, false)
	if !r.Full || r.ServicePortsWritten != 20 {
		t.Errorf("sync after failure %+v, want full", r)
	}
}

func TestFakeRestoreIsAtomicPerTable(t *testing.T) {
	f := NewFake()
	ok := "*filter\n:KPO-A - [0:0]\n-A KPO-A -j DROP\nCOMMIT\n"
	bad := []string{
		"*nat\n:KPO-B - [0:0]\n-A KPO-B -j KPO-MISSING\nCOMMIT\n",                                       // jump to nothing
		"*nat\n:KPO-B - [0:0]\n-A KPO-B -m tcp --dport 80 -j RETURN\nCOMMIT\n",                          // -m tcp without -p tcp
		"*nat\n:KPO-B - [0:0]\n-A KPO-B -j DROP\nCOMMIT\n",                                              // DROP in nat
		"*nat\n:KPO-B - [0:0]\n-A KPO-B -d 10.0.0.300 -j RETURN\nCOMMIT\n",                              // bad address
		"*nat\n:KPO-B - [0:0]\n-A KPO-B -j PREROUTING\nCOMMIT\n",                                        // jump to built-in
		"*nat\n:KPO-THIS-NAME-IS-MUCH-TOO-LONG-FOR-IT - [0:0]\nCOMMIT\n",                                // name length
		"*nat\n:KPO-B - [0:0]\n:KPO-C - [0:0]\n-A KPO-B -j KPO-C\n-X KPO-C\nCOMMIT\n",                   // still referenced
		"*nat\n:KPO-B - [0:0]\n-A KPO-B -m statistic --mode random --probability 2 -j RETURN\nCOMMIT\n", // probability
	}
	for _, b := range bad {
		before := f.Dump(model.IPv4, tableNAT)
		err := f.Restore(model.IPv4, []byte(ok+b))
		if err == nil {
			t.Errorf("accepted:\n%s", b)
		}
		if f.Dump(model.IPv4, tableNAT) != before {
			t.Errorf("failed section changed nat:\n%s", b)
		}
		// The filter section before it was committed, as iptables-restore does.
		if _, ok := f.Rules(model.IPv4, tableFilter, "KPO-A"); !ok {
			t.Error("committed filter section lost")
		}
	}
}

func TestFullSyncRepairsDrift(t *testing.T) {
	b, f := newFakeBackend(t, testSettings)
	s := bigSnapshot(10, 2)
	mustSync(t, b, s, true)
	want := f.Dump(model.IPv4, tableNAT)

	var some string
	for _, sp := range s.Services {
		some = bucketChain(bucketOf(sp.ClusterIP))
		break
	}
	for _, cmd := range []string{
		"-N KPO-SVC-LEFTOVER", "-N KPO-SEP-LEFTOVER", "-A KPO-SVC-LEFTOVER -j KPO-SEP-LEFTOVER",
		"-A KPO-SERVICES -j KPO-SVC-LEFTOVER", "-F " + some, "-N KUBE-SERVICES",
	} {
		if err := f.Exec(model.IPv4, tableNAT, cmd); err != nil {
			t.Fatal(cmd, err)
		}
	}
	if err := f.Exec(model.IPv4, tableFilter, "-D OUTPUT "+strings.Join(quoteArgs(filterJump), " ")); err != nil {
		t.Fatal(err)
	}
	// A partial sync trusts its memory: nothing to do.
	mustSync(t, b, s, false)
	r := mustSync(t, b, s, true)
	if !slices.Contains(f.Chains(model.IPv4, tableNAT), "KUBE-SERVICES") {
		t.Errorf("KUBE- chain touched")
	}
	got := strings.Replace(f.Dump(model.IPv4, tableNAT), ":KUBE-SERVICES\n", "", 1)
	if got != want {
		t.Errorf("drift not repaired:\n%s\nwant\n%s", got, want)
	}
	if rules, _ := f.Rules(model.IPv4, tableFilter, "OUTPUT"); len(rules) != 2 || !slices.ContainsFunc(rules, func(r string) bool {
		return strings.HasSuffix(r, "-j "+chainServices)
	}) {
		t.Errorf("filter OUTPUT jump not restored: %q", rules)
	}
	if r.Rules != kpoRules(f) {
		t.Errorf("rules %d, fake %d", r.Rules, kpoRules(f))
	}
}

func TestCleanup(t *testing.T) {
	b, f := newFakeBackend(t, testSettings)
	s := bigSnapshot(10, 2)
	v6 := svc("v6", "fd10:96::10", 80, ep("[fd10:244:0:1::a]:8080", true))
	s.Services[v6.Key] = v6
	mustSync(t, b, s, true)
	if err := f.Exec(model.IPv4, tableNAT, "-N KUBE-SERVICES"); err != nil {
		t.Fatal(err)
	}
	for range 2 { // twice: safe when there is nothing left
		if err := b.Cleanup(context.Background()); err != nil {
			t.Fatal(err)
		}
		for _, fam := range []model.Family{model.IPv4, model.IPv6} {
			for _, table := range []string{tableNAT, tableFilter} {
				for _, c := range f.Chains(fam, table) {
					if strings.HasPrefix(c, chainPrefix) {
						t.Errorf("%s %s: %s left", fam, table, c)
					}
					if rules, _ := f.Rules(fam, table, c); len(rules) > 0 && c != "KUBE-SERVICES" {
						t.Errorf("%s %s %s: rules left %q", fam, table, c, rules)
					}
				}
			}
		}
	}
	if !slices.Contains(f.Chains(model.IPv4, tableNAT), "KUBE-SERVICES") {
		t.Error("Cleanup removed a KUBE- chain")
	}
	// And the backend starts over with a full sync.
	if r := mustSync(t, b, s, false); !r.Full {
		t.Error("sync after cleanup not full")
	}
}

func TestNodeChangeRewritesFamily(t *testing.T) {
	b, f := newFakeBackend(t, testSettings)
	s := bigSnapshot(5, 1)
	mustSync(t, b, s, true)
	s2 := clone(s)
	s2.Node.ClusterCIDRs = nil
	r := mustSync(t, b, s2, false)
	if r.ServicePortsWritten != 5 {
		t.Errorf("node change wrote %d service ports", r.ServicePortsWritten)
	}
	if rules, _ := f.Rules(model.IPv4, tableNAT, chainClusterMasq); len(rules) != 0 {
		t.Errorf("cluster masq %q", rules)
	}
}

func TestLayoutChanges(t *testing.T) {
	// A service moves between the inlined layout, its own SVC chain (node
	// port) and SEP chains (affinity) through partial syncs; every step must
	// leave exactly its rules, and the next full sync must find nothing to fix.
	b, f := newFakeBackend(t, testSettings)
	e1, e2 := ep("10.244.1.10:8080", true), ep("10.244.2.20:8080", false)
	plain := svc("a", "10.96.0.10", 80, e1, e2)
	np := *plain
	np.NodePort = 30080
	sticky := *plain
	sticky.AffinityTimeout = time.Minute
	want := map[NATResult]float64{res("10.244.1.10:8080", false): .5, res("10.244.2.20:8080", false): .5}
	for i, sp := range []*model.ServicePort{plain, &np, plain, &sticky, &np, plain} {
		r := mustSync(t, b, snapOf(sp), i == 0)
		if r.Rules != kpoRules(f) {
			t.Errorf("step %d: rules %d, fake %d", i, r.Rules, kpoRules(f))
		}
		approx(t, fmt.Sprintf("step %d", i), f.TraceNAT(model.IPv4, "PREROUTING", pkt("10.244.3.3", "10.96.0.10", 80)), want)
		hasSVC := slices.Contains(f.Chains(model.IPv4, tableNAT), chainsFor(sp.Key).svc)
		if hasSVC != (sp != plain) {
			t.Errorf("step %d: SVC chain present %v", i, hasSVC)
		}
		// The local endpoint's hairpin check is in POSTROUTING unless the
		// service uses SEP chains, which do it themselves.
		if got := rulesWith(f, hairpinChain(10), "-s 10.244.1.10/32 "); got != map[bool]int{true: 0, false: 1}[sp == &sticky] {
			t.Errorf("step %d: %d hairpin rules", i, got)
		}
	}
	before := f.Dump(model.IPv4, tableNAT)
	mustSync(t, b, snapOf(plain), true)
	if after := f.Dump(model.IPv4, tableNAT); after != before {
		t.Errorf("full sync changed the partial syncs' result:\n%s\nwant\n%s", after, before)
	}
}
