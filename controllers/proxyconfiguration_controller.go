// Package controllers holds the operator's reconciler: each ProxyConfiguration
// becomes a node-agent DaemonSet with its ServiceAccount, RBAC and ConfigMap, and
// the agents' ProxyNodeStatus reports are rolled up into its status.
package controllers

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"

	appsv1 "k8s.io/api/apps/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
	"kpo.dev/kpo/controllers/imagepolicy"
	"kpo.dev/kpo/controllers/render"
)

// FieldOwner is the server-side-apply field manager of everything the operator writes.
const FieldOwner = client.FieldOwner("kpo-operator")

// reportConfigurationIndex indexes ProxyNodeStatus objects by the configuration they report on.
const reportConfigurationIndex = "status.configuration"

// ProxyConfigurationReconciler reconciles ProxyConfiguration objects.
type ProxyConfigurationReconciler struct {
	client.Client
	Scheme *runtime.Scheme
	// Namespace receives the agents' namespaced objects.
	Namespace string
	// DefaultAgentImage is the agent image when a spec names none.
	DefaultAgentImage string
	// ImagePolicy decides which agent images may run (its default replaces
	// DefaultAgentImage); nil allows DefaultAgentImage only.
	ImagePolicy *imagepolicy.Policy
	// APIServerHost and APIServerPort are the API server's address for the agents
	// (see render.Options); empty means the in-cluster default.
	APIServerHost, APIServerPort string
	// Clock stamps condition transitions; tests may replace it.
	Clock clock.PassiveClock
	// Recorder records events (rolls, degradation, cleanup: events.go); the
	// manager's when nil.
	Recorder events.EventRecorder
	// Rollup counts the nodes' reports event by event and writes the status
	// (rollup.go); SetupWithManager makes one. Without one (a reconciler run
	// by hand) Reconcile computes and writes the status from scratch.
	Rollup *Rollup
}

// The operator's RBAC (make manifests writes config/rbac/role.yaml). Cluster-wide
// it reads nodes and kpo's own CRDs and writes only ProxyConfigurations; in its
// namespace (a Role) it writes what it renders there. It writes no ClusterRole:
// the agents' role is fixed (config/rbac/agent_role.yaml), and the operator
// holds 'bind' on that one role and write access to that one binding, by name
// (no 'escalate', no wildcard). docs/security.md has the table.
// +kubebuilder:rbac:groups=proxy.kpo.dev,resources=proxyconfigurations,verbs=get;list;watch;update;patch
// +kubebuilder:rbac:groups=proxy.kpo.dev,resources=proxyconfigurations/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=proxy.kpo.dev,resources=proxyconfigurations/finalizers,verbs=update
// +kubebuilder:rbac:groups=proxy.kpo.dev,resources=proxynodestatuses,verbs=get;list;watch
// +kubebuilder:rbac:groups="",resources=nodes,verbs=get;list;watch
// +kubebuilder:rbac:groups=coordination.k8s.io,namespace=kube-node-lease,resources=leases,verbs=get;list;watch
// +kubebuilder:rbac:groups=rbac.authorization.k8s.io,resources=clusterroles,verbs=bind,resourceNames=kpo-agent
// +kubebuilder:rbac:groups=rbac.authorization.k8s.io,resources=clusterrolebindings,verbs=get;list;watch;create;update;patch,resourceNames=kpo-agent
// +kubebuilder:rbac:groups="",namespace=kpo-system,resources=configmaps;serviceaccounts,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=apps,namespace=kpo-system,resources=daemonsets,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups="",namespace=kpo-system,resources=pods,verbs=get

// The RBAC rule on proxyconfigurations/finalizers is what lets the operator set
// owner references with blockOwnerDeletion and its cleanup finalizer.

// Reconcile brings one ProxyConfiguration's objects and status up to date.
func (r *ProxyConfigurationReconciler) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	logger := log.FromContext(ctx)
	pc := &kpov1.ProxyConfiguration{}
	if err := r.Get(ctx, req.NamespacedName, pc); err != nil {
		if apierrors.IsNotFound(err) && r.Rollup != nil {
			r.Rollup.Forget(req.Name)
		}
		// Deleted: owner references let the garbage collector remove what it owned.
		return reconcile.Result{}, client.IgnoreNotFound(err)
	}
	if pc.DeletionTimestamp != nil {
		if r.Rollup != nil {
			r.Rollup.Deleting(pc.Name)
		}
		return r.finalize(ctx, pc)
	}
	if err := r.ensureFinalizer(ctx, pc); err != nil {
		return reconcile.Result{}, client.IgnoreNotFound(err)
	}

	held, conflicts, err := r.nodeOwnership(ctx, pc)
	if err != nil {
		return reconcile.Result{}, err
	}

	applyErr := r.applyObjects(ctx, pc, conflicts)
	if applyErr != nil {
		logger.Error(applyErr, "applying the agent's objects")
	}

	if r.Rollup != nil {
		// The rollup writes the status (at a bounded rate).
		r.Rollup.SetConfiguration(pc, held, conflicts, applyErr)
		return reconcile.Result{}, applyErr
	}
	reports, err := r.reports(ctx, pc, held)
	if err != nil {
		return reconcile.Result{}, err
	}
	status := computeStatus(pc, statusInputs{
		heldNodes: held, conflicts: conflicts, reports: reports, applyErr: applyErr,
		now: metav1.NewTime(r.Clock.Now()),
	})
	if !equality.Semantic.DeepEqual(status, pc.Status) {
		// An update, not a merge patch: zero counts must be written out, not omitted
		// as "unchanged". The resourceVersion makes it fail on a concurrent change.
		old := pc.Status.Conditions
		pc.Status = status
		if err := r.Status().Update(ctx, pc); err != nil {
			if apierrors.IsConflict(err) || apierrors.IsNotFound(err) {
				// Someone changed or deleted it meanwhile; that event brings us back.
				return reconcile.Result{}, nil
			}
			return reconcile.Result{}, fmt.Errorf("updating status: %w", err)
		}
		r.recordTransitions(pc, old) // only once the status that says it is written
	}
	// An apply error is returned so that the request is retried with backoff.
	return reconcile.Result{}, applyErr
}

// applyObjects server-side-applies every object the configuration renders to. An
// unchanged object is a no-op on the server: its resourceVersion does not move.
func (r *ProxyConfigurationReconciler) applyObjects(ctx context.Context, pc *kpov1.ProxyConfiguration, conflicts map[string]string) error {
	policy, err := r.imagePolicy()
	if err != nil {
		return err
	}
	objs, err := render.Render(pc, render.Options{
		Namespace:         r.Namespace,
		DefaultAgentImage: policy.Default(),
		ExcludedNodes:     slices.Collect(maps.Keys(conflicts)),
		APIServerHost:     r.APIServerHost,
		APIServerPort:     r.APIServerPort,
		ImagePolicy:       policy,
	})
	if err != nil {
		return err
	}
	binding, err := r.agentBinding(ctx)
	if err != nil {
		return err
	}
	// The ConfigMap goes before the DaemonSet, so that rolled pods find the new file.
	for _, ac := range []runtime.ApplyConfiguration{
		objs.ServiceAccount, binding, objs.ConfigMap, objs.DaemonSet,
	} {
		if err := r.Apply(ctx, ac, FieldOwner, client.ForceOwnership); err != nil {
			return fmt.Errorf("applying %T: %w", ac, err)
		}
	}
	return nil
}

// nodeOwnership returns the nodes this configuration holds, and the nodes it
// selects that an older configuration holds (with that configuration's name).
func (r *ProxyConfigurationReconciler) nodeOwnership(ctx context.Context, pc *kpov1.ProxyConfiguration) ([]string, map[string]string, error) {
	var nodes corev1.NodeList
	if err := r.List(ctx, &nodes); err != nil {
		return nil, nil, fmt.Errorf("listing nodes: %w", err)
	}
	var all kpov1.ProxyConfigurationList
	if err := r.List(ctx, &all); err != nil {
		return nil, nil, fmt.Errorf("listing proxy configurations: %w", err)
	}
	var older []*kpov1.ProxyConfiguration
	for i := range all.Items {
		other := &all.Items[i]
		if other.Name != pc.Name && other.DeletionTimestamp == nil && render.Older(other, pc) {
			older = append(older, other)
		}
	}
	slices.SortFunc(older, func(a, b *kpov1.ProxyConfiguration) int {
		if render.Older(a, b) {
			return -1
		}
		return 1
	})

	var held []string
	conflicts := map[string]string{}
	for i := range nodes.Items {
		node := &nodes.Items[i]
		if !render.Selects(pc, node) {
			continue
		}
		if idx := slices.IndexFunc(older, func(o *kpov1.ProxyConfiguration) bool { return render.Selects(o, node) }); idx >= 0 {
			conflicts[node.Name] = older[idx].Name
			continue
		}
		held = append(held, node.Name)
	}
	return held, conflicts, nil
}

// reports returns the ProxyNodeStatus reports of the held nodes that name this configuration.
func (r *ProxyConfigurationReconciler) reports(ctx context.Context, pc *kpov1.ProxyConfiguration, held []string) (map[string]*kpov1.ProxyNodeReport, error) {
	var list kpov1.ProxyNodeStatusList
	if err := r.List(ctx, &list, client.MatchingFields{reportConfigurationIndex: pc.Name}); err != nil {
		return nil, fmt.Errorf("listing node reports: %w", err)
	}
	reports := map[string]*kpov1.ProxyNodeReport{}
	for i := range list.Items {
		if slices.Contains(held, list.Items[i].Name) {
			reports[list.Items[i].Name] = &list.Items[i].Status
		}
	}
	return reports, nil
}

// SetupWithManager registers the reconciler and its watches.
func (r *ProxyConfigurationReconciler) SetupWithManager(mgr ctrl.Manager) error {
	if r.Clock == nil {
		r.Clock = clock.RealClock{}
	}
	if r.Namespace == "" {
		return errors.New("the operator's namespace is not set")
	}
	if r.Recorder == nil {
		r.Recorder = mgr.GetEventRecorder("kpo-operator")
	}
	if r.Rollup == nil {
		r.Rollup = NewRollup(mgr.GetClient(), r.Clock, 0)
	}
	// The rollup writes the status, so it tells of the transitions.
	r.Rollup.OnWritten = r.recordTransitions
	if err := mgr.Add(r.Rollup); err != nil {
		return err
	}
	if err := mgr.GetFieldIndexer().IndexField(context.Background(), &kpov1.ProxyNodeStatus{}, reportConfigurationIndex,
		func(o client.Object) []string {
			return []string{o.(*kpov1.ProxyNodeStatus).Status.Configuration}
		}); err != nil {
		return err
	}
	return ctrl.NewControllerManagedBy(mgr).
		// Not on status writes (the rollup's, up to one a second): a reconcile
		// applies four objects, which at scale is the API server's load.
		For(&kpov1.ProxyConfiguration{}, builder.WithPredicates(specOrMetadataChanged())).
		Owns(&appsv1.DaemonSet{}, builder.WithPredicates(specOrMetadataChanged())).
		Owns(&corev1.ConfigMap{}).
		Owns(&corev1.ServiceAccount{}).
		// The agents' binding has every configuration as owner, none as controller.
		Watches(&rbacv1.ClusterRoleBinding{}, handler.EnqueueRequestsFromMapFunc(r.allConfigurations)).
		// Node ownership between configurations depends on every configuration's
		// selector and age: a spec change or deletion of one re-evaluates all.
		Watches(&kpov1.ProxyConfiguration{}, handler.EnqueueRequestsFromMapFunc(r.allConfigurations),
			builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		Watches(&corev1.Node{}, handler.EnqueueRequestsFromMapFunc(r.allConfigurations),
			builder.WithPredicates(nodeSelectionChanged())).
		// Reports and node Leases feed the rollup, one node at a time.
		Watches(&kpov1.ProxyNodeStatus{}, r.Rollup.reportHandler()).
		Watches(&coordinationv1.Lease{}, r.Rollup.leaseHandler()).
		Complete(r)
}

func (r *ProxyConfigurationReconciler) allConfigurations(ctx context.Context, _ client.Object) []reconcile.Request {
	var all kpov1.ProxyConfigurationList
	if err := r.List(ctx, &all); err != nil {
		log.FromContext(ctx).Error(err, "listing proxy configurations")
		return nil
	}
	reqs := make([]reconcile.Request, 0, len(all.Items))
	for i := range all.Items {
		reqs = append(reqs, reconcile.Request{NamespacedName: types.NamespacedName{Name: all.Items[i].Name}})
	}
	return reqs
}

// nodeSelectionChanged passes the node events that can change which configuration
// selects a node: creation, deletion, labels and taints. Status heartbeats do not.
func nodeSelectionChanged() predicate.Funcs {
	return predicate.Funcs{
		UpdateFunc: func(e event.UpdateEvent) bool {
			oldNode, newNode := e.ObjectOld.(*corev1.Node), e.ObjectNew.(*corev1.Node)
			return !equality.Semantic.DeepEqual(oldNode.Labels, newNode.Labels) ||
				!equality.Semantic.DeepEqual(oldNode.Spec.Taints, newNode.Spec.Taints) ||
				(oldNode.DeletionTimestamp == nil) != (newNode.DeletionTimestamp == nil)
		},
	}
}

// specOrMetadataChanged passes creations, deletions and updates of the spec
// (generation; a deletion bumps it too), labels or annotations: not status
// updates, which for a DaemonSet come with every pod it rolls.
func specOrMetadataChanged() predicate.Predicate {
	return predicate.Or(predicate.GenerationChangedPredicate{}, predicate.LabelChangedPredicate{}, predicate.AnnotationChangedPredicate{})
}
