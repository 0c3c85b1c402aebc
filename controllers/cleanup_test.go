package controllers

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/events"
	clocktesting "k8s.io/utils/clock/testing"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
)

// TestFinalizeWaitsForHandOverAndGivesUpClearly runs finalize on a fake
// client (with the operator's report index) and a fake clock: a node whose
// agent handed it over holds the deletion until the successor's agent
// reports, with the CleanedUp condition and failingNodes saying so; a node
// whose cleanup failed holds it until the bound, and then the CR says which
// nodes may keep rules, and so does a Warning event.
func TestFinalizeWaitsForHandOverAndGivesUpClearly(t *testing.T) {
	deleted := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	scheme := runtime.NewScheme()
	must(t, clientgoscheme.AddToScheme(scheme))
	must(t, kpov1.AddToScheme(scheme))
	newPC := func() *kpov1.ProxyConfiguration {
		return &kpov1.ProxyConfiguration{ObjectMeta: metav1.ObjectMeta{Name: "old",
			// The test's own finalizer keeps the object readable after ours goes.
			Finalizers:        []string{CleanupFinalizer, "test.kpo.dev/hold"},
			DeletionTimestamp: &metav1.Time{Time: deleted}, CreationTimestamp: metav1.NewTime(deleted.Add(-time.Hour))}}
	}
	node := func(name string) *corev1.Node {
		return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{corev1.LabelOSStable: "linux"}}}
	}
	pns := func(node, configuration, reason, msg string) *kpov1.ProxyNodeStatus {
		return &kpov1.ProxyNodeStatus{ObjectMeta: metav1.ObjectMeta{Name: node}, Status: kpov1.ProxyNodeReport{
			Configuration: configuration,
			Conditions:    []metav1.Condition{{Type: kpov1.NodeConditionSynced, Status: metav1.ConditionFalse, Reason: reason, Message: msg}},
		}}
	}
	build := func(objs ...client.Object) client.Client {
		return fake.NewClientBuilder().WithScheme(scheme).WithObjects(objs...).
			WithStatusSubresource(&kpov1.ProxyConfiguration{}, &kpov1.ProxyNodeStatus{}).
			WithIndex(&kpov1.ProxyNodeStatus{}, reportConfigurationIndex, func(o client.Object) []string {
				return []string{o.(*kpov1.ProxyNodeStatus).Status.Configuration}
			}).Build()
	}
	finalize := func(t *testing.T, c client.Client, waited time.Duration) (*kpov1.ProxyConfiguration, time.Duration, *events.FakeRecorder) {
		t.Helper()
		rec := events.NewFakeRecorder(10)
		r := &ProxyConfigurationReconciler{Client: c, Scheme: scheme, Namespace: "kpo-system",
			Clock: clocktesting.NewFakePassiveClock(deleted.Add(waited)), Recorder: rec}
		pc := &kpov1.ProxyConfiguration{}
		must(t, c.Get(context.Background(), client.ObjectKey{Name: "old"}, pc))
		res, err := r.finalize(context.Background(), pc)
		must(t, err)
		must(t, c.Get(context.Background(), client.ObjectKey{Name: "old"}, pc))
		return pc, res.RequeueAfter, rec
	}

	t.Run("handed over: waits for the successor's report", func(t *testing.T) {
		c := build(newPC(), node("n1"), node("n2"),
			pns("n1", "old", kpov1.NodeReasonHandedOver, "new takes this node over"),
			pns("n2", "old", kpov1.NodeReasonCleanedUp, ""))
		pc, requeue, _ := finalize(t, c, 10*time.Second)
		if !controllerutil.ContainsFinalizer(pc, CleanupFinalizer) || requeue != CleanupTimeout-10*time.Second {
			t.Fatalf("finalizer %v, requeue %v: want it held, requeued at the bound", pc.Finalizers, requeue)
		}
		cond := meta.FindStatusCondition(pc.Status.Conditions, kpov1.ConditionCleanedUp)
		if cond == nil || cond.Reason != kpov1.ReasonWaitingForNodes || !strings.Contains(cond.Message, "n1 (HandedOver") ||
			strings.Contains(cond.Message, "n2") {
			t.Errorf("CleanedUp condition %+v, want WaitingForNodes naming n1 only", cond)
		}
		if len(pc.Status.FailingNodes) != 1 || pc.Status.FailingNodes[0].Node != "n1" {
			t.Errorf("failingNodes %+v, want n1", pc.Status.FailingNodes)
		}
		// The successor's agent reports: the node is no longer this configuration's.
		succ := &kpov1.ProxyNodeStatus{}
		must(t, c.Get(context.Background(), client.ObjectKey{Name: "n1"}, succ))
		succ.Status.Configuration = "new"
		succ.Status.Conditions[0].Reason = kpov1.NodeReasonSynced
		must(t, c.Status().Update(context.Background(), succ))
		pc, _, _ = finalize(t, c, 20*time.Second)
		if controllerutil.ContainsFinalizer(pc, CleanupFinalizer) {
			t.Error("the finalizer stayed after the successor's agent reported")
		}
	})

	t.Run("cleanup failed: gives up at the bound, clearly", func(t *testing.T) {
		c := build(newPC(), node("n1"),
			pns("n1", "old", kpov1.NodeReasonCleanupFailed, "removing kpo's rules failed (...); the node still holds: iptables-nft nat KPO-SVC-X"))
		pc, _, _ := finalize(t, c, CleanupTimeout-time.Second)
		if !controllerutil.ContainsFinalizer(pc, CleanupFinalizer) {
			t.Fatal("gave up before the bound")
		}
		pc, _, rec := finalize(t, c, CleanupTimeout+time.Second)
		if controllerutil.ContainsFinalizer(pc, CleanupFinalizer) {
			t.Fatal("did not give up after the bound")
		}
		cond := meta.FindStatusCondition(pc.Status.Conditions, kpov1.ConditionCleanedUp)
		if cond == nil || cond.Reason != kpov1.ReasonCleanupTimedOut || !strings.Contains(cond.Message, "KPO-SVC-X") {
			t.Errorf("CleanedUp condition %+v, want CleanupTimedOut naming what remains", cond)
		}
		select {
		case ev := <-rec.Events:
			if !strings.Contains(ev, "Warning CleanupTimedOut") || !strings.Contains(ev, "n1") {
				t.Errorf("event %q", ev)
			}
		default:
			t.Error("no event when giving up")
		}
	})
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
