package controllers

import (
	"fmt"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
	"kpo.dev/kpo/controllers/render"
	"kpo.dev/kpo/hack/apiserver"
)

// uniqueName keeps cluster-scoped objects of different tests apart.
func uniqueName(t *testing.T, suffix string) string {
	name := strings.ToLower(strings.NewReplacer("/", "-", "_", "-").Replace(t.Name()))
	if len(name) > 30 {
		name = name[len(name)-30:]
	}
	name = strings.Trim(name, "-")
	if suffix != "" {
		name += "-" + suffix
	}
	return name
}

// createNode creates a Node with labels; it is deleted when the test ends.
func createNode(t *testing.T, name string, labels map[string]string, taints ...corev1.Taint) *corev1.Node {
	t.Helper()
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
		Spec:       corev1.NodeSpec{Taints: taints},
	}
	if err := k8s.Create(testCtx, node); err != nil {
		t.Fatalf("creating node %s: %v", name, err)
	}
	t.Cleanup(func() { _ = k8s.Delete(testCtx, node) })
	return node
}

// createConfig creates a ProxyConfiguration that selects nodes with label test=<selector>.
func createConfig(t *testing.T, name, selector string, mutate func(*kpov1.ProxyConfiguration)) *kpov1.ProxyConfiguration {
	t.Helper()
	pc := &kpov1.ProxyConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: kpov1.ProxyConfigurationSpec{
			Mode:         kpov1.ModeNFTables,
			NodeSelector: map[string]string{"test": selector},
		},
	}
	if mutate != nil {
		mutate(pc)
	}
	if err := k8s.Create(testCtx, pc); err != nil {
		t.Fatalf("creating ProxyConfiguration %s: %v", name, err)
	}
	t.Cleanup(func() { _ = k8s.Delete(testCtx, pc) })
	return pc
}

func getConfig(t *testing.T, name string) *kpov1.ProxyConfiguration {
	t.Helper()
	pc := &kpov1.ProxyConfiguration{}
	if err := k8s.Get(testCtx, types.NamespacedName{Name: name}, pc); err != nil {
		t.Fatalf("getting ProxyConfiguration %s: %v", name, err)
	}
	return pc
}

// updateConfig applies mutate to the stored configuration, retrying on conflicts
// with the operator's status writes.
func updateConfig(t *testing.T, name string, mutate func(*kpov1.ProxyConfiguration)) *kpov1.ProxyConfiguration {
	t.Helper()
	var pc *kpov1.ProxyConfiguration
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		pc = &kpov1.ProxyConfiguration{}
		if err := k8s.Get(testCtx, types.NamespacedName{Name: name}, pc); err != nil {
			return err
		}
		mutate(pc)
		return k8s.Update(testCtx, pc)
	})
	if err != nil {
		t.Fatalf("updating ProxyConfiguration %s: %v", name, err)
	}
	return pc
}

// waitForStatus polls until check accepts the configuration's status.
func waitForStatus(t *testing.T, name string, check func(*kpov1.ProxyConfiguration) error) *kpov1.ProxyConfiguration {
	t.Helper()
	var pc *kpov1.ProxyConfiguration
	apiserver.Eventually(t, wait, func() error {
		pc = &kpov1.ProxyConfiguration{}
		if err := k8s.Get(testCtx, types.NamespacedName{Name: name}, pc); err != nil {
			return err
		}
		if pc.Status.ObservedGeneration != pc.Generation {
			return fmt.Errorf("status observed generation %d, object has %d", pc.Status.ObservedGeneration, pc.Generation)
		}
		return check(pc)
	})
	return pc
}

// hasCondition checks a condition's status and, when reason is not empty, its reason.
func hasCondition(pc *kpov1.ProxyConfiguration, typ string, status metav1.ConditionStatus, reason string) error {
	c := meta.FindStatusCondition(pc.Status.Conditions, typ)
	if c == nil {
		return fmt.Errorf("no %s condition in %+v", typ, pc.Status.Conditions)
	}
	if c.Status != status || (reason != "" && c.Reason != reason) {
		return fmt.Errorf("%s is %s/%s (%s), want %s/%s", typ, c.Status, c.Reason, c.Message, status, reason)
	}
	return nil
}

func waitForDaemonSet(t *testing.T, pc *kpov1.ProxyConfiguration, check func(*appsv1.DaemonSet) error) *appsv1.DaemonSet {
	t.Helper()
	var ds *appsv1.DaemonSet
	apiserver.Eventually(t, wait, func() error {
		ds = &appsv1.DaemonSet{}
		if err := k8s.Get(testCtx, types.NamespacedName{Namespace: testNamespace, Name: render.AgentName(pc)}, ds); err != nil {
			return err
		}
		return check(ds)
	})
	return ds
}

// report is a node agent's report, as the agent would write it.
type report struct {
	generation int64
	mode       kpov1.Mode
	synced     metav1.ConditionStatus
	reason     string
	message    string
}

// writeReport creates or updates a node's ProxyNodeStatus as its agent would.
func writeReport(t *testing.T, node, configuration string, r report) {
	t.Helper()
	pns := &kpov1.ProxyNodeStatus{ObjectMeta: metav1.ObjectMeta{Name: node}}
	err := k8s.Get(testCtx, types.NamespacedName{Name: node}, pns)
	if apierrors.IsNotFound(err) {
		if err := k8s.Create(testCtx, pns); err != nil {
			t.Fatalf("creating ProxyNodeStatus %s: %v", node, err)
		}
		t.Cleanup(func() { _ = k8s.Delete(testCtx, pns) })
	} else if err != nil {
		t.Fatal(err)
	}
	if r.reason == "" {
		r.reason = kpov1.NodeReasonSynced
	}
	now := metav1.NewTime(time.Now().Truncate(time.Second))
	pns.Status = kpov1.ProxyNodeReport{
		Configuration:           configuration,
		ConfigurationGeneration: r.generation,
		RequestedMode:           r.mode,
		ActiveMode:              r.mode,
		LastSyncTime:            &now,
		Conditions: []metav1.Condition{
			{Type: kpov1.NodeConditionSynced, Status: r.synced, Reason: r.reason, Message: r.message, LastTransitionTime: now},
			{Type: kpov1.NodeConditionHealthy, Status: metav1.ConditionTrue, Reason: kpov1.NodeReasonFresh, LastTransitionTime: now},
		},
	}
	if err := k8s.Status().Update(testCtx, pns); err != nil {
		t.Fatalf("writing ProxyNodeStatus %s: %v", node, err)
	}
}

// resourceVersions returns the resourceVersion of the configuration and of every object it owns.
func resourceVersions(t *testing.T, pc *kpov1.ProxyConfiguration) map[string]string {
	t.Helper()
	name := render.AgentName(pc)
	objs := map[string]client.Object{
		"ProxyConfiguration": &kpov1.ProxyConfiguration{ObjectMeta: metav1.ObjectMeta{Name: pc.Name}},
		"DaemonSet":          &appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: testNamespace}},
		"ConfigMap":          &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: testNamespace}},
		"ServiceAccount":     &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: testNamespace}},
	}
	rvs := map[string]string{}
	for kind, o := range objs {
		if err := k8s.Get(testCtx, client.ObjectKeyFromObject(o), o); err != nil {
			t.Fatalf("getting %s: %v", kind, err)
		}
		rvs[kind] = o.GetResourceVersion()
	}
	return rvs
}
