package controllers

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
	"kpo.dev/kpo/controllers/render"
	"kpo.dev/kpo/hack/apiserver"
)

func TestConfigurationRendersAgentObjects(t *testing.T) {
	needAPIServer(t)
	sel := uniqueName(t, "")
	createNode(t, sel+"-a", map[string]string{"test": sel})
	createNode(t, sel+"-b", map[string]string{"test": sel})
	createNode(t, sel+"-other", map[string]string{"test": "someone-else"})
	pc := createConfig(t, sel, sel, nil)
	pc = getConfig(t, pc.Name)
	name := render.AgentName(pc)

	ds := waitForDaemonSet(t, pc, func(*appsv1.DaemonSet) error { return nil })
	isOwned := func(o metav1.Object) {
		t.Helper()
		refs := o.GetOwnerReferences()
		if len(refs) != 1 || refs[0].UID != pc.UID || refs[0].Controller == nil || !*refs[0].Controller {
			t.Errorf("%s: owner references %+v, want the ProxyConfiguration as controller", o.GetName(), refs)
		}
	}
	isOwned(ds)
	pod := ds.Spec.Template.Spec
	if !pod.HostNetwork || pod.ServiceAccountName != name || pod.PriorityClassName != "system-node-critical" {
		t.Errorf("pod spec: hostNetwork=%v serviceAccount=%q priorityClass=%q", pod.HostNetwork, pod.ServiceAccountName, pod.PriorityClassName)
	}
	if pod.NodeSelector["test"] != sel || pod.NodeSelector[corev1.LabelOSStable] != "linux" {
		t.Errorf("node selector %v", pod.NodeSelector)
	}
	// The API server defaulted tolerations to "tolerate everything", like kube-proxy.
	if len(pod.Tolerations) != 1 || pod.Tolerations[0].Operator != corev1.TolerationOpExists || pod.Tolerations[0].Key != "" {
		t.Errorf("tolerations %+v, want one Exists toleration", pod.Tolerations)
	}
	c := pod.Containers[0]
	if c.Image != testAgentImage {
		t.Errorf("image %q, want the operator's default %q", c.Image, testAgentImage)
	}
	if c.SecurityContext == nil || c.SecurityContext.Privileged == nil || !*c.SecurityContext.Privileged {
		t.Errorf("agent container is not privileged")
	}
	if len(c.Env) != 1 || c.Env[0].Name != "NODE_NAME" || c.Env[0].ValueFrom.FieldRef.FieldPath != "spec.nodeName" {
		t.Errorf("env %+v, want NODE_NAME from spec.nodeName", c.Env)
	}
	if c.LivenessProbe.HTTPGet.Port.IntValue() != 10256 || c.ReadinessProbe.HTTPGet.Path != "/readyz" {
		t.Errorf("probes: liveness %+v readiness %+v", c.LivenessProbe.HTTPGet, c.ReadinessProbe.HTTPGet)
	}
	mounts := map[string]bool{}
	for _, m := range c.VolumeMounts {
		mounts[m.MountPath] = m.ReadOnly
	}
	if ro, ok := mounts["/lib/modules"]; !ok || !ro {
		t.Errorf("/lib/modules not mounted read-only: %v", mounts)
	}
	if _, ok := mounts["/run/xtables.lock"]; !ok {
		t.Errorf("/run/xtables.lock not mounted: %v", mounts)
	}
	if ds.Spec.Template.Annotations[render.AnnotationConfigHash] == "" {
		t.Errorf("pod template has no %s annotation", render.AnnotationConfigHash)
	}

	cm := &corev1.ConfigMap{}
	if err := k8s.Get(testCtx, types.NamespacedName{Namespace: testNamespace, Name: name}, cm); err != nil {
		t.Fatal(err)
	}
	isOwned(cm)
	cfg, err := kpov1.ParseAgentConfiguration([]byte(cm.Data[kpov1.AgentConfigKey]))
	if err != nil {
		t.Fatalf("the rendered agent configuration does not parse: %v", err)
	}
	if cfg.Mode != kpov1.ModeNFTables || cfg.ConfigurationName != pc.Name || cfg.ConfigurationGeneration != pc.Generation ||
		cfg.SyncPeriod != "30s" || *cfg.NFTables.MasqueradeBit != 14 {
		t.Errorf("agent configuration %+v", cfg)
	}

	sa := &corev1.ServiceAccount{}
	if err := k8s.Get(testCtx, types.NamespacedName{Namespace: testNamespace, Name: name}, sa); err != nil {
		t.Fatal(err)
	}
	isOwned(sa)
	// The agents' permissions: the fixed kpo-agent role, bound to this
	// configuration's ServiceAccount by the one shared binding; no role of its own.
	if err := k8s.Get(testCtx, types.NamespacedName{Name: name}, &rbacv1.ClusterRole{}); !apierrors.IsNotFound(err) {
		t.Errorf("a ClusterRole %s exists (err %v): the operator must not write cluster roles", name, err)
	}
	apiserver.Eventually(t, wait, func() error {
		binding := &rbacv1.ClusterRoleBinding{}
		if err := k8s.Get(testCtx, types.NamespacedName{Name: render.AgentBindingName}, binding); err != nil {
			return err
		}
		if binding.RoleRef.Kind != "ClusterRole" || binding.RoleRef.Name != render.AgentClusterRoleName {
			return fmt.Errorf("binding's roleRef %+v", binding.RoleRef)
		}
		if !slices.Contains(binding.Subjects, rbacv1.Subject{Kind: "ServiceAccount", Name: name, Namespace: testNamespace}) {
			return fmt.Errorf("binding's subjects %+v lack %s/%s", binding.Subjects, testNamespace, name)
		}
		if !slices.ContainsFunc(binding.OwnerReferences, func(r metav1.OwnerReference) bool { return r.UID == pc.UID }) {
			return fmt.Errorf("binding's owners %+v lack the configuration", binding.OwnerReferences)
		}
		return nil
	})

	// Two nodes are selected; no agent has reported yet.
	waitForStatus(t, pc.Name, func(pc *kpov1.ProxyConfiguration) error {
		if pc.Status.DesiredNodes != 2 || pc.Status.ReadyNodes != 0 {
			return fmt.Errorf("desired %d ready %d, want 2 and 0", pc.Status.DesiredNodes, pc.Status.ReadyNodes)
		}
		if err := hasCondition(pc, kpov1.ConditionAvailable, metav1.ConditionFalse, kpov1.ReasonNodesNotReady); err != nil {
			return err
		}
		return hasCondition(pc, kpov1.ConditionProgressing, metav1.ConditionTrue, kpov1.ReasonRollingOut)
	})
}

func TestSpecEditRollsAgents(t *testing.T) {
	needAPIServer(t)
	sel := uniqueName(t, "")
	createNode(t, sel+"-a", map[string]string{"test": sel})
	pc := createConfig(t, sel, sel, nil)
	before := waitForDaemonSet(t, pc, func(*appsv1.DaemonSet) error { return nil })
	hashBefore := before.Spec.Template.Annotations[render.AnnotationConfigHash]

	for _, edit := range []struct {
		name   string
		mutate func(*kpov1.ProxyConfiguration)
		check  func(*kpov1.AgentConfiguration) error
	}{
		{"mode", func(pc *kpov1.ProxyConfiguration) { pc.Spec.Mode = kpov1.ModeIPTables }, func(c *kpov1.AgentConfiguration) error {
			if c.Mode != kpov1.ModeIPTables {
				return fmt.Errorf("mode %s", c.Mode)
			}
			return nil
		}},
		{"settings", func(pc *kpov1.ProxyConfiguration) { pc.Spec.MinSyncPeriod = "100ms" }, func(c *kpov1.AgentConfiguration) error {
			if c.MinSyncPeriod != "100ms" {
				return fmt.Errorf("minSyncPeriod %s", c.MinSyncPeriod)
			}
			return nil
		}},
	} {
		t.Run(edit.name, func(t *testing.T) {
			current := updateConfig(t, pc.Name, edit.mutate)
			apiserver.Eventually(t, wait, func() error {
				cm := &corev1.ConfigMap{}
				if err := k8s.Get(testCtx, types.NamespacedName{Namespace: testNamespace, Name: render.AgentName(pc)}, cm); err != nil {
					return err
				}
				cfg, err := kpov1.ParseAgentConfiguration([]byte(cm.Data[kpov1.AgentConfigKey]))
				if err != nil {
					return err
				}
				if cfg.ConfigurationGeneration != current.Generation {
					return fmt.Errorf("configmap has generation %d, want %d", cfg.ConfigurationGeneration, current.Generation)
				}
				return edit.check(cfg)
			})
			after := waitForDaemonSet(t, pc, func(ds *appsv1.DaemonSet) error {
				if ds.Spec.Template.Annotations[render.AnnotationConfigHash] == hashBefore {
					return fmt.Errorf("pod template hash did not change")
				}
				return nil
			})
			if after.Generation <= before.Generation {
				t.Errorf("DaemonSet generation %d after the edit, was %d: it would not roll", after.Generation, before.Generation)
			}
			before, hashBefore = after, after.Spec.Template.Annotations[render.AnnotationConfigHash]
		})
	}
}

func TestStatusAggregatesNodeReports(t *testing.T) {
	needAPIServer(t)
	sel := uniqueName(t, "")
	nodes := []string{sel + "-a", sel + "-b", sel + "-c"}
	for _, n := range nodes {
		createNode(t, n, map[string]string{"test": sel})
	}
	pc := createConfig(t, sel, sel, nil)
	gen := getConfig(t, pc.Name).Generation

	// All three ready.
	for _, n := range nodes {
		writeReport(t, n, pc.Name, report{generation: gen, mode: kpov1.ModeNFTables, synced: metav1.ConditionTrue})
	}
	ready := waitForStatus(t, pc.Name, func(pc *kpov1.ProxyConfiguration) error {
		if pc.Status.ReadyNodes != 3 || pc.Status.UpdatedNodes != 3 || pc.Status.Mode != "nftables" {
			return fmt.Errorf("ready %d updated %d mode %q", pc.Status.ReadyNodes, pc.Status.UpdatedNodes, pc.Status.Mode)
		}
		if err := hasCondition(pc, kpov1.ConditionAvailable, metav1.ConditionTrue, kpov1.ReasonAsExpected); err != nil {
			return err
		}
		if err := hasCondition(pc, kpov1.ConditionProgressing, metav1.ConditionFalse, ""); err != nil {
			return err
		}
		return hasCondition(pc, kpov1.ConditionDegraded, metav1.ConditionFalse, "")
	})
	availableSince := meta.FindStatusCondition(ready.Status.Conditions, kpov1.ConditionAvailable).LastTransitionTime

	// Condition times have one-second resolution: step past one, so that the
	// transition below must show a later lastTransitionTime. (That an unchanged
	// status keeps its time is TestLastTransitionTimeOnlyMovesWithStatus.)
	time.Sleep(1100 * time.Millisecond) // not synchronisation: separates timestamps

	// One node fails to sync.
	writeReport(t, nodes[1], pc.Name, report{generation: gen, mode: kpov1.ModeNFTables, synced: metav1.ConditionFalse,
		reason: kpov1.NodeReasonSyncFailed, message: "nft: Could not process rule"})
	failing := waitForStatus(t, pc.Name, func(pc *kpov1.ProxyConfiguration) error {
		if len(pc.Status.FailingNodes) != 1 || pc.Status.FailingNodes[0].Node != nodes[1] ||
			pc.Status.FailingNodes[0].Reason != kpov1.NodeReasonSyncFailed {
			return fmt.Errorf("failing nodes %+v", pc.Status.FailingNodes)
		}
		if pc.Status.ReadyNodes != 2 {
			return fmt.Errorf("ready %d, want 2", pc.Status.ReadyNodes)
		}
		if err := hasCondition(pc, kpov1.ConditionDegraded, metav1.ConditionTrue, kpov1.NodeReasonSyncFailed); err != nil {
			return err
		}
		return hasCondition(pc, kpov1.ConditionAvailable, metav1.ConditionFalse, kpov1.ReasonNodesNotReady)
	})
	if c := meta.FindStatusCondition(failing.Status.Conditions, kpov1.ConditionAvailable); c.LastTransitionTime.Equal(&availableSince) {
		t.Errorf("Available changed status but kept lastTransitionTime %v", availableSince)
	}

	// Recover, then a stale generation on one node: it is not up to date.
	writeReport(t, nodes[1], pc.Name, report{generation: gen, mode: kpov1.ModeNFTables, synced: metav1.ConditionTrue})
	writeReport(t, nodes[2], pc.Name, report{generation: gen - 1, mode: kpov1.ModeIPTables, synced: metav1.ConditionTrue})
	waitForStatus(t, pc.Name, func(pc *kpov1.ProxyConfiguration) error {
		if pc.Status.UpdatedNodes != 2 || pc.Status.ReadyNodes != 2 || pc.Status.Mode != ModeMixed {
			return fmt.Errorf("updated %d ready %d mode %q, want 2, 2, Mixed", pc.Status.UpdatedNodes, pc.Status.ReadyNodes, pc.Status.Mode)
		}
		if err := hasCondition(pc, kpov1.ConditionDegraded, metav1.ConditionFalse, ""); err != nil {
			return err
		}
		return hasCondition(pc, kpov1.ConditionProgressing, metav1.ConditionTrue, kpov1.ReasonRollingOut)
	})
}

func TestLastTransitionTimeOnlyMovesWithStatus(t *testing.T) {
	needAPIServer(t)
	sel := uniqueName(t, "")
	createNode(t, sel+"-a", map[string]string{"test": sel})
	pc := createConfig(t, sel, sel, nil)
	gen := getConfig(t, pc.Name).Generation
	writeReport(t, sel+"-a", pc.Name, report{generation: gen, mode: kpov1.ModeNFTables, synced: metav1.ConditionTrue})
	first := waitForStatus(t, pc.Name, func(pc *kpov1.ProxyConfiguration) error {
		return hasCondition(pc, kpov1.ConditionAvailable, metav1.ConditionTrue, "")
	})
	times := map[string]metav1.Time{}
	for _, c := range first.Status.Conditions {
		times[c.Type] = c.LastTransitionTime
	}
	time.Sleep(1100 * time.Millisecond) // not synchronisation: lets a wrongly refreshed timestamp differ
	// Reconcile directly, with a later clock: nothing changed, so nothing moves.
	r := &ProxyConfigurationReconciler{Client: k8s, Namespace: testNamespace, DefaultAgentImage: testAgentImage, Clock: clock.RealClock{}}
	if _, err := r.Reconcile(testCtx, reconcile.Request{NamespacedName: types.NamespacedName{Name: pc.Name}}); err != nil {
		t.Fatal(err)
	}
	again := getConfig(t, pc.Name)
	for _, c := range again.Status.Conditions {
		if want := times[c.Type]; !c.LastTransitionTime.Equal(&want) {
			t.Errorf("%s: lastTransitionTime moved from %v to %v without a status change", c.Type, want, c.LastTransitionTime)
		}
	}
}

func TestReconcileUnchangedMakesNoWrites(t *testing.T) {
	needAPIServer(t)
	sel := uniqueName(t, "")
	createNode(t, sel+"-a", map[string]string{"test": sel})
	pc := createConfig(t, sel, sel, nil)
	gen := getConfig(t, pc.Name).Generation
	writeReport(t, sel+"-a", pc.Name, report{generation: gen, mode: kpov1.ModeNFTables, synced: metav1.ConditionTrue})
	waitForStatus(t, pc.Name, func(pc *kpov1.ProxyConfiguration) error {
		return hasCondition(pc, kpov1.ConditionAvailable, metav1.ConditionTrue, "")
	})
	before := resourceVersions(t, pc)

	// A second reconciler, driven by hand, so that we know reconciles happened.
	r := &ProxyConfigurationReconciler{Client: k8s, Namespace: testNamespace, DefaultAgentImage: testAgentImage, Clock: clock.RealClock{}}
	for range 3 {
		if _, err := r.Reconcile(testCtx, reconcile.Request{NamespacedName: types.NamespacedName{Name: pc.Name}}); err != nil {
			t.Fatal(err)
		}
	}
	after := resourceVersions(t, pc)
	for kind, rv := range before {
		if after[kind] != rv {
			t.Errorf("%s: resourceVersion moved from %s to %s: reconciling an unchanged configuration wrote to the server", kind, rv, after[kind])
		}
	}
}

func TestNodeSelectorConflictOlderKeepsNodes(t *testing.T) {
	needAPIServer(t)
	sel := uniqueName(t, "")
	// The older configuration selects x and y, the newer y and z: y is contested.
	x, y, z := sel+"-x", sel+"-y", sel+"-z"
	createNode(t, x, map[string]string{"test": sel, "kpo-old": "yes"})
	createNode(t, y, map[string]string{"test": sel, "kpo-old": "yes", "kpo-new": "yes"})
	createNode(t, z, map[string]string{"test": sel, "kpo-new": "yes"})
	older := createConfig(t, sel+"-old", sel, func(pc *kpov1.ProxyConfiguration) {
		pc.Spec.NodeSelector["kpo-old"] = "yes"
	})
	// Creation timestamps have one-second resolution: make "older" unambiguous.
	time.Sleep(1100 * time.Millisecond) // not synchronisation: separates creation timestamps
	newer := createConfig(t, sel+"-new", sel, func(pc *kpov1.ProxyConfiguration) {
		pc.Spec.NodeSelector["kpo-new"] = "yes"
	})

	excluded := func(ds *appsv1.DaemonSet) []string {
		a := ds.Spec.Template.Spec.Affinity
		if a == nil || a.NodeAffinity == nil || a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution == nil {
			return nil
		}
		return a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution.NodeSelectorTerms[0].MatchFields[0].Values
	}
	expectConflict := func(contested []string) {
		t.Helper()
		waitForStatus(t, newer.Name, func(pc *kpov1.ProxyConfiguration) error {
			if want := int32(2 - len(contested)); pc.Status.DesiredNodes != want {
				return fmt.Errorf("newer holds %d nodes, want %d", pc.Status.DesiredNodes, want)
			}
			if len(contested) == 0 {
				return hasCondition(pc, kpov1.ConditionDegraded, metav1.ConditionFalse, kpov1.ReasonAsExpected)
			}
			if err := hasCondition(pc, kpov1.ConditionDegraded, metav1.ConditionTrue, kpov1.ReasonNodeSelectorConflict); err != nil {
				return err
			}
			msg := meta.FindStatusCondition(pc.Status.Conditions, kpov1.ConditionDegraded).Message
			for _, n := range contested {
				if !strings.Contains(msg, n) || !strings.Contains(msg, older.Name) {
					return fmt.Errorf("message %q does not name node %s and its holder %s", msg, n, older.Name)
				}
			}
			return nil
		})
		waitForDaemonSet(t, newer, func(ds *appsv1.DaemonSet) error {
			if got := excluded(ds); !slices.Equal(got, contested) {
				return fmt.Errorf("newer DaemonSet excludes %v, want %v", got, contested)
			}
			return nil
		})
	}

	expectConflict([]string{y})
	waitForStatus(t, older.Name, func(pc *kpov1.ProxyConfiguration) error {
		if pc.Status.DesiredNodes != 2 {
			return fmt.Errorf("older holds %d nodes, want 2", pc.Status.DesiredNodes)
		}
		return hasCondition(pc, kpov1.ConditionDegraded, metav1.ConditionFalse, "")
	})

	// y leaves the older selector: the newer gets it.
	patchLabels(t, y, map[string]string{"test": sel, "kpo-new": "yes"})
	expectConflict(nil)

	// y is contested again; deleting the older configuration hands it over.
	patchLabels(t, y, map[string]string{"test": sel, "kpo-old": "yes", "kpo-new": "yes"})
	expectConflict([]string{y})
	if err := k8s.Delete(testCtx, getConfig(t, older.Name)); err != nil {
		t.Fatal(err)
	}
	expectConflict(nil)
}

func patchLabels(t *testing.T, node string, labels map[string]string) {
	t.Helper()
	n := &corev1.Node{}
	if err := k8s.Get(testCtx, types.NamespacedName{Name: node}, n); err != nil {
		t.Fatal(err)
	}
	n.Labels = labels
	if err := k8s.Update(testCtx, n); err != nil {
		t.Fatal(err)
	}
}

func TestDeletionGarbageCollectsOwnedObjects(t *testing.T) {
	needAPIServer(t)
	// The real garbage collector of kube-controller-manager, not a simulation.
	env.StartControllerManager(t, "garbagecollector")
	sel := uniqueName(t, "")
	createNode(t, sel+"-a", map[string]string{"test": sel})
	pc := createConfig(t, sel, sel, nil)
	waitForDaemonSet(t, pc, func(*appsv1.DaemonSet) error { return nil })
	name := render.AgentName(pc)
	if err := k8s.Delete(testCtx, getConfig(t, pc.Name)); err != nil {
		t.Fatal(err)
	}
	for _, o := range []client.Object{
		&appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: testNamespace}},
		&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: testNamespace}},
		&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: testNamespace}},
	} {
		apiserver.Eventually(t, 60*time.Second, func() error {
			err := k8s.Get(testCtx, client.ObjectKeyFromObject(o), o)
			if apierrors.IsNotFound(err) {
				return nil
			}
			return fmt.Errorf("%T %s still exists (err %v)", o, name, err)
		})
	}
}

// TestDeletionWaitsForNodeCleanup: a configuration with a node report stays
// (finalizer) until the node's agent reports CleanedUp, then goes.
func TestDeletionWaitsForNodeCleanup(t *testing.T) {
	needAPIServer(t)
	sel := uniqueName(t, "")
	createNode(t, sel+"-a", map[string]string{"test": sel})
	pc := createConfig(t, sel, sel, nil)
	apiserver.Eventually(t, wait, func() error {
		if !controllerutil.ContainsFinalizer(getConfig(t, pc.Name), CleanupFinalizer) {
			return fmt.Errorf("no %s finalizer", CleanupFinalizer)
		}
		return nil
	})
	gen := getConfig(t, pc.Name).Generation
	writeReport(t, sel+"-a", pc.Name, report{generation: gen, mode: kpov1.ModeNFTables, synced: metav1.ConditionTrue})
	if err := k8s.Delete(testCtx, getConfig(t, pc.Name)); err != nil {
		t.Fatal(err)
	}
	// The agent has not cleaned up: the configuration stays. (A later state must
	// still hold it: poll a little, then check.)
	apiserver.Eventually(t, wait, func() error {
		if getConfig(t, pc.Name).DeletionTimestamp == nil {
			return errors.New("not being deleted yet")
		}
		return nil
	})
	time.Sleep(time.Second) // not synchronisation: gives a wrong operator the chance to let it go
	if c := getConfig(t, pc.Name); !controllerutil.ContainsFinalizer(c, CleanupFinalizer) {
		t.Fatal("the finalizer went before the node reported CleanedUp")
	}
	writeReport(t, sel+"-a", pc.Name, report{generation: gen, synced: metav1.ConditionFalse, reason: kpov1.NodeReasonCleanedUp})
	apiserver.Eventually(t, wait, func() error {
		err := k8s.Get(testCtx, types.NamespacedName{Name: pc.Name}, &kpov1.ProxyConfiguration{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("still there after the node cleaned up: %v", err)
	})
}
