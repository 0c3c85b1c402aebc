package controllers

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
	"kpo.dev/kpo/controllers/imagepolicy"
)

// ModeMixed is status.mode while the nodes run different modes (during a switch).
const ModeMixed = "Mixed"

// statusInputs is everything the status of a ProxyConfiguration is computed from.
type statusInputs struct {
	// heldNodes are the nodes this configuration's agents should run on: selected,
	// and not held by an older configuration.
	heldNodes []string
	// conflicts maps each selected node that an older configuration holds to that
	// configuration's name.
	conflicts map[string]string
	// reports are the ProxyNodeStatus objects of held nodes, by node name.
	reports map[string]*kpov1.ProxyNodeReport
	// applyErr is the error of applying the rendered objects, if any.
	applyErr error
	now      metav1.Time
}

// computeStatus rolls node reports up into the configuration's status. It starts
// from the current status so that conditions keep their lastTransitionTime while
// their status does not change.
func computeStatus(pc *kpov1.ProxyConfiguration, in statusInputs) kpov1.ProxyConfigurationStatus {
	st := *pc.Status.DeepCopy()
	st.ObservedGeneration = pc.Generation
	st.DesiredNodes = int32(len(in.heldNodes))
	st.UpdatedNodes, st.ReadyNodes = 0, 0
	st.FailingNodes = nil

	modes := map[kpov1.Mode]bool{}
	failingTotal := int32(0)
	for _, node := range slices.Sorted(slices.Values(in.heldNodes)) {
		r := in.reports[node]
		if r == nil || r.Configuration != pc.Name {
			continue
		}
		if r.ActiveMode != "" {
			modes[r.ActiveMode] = true
		}
		if r.ConfigurationGeneration != pc.Generation {
			continue
		}
		st.UpdatedNodes++
		if failure, failing := nodeFailure(node, r, pc.Spec.Mode); failing {
			failingTotal++
			if len(st.FailingNodes) < kpov1.MaxFailingNodes {
				st.FailingNodes = append(st.FailingNodes, failure)
			}
			continue
		}
		if isReady(r) {
			st.ReadyNodes++
		}
	}
	st.Mode = ""
	switch len(modes) {
	case 0:
	case 1:
		for m := range modes {
			st.Mode = string(m)
		}
	default:
		st.Mode = ModeMixed
	}

	setCondition(&st, in.now, pc.Generation, degradedCondition(st.FailingNodes, failingTotal, in))

	// Nodes neither ready nor failing are still on their way to the current spec.
	pending := st.DesiredNodes - st.ReadyNodes - failingTotal
	if pending > 0 {
		setCondition(&st, in.now, pc.Generation, metav1.Condition{
			Type: kpov1.ConditionProgressing, Status: metav1.ConditionTrue, Reason: kpov1.ReasonRollingOut,
			Message: fmt.Sprintf("%d of %d nodes run the current spec, %d are ready", st.UpdatedNodes, st.DesiredNodes, st.ReadyNodes),
		})
	} else {
		setCondition(&st, in.now, pc.Generation, metav1.Condition{
			Type: kpov1.ConditionProgressing, Status: metav1.ConditionFalse, Reason: kpov1.ReasonAsExpected,
			Message: "every node has applied the current spec",
		})
	}

	switch {
	case st.DesiredNodes == 0:
		setCondition(&st, in.now, pc.Generation, metav1.Condition{
			Type: kpov1.ConditionAvailable, Status: metav1.ConditionFalse, Reason: kpov1.ReasonNoNodes,
			Message: "no node is selected by spec.nodeSelector and spec.tolerations",
		})
	case st.ReadyNodes == st.DesiredNodes:
		setCondition(&st, in.now, pc.Generation, metav1.Condition{
			Type: kpov1.ConditionAvailable, Status: metav1.ConditionTrue, Reason: kpov1.ReasonAsExpected,
			Message: fmt.Sprintf("all %d nodes proxy in %s mode", st.DesiredNodes, pc.Spec.Mode),
		})
	default:
		setCondition(&st, in.now, pc.Generation, metav1.Condition{
			Type: kpov1.ConditionAvailable, Status: metav1.ConditionFalse, Reason: kpov1.ReasonNodesNotReady,
			Message: fmt.Sprintf("%d of %d nodes are ready", st.ReadyNodes, st.DesiredNodes),
		})
	}
	return st
}

// isReady: the agent applied the spec, its last sync succeeded and its rules are fresh.
func isReady(r *kpov1.ProxyNodeReport) bool {
	return meta.IsStatusConditionTrue(r.Conditions, kpov1.NodeConditionSynced) &&
		!meta.IsStatusConditionFalse(r.Conditions, kpov1.NodeConditionHealthy)
}

// nodeFailure reports a node whose agent says it cannot do what the spec asks: its
// sync fails, or it keeps another mode because its kernel lacks the requested one.
func nodeFailure(node string, r *kpov1.ProxyNodeReport, want kpov1.Mode) (kpov1.NodeFailure, bool) {
	if c := meta.FindStatusCondition(r.Conditions, kpov1.NodeConditionSynced); c != nil && c.Status == metav1.ConditionFalse &&
		c.Reason != kpov1.NodeReasonNotSyncedYet {
		return kpov1.NodeFailure{Node: node, Reason: c.Reason, Message: truncate(c.Message, 1024)}, true
	}
	if r.ActiveMode != "" && r.ActiveMode != want {
		return kpov1.NodeFailure{
			Node: node, Reason: kpov1.NodeReasonModeUnavailable,
			Message: fmt.Sprintf("node runs %s mode, not %s", r.ActiveMode, want),
		}, true
	}
	return kpov1.NodeFailure{}, false
}

func degradedCondition(failing []kpov1.NodeFailure, failingTotal int32, in statusInputs) metav1.Condition {
	c := metav1.Condition{Type: kpov1.ConditionDegraded, Status: metav1.ConditionTrue}
	switch {
	case in.applyErr != nil:
		c.Reason = kpov1.ReasonApplyFailed
		// The agent image policy's refusal has a reason of its own.
		if refused, ok := errors.AsType[*imagepolicy.NotAllowedError](in.applyErr); ok {
			c.Reason = refused.Reason()
		}
		c.Message = truncate(in.applyErr.Error(), 1024)
	case len(in.conflicts) > 0:
		c.Reason = kpov1.ReasonNodeSelectorConflict
		var parts []string
		for _, node := range slices.Sorted(maps.Keys(in.conflicts)) {
			parts = append(parts, fmt.Sprintf("%s (held by %s)", node, in.conflicts[node]))
		}
		c.Message = truncate("an older ProxyConfiguration holds selected nodes, which this one leaves alone: "+
			strings.Join(parts, ", "), 1024)
	case len(failing) > 0:
		// One shared reason (say IPVSUnavailable) is more useful than a generic one.
		c.Reason = failing[0].Reason
		var names []string
		for _, f := range failing {
			names = append(names, f.Node)
			if f.Reason != c.Reason {
				c.Reason = kpov1.ReasonNodesFailing
			}
		}
		c.Message = truncate(fmt.Sprintf("%d node(s) failing, among them %s: %s", failingTotal, strings.Join(names, ", "),
			failing[0].Message), 1024)
	default:
		c.Status = metav1.ConditionFalse
		c.Reason = kpov1.ReasonAsExpected
		c.Message = "no node reports a failure"
	}
	return c
}

func setCondition(st *kpov1.ProxyConfigurationStatus, now metav1.Time, generation int64, c metav1.Condition) {
	c.ObservedGeneration = generation
	c.LastTransitionTime = now
	meta.SetStatusCondition(&st.Conditions, c)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-3] + "..."
}
