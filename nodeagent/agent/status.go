package agent

import (
	"context"
	"fmt"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
	"kpo.dev/kpo/nodeagent/health"
	"kpo.dev/kpo/nodeagent/model"
	"kpo.dev/kpo/nodeagent/tracker"
)

const (
	// statusFieldOwner is the agent's server-side-apply field manager.
	statusFieldOwner = client.FieldOwner("kpo-agent")
	// A state change (conditions, mode, error) is written within about a second;
	// counts and sync times at most every refreshInterval, so that a busy node
	// does not write its status on every sync.
	statusTick      = time.Second
	refreshInterval = 10 * time.Second
)

// statusReporter writes this node's ProxyNodeStatus.
type statusReporter struct {
	client client.Client
	node   string
	cfg    *kpov1.AgentConfiguration
	mode   kpov1.Mode

	// writeMu serialises writes; final stops them (deletion.go: another
	// agent writes this node's report from then on).
	writeMu sync.Mutex
	final   bool

	mu        sync.Mutex
	nodeUID   types.UID
	report    kpov1.ProxyNodeReport
	dirty     bool
	important bool
	lastWrite time.Time
	health    *health.State
	// unavailable is set when the configured mode cannot run and the agent
	// keeps another mode (mode) synced instead.
	unavailable error
}

func newStatusReporter(c client.Client, node string, cfg *kpov1.AgentConfiguration, mode kpov1.Mode) *statusReporter {
	r := &statusReporter{client: c, node: node, cfg: cfg, mode: mode, dirty: true, important: true}
	r.report = kpov1.ProxyNodeReport{
		Configuration:           cfg.ConfigurationName,
		ConfigurationGeneration: cfg.ConfigurationGeneration,
		RequestedMode:           cfg.Mode,
		AgentVersion:            Version,
	}
	r.setCondition(kpov1.NodeConditionSynced, metav1.ConditionFalse, kpov1.NodeReasonNotSyncedYet, "the agent has not completed a sync yet")
	return r
}

func (r *statusReporter) setNode(n *corev1.Node) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.nodeUID != n.UID {
		r.nodeUID = n.UID
		r.dirty, r.important = true, true
	}
}

// setCondition must be called with mu held (or before the reporter runs). Only
// a real change marks the report dirty: the Healthy condition is re-evaluated
// every tick, and an idle node must not rewrite its status for nothing.
func (r *statusReporter) setCondition(typ string, status metav1.ConditionStatus, reason, msg string) {
	if len(msg) > 1000 {
		msg = msg[:997] + "..."
	}
	if meta.SetStatusCondition(&r.report.Conditions, metav1.Condition{
		Type: typ, Status: status, Reason: reason, Message: msg, ObservedGeneration: r.cfg.ConfigurationGeneration,
	}) {
		r.important, r.dirty = true, true
	}
}

func (r *statusReporter) setUnavailable(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	reason := r.unavailableReason()
	r.report.LastError = truncate(err.Error())
	r.dirty = true
	r.setCondition(kpov1.NodeConditionSynced, metav1.ConditionFalse, reason, err.Error())
}

func (r *statusReporter) syncFailed(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.report.LastError = truncate(err.Error())
	r.dirty = true
	r.setCondition(kpov1.NodeConditionSynced, metav1.ConditionFalse, kpov1.NodeReasonSyncFailed, err.Error())
}

func (r *statusReporter) synced(at time.Time, took time.Duration, full bool, counts model.Counts, rules int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	t := metav1.NewTime(at)
	r.report.LastSyncTime = &t
	if full {
		r.report.LastFullSyncTime = &t
	}
	r.report.LastSyncDuration = took.Round(10 * time.Microsecond).String()
	r.report.Services = int32(counts.ServicePorts)
	r.report.Endpoints = int32(counts.Endpoints)
	r.report.Rules = int32(rules)
	r.dirty = true // sync time and counts: written at most every refreshInterval
	if r.report.ActiveMode != r.mode {
		r.report.ActiveMode = r.mode
		r.important = true
	}
	if r.unavailable != nil {
		// Synced, but not in the requested mode: the operator must see why.
		r.setCondition(kpov1.NodeConditionSynced, metav1.ConditionFalse, r.unavailableReason(),
			fmt.Sprintf("%s mode cannot run here (%v); serving with %s mode, whose rules are synced",
				r.cfg.Mode, r.unavailable, r.mode))
		return
	}
	r.report.LastError = ""
	r.setCondition(kpov1.NodeConditionSynced, metav1.ConditionTrue, kpov1.NodeReasonSynced, "the kernel holds the rules of the last sync")
}

// setRejected records the grouped rejections (one per object and reason): the
// first MaxRejectedObjects by name, and how many there are.
func (r *statusReporter) setRejected(grouped []model.Rejection) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var named []kpov1.RejectedObject
	for _, rej := range grouped[:min(len(grouped), kpov1.MaxRejectedObjects)] {
		named = append(named, kpov1.RejectedObject{Kind: rej.Kind, Namespace: rej.Namespace, Name: rej.Name,
			Reason: rej.Reason, Message: truncateTo(rej.Message, 512)})
	}
	r.report.RejectedObjects = named
	r.report.RejectedObjectCount = int32(len(grouped))
	r.dirty, r.important = true, true
}

// fallBack records that the agent keeps mode synced because the configured mode
// cannot run.
func (r *statusReporter) fallBack(mode kpov1.Mode, unavailable error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.mode, r.unavailable = mode, unavailable
}

func (r *statusReporter) unavailableReason() string {
	if r.cfg.Mode == kpov1.ModeIPVS {
		return kpov1.NodeReasonIPVSUnavailable
	}
	return kpov1.NodeReasonModeUnavailable
}

func truncate(s string) string { return truncateTo(s, 1024) }

func truncateTo(s string, n int) string {
	if len(s) > n {
		return s[:n-3] + "..."
	}
	return s
}

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
	a.status.setRejected(grouped)
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

// run writes the status when due, until ctx ends.
func (r *statusReporter) run(ctx context.Context) {
	if r.client == nil {
		return
	}
	t := time.NewTicker(statusTick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		r.writeIfDue(ctx)
	}
}

func (r *statusReporter) writeIfDue(ctx context.Context) {
	r.writeMu.Lock()
	defer r.writeMu.Unlock()
	if r.final {
		return
	}
	r.mu.Lock()
	r.refreshHealthLocked()
	due := r.dirty && r.nodeUID != "" && (r.important || time.Since(r.lastWrite) >= refreshInterval)
	if !due {
		r.mu.Unlock()
		return
	}
	report := *r.report.DeepCopy()
	uid := r.nodeUID
	r.dirty, r.important = false, false
	r.lastWrite = time.Now()
	r.mu.Unlock()

	if err := r.write(ctx, uid, report); err != nil {
		klog.FromContext(ctx).Error(err, "writing ProxyNodeStatus")
		r.mu.Lock()
		r.dirty, r.important = true, true
		r.mu.Unlock()
	}
}

// refreshHealthLocked re-evaluates the Healthy condition (mu held).
func (r *statusReporter) refreshHealthLocked() {
	if r.health == nil {
		return
	}
	if ok, why := r.health.Fresh(); ok {
		r.setCondition(kpov1.NodeConditionHealthy, metav1.ConditionTrue, kpov1.NodeReasonFresh, "rules are fresh")
	} else {
		r.setCondition(kpov1.NodeConditionHealthy, metav1.ConditionFalse, kpov1.NodeReasonStale, why)
	}
}

// write applies the object (owned by the Node, so that it is deleted with it)
// and then its status subresource, both server-side.
func (r *statusReporter) write(ctx context.Context, nodeUID types.UID, report kpov1.ProxyNodeReport) error {
	obj := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": kpov1.GroupVersion.String(),
		"kind":       "ProxyNodeStatus",
		"metadata": map[string]any{
			"name":   r.node,
			"labels": map[string]any{"proxy.kpo.dev/configuration": r.cfg.ConfigurationName},
			"ownerReferences": []any{map[string]any{
				"apiVersion": "v1", "kind": "Node", "name": r.node, "uid": string(nodeUID),
			}},
		},
	}}
	if err := r.client.Apply(ctx, client.ApplyConfigurationFromUnstructured(obj), statusFieldOwner, client.ForceOwnership); err != nil {
		return err
	}
	status, err := runtime.DefaultUnstructuredConverter.ToUnstructured(&report)
	if err != nil {
		return err
	}
	withStatus := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": kpov1.GroupVersion.String(),
		"kind":       "ProxyNodeStatus",
		"metadata":   map[string]any{"name": r.node},
		"status":     status,
	}}
	return r.client.Status().Apply(ctx, client.ApplyConfigurationFromUnstructured(withStatus), statusFieldOwner, client.ForceOwnership)
}
