package controllers

import (
	"context"
	"fmt"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
)

// CleanupFinalizer holds a deleted ProxyConfiguration until its agents have
// removed their rules from the nodes: deleting the DaemonSet first would leave
// every node's rules behind, serving stale endpoints forever.
const CleanupFinalizer = "proxy.kpo.dev/node-cleanup"

// CleanupTimeout bounds the wait for agents: a node whose agent is gone (node
// down, pod evicted) must not block the deletion forever.
const CleanupTimeout = 2 * time.Minute

// ensureFinalizer adds the cleanup finalizer to a live configuration.
func (r *ProxyConfigurationReconciler) ensureFinalizer(ctx context.Context, pc *kpov1.ProxyConfiguration) error {
	if controllerutil.ContainsFinalizer(pc, CleanupFinalizer) {
		return nil
	}
	patch := client.MergeFromWithOptions(pc.DeepCopy(), client.MergeFromWithOptimisticLock{})
	controllerutil.AddFinalizer(pc, CleanupFinalizer)
	return r.Patch(ctx, pc, patch)
}

// finalize runs while a configuration is being deleted: the agents see the
// deletion (they watch their configuration), remove their rules and report
// CleanedUp; once every held node has, or the bound has passed, the finalizer
// goes and the garbage collector removes the DaemonSet and the rest.
func (r *ProxyConfigurationReconciler) finalize(ctx context.Context, pc *kpov1.ProxyConfiguration) (reconcile.Result, error) {
	if !controllerutil.ContainsFinalizer(pc, CleanupFinalizer) {
		return reconcile.Result{}, nil
	}
	held, _, err := r.nodeOwnership(ctx, pc)
	if err != nil {
		return reconcile.Result{}, err
	}
	reports, err := r.reports(ctx, pc, held)
	if err != nil {
		return reconcile.Result{}, err
	}
	var waiting []string
	for _, node := range held {
		rep := reports[node]
		if rep == nil {
			continue // no agent ever reported: nothing to clean
		}
		if c := meta.FindStatusCondition(rep.Conditions, kpov1.NodeConditionSynced); c == nil || c.Reason != kpov1.NodeReasonCleanedUp {
			waiting = append(waiting, node)
		}
	}
	waited := r.Clock.Since(pc.DeletionTimestamp.Time)
	if len(waiting) > 0 && waited < CleanupTimeout {
		log.FromContext(ctx).Info("waiting for agents to remove their rules", "nodes", waiting)
		// Reports wake us; the requeue enforces the bound.
		return reconcile.Result{RequeueAfter: CleanupTimeout - waited}, nil
	}
	if len(waiting) > 0 {
		log.FromContext(ctx).Info("giving up waiting for agents; their nodes may keep kpo rules (kpo-agent --cleanup removes them)",
			"nodes", waiting, "waited", waited.Round(time.Second))
	}
	patch := client.MergeFrom(pc.DeepCopy())
	controllerutil.RemoveFinalizer(pc, CleanupFinalizer)
	if err := r.Patch(ctx, pc, patch); err != nil {
		return reconcile.Result{}, fmt.Errorf("removing finalizer: %w", err)
	}
	return reconcile.Result{}, nil
}
