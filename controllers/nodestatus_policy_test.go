package controllers

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
	"kpo.dev/kpo/controllers/render"
	"kpo.dev/kpo/hack/apiserver"
)

// The user extra keys a pod-bound ServiceAccount token carries
// (k8s.io/apiserver/pkg/authentication/serviceaccount).
const (
	extraNodeName = "authentication.kubernetes.io/node-name"
	extraNodeUID  = "authentication.kubernetes.io/node-uid"
)

// agentReport writes a node's ProxyNodeStatus as the agent does
// (nodeagent/report/report.go, Reporter.write): a server-side apply of
// the object, owned by owner (its Node), then one of its status.
func agentReport(c client.Client, node string, owner *corev1.Node, report kpov1.ProxyNodeReport, opts ...client.ApplyOption) error {
	obj := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": kpov1.GroupVersion.String(),
		"kind":       "ProxyNodeStatus",
		"metadata": map[string]any{
			"name":   node,
			"labels": map[string]any{"proxy.kpo.dev/configuration": report.Configuration},
			"ownerReferences": []any{map[string]any{
				"apiVersion": "v1", "kind": "Node", "name": owner.Name, "uid": string(owner.UID),
			}},
		},
	}}
	opts = append(opts, client.FieldOwner("kpo-agent"), client.ForceOwnership)
	if err := c.Apply(testCtx, client.ApplyConfigurationFromUnstructured(obj), opts...); err != nil {
		return fmt.Errorf("object: %w", err)
	}
	status, err := runtime.DefaultUnstructuredConverter.ToUnstructured(&report)
	if err != nil {
		return err
	}
	withStatus := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": kpov1.GroupVersion.String(),
		"kind":       "ProxyNodeStatus",
		"metadata":   map[string]any{"name": node},
		"status":     status,
	}}
	if err := c.Status().Apply(testCtx, client.ApplyConfigurationFromUnstructured(withStatus), toSubResourceApply(opts)...); err != nil {
		return fmt.Errorf("status: %w", err)
	}
	return nil
}

func toSubResourceApply(opts []client.ApplyOption) []client.SubResourceApplyOption {
	var out []client.SubResourceApplyOption
	for _, o := range opts {
		if so, ok := o.(client.SubResourceApplyOption); ok {
			out = append(out, so)
		}
	}
	return out
}

// agentNodeReport is an agent's report of a synced (or cleaned-up) node.
func agentNodeReport(pc *kpov1.ProxyConfiguration, reason string) kpov1.ProxyNodeReport {
	now := metav1.NewTime(time.Now().Truncate(time.Second))
	status := metav1.ConditionTrue
	if reason != kpov1.NodeReasonSynced {
		status = metav1.ConditionFalse
	}
	return kpov1.ProxyNodeReport{
		Configuration: pc.Name, ConfigurationGeneration: pc.Generation,
		RequestedMode: pc.Spec.Mode, ActiveMode: pc.Spec.Mode, LastSyncTime: &now,
		Conditions: []metav1.Condition{
			{Type: kpov1.NodeConditionSynced, Status: status, Reason: reason, Message: "test", LastTransitionTime: now},
			{Type: kpov1.NodeConditionHealthy, Status: metav1.ConditionTrue, Reason: kpov1.NodeReasonFresh, Message: "test", LastTransitionTime: now},
		},
	}
}

// agentPod creates the pod object kubelet would run an agent in on node (no
// kubelet here: the pod is what a bound token names).
func agentPod(t *testing.T, sa, node string) *corev1.Pod {
	t.Helper()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: sa + "-" + node, Namespace: testNamespace},
		Spec: corev1.PodSpec{
			NodeName: node, ServiceAccountName: sa,
			Containers: []corev1.Container{{Name: render.AgentContainerName, Image: testAgentImage}},
		},
	}
	if err := k8s.Create(testCtx, pod); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = k8s.Delete(testCtx, pod) })
	return pod
}

func refusedBy(err error, words string) error {
	if err == nil {
		return fmt.Errorf("allowed, want a refusal")
	}
	if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "kpo-agent-node-status") || !strings.Contains(err.Error(), words) {
		return fmt.Errorf("got %v, want Forbidden by ValidatingAdmissionPolicy kpo-agent-node-status saying %q", err, words)
	}
	return nil
}

// TestAgentsWriteOnlyTheirOwnNodeStatus proves config/policy against the real
// API server with real tokens: an agent's token bound to its pod on node-1
// may write node-1's ProxyNodeStatus (owned by node-1) and nothing else; the
// operator's roll-up sees both nodes' reports, and a report goes with its Node.
// Without the policy, RBAC alone lets every agent write every node's report.
func TestAgentsWriteOnlyTheirOwnNodeStatus(t *testing.T) {
	needAPIServer(t)
	installShipped(t, "rbac") // the agents' ClusterRole
	installShipped(t, "policy")
	env.StartControllerManager(t, "garbagecollector")
	sel := uniqueName(t, "")
	n1 := createNode(t, sel+"-1", map[string]string{"test": sel})
	n2 := createNode(t, sel+"-2", map[string]string{"test": sel})
	pc := createConfig(t, sel, sel, nil)
	pc = getConfig(t, pc.Name)
	sa := render.AgentName(pc)
	waitForAgentAccount(t, sa)
	for _, n := range []*corev1.Node{n1, n2} {
		pns := &kpov1.ProxyNodeStatus{ObjectMeta: metav1.ObjectMeta{Name: n.Name}}
		t.Cleanup(func() { _ = k8s.Delete(testCtx, pns) })
	}

	cfg1 := tokenConfig(t, testNamespace, sa, agentPod(t, sa, n1.Name))
	agent1, agent2 := clientFor(t, cfg1), clientFor(t, tokenConfig(t, testNamespace, sa, agentPod(t, sa, n2.Name)))
	unbound := clientFor(t, tokenConfig(t, testNamespace, sa, nil))

	// What the API server makes of agent 1's token: its node, by name and UID.
	review, err := kubernetes.NewForConfigOrDie(cfg1).AuthenticationV1().SelfSubjectReviews().
		Create(testCtx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if ui := review.Status.UserInfo; ui.Username != "system:serviceaccount:"+testNamespace+":"+sa ||
		strings.Join(ui.Extra[extraNodeName], ",") != n1.Name || strings.Join(ui.Extra[extraNodeUID], ",") != string(n1.UID) {
		t.Fatalf("agent token's user %+v, want %s with node %s (%s)", ui, sa, n1.Name, n1.UID)
	}

	// The policy takes effect shortly after it is created: a dry run with an
	// unbound token (RBAC allows it, the policy refuses it) tells when.
	apiserver.Eventually(t, wait, func() error {
		return refusedBy(agentReport(unbound, n1.Name, n1, agentNodeReport(pc, kpov1.NodeReasonSynced), client.DryRunAll),
			"only with a token bound to a pod on a node")
	})

	// Each agent reports its own node.
	if err := agentReport(agent1, n1.Name, n1, agentNodeReport(pc, kpov1.NodeReasonSynced)); err != nil {
		t.Fatalf("agent on %s writing its own report: %v", n1.Name, err)
	}
	if err := agentReport(agent2, n2.Name, n2, agentNodeReport(pc, kpov1.NodeReasonSynced)); err != nil {
		t.Fatalf("agent on %s writing its own report: %v", n2.Name, err)
	}

	// The agent of the configuration that takes node 1 over (a hand-over)
	// writes the report the first configuration's agent left: allowed. (The
	// policy once failed on this main-resource write, 'no such key:
	// subResource', and the successor could never report.)
	next := createConfig(t, sel+"-next", sel+"-nothing", nil)
	next = getConfig(t, next.Name)
	saNext := render.AgentName(next)
	waitForAgentAccount(t, saNext)
	agentNext := clientFor(t, tokenConfig(t, testNamespace, saNext, agentPod(t, saNext, n1.Name)))
	if err := agentReport(agentNext, n1.Name, n1, agentNodeReport(next, kpov1.NodeReasonSynced)); err != nil {
		t.Errorf("the successor's agent on %s taking the report over: %v", n1.Name, err)
	}
	if err := agentReport(agent1, n1.Name, n1, agentNodeReport(pc, kpov1.NodeReasonSynced)); err != nil {
		t.Fatalf("agent on %s writing its own report again: %v", n1.Name, err)
	}

	// Agent 1 on node 2's report: neither the object nor its status.
	if err := refusedBy(agentReport(agent1, n2.Name, n2, agentNodeReport(pc, kpov1.NodeReasonCleanedUp)),
		"may write only ProxyNodeStatus "+n1.Name+", not "+n2.Name); err != nil {
		t.Error(err)
	}
	cleanedUp := agentNodeReport(pc, kpov1.NodeReasonCleanedUp)
	status, err := runtime.DefaultUnstructuredConverter.ToUnstructured(&cleanedUp)
	if err != nil {
		t.Fatal(err)
	}
	claim := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": kpov1.GroupVersion.String(), "kind": "ProxyNodeStatus",
		"metadata": map[string]any{"name": n2.Name}, "status": status,
	}}
	if err := refusedBy(agent1.Status().Apply(testCtx, client.ApplyConfigurationFromUnstructured(claim),
		client.FieldOwner("kpo-agent"), client.ForceOwnership), "not "+n2.Name); err != nil {
		t.Errorf("status of another node: %v", err)
	}
	// Its own report, but owned by another Node (or by none), or claiming another configuration.
	if err := refusedBy(agentReport(agent1, n1.Name, n2, agentNodeReport(pc, kpov1.NodeReasonSynced)), "must be owned by its Node"); err != nil {
		t.Errorf("owned by another node: %v", err)
	}
	other := pc.DeepCopy()
	other.Name = "someone-else"
	if err := refusedBy(agentReport(agent1, n1.Name, n1, agentNodeReport(other, kpov1.NodeReasonSynced)),
		"may report only on that configuration"); err != nil {
		t.Errorf("another configuration: %v", err)
	}
	// A token not bound to a pod on a node writes nothing.
	if err := refusedBy(agentReport(unbound, n1.Name, n1, agentNodeReport(pc, kpov1.NodeReasonSynced)), "bound to a pod on a node"); err != nil {
		t.Errorf("unbound token: %v", err)
	}

	// Node 2's report is still agent 2's, and the operator rolls both up.
	got := &kpov1.ProxyNodeStatus{}
	if err := k8s.Get(testCtx, types.NamespacedName{Name: n2.Name}, got); err != nil {
		t.Fatal(err)
	}
	if err := hasNodeReason(got, kpov1.NodeReasonSynced); err != nil {
		t.Errorf("node 2's report changed: %v", err)
	}
	waitForStatus(t, pc.Name, func(pc *kpov1.ProxyConfiguration) error {
		if pc.Status.ReadyNodes != 2 {
			return fmt.Errorf("%d of %d nodes ready, want 2", pc.Status.ReadyNodes, pc.Status.DesiredNodes)
		}
		return hasCondition(pc, kpov1.ConditionAvailable, metav1.ConditionTrue, "")
	})

	// Owned by its Node: the garbage collector removes it with the node.
	if err := k8s.Get(testCtx, types.NamespacedName{Name: n1.Name}, got); err != nil {
		t.Fatal(err)
	}
	if refs := got.OwnerReferences; len(refs) != 1 || refs[0].Kind != "Node" || refs[0].UID != n1.UID {
		t.Errorf("owner references %+v, want node %s", refs, n1.Name)
	}
	if err := k8s.Delete(testCtx, n2); err != nil {
		t.Fatal(err)
	}
	apiserver.Eventually(t, 60*time.Second, func() error {
		if err := k8s.Get(testCtx, types.NamespacedName{Name: n2.Name}, &kpov1.ProxyNodeStatus{}); !apierrors.IsNotFound(err) {
			return fmt.Errorf("ProxyNodeStatus %s still there after its node went (%v)", n2.Name, err)
		}
		return nil
	})
}

func hasNodeReason(pns *kpov1.ProxyNodeStatus, reason string) error {
	for _, c := range pns.Status.Conditions {
		if c.Type == kpov1.NodeConditionSynced {
			if c.Reason != reason {
				return fmt.Errorf("Synced reason %s, want %s", c.Reason, reason)
			}
			return nil
		}
	}
	return fmt.Errorf("no Synced condition in %+v", pns.Status.Conditions)
}

// waitForAgentAccount waits until the suite's operator has rendered the
// agents' ServiceAccount sa and bound kpo-agent to it: the binding may name
// the account before the account exists, and a token needs both.
func waitForAgentAccount(t *testing.T, sa string) {
	t.Helper()
	apiserver.Eventually(t, wait, func() error {
		if err := k8s.Get(testCtx, types.NamespacedName{Namespace: testNamespace, Name: sa}, &corev1.ServiceAccount{}); err != nil {
			return err
		}
		b := &rbacv1.ClusterRoleBinding{}
		if err := k8s.Get(testCtx, types.NamespacedName{Name: render.AgentBindingName}, b); err != nil {
			return err
		}
		if !slices.ContainsFunc(b.Subjects, func(s rbacv1.Subject) bool { return s.Name == sa }) {
			return fmt.Errorf("the agents' binding does not name %s yet", sa)
		}
		return nil
	})
}
