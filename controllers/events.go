package controllers

import (
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
)

// Events on a ProxyConfiguration. It is cluster-scoped, so they land in
// namespace default (client-go's events recorder): the operator may create
// and patch events there and nothing else (config/rbac, docs/security.md).
// +kubebuilder:rbac:groups=events.k8s.io,namespace=default,resources=events,verbs=create;patch

// Event reasons besides the conditions' own (which name what started or failed).
const (
	EventRolloutFinished = "RolloutFinished"
	EventRecovered       = "Recovered"
	EventAvailable       = "Available"
	EventCleanedUp       = "CleanedUp"
)

// statusEvent is one Event to record.
type statusEvent struct {
	Type, Reason, Action, Note string
}

// transitionEvents are the Events a status change deserves, one per
// condition whose status or reason moved: a roll started (Progressing) or
// finished, the configuration degraded (failing nodes, a node selector
// conflict, an image or apply refused) or recovered, lost or regained
// availability. A condition's first appearance is an event only when it is
// news (a roll starts; a configuration is degraded from the start).
func transitionEvents(old, new []metav1.Condition) []statusEvent {
	var out []statusEvent
	for _, t := range []string{kpov1.ConditionProgressing, kpov1.ConditionDegraded, kpov1.ConditionAvailable} {
		n := meta.FindStatusCondition(new, t)
		if n == nil {
			continue
		}
		o := meta.FindStatusCondition(old, t)
		if o != nil && o.Status == n.Status && o.Reason == n.Reason {
			continue
		}
		on := n.Status == metav1.ConditionTrue
		was := o != nil && o.Status == metav1.ConditionTrue
		switch {
		case t == kpov1.ConditionProgressing && on:
			out = append(out, statusEvent{corev1.EventTypeNormal, n.Reason, "Rollout", n.Message})
		case t == kpov1.ConditionProgressing && was:
			out = append(out, statusEvent{corev1.EventTypeNormal, EventRolloutFinished, "Rollout", n.Message})
		case t == kpov1.ConditionDegraded && on:
			out = append(out, statusEvent{corev1.EventTypeWarning, n.Reason, "Reconcile", n.Message})
		case t == kpov1.ConditionDegraded && was:
			out = append(out, statusEvent{corev1.EventTypeNormal, EventRecovered, "Reconcile", n.Message})
		case t == kpov1.ConditionAvailable && !on && o != nil:
			out = append(out, statusEvent{corev1.EventTypeWarning, n.Reason, "Reconcile", n.Message})
		case t == kpov1.ConditionAvailable && on && o != nil:
			out = append(out, statusEvent{corev1.EventTypeNormal, EventAvailable, "Reconcile", n.Message})
		}
	}
	return out
}

// recordTransitions records the Events of a status change.
func (r *ProxyConfigurationReconciler) recordTransitions(pc *kpov1.ProxyConfiguration, old []metav1.Condition) {
	if r.Recorder == nil {
		return
	}
	for _, e := range transitionEvents(old, pc.Status.Conditions) {
		r.Recorder.Eventf(pc, nil, e.Type, e.Reason, e.Action, "%s", truncate(e.Note, 1024))
	}
}
