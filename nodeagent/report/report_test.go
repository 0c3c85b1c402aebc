package report

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	testingclock "k8s.io/utils/clock/testing"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
	"kpo.dev/kpo/nodeagent/explain"
	"kpo.dev/kpo/nodeagent/model"
	"kpo.dev/kpo/nodeagent/model/modeltest"
)

// recorder is an API server stand-in that records the reporter's applies.
type recorder struct {
	mu sync.Mutex
	// metadata and status count applies of the object and of its status.
	metadata, status int
	last             kpov1.ProxyNodeReport
	// fail, if set, answers every status apply.
	fail error
}

func (rec *recorder) client() client.Client {
	return interceptor.NewClient(fake.NewClientBuilder().Build(), interceptor.Funcs{
		Apply: func(context.Context, client.WithWatch, runtime.ApplyConfiguration, ...client.ApplyOption) error {
			rec.mu.Lock()
			defer rec.mu.Unlock()
			rec.metadata++
			return nil
		},
		SubResourceApply: func(_ context.Context, _ client.Client, sub string, obj runtime.ApplyConfiguration, _ ...client.SubResourceApplyOption) error {
			rec.mu.Lock()
			defer rec.mu.Unlock()
			if sub != "status" {
				return fmt.Errorf("applied subresource %q", sub)
			}
			if rec.fail != nil {
				return rec.fail
			}
			rec.status++
			u := obj.(interface{ UnstructuredContent() map[string]any })
			st, _ := u.UnstructuredContent()["status"].(map[string]any)
			rec.last = kpov1.ProxyNodeReport{}
			return runtime.DefaultUnstructuredConverter.FromUnstructured(st, &rec.last)
		},
	})
}

func (rec *recorder) counts() (metadata, status int) {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	return rec.metadata, rec.status
}

var t0 = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)

func newTestReporter(rec *recorder, clk *testingclock.FakeClock, fresh func(time.Time) (bool, string)) *Reporter {
	cfg := &kpov1.AgentConfiguration{ConfigurationName: "c", ConfigurationGeneration: 2, Mode: kpov1.ModeNFTables}
	r := New(rec.client(), "n", cfg, kpov1.ModeNFTables, Options{Clock: clk, Freshness: fresh})
	r.SetNode("uid-1")
	return r
}

// tick advances the clock by a Tick and lets the reporter write if due.
func tick(t *testing.T, r *Reporter, clk *testingclock.FakeClock) {
	t.Helper()
	clk.Step(Tick)
	if _, err := r.WriteIfDue(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// TestIdleNodeWritesOncePerHeartbeat: a node whose syncs (every 30 s, each
// moving the sync time, some the counts) change nothing the operator needs
// writes once per heartbeat, with its current counts, not on every sync. The
// reporter before issue 16 wrote every 10 s (refreshInterval): 120 writes in
// these 20 minutes.
func TestIdleNodeWritesOncePerHeartbeat(t *testing.T) {
	rec := &recorder{}
	clk := testingclock.NewFakeClock(t0)
	r := newTestReporter(rec, clk, func(time.Time) (bool, string) { return true, "" })
	for i := range 20 * 60 {
		if i%30 == 0 {
			r.Synced(clk.Now(), time.Millisecond, i%300 == 0, model.Counts{ServicePorts: 10 + i/100, Endpoints: 20}, 100)
		}
		tick(t, r, clk)
	}
	meta, status := rec.counts()
	// The first report, the Synced (and Healthy) change, then one heartbeat
	// per 5–5.5 minutes: 3 or 4.
	if status < 4 || status > 6 {
		t.Errorf("%d status writes in 20 idle minutes, want 4–6 (two changes and a heartbeat per 5 minutes)", status)
	}
	if meta != 1 {
		t.Errorf("the object's metadata was applied %d times, want once", meta)
	}
	rec.mu.Lock()
	last := rec.last
	rec.mu.Unlock()
	if last.Services < 15 || last.LastReportTime == nil || last.StaleAfterSeconds != int32(StaleAfter(DefaultHeartbeat)/time.Second) {
		t.Errorf("the heartbeat carries %+v, want the current counts, the report time and staleAfterSeconds", last)
	}
	if age := clk.Now().Sub(last.LastReportTime.Time); age > StaleAfter(DefaultHeartbeat)/2 {
		t.Errorf("the last report is %v old", age)
	}
}

// TestStateChangeIsWrittenWithinATick: a failure, and the recovery, are
// written at the next tick, not at the heartbeat.
func TestStateChangeIsWrittenWithinATick(t *testing.T) {
	rec := &recorder{}
	clk := testingclock.NewFakeClock(t0)
	r := newTestReporter(rec, clk, nil)
	r.Synced(clk.Now(), time.Millisecond, true, model.Counts{}, 0)
	for range 60 {
		tick(t, r, clk)
	}
	_, before := rec.counts()
	r.SyncFailed(errors.New("nft: boom"))
	tick(t, r, clk)
	_, after := rec.counts()
	if after != before+1 || !meta.IsStatusConditionFalse(rec.last.Conditions, kpov1.NodeConditionSynced) {
		t.Fatalf("a sync failure was not written at the next tick (writes %d → %d, %+v)", before, after, rec.last.Conditions)
	}
	r.Synced(clk.Now(), time.Millisecond, false, model.Counts{}, 0)
	tick(t, r, clk)
	if !meta.IsStatusConditionTrue(rec.last.Conditions, kpov1.NodeConditionSynced) || rec.last.LastError != "" {
		t.Errorf("the recovery was not written at the next tick: %+v", rec.last)
	}
}

// TestFlappingNodeIsBounded: a node that fails and recovers every second
// writes its first changes at once and then at most one every changeEvery.
func TestFlappingNodeIsBounded(t *testing.T) {
	rec := &recorder{}
	clk := testingclock.NewFakeClock(t0)
	r := newTestReporter(rec, clk, nil)
	const minutes = 10
	for i := range minutes * 60 {
		if i%2 == 0 {
			r.SyncFailed(errors.New("nft: boom"))
		} else {
			r.Synced(clk.Now(), time.Millisecond, false, model.Counts{}, 0)
		}
		tick(t, r, clk)
	}
	_, status := rec.counts()
	bound := changeBurst + int(minutes*time.Minute/changeEvery) + 2
	if status > bound || status < bound/2 {
		t.Errorf("%d writes in %d minutes of flapping every second, want about %d (burst %d, then one per %v)",
			status, minutes, bound, changeBurst, changeEvery)
	}
}

// TestHealthyReevaluationIsNotAChange: the Healthy condition is evaluated
// every tick; while it does not change, nothing is written.
func TestHealthyReevaluationIsNotAChange(t *testing.T) {
	rec := &recorder{}
	clk := testingclock.NewFakeClock(t0)
	fresh := true
	r := newTestReporter(rec, clk, func(time.Time) (bool, string) {
		if fresh {
			return true, ""
		}
		return false, "an update has waited 1m for a successful sync"
	})
	for range 10 {
		tick(t, r, clk)
	}
	_, settled := rec.counts()
	for range 60 {
		tick(t, r, clk)
	}
	if _, n := rec.counts(); n != settled {
		t.Errorf("%d writes of an unchanged Healthy condition", n-settled)
	}
	fresh = false
	tick(t, r, clk)
	if _, n := rec.counts(); n != settled+1 || !meta.IsStatusConditionFalse(rec.last.Conditions, kpov1.NodeConditionHealthy) {
		t.Errorf("stale rules were not written at the next tick: %+v", rec.last.Conditions)
	}
}

// TestFailedWritesBackOff: while the API server refuses writes, retries
// double up to a minute instead of coming every tick, and the pending change
// is written once it answers again.
func TestFailedWritesBackOff(t *testing.T) {
	rec := &recorder{fail: apierrors.NewServiceUnavailable("overloaded")}
	clk := testingclock.NewFakeClock(t0)
	r := newTestReporter(rec, clk, nil)
	attempts := 0
	for range 10 * 60 {
		clk.Step(Tick)
		if _, err := r.WriteIfDue(context.Background()); err != nil {
			attempts++
		}
	}
	// 1+2+4+8+16+32 s, then one a minute (jittered down to half): 6 + up to 20.
	if attempts > 26 || attempts < 8 {
		t.Errorf("%d attempts in 10 minutes of refusals, want a doubling backoff up to a minute (8–26)", attempts)
	}
	rec.mu.Lock()
	rec.fail = nil
	rec.mu.Unlock()
	for range 61 {
		tick(t, r, clk)
	}
	if _, n := rec.counts(); n != 1 {
		t.Errorf("%d writes after the API server answered again, want the pending report once", n)
	}
}

// TestDeletedReportIsCreatedAgain: a status write that finds no object
// applies the metadata again on the next write.
func TestDeletedReportIsCreatedAgain(t *testing.T) {
	rec := &recorder{}
	clk := testingclock.NewFakeClock(t0)
	r := newTestReporter(rec, clk, nil)
	tick(t, r, clk)
	rec.mu.Lock()
	rec.fail = apierrors.NewNotFound(schema.GroupResource{Group: "proxy.kpo.dev", Resource: "proxynodestatuses"}, "n")
	rec.mu.Unlock()
	r.SyncFailed(errors.New("boom"))
	clk.Step(Tick)
	if _, err := r.WriteIfDue(context.Background()); !apierrors.IsNotFound(err) {
		t.Fatalf("write: %v", err)
	}
	rec.mu.Lock()
	rec.fail = nil
	rec.mu.Unlock()
	for range 5 {
		tick(t, r, clk)
	}
	if meta, status := rec.counts(); meta != 2 || status != 2 {
		t.Errorf("metadata applied %d times, status %d, want 2 and 2", meta, status)
	}
}

// TestRejectionsAreBounded: the report names at most MaxRejectedObjects, with
// the total, and a change of them is written at once.
func TestRejectionsAreBounded(t *testing.T) {
	var grouped []model.Rejection
	for i := range 14 {
		grouped = append(grouped, model.Rejection{Kind: model.KindEndpointSlice, Namespace: "ns",
			Name: fmt.Sprintf("s%02d", i), Reason: model.ReasonInvalidEndpointPort, Message: "70000"})
	}
	rec := &recorder{}
	clk := testingclock.NewFakeClock(t0)
	r := newTestReporter(rec, clk, nil)
	tick(t, r, clk)
	r.SetRejected(grouped)
	tick(t, r, clk)
	if got := rec.last; len(got.RejectedObjects) != kpov1.MaxRejectedObjects || got.RejectedObjectCount != 14 ||
		got.RejectedObjects[0].Name != "s00" {
		t.Errorf("written %d named of %d, first %+v", len(got.RejectedObjects), got.RejectedObjectCount, got.RejectedObjects)
	}
	r.SetRejected(nil)
	tick(t, r, clk)
	if got := rec.last; got.RejectedObjects != nil || got.RejectedObjectCount != 0 {
		t.Errorf("after the last rejection went: %+v", got)
	}
}

// TestFinalWriteStopsWrites: after WriteFinal nothing is written, heartbeat
// or change.
func TestFinalWriteStopsWrites(t *testing.T) {
	rec := &recorder{}
	clk := testingclock.NewFakeClock(t0)
	r := newTestReporter(rec, clk, nil)
	r.HandedOver(clk.Now(), "next")
	if err := r.WriteFinal(context.Background()); err != nil {
		t.Fatal(err)
	}
	r.SyncFailed(errors.New("boom"))
	for range 11 * 60 {
		tick(t, r, clk)
	}
	if _, n := rec.counts(); n != 1 {
		t.Errorf("%d writes, want only the final one", n)
	}
}

// snapshots returns n models of 50 service ports, each with one endpoint
// more than the one before it in one port: a model that changes on every
// sync, as endpoints churn. Unchanged ports are shared, as the tracker
// shares them.
func snapshots(n int) []*model.Snapshot {
	var sps []*model.ServicePort
	for i := range 50 {
		sps = append(sps, modeltest.ServicePort("ns", fmt.Sprintf("s%d", i), fmt.Sprintf("10.96.0.%d", i+1), 80,
			model.Endpoint{IP: netip.AddrFrom4([4]byte{10, 244, 1, byte(i + 1)}), Port: 8080, Ready: true}))
	}
	out := []*model.Snapshot{modeltest.Snapshot(model.NodeInfo{Name: "n"}, sps...)}
	for i := 1; i < n; i++ {
		prev := out[i-1]
		sp := *prev.Services[sps[i%50].Key]
		sp.ClusterEndpoints = append(slices.Clone(sp.ClusterEndpoints),
			model.Endpoint{IP: netip.AddrFrom4([4]byte{10, 244, 2, byte(i)}), Port: 8080, Ready: true})
		out = append(out, modeltest.With(prev, &sp))
	}
	return out
}

// TestProgrammedModelRidesWrites: a node whose model changes on every sync
// (every 30 s) writes no more often than an idle one (issue 16: the model
// hash is not a change of its own), and every write names the model of
// the last sync before it, with that sync's time, as kubectl kpo computes
// it (explain.Hash). Before the first sync no model is named. (Before
// issue 18 no report named a model.)
func TestProgrammedModelRidesWrites(t *testing.T) {
	rec := &recorder{}
	clk := testingclock.NewFakeClock(t0)
	r := newTestReporter(rec, clk, func(time.Time) (bool, string) { return true, "" })
	tick(t, r, clk)
	if _, n := rec.counts(); n != 1 || rec.last.ProgrammedModel != nil {
		t.Fatalf("before the first sync: %d writes, model %+v; want the first report without a model", n, rec.last.ProgrammedModel)
	}
	snaps := snapshots(40)
	var last *model.Snapshot
	var lastAt time.Time
	seen := 0
	for i := range 20 * 60 {
		if i%30 == 0 {
			last, lastAt = snaps[i/30], clk.Now()
			r.Programmed(lastAt, last)
			r.Synced(lastAt, time.Millisecond, false, last.Count(), 100)
		}
		_, before := rec.counts()
		tick(t, r, clk)
		if _, after := rec.counts(); after == before {
			continue
		}
		seen++
		pm := rec.last.ProgrammedModel
		want := explain.Hash(last)
		if pm == nil || pm.Services != want.Services || pm.Node != want.Node || !pm.SyncTime.Time.Equal(lastAt) {
			t.Fatalf("write %d names %+v, want %v synced at %v", seen, pm, want, lastAt)
		}
		if got := r.Report().ProgrammedModel; got == nil || got.Services != pm.Services || !got.SyncTime.Equal(&pm.SyncTime) {
			t.Errorf("Report() says %+v, the write %+v", got, pm)
		}
	}
	if _, status := rec.counts(); status < 4 || status > 6 {
		t.Errorf("%d status writes in 20 minutes of a model changing every 30 s, want 4–6 (as an idle node)", status)
	}
	if seen < 3 {
		t.Fatalf("only %d writes after the first sync", seen)
	}

	// A cleanup leaves no model in the kernel: the report names none.
	r.CleanedUp(clk.Now())
	tick(t, r, clk)
	if rec.last.ProgrammedModel != nil {
		t.Errorf("after the cleanup the report names model %+v", rec.last.ProgrammedModel)
	}
}

// TestFinalWriteNamesTheModel: the report written when another
// configuration's agent takes over names the model this one left in place.
func TestFinalWriteNamesTheModel(t *testing.T) {
	rec := &recorder{}
	clk := testingclock.NewFakeClock(t0)
	r := newTestReporter(rec, clk, nil)
	snap := snapshots(1)[0]
	r.Programmed(clk.Now(), snap)
	r.Synced(clk.Now(), time.Millisecond, true, snap.Count(), 10)
	r.HandedOver(clk.Now(), "next")
	if err := r.WriteFinal(context.Background()); err != nil {
		t.Fatal(err)
	}
	if pm := rec.last.ProgrammedModel; pm == nil || pm.Services != explain.Hash(snap).Services {
		t.Errorf("the final report names %+v, want %v", pm, explain.Hash(snap))
	}
}
