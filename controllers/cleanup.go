package controllers

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
)

// CleanupFinalizer holds a deleted ProxyConfiguration until its agents have
// removed their rules from the nodes, or handed the nodes over to the
// configuration that selects them next: deleting the DaemonSet first would
// leave every node's rules behind, serving stale endpoints forever.
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
// deletion (they watch their configuration) and either remove their rules
// (CleanedUp) or, where another configuration takes the node, leave them for
// its agent (HandedOver; that agent's report then replaces theirs). Once every
// held node is done, or the bound has passed, the finalizer goes and the
// garbage collector removes the DaemonSet and the rest. Meanwhile the
// CleanedUp condition and failingNodes name the nodes waited for and why; a
// timeout says which nodes may keep rules, on the CR and in a Warning event
// (which outlives the CR), and their ProxyNodeStatus keeps saying it.
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
	waiting := nodesNotCleanedUp(held, reports)
	waited := r.Clock.Since(pc.DeletionTimestamp.Time)
	logger := log.FromContext(ctx)
	if len(waiting) > 0 && waited < CleanupTimeout {
		logger.Info("waiting for agents to remove their rules or hand their nodes over", "nodes", nodeNames(waiting))
		cond := metav1.Condition{Type: kpov1.ConditionCleanedUp, Status: metav1.ConditionFalse, Reason: kpov1.ReasonWaitingForNodes,
			Message: truncate(fmt.Sprintf("waiting (up to %v) for %d node(s): %s", CleanupTimeout, len(waiting), describe(waiting)), 32*1024)}
		if err := r.setDeletionStatus(ctx, pc, cond, waiting); err != nil {
			return reconcile.Result{}, err
		}
		// Reports wake us; the requeue enforces the bound.
		return reconcile.Result{RequeueAfter: CleanupTimeout - waited}, nil
	}
	if len(waiting) > 0 {
		msg := fmt.Sprintf("gave up after %v: %d node(s) may keep kpo rules (their ProxyNodeStatus says what remains; "+
			"kpo-agent --cleanup removes them): %s", waited.Round(time.Second), len(waiting), describe(waiting))
		logger.Info("giving up waiting for agents", "nodes", nodeNames(waiting), "waited", waited.Round(time.Second))
		cond := metav1.Condition{Type: kpov1.ConditionCleanedUp, Status: metav1.ConditionFalse, Reason: kpov1.ReasonCleanupTimedOut,
			Message: truncate(msg, 32*1024)}
		if err := r.setDeletionStatus(ctx, pc, cond, waiting); err != nil {
			return reconcile.Result{}, err
		}
		if r.Recorder != nil {
			r.Recorder.Eventf(pc, nil, corev1.EventTypeWarning, kpov1.ReasonCleanupTimedOut, "Delete", "%s", truncate(msg, 1024))
		}
	}
	if len(waiting) == 0 && r.Recorder != nil {
		r.Recorder.Eventf(pc, nil, corev1.EventTypeNormal, EventCleanedUp, "Delete",
			"every node's kpo rules are removed, or handed over to the configuration that selects the node next (%d node(s))", len(held))
	}
	patch := client.MergeFrom(pc.DeepCopy())
	controllerutil.RemoveFinalizer(pc, CleanupFinalizer)
	if err := r.Patch(ctx, pc, patch); err != nil {
		return reconcile.Result{}, fmt.Errorf("removing finalizer: %w", err)
	}
	return reconcile.Result{}, nil
}

// nodesNotCleanedUp are the held nodes whose report still names this
// configuration without saying CleanedUp: the agent has not removed its rules
// (or failed to: CleanupFailed, with what remains), or it handed the node over
// and the successor's agent has not reported yet (its first report replaces
// this configuration's). A node without a report never ran an agent.
func nodesNotCleanedUp(held []string, reports map[string]*kpov1.ProxyNodeReport) []kpov1.NodeFailure {
	var waiting []kpov1.NodeFailure
	for _, node := range slices.Sorted(slices.Values(held)) {
		rep := reports[node]
		if rep == nil {
			continue
		}
		c := meta.FindStatusCondition(rep.Conditions, kpov1.NodeConditionSynced)
		switch {
		case c != nil && c.Reason == kpov1.NodeReasonCleanedUp:
		case c != nil && c.Reason == kpov1.NodeReasonHandedOver:
			waiting = append(waiting, kpov1.NodeFailure{Node: node, Reason: c.Reason,
				Message: truncate(c.Message+"; waiting for the successor's agent to report", 1024)})
		case c != nil && c.Reason == kpov1.NodeReasonCleanupFailed:
			waiting = append(waiting, kpov1.NodeFailure{Node: node, Reason: c.Reason, Message: truncate(c.Message, 1024)})
		default:
			reason := "NotCleanedUp"
			if c != nil {
				reason = c.Reason
			}
			waiting = append(waiting, kpov1.NodeFailure{Node: node, Reason: reason,
				Message: "the agent has not removed its rules yet"})
		}
	}
	return waiting
}

// setDeletionStatus writes the CleanedUp condition and the nodes waited for.
func (r *ProxyConfigurationReconciler) setDeletionStatus(ctx context.Context, pc *kpov1.ProxyConfiguration, cond metav1.Condition, waiting []kpov1.NodeFailure) error {
	st := *pc.Status.DeepCopy()
	st.FailingNodes = waiting[:min(len(waiting), kpov1.MaxFailingNodes)]
	if c := meta.FindStatusCondition(st.Conditions, cond.Type); c != nil && c.Status == cond.Status {
		cond.LastTransitionTime = c.LastTransitionTime
	} else {
		cond.LastTransitionTime = metav1.NewTime(r.Clock.Now())
	}
	cond.ObservedGeneration = pc.Generation
	meta.SetStatusCondition(&st.Conditions, cond)
	if equality.Semantic.DeepEqual(st, pc.Status) {
		return nil
	}
	pc.Status = st
	if err := r.Status().Update(ctx, pc); err != nil && !apierrors.IsConflict(err) && !apierrors.IsNotFound(err) {
		return fmt.Errorf("updating status: %w", err)
	}
	return nil
}

func nodeNames(fs []kpov1.NodeFailure) []string {
	var out []string
	for _, f := range fs {
		out = append(out, f.Node)
	}
	return out
}

// describe lists nodes with their reasons and messages, the first ten in full.
func describe(fs []kpov1.NodeFailure) string {
	var parts []string
	for i, f := range fs {
		if i == kpov1.MaxFailingNodes {
			parts = append(parts, fmt.Sprintf("and %d more", len(fs)-i))
			break
		}
		parts = append(parts, fmt.Sprintf("%s (%s: %s)", f.Node, f.Reason, f.Message))
	}
	return strings.Join(parts, "; ")
}
