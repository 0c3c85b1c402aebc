package agent

import (
	"fmt"

	"k8s.io/klog/v2"

	"kpo.dev/kpo/nodeagent/model"
	"kpo.dev/kpo/nodeagent/tracker"
)

// The node's ProxyNodeStatus is written by package report (a.status); this
// file feeds it the agent's rejections.

// reportRejections logs each rejection once, when it appears and when it
// goes (objects change, syncs do not), and updates the metric and the status.
func (a *Agent) reportRejections(logger klog.Logger, change tracker.Change) {
	if len(change.Rejected) == 0 && len(change.Accepted) == 0 {
		return
	}
	for _, r := range change.Rejected {
		logger.Error(nil, "not programming (part of) an object", "kind", r.Kind, "object", klog.KRef(r.Namespace, r.Name),
			"reason", r.Reason, "detail", r.Message)
	}
	for _, r := range change.Accepted {
		logger.Info("no longer rejecting (part of) an object", "kind", r.Kind, "object", klog.KRef(r.Namespace, r.Name),
			"reason", r.Reason, "detail", r.Message)
	}
	grouped := groupRejections(a.tracker.Rejections())
	a.metrics.setRejected(grouped)
	a.status.SetRejected(grouped)
}

// groupRejections keeps one rejection per object and reason (the first of
// the sorted input), noting how many more there are in its message.
func groupRejections(sorted []model.Rejection) []model.Rejection {
	var out []model.Rejection
	more := 0
	flush := func() {
		if more > 0 {
			out[len(out)-1].Message += fmt.Sprintf(" (and %d more)", more)
		}
		more = 0
	}
	for _, r := range sorted {
		if n := len(out); n > 0 {
			last := out[n-1]
			if last.Kind == r.Kind && last.Namespace == r.Namespace && last.Name == r.Name && last.Reason == r.Reason {
				more++
				continue
			}
		}
		flush()
		out = append(out, r)
	}
	flush()
	return out
}
