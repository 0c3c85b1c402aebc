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
	// notReporting are held nodes whose report (or Lease) the operator has not
	// seen renewed in time, with why: not ready, whatever their report says.
	notReporting map[string]string
	// applyErr is the error of applying the rendered objects, if any.
	applyErr error
	now      metav1.Time
}

// aggregate is what the status is made of: node counts, the modes the nodes
// run, and the first failing nodes by name. The rollup keeps one per
// configuration up to date event by event (rollup.go); aggregateReports
// computes it from scratch.
type aggregate struct {
	desired, updated, ready, failingTotal int32
	// modes counts the nodes per active mode.
	modes map[kpov1.Mode]int32
	// failing are the first MaxFailingNodes failing nodes by name.
	failing   []kpov1.NodeFailure
	conflicts map[string]string
	applyErr  error
}

// computeStatus rolls node reports up into the configuration's status, from
// scratch (a reconciler without a rollup: tests).
func computeStatus(pc *kpov1.ProxyConfiguration, in statusInputs) kpov1.ProxyConfigurationStatus {
	return statusFrom(pc, pc.Generation, aggregateReports(pc, in), in.now)
}

// aggregateReports counts every held node's report.
func aggregateReports(pc *kpov1.ProxyConfiguration, in statusInputs) aggregate {
	agg := aggregate{desired: int32(len(in.heldNodes)), modes: map[kpov1.Mode]int32{},
		conflicts: in.conflicts, applyErr: in.applyErr}
	for _, node := range slices.Sorted(slices.Values(in.heldNodes)) {
		c := classify(node, in.reports[node], in.notReporting[node], pc.Name, pc.Generation, pc.Spec.Mode)
		agg.add(c)
		if c.failure != nil && len(agg.failing) < kpov1.MaxFailingNodes {
			agg.failing = append(agg.failing, *c.failure)
		}
	}
	return agg
}

// contribution is what one held node adds to its configuration's aggregate.
type contribution struct {
	mode           kpov1.Mode
	updated, ready bool
	failure        *kpov1.NodeFailure
}

func (c contribution) same(o contribution) bool {
	if c.mode != o.mode || c.updated != o.updated || c.ready != o.ready || (c.failure == nil) != (o.failure == nil) {
		return false
	}
	return c.failure == nil || *c.failure == *o.failure
}

// classify decides what a held node's report (nil if none) says about the
// configuration name at generation, asking for mode. notReporting, if not
// empty, says why the report is not to be trusted any more.
func classify(node string, r *kpov1.ProxyNodeReport, notReporting, name string, generation int64, mode kpov1.Mode) contribution {
	var c contribution
	if notReporting != "" {
		// Not ready, and named, whatever its last word was.
		c.failure = &kpov1.NodeFailure{Node: node, Reason: kpov1.NodeReasonNotReporting, Message: truncate(notReporting, 1024)}
		return c
	}
	if r == nil || r.Configuration != name {
		return c
	}
	c.mode = r.ActiveMode
	if r.ConfigurationGeneration != generation {
		return c
	}
	c.updated = true
	if failure, failing := nodeFailure(node, r, mode); failing {
		c.failure = &failure
		return c
	}
	c.ready = isReady(r)
	return c
}

// add counts a contribution in (or, with sign -1, out of) the aggregate; the
// failing names are the caller's.
func (agg *aggregate) add(c contribution) { agg.addSigned(c, 1) }

func (agg *aggregate) addSigned(c contribution, sign int32) {
	if c.mode != "" {
		agg.modes[c.mode] += sign
		if agg.modes[c.mode] == 0 {
			delete(agg.modes, c.mode)
		}
	}
	if c.updated {
		agg.updated += sign
	}
	if c.ready {
		agg.ready += sign
	}
	if c.failure != nil {
		agg.failingTotal += sign
	}
}

// statusFrom makes the status of generation out of an aggregate. It starts
// from the current status so that conditions keep their lastTransitionTime
// while their status does not change.
func statusFrom(pc *kpov1.ProxyConfiguration, generation int64, agg aggregate, now metav1.Time) kpov1.ProxyConfigurationStatus {
	st := *pc.Status.DeepCopy()
	st.ObservedGeneration = generation
	st.DesiredNodes, st.UpdatedNodes, st.ReadyNodes = agg.desired, agg.updated, agg.ready
	st.FailingNodes = slices.Clone(agg.failing)
	st.Mode = ""
	switch len(agg.modes) {
	case 0:
	case 1:
		for m := range agg.modes {
			st.Mode = string(m)
		}
	default:
		st.Mode = ModeMixed
	}

	setCondition(&st, now, generation, degradedCondition(st.FailingNodes, agg.failingTotal, agg.applyErr, agg.conflicts))

	// Nodes neither ready nor failing are still on their way to the current spec.
	pending := st.DesiredNodes - st.ReadyNodes - agg.failingTotal
	if pending > 0 {
		setCondition(&st, now, generation, metav1.Condition{
			Type: kpov1.ConditionProgressing, Status: metav1.ConditionTrue, Reason: kpov1.ReasonRollingOut,
			Message: fmt.Sprintf("%d of %d nodes run the current spec, %d are ready", st.UpdatedNodes, st.DesiredNodes, st.ReadyNodes),
		})
	} else {
		setCondition(&st, now, generation, metav1.Condition{
			Type: kpov1.ConditionProgressing, Status: metav1.ConditionFalse, Reason: kpov1.ReasonAsExpected,
			Message: "every node has applied the current spec",
		})
	}

	switch {
	case st.DesiredNodes == 0:
		setCondition(&st, now, generation, metav1.Condition{
			Type: kpov1.ConditionAvailable, Status: metav1.ConditionFalse, Reason: kpov1.ReasonNoNodes,
			Message: "no node is selected by spec.nodeSelector and spec.tolerations",
		})
	case st.ReadyNodes == st.DesiredNodes:
		setCondition(&st, now, generation, metav1.Condition{
			Type: kpov1.ConditionAvailable, Status: metav1.ConditionTrue, Reason: kpov1.ReasonAsExpected,
			Message: fmt.Sprintf("all %d nodes proxy in %s mode", st.DesiredNodes, pc.Spec.Mode),
		})
	default:
		setCondition(&st, now, generation, metav1.Condition{
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

func degradedCondition(failing []kpov1.NodeFailure, failingTotal int32, applyErr error, conflicts map[string]string) metav1.Condition {
	c := metav1.Condition{Type: kpov1.ConditionDegraded, Status: metav1.ConditionTrue}
	switch {
	case applyErr != nil:
		c.Reason = kpov1.ReasonApplyFailed
		// The agent image policy's refusal has a reason of its own.
		if refused, ok := errors.AsType[*imagepolicy.NotAllowedError](applyErr); ok {
			c.Reason = refused.Reason()
		}
		c.Message = truncate(applyErr.Error(), 1024)
	case len(conflicts) > 0:
		c.Reason = kpov1.ReasonNodeSelectorConflict
		var parts []string
		for _, node := range slices.Sorted(maps.Keys(conflicts)) {
			parts = append(parts, fmt.Sprintf("%s (held by %s)", node, conflicts[node]))
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
