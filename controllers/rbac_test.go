package controllers

import (
	"bufio"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	rbacv1ac "k8s.io/client-go/applyconfigurations/rbac/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/clock"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
	"kpo.dev/kpo/controllers/imagepolicy"
	"kpo.dev/kpo/controllers/render"
	"kpo.dev/kpo/hack/apiserver"
)

// The operator's identity as config/ deploys it.
const (
	operatorSA   = "kpo-operator"
	operatorUser = "system:serviceaccount:" + testNamespace + ":" + operatorSA
)

// installShipped applies config/<dir> (kustomize) to the API server: the
// objects as `make deploy` ships them.
func installShipped(t *testing.T, dir string) {
	t.Helper()
	out, err := env.Kubectl(testCtx, nil, "apply", "--server-side", "--force-conflicts", "-k",
		filepath.Join(apiserver.RepoRoot(), "config", dir))
	if err != nil {
		t.Fatalf("kubectl apply -k config/%s: %v: %s", dir, err, out)
	}
}

// clientset is a typed client as the test's administrator.
func clientset(t *testing.T) *kubernetes.Clientset {
	t.Helper()
	cs, err := kubernetes.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

// tokenConfig is a client configuration that authenticates with a
// ServiceAccount token from the TokenRequest API, bound to boundPod when it is
// not nil: the token kubelet mounts into that pod.
func tokenConfig(t *testing.T, namespace, sa string, boundPod *corev1.Pod) *rest.Config {
	t.Helper()
	req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr.To[int64](3600)}}
	if boundPod != nil {
		req.Spec.BoundObjectRef = &authenticationv1.BoundObjectReference{
			Kind: "Pod", APIVersion: "v1", Name: boundPod.Name, UID: boundPod.UID}
	}
	tok, err := clientset(t).CoreV1().ServiceAccounts(namespace).CreateToken(testCtx, sa, req, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("token for %s/%s: %v", namespace, sa, err)
	}
	cfg := rest.AnonymousClientConfig(env.Config)
	cfg.BearerToken = tok.Status.Token
	return cfg
}

func clientFor(t *testing.T, cfg *rest.Config) client.Client {
	t.Helper()
	c, err := client.New(cfg, client.Options{Scheme: env.Scheme})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// operatorClient is a client with the operator's ServiceAccount token, holding
// exactly the shipped roles of config/rbac.
func operatorClient(t *testing.T) client.Client {
	t.Helper()
	installShipped(t, "rbac")
	return clientFor(t, tokenConfig(t, testNamespace, operatorSA, nil))
}

type access struct {
	verb, group, resource, subresource, namespace, name string
}

func (a access) String() string {
	s := a.verb + " " + a.resource
	if a.subresource != "" {
		s += "/" + a.subresource
	}
	if a.group != "" {
		s += "." + a.group
	}
	if a.name != "" {
		s += " " + a.name
	}
	if a.namespace != "" {
		s += " -n " + a.namespace
	} else {
		s += " (cluster-wide)"
	}
	return s
}

// allowed asks the API server's authorizer (a SubjectAccessReview) whether the
// operator's ServiceAccount may do a.
func allowed(t *testing.T, a access) bool {
	t.Helper()
	sar := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
		User:   operatorUser,
		Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + testNamespace, "system:authenticated"},
		ResourceAttributes: &authorizationv1.ResourceAttributes{
			Verb: a.verb, Group: a.group, Resource: a.resource, Subresource: a.subresource,
			Namespace: a.namespace, Name: a.name,
		},
	}}
	if err := k8s.Create(testCtx, sar); err != nil {
		t.Fatalf("SubjectAccessReview %s: %v", a, err)
	}
	return sar.Status.Allowed
}

// TestOperatorAccessReviews asks the real API server's RBAC authorizer what the
// shipped operator roles allow: what the operator needs, and nothing of what
// would make a compromised operator cluster-admin (writes outside kpo-system,
// cluster roles, other bindings, secrets, tokens, impersonation).
func TestOperatorAccessReviews(t *testing.T) {
	needAPIServer(t)
	installShipped(t, "rbac")
	ns := testNamespace
	grants := []access{
		{verb: "list", resource: "nodes"},
		{verb: "watch", group: "proxy.kpo.dev", resource: "proxyconfigurations"},
		{verb: "patch", group: "proxy.kpo.dev", resource: "proxyconfigurations"},
		{verb: "update", group: "proxy.kpo.dev", resource: "proxyconfigurations", subresource: "status"},
		{verb: "update", group: "proxy.kpo.dev", resource: "proxyconfigurations", subresource: "finalizers"},
		{verb: "list", group: "proxy.kpo.dev", resource: "proxynodestatuses"},
		{verb: "patch", group: "apps", resource: "daemonsets", namespace: ns},
		{verb: "create", group: "apps", resource: "daemonsets", namespace: ns},
		{verb: "patch", resource: "configmaps", namespace: ns},
		{verb: "patch", resource: "serviceaccounts", namespace: ns},
		{verb: "get", resource: "pods", namespace: ns},
		{verb: "update", group: "coordination.k8s.io", resource: "leases", namespace: ns},
		// The node heartbeats, read only (the rollup's staleness, rollup.go).
		{verb: "watch", group: "coordination.k8s.io", resource: "leases", namespace: NodeLeaseNamespace},
		{verb: "list", group: "coordination.k8s.io", resource: "leases", namespace: NodeLeaseNamespace},
		{verb: "bind", group: "rbac.authorization.k8s.io", resource: "clusterroles", name: render.AgentClusterRoleName},
		{verb: "patch", group: "rbac.authorization.k8s.io", resource: "clusterrolebindings", name: render.AgentBindingName},
		{verb: "create", group: "rbac.authorization.k8s.io", resource: "clusterrolebindings", name: render.AgentBindingName},
		{verb: "watch", group: "rbac.authorization.k8s.io", resource: "clusterrolebindings", name: render.AgentBindingName},
		// The API server's own address for the agents (controllers/apiserveraddr).
		{verb: "get", group: "discovery.k8s.io", resource: "endpointslices", namespace: "default", name: "kubernetes"},
		// Events on ProxyConfigurations (cluster-scoped: they land in default).
		{verb: "create", group: "events.k8s.io", resource: "events", namespace: "default"},
		{verb: "patch", group: "events.k8s.io", resource: "events", namespace: "default"},
	}
	denials := []access{
		// Outside its namespace.
		{verb: "create", resource: "configmaps", namespace: "kube-system"},
		{verb: "create", resource: "configmaps", namespace: "default"},
		{verb: "create", group: "apps", resource: "daemonsets", namespace: "default"},
		{verb: "patch", group: "apps", resource: "daemonsets", namespace: "kube-system"},
		{verb: "create", group: "apps", resource: "daemonsets"},
		{verb: "create", resource: "serviceaccounts", namespace: "kube-system"},
		{verb: "list", resource: "configmaps"},
		{verb: "create", group: "coordination.k8s.io", resource: "leases", namespace: "kube-system"},
		// In default: that one EndpointSlice, read, and events, written; nothing else.
		{verb: "list", group: "discovery.k8s.io", resource: "endpointslices", namespace: "default"},
		{verb: "watch", group: "discovery.k8s.io", resource: "endpointslices", namespace: "default"},
		{verb: "get", group: "discovery.k8s.io", resource: "endpointslices", namespace: "default", name: "other"},
		{verb: "update", group: "discovery.k8s.io", resource: "endpointslices", namespace: "default", name: "kubernetes"},
		{verb: "get", group: "discovery.k8s.io", resource: "endpointslices", namespace: "kube-system", name: "kubernetes"},
		{verb: "list", group: "discovery.k8s.io", resource: "endpointslices"},
		{verb: "create", group: "events.k8s.io", resource: "events", namespace: "kube-system"},
		{verb: "create", resource: "events", namespace: "default"}, // the core group's: the recorder writes events.k8s.io
		{verb: "delete", group: "events.k8s.io", resource: "events", namespace: "default"},
		{verb: "list", group: "events.k8s.io", resource: "events", namespace: "default"},
		{verb: "get", resource: "services", namespace: "default", name: "kubernetes"},
		{verb: "get", resource: "secrets", namespace: "default"},
		{verb: "create", resource: "pods", namespace: "default"},
		{verb: "update", group: "coordination.k8s.io", resource: "leases", namespace: NodeLeaseNamespace},
		{verb: "delete", group: "coordination.k8s.io", resource: "leases", namespace: NodeLeaseNamespace},
		{verb: "list", group: "coordination.k8s.io", resource: "leases"},
		// Cluster roles and bindings: no write, no escalate, no other bind.
		{verb: "update", group: "rbac.authorization.k8s.io", resource: "clusterroles"},
		{verb: "update", group: "rbac.authorization.k8s.io", resource: "clusterroles", name: render.AgentClusterRoleName},
		{verb: "create", group: "rbac.authorization.k8s.io", resource: "clusterroles"},
		{verb: "delete", group: "rbac.authorization.k8s.io", resource: "clusterroles", name: "cluster-admin"},
		{verb: "escalate", group: "rbac.authorization.k8s.io", resource: "clusterroles", name: render.AgentClusterRoleName},
		{verb: "bind", group: "rbac.authorization.k8s.io", resource: "clusterroles", name: "cluster-admin"},
		{verb: "bind", group: "rbac.authorization.k8s.io", resource: "clusterroles"},
		{verb: "create", group: "rbac.authorization.k8s.io", resource: "clusterrolebindings"},
		{verb: "create", group: "rbac.authorization.k8s.io", resource: "clusterrolebindings", name: "kpo-agent-other"},
		{verb: "update", group: "rbac.authorization.k8s.io", resource: "clusterrolebindings", name: "cluster-admin"},
		{verb: "delete", group: "rbac.authorization.k8s.io", resource: "clusterrolebindings", name: "cluster-admin"},
		{verb: "delete", group: "rbac.authorization.k8s.io", resource: "clusterrolebindings", name: render.AgentBindingName},
		{verb: "list", group: "rbac.authorization.k8s.io", resource: "clusterrolebindings"},
		{verb: "create", group: "rbac.authorization.k8s.io", resource: "roles", namespace: ns},
		{verb: "create", group: "rbac.authorization.k8s.io", resource: "rolebindings", namespace: ns},
		// Credentials and identities, even in its own namespace.
		{verb: "get", resource: "secrets", namespace: ns},
		{verb: "list", resource: "secrets"},
		{verb: "create", resource: "serviceaccounts", subresource: "token", namespace: ns},
		{verb: "impersonate", resource: "users"},
		{verb: "impersonate", resource: "serviceaccounts", namespace: ns},
		// Workloads other than the DaemonSets it renders.
		{verb: "create", resource: "pods", namespace: ns},
		{verb: "create", group: "apps", resource: "deployments", namespace: ns},
		{verb: "list", resource: "pods"},
		// What only the agents do, or nobody.
		{verb: "create", group: "proxy.kpo.dev", resource: "proxynodestatuses"},
		{verb: "patch", group: "proxy.kpo.dev", resource: "proxynodestatuses", subresource: "status"},
		{verb: "create", group: "proxy.kpo.dev", resource: "proxyconfigurations"},
		{verb: "delete", group: "proxy.kpo.dev", resource: "proxyconfigurations"},
		{verb: "patch", resource: "nodes"},
		{verb: "list", resource: "services"},
		{verb: "create", group: "admissionregistration.k8s.io", resource: "validatingadmissionpolicies"},
		{verb: "delete", group: "admissionregistration.k8s.io", resource: "validatingadmissionpolicybindings", name: "kpo-agent-node-status"},
		{verb: "update", group: "apiextensions.k8s.io", resource: "customresourcedefinitions"},
	}
	for _, a := range grants {
		if !allowed(t, a) {
			t.Errorf("the operator may not %s; it needs to", a)
		}
	}
	for _, a := range denials {
		if allowed(t, a) {
			t.Errorf("the operator may %s; it must not", a)
		}
	}
}

// TestOperatorTokenIsRefused sends requests a compromised operator would, with
// the operator ServiceAccount's real token: the API server refuses each one,
// including the escalations RBAC checks beyond the verbs (binding another
// role through the one binding it may write).
func TestOperatorTokenIsRefused(t *testing.T) {
	needAPIServer(t)
	op := operatorClient(t)
	name := uniqueName(t, "")
	forbidden := func(what string, err error) {
		t.Helper()
		if !apierrors.IsForbidden(err) {
			t.Errorf("%s: got %v, want Forbidden", what, err)
		}
	}
	forbidden("create a ConfigMap in kube-system", op.Create(testCtx, &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "kube-system"}}))
	ds := &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: metav1.NamespaceDefault},
		Spec: appsv1.DaemonSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": name}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": name}},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "registry.example/x:1"}}},
			},
		},
	}
	forbidden("create a DaemonSet in default", op.Create(testCtx, ds))
	forbidden("create a ClusterRoleBinding to cluster-admin", op.Create(testCtx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "cluster-admin"},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: operatorSA, Namespace: testNamespace}},
	}))
	// Server-side apply of another name: the create is authorized by name too.
	forbidden("apply ClusterRoleBinding "+name, op.Apply(testCtx, rbacv1ac.ClusterRoleBinding(name).
		WithRoleRef(rbacv1ac.RoleRef().WithAPIGroup(rbacv1.GroupName).WithKind("ClusterRole").WithName(render.AgentClusterRoleName)),
		FieldOwner, client.ForceOwnership))
	role := &rbacv1.ClusterRole{}
	if err := k8s.Get(testCtx, types.NamespacedName{Name: render.AgentClusterRoleName}, role); err != nil {
		t.Fatal(err)
	}
	role.Rules = append(role.Rules, rbacv1.PolicyRule{APIGroups: []string{""}, Resources: []string{"secrets"}, Verbs: []string{"get"}})
	forbidden("add secrets to the agents' ClusterRole", op.Update(testCtx, role))
	forbidden("read secrets in its own namespace", op.List(testCtx, &corev1.SecretList{}, client.InNamespace(testNamespace)))
	forbidden("write a node's ProxyNodeStatus", op.Create(testCtx, &kpov1.ProxyNodeStatus{ObjectMeta: metav1.ObjectMeta{Name: name}}))

	// The escalation check, on the one binding the operator may write: making
	// it bind cluster-admin needs 'bind' on cluster-admin (or holding all of
	// it), which the operator lacks. RBAC's storage checks this before the
	// binding's own validation (roleRef is immutable), so the answer is
	// Forbidden whether the binding exists or not. A dry run changes nothing.
	escalate := rbacv1ac.ClusterRoleBinding(render.AgentBindingName).
		WithRoleRef(rbacv1ac.RoleRef().WithAPIGroup(rbacv1.GroupName).WithKind("ClusterRole").WithName("cluster-admin")).
		WithSubjects(rbacv1ac.Subject().WithKind("ServiceAccount").WithName(operatorSA).WithNamespace(testNamespace))
	forbidden("bind cluster-admin through the agents' binding",
		op.Apply(testCtx, escalate, client.FieldOwner("kpo-test-escalation"), client.ForceOwnership, client.DryRunAll))
}

// TestOperatorCanIList runs `kubectl auth can-i --list` as the operator's
// ServiceAccount (what docs/security.md shows) and checks its cluster-wide
// rules: the only writes are to kpo's own CRDs and to the agents' binding by
// name, and the only RBAC verb on cluster roles is 'bind' on kpo-agent.
func TestOperatorCanIList(t *testing.T) {
	needAPIServer(t)
	installShipped(t, "rbac")
	// kube-public holds no kpo Role: its list is the cluster-wide rules alone.
	// default adds the operator's Role there, whose only writes are Events.
	for _, ns := range []string{metav1.NamespacePublic, metav1.NamespaceDefault, testNamespace} {
		out, err := env.Kubectl(testCtx, nil, "auth", "can-i", "--list", "--as="+operatorUser, "-n", ns)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("kubectl auth can-i --list --as=%s -n %s\n%s", operatorUser, ns, out)
		if ns == testNamespace {
			continue
		}
		writes := []string{"create", "update", "patch", "delete", "deletecollection", "*", "escalate", "bind", "impersonate"}
		sc := bufio.NewScanner(strings.NewReader(out))
		for sc.Scan() {
			// Resources   Non-Resource URLs   Resource Names   Verbs
			line := sc.Text()
			open, close := strings.Index(line, "["), strings.LastIndex(line, "]")
			if open < 0 || strings.HasPrefix(line, "Resources") {
				continue
			}
			resource := strings.TrimSpace(line[:open])
			verbs := strings.Fields(strings.Trim(line[strings.LastIndex(line[:close], "[")+1:close], "[]"))
			names := line[open:strings.LastIndex(line[:close], "[")]
			if !slices.ContainsFunc(verbs, func(v string) bool { return slices.Contains(writes, v) }) {
				continue
			}
			switch {
			case strings.HasSuffix(resource, ".proxy.kpo.dev") || strings.Contains(resource, ".proxy.kpo.dev/"):
			case resource == "clusterrolebindings.rbac.authorization.k8s.io" && strings.Contains(names, "["+render.AgentBindingName+"]"):
			case resource == "clusterroles.rbac.authorization.k8s.io" && strings.Contains(names, "["+render.AgentClusterRoleName+"]") &&
				slices.Equal(verbs, []string{"bind"}):
			case ns == metav1.NamespaceDefault && resource == "events.events.k8s.io" && slices.Equal(verbs, []string{"create", "patch"}):
			// Every authenticated user's (system:basic-user etc.): reviews of its own access.
			case strings.HasSuffix(resource, ".authorization.k8s.io") && strings.Contains(resource, "selfsubject"),
				strings.HasSuffix(resource, ".authentication.k8s.io") && strings.Contains(resource, "selfsubject"):
			default:
				t.Errorf("cluster-wide write outside kpo's CRDs and the agents' binding: %q", strings.TrimSpace(line))
			}
		}
	}
}

// TestOperatorRBACIsSufficient runs a reconcile as the operator's
// ServiceAccount holding exactly the shipped roles (config/rbac): its
// ClusterRole and its Role in kpo-system. Every object is applied, the agents'
// binding included, which RBAC allows only through 'bind' on kpo-agent (the
// operator holds none of the agents' permissions); a refused agent image
// renders nothing and says so, with the same rights.
func TestOperatorRBACIsSufficient(t *testing.T) {
	needAPIServer(t)
	restricted := operatorClient(t)

	sel := uniqueName(t, "")
	createNode(t, sel+"-a", map[string]string{"test": sel})
	pc := createConfig(t, sel, sel, nil)
	r := &ProxyConfigurationReconciler{Client: restricted, Namespace: testNamespace, DefaultAgentImage: testAgentImage, Clock: clock.RealClock{}}
	// The reconcile lists through the API server (no cache), which needs the
	// field index as a selectable field: the CRD declares it.
	// The suite's operator writes the same object meanwhile (its finalizer,
	// then its rollup's status): a conflict is retried, as the manager would.
	if err := retry.OnError(retry.DefaultRetry, apierrors.IsConflict, func() error {
		_, err := r.Reconcile(testCtx, reconcile.Request{NamespacedName: types.NamespacedName{Name: pc.Name}})
		return err
	}); err != nil {
		t.Fatalf("reconcile with only the operator's shipped roles: %v", err)
	}
	name := render.AgentName(pc)
	for _, o := range []client.Object{
		&appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: testNamespace}},
		&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: testNamespace}},
		&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: testNamespace}},
	} {
		if err := k8s.Get(testCtx, client.ObjectKeyFromObject(o), o); err != nil {
			t.Errorf("%T %s: %v", o, name, err)
		}
	}
	binding := &rbacv1.ClusterRoleBinding{}
	if err := k8s.Get(testCtx, types.NamespacedName{Name: render.AgentBindingName}, binding); err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(binding.Subjects, rbacv1.Subject{Kind: "ServiceAccount", Name: name, Namespace: testNamespace}) {
		t.Errorf("the agents' binding %+v lacks %s", binding.Subjects, name)
	}

	refused := createConfig(t, sel+"-evil", sel+"-nothing", func(pc *kpov1.ProxyConfiguration) {
		pc.Spec.Agent.Image = "attacker.example/root-shell:v1"
	})
	// The error is the policy's refusal (or none, or a conflict, when the
	// suite's operator wrote the status first): no permission is missing on
	// this path either.
	_, err := r.Reconcile(testCtx, reconcile.Request{NamespacedName: types.NamespacedName{Name: refused.Name}})
	if _, isRefusal := errors.AsType[*imagepolicy.NotAllowedError](err); err != nil && !isRefusal && !apierrors.IsConflict(err) {
		t.Errorf("reconciling a configuration with a refused image: %v", err)
	}
	checkRefusedImage(t, refused)
}

// checkRefusedImage: the configuration says Degraded, ImageNotAllowed, naming
// the policy, and nothing was rendered for it.
func checkRefusedImage(t *testing.T, pc *kpov1.ProxyConfiguration) {
	t.Helper()
	waitForStatus(t, pc.Name, func(got *kpov1.ProxyConfiguration) error {
		if err := hasCondition(got, kpov1.ConditionDegraded, metav1.ConditionTrue, kpov1.ReasonImageNotAllowed); err != nil {
			return err
		}
		for _, c := range got.Status.Conditions {
			if c.Type == kpov1.ConditionDegraded && !strings.Contains(c.Message, "--agent-image-allow") {
				return fmt.Errorf("Degraded message %q does not name the policy", c.Message)
			}
		}
		return nil
	})
	name := render.AgentName(pc)
	for _, o := range []client.Object{
		&appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: testNamespace}},
		&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: testNamespace}},
		&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: testNamespace}},
	} {
		if err := k8s.Get(testCtx, client.ObjectKeyFromObject(o), o); !apierrors.IsNotFound(err) {
			t.Errorf("%T %s was rendered for a refused image (err %v)", o, name, err)
		}
	}
}

// TestAgentImagePolicy: the operator renders an allowed image (its own, or
// one of --agent-image-allow), refuses any other with a condition naming the
// policy and renders nothing for it; an edit to a refused image leaves the
// running agents as they were.
func TestAgentImagePolicy(t *testing.T) {
	needAPIServer(t)
	sel := uniqueName(t, "")
	createNode(t, sel+"-a", map[string]string{"test": sel})
	approved := testApprovedImages + "kpo:v2"
	pc := createConfig(t, sel, sel, func(pc *kpov1.ProxyConfiguration) { pc.Spec.Agent.Image = approved })
	waitForDaemonSet(t, pc, func(ds *appsv1.DaemonSet) error {
		if img := ds.Spec.Template.Spec.Containers[0].Image; img != approved {
			return fmt.Errorf("image %q, want %q", img, approved)
		}
		return nil
	})

	checkRefusedImage(t, createConfig(t, sel+"-evil", sel+"-nothing", func(pc *kpov1.ProxyConfiguration) {
		pc.Spec.Agent.Image = "registry.example/approved-not/kpo:v2" // a prefix only on a "/" boundary
	}))

	updateConfig(t, pc.Name, func(pc *kpov1.ProxyConfiguration) { pc.Spec.Agent.Image = "attacker.example/root-shell:v1" })
	waitForStatus(t, pc.Name, func(pc *kpov1.ProxyConfiguration) error {
		return hasCondition(pc, kpov1.ConditionDegraded, metav1.ConditionTrue, kpov1.ReasonImageNotAllowed)
	})
	ds := waitForDaemonSet(t, pc, func(*appsv1.DaemonSet) error { return nil })
	if img := ds.Spec.Template.Spec.Containers[0].Image; img != approved {
		t.Errorf("after an edit to a refused image the DaemonSet runs %q, want the previous %q", img, approved)
	}
}
