package controllers

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	testingclock "k8s.io/utils/clock/testing"
	"k8s.io/utils/ptr"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
)

func newTestRollup(t *testing.T, clk *testingclock.FakeClock) *Rollup {
	ro := NewRollup(nil, clk, time.Second)
	t.Cleanup(func() { ro.writes.ShutDown(); ro.expiries.ShutDown() })
	return ro
}

func pnsObject(node string, rv int, r *kpov1.ProxyNodeReport) *kpov1.ProxyNodeStatus {
	return &kpov1.ProxyNodeStatus{ObjectMeta: metav1.ObjectMeta{Name: node, ResourceVersion: fmt.Sprint(rv)}, Status: *r}
}

func leaseObject(node string, rv int) *coordinationv1.Lease {
	return &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Name: node, Namespace: NodeLeaseNamespace, ResourceVersion: fmt.Sprint(rv)},
		Spec:       coordinationv1.LeaseSpec{LeaseDurationSeconds: ptr.To[int32](40)},
	}
}

// TestRollupMatchesRecount drives the rollup with thousands of random events
// (reports of every kind, deletions, nodes joining and leaving, spec
// changes) and checks after each that its incremental aggregate equals the
// one computed from scratch from the same reports.
func TestRollupMatchesRecount(t *testing.T) {
	clk := testingclock.NewFakeClock(time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC))
	ro := newTestRollup(t, clk)
	rng := rand.New(rand.NewPCG(1, 16))
	pc := &kpov1.ProxyConfiguration{ObjectMeta: metav1.ObjectMeta{Name: "pc", Generation: 1},
		Spec: kpov1.ProxyConfigurationSpec{Mode: kpov1.ModeNFTables}}
	const nodes = 60
	name := func(i int) string { return fmt.Sprintf("node-%02d", i) }
	held := map[string]bool{}
	reports := map[string]*kpov1.ProxyNodeReport{}
	modes := []kpov1.Mode{kpov1.ModeNFTables, kpov1.ModeIPTables}
	reasons := []struct {
		status metav1.ConditionStatus
		reason string
	}{{metav1.ConditionTrue, kpov1.NodeReasonSynced}, {metav1.ConditionFalse, kpov1.NodeReasonSyncFailed},
		{metav1.ConditionFalse, kpov1.NodeReasonNotSyncedYet}, {metav1.ConditionFalse, kpov1.NodeReasonIPVSUnavailable}}
	heldList := func() []string {
		var out []string
		for n := range held {
			out = append(out, n)
		}
		return out
	}
	ro.SetConfiguration(pc, nil, nil, nil)
	for step := range 5000 {
		node := name(rng.IntN(nodes))
		switch op := rng.IntN(20); {
		case op < 14:
			why := reasons[rng.IntN(len(reasons))]
			r := nodeReport(pc.Generation-int64(rng.IntN(2)), modes[rng.IntN(2)], why.status, why.reason)
			if rng.IntN(10) == 0 {
				r.Configuration = "other"
			}
			if rng.IntN(4) == 0 {
				r.Conditions = append(r.Conditions, metav1.Condition{Type: kpov1.NodeConditionHealthy, Status: metav1.ConditionFalse, Reason: kpov1.NodeReasonStale})
			}
			reports[node] = r
			ro.Report(node, pnsObject(node, step, r))
		case op < 16:
			delete(reports, node)
			ro.Report(node, nil)
		case op < 19:
			held[node] = !held[node]
			if !held[node] {
				delete(held, node)
			}
			ro.SetConfiguration(pc, heldList(), nil, nil)
		default:
			pc = pc.DeepCopy()
			pc.Generation++
			pc.Spec.Mode = modes[rng.IntN(2)]
			ro.SetConfiguration(pc, heldList(), nil, nil)
		}
		got, gen, ok := ro.snapshot("pc")
		want := aggregateReports(pc, statusInputs{heldNodes: heldList(), reports: reports})
		if !ok || gen != pc.Generation || !sameAggregate(got, want) {
			t.Fatalf("step %d: incremental %+v, from scratch %+v", step, got, want)
		}
	}
}

func sameAggregate(a, b aggregate) bool {
	return a.desired == b.desired && a.updated == b.updated && a.ready == b.ready && a.failingTotal == b.failingTotal &&
		reflect.DeepEqual(a.modes, b.modes) && reflect.DeepEqual(a.failing, b.failing)
}

// TestRollupNotReporting: a node whose Lease is not renewed within its
// duration, or whose agent writes no report within staleAfterSeconds, is
// not ready and named NotReporting; a renewal or a new report restores it.
// Before issue 16 the operator believed the last report for ever.
func TestRollupNotReporting(t *testing.T) {
	clk := testingclock.NewFakeClock(time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC))
	ro := newTestRollup(t, clk)
	pc := &kpov1.ProxyConfiguration{ObjectMeta: metav1.ObjectMeta{Name: "pc", Generation: 1},
		Spec: kpov1.ProxyConfigurationSpec{Mode: kpov1.ModeNFTables}}
	ro.SetConfiguration(pc, []string{"a", "b"}, nil, nil)
	ready := nodeReport(1, kpov1.ModeNFTables, metav1.ConditionTrue, kpov1.NodeReasonSynced)
	ready.StaleAfterSeconds = 660
	rv := 0
	lastRV := map[string]int{}
	report := func(node string) { rv++; lastRV[node] = rv; ro.Report(node, pnsObject(node, rv, ready)) }
	lease := func(node string) { rv++; ro.Lease(node, leaseObject(node, rv)) }
	check := func(wantReady int32, wantNamed ...string) {
		t.Helper()
		agg, _, _ := ro.snapshot("pc")
		var named []string
		for _, f := range agg.failing {
			if f.Reason != kpov1.NodeReasonNotReporting || !strings.Contains(f.Message, "last seen") {
				t.Errorf("failure %+v", f)
			}
			named = append(named, f.Node)
		}
		if agg.ready != wantReady || !reflect.DeepEqual(named, wantNamed) {
			t.Errorf("after %v: ready %d, named %v; want %d, %v", clk.Since(time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)),
				agg.ready, named, wantReady, wantNamed)
		}
	}
	report("a")
	report("b")
	lease("a")
	lease("b")
	check(2)

	// b's kubelet stops renewing; a's keeps on.
	for range 4 {
		clk.Step(10 * time.Second)
		lease("a")
	}
	clk.Step(2 * time.Second)
	ro.expire("b")
	check(1, "b")
	lease("b")
	check(2)

	// a's agent stops writing (its Lease is renewed): stale after 660 s.
	for range 60 {
		clk.Step(10 * time.Second)
		lease("a")
		lease("b")
	}
	report("b")
	ro.expire("a")
	check(2)
	clk.Step(25 * time.Second)
	lease("a")
	lease("b")
	ro.expire("a")
	check(1, "a")
	// A resync brings the same resourceVersion: not a new report.
	ro.Report("a", pnsObject("a", lastRV["a"], ready))
	check(1, "a")
	report("a")
	check(2)
}
