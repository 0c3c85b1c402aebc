// Package report writes one node's ProxyNodeStatus: the agent's state
// (conditions, mode, errors, rejected objects) when it changes, and
// everything else (counts, sync times) with a coarse heartbeat. It needs no
// kernel: the node agent drives it from its syncs, and the scale harness
// (test/scale) drives thousands of them from a goroutine pool.
//
// What a write costs is the cluster's, not the node's: at 5,000 nodes one
// status write per node every 10 s is 500 writes a second for no news. So a
// node writes when its state changes (within a second, up to a burst of
// changeBurst, then one per changeEvery: a flapping node is bounded) and
// otherwise once per heartbeat (5 minutes); LastReportTime says when, and
// StaleAfterSeconds how long the operator may trust the report without a new
// one (docs/scale.md has the arithmetic).
//
// Each write also says which model the node's last successful sync
// programmed (status.programmedModel, digests by explain.Hasher), so that
// kubectl kpo can tell whether a node holds the model it explains. The
// model changes with every endpoint change, so it is not a change of its
// own: it rides the writes that happen anyway, hashed only then, from the
// last synced snapshot, re-hashing only the service ports replaced since
// the previous write.
package report

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"
	"weak"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"golang.org/x/time/rate"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
	"kpo.dev/kpo/nodeagent/explain"
	"kpo.dev/kpo/nodeagent/model"
)

// FieldOwner is the agent's server-side-apply field manager.
const FieldOwner = client.FieldOwner("kpo-agent")

const (
	// Tick is how often Run looks whether a write is due: a state change is
	// written within about a Tick.
	Tick = time.Second
	// DefaultHeartbeat is how often a node whose state does not change
	// writes its report (with its current counts and sync times).
	DefaultHeartbeat = 5 * time.Minute
	// A node writes its first changeBurst state changes at once, then at most
	// one per changeEvery, so that a flapping node costs the API server at
	// most 0.1 writes a second.
	changeBurst = 5
	changeEvery = 10 * time.Second
	// A failed write is retried after retryMin, doubling up to retryMax
	// (jittered), so that an API server outage does not bring every node's
	// retry every second.
	retryMin = time.Second
	retryMax = time.Minute
)

// StaleAfter is how long a report stays trustworthy without a newer write,
// for a heartbeat: two heartbeats and their jitter. A report older than that
// (as the operator sees it) comes from an agent that stopped reporting.
func StaleAfter(heartbeat time.Duration) time.Duration {
	return 2*heartbeat + heartbeat/5
}

// Options configure a Reporter.
type Options struct {
	// Heartbeat is how often an unchanged report is written; DefaultHeartbeat if 0.
	Heartbeat time.Duration
	// Freshness, if set, is evaluated before each write check and sets the
	// Healthy condition: whether the node's rules are fresh, and why not.
	Freshness func(now time.Time) (fresh bool, why string)
	// Clock is the reporter's clock; the real one if nil.
	Clock clock.PassiveClock
	// AgentVersion is the agent binary's version, reported as is.
	AgentVersion string
}

// Reporter holds one node's report and writes it when due.
type Reporter struct {
	client    client.Client
	node      string
	cfg       *kpov1.AgentConfiguration
	heartbeat time.Duration
	freshness func(time.Time) (bool, string)
	clock     clock.PassiveClock

	// writeMu serialises writes; final stops them (another agent writes this
	// node's report from then on). metaFor is the Node UID whose owner
	// reference the object's metadata was applied with: after the first
	// write only the status subresource is written.
	writeMu sync.Mutex
	final   bool
	metaFor types.UID
	// hasher hashes the programmed model at write time; hashed and
	// hashedAs are the last snapshot hashed (weak: it keeps no old model
	// alive) and its hash. writeMu guards them.
	hasher   *explain.Hasher
	hashed   weak.Pointer[model.Snapshot]
	hashedAs explain.ModelHash

	mu      sync.Mutex
	mode    kpov1.Mode
	nodeUID types.UID
	report  kpov1.ProxyNodeReport
	// changed: a state change waits to be written.
	changed bool
	changes *rate.Limiter
	// nextHeartbeat is when the report is written even without a change;
	// retryAt (after a failed write) holds writes back until then.
	nextHeartbeat, retryAt time.Time
	retryDelay             time.Duration
	writes                 int
	// unavailable is set when the configured mode cannot run and the agent
	// keeps another mode (mode) synced instead.
	unavailable error
	// programmed is the model the last successful sync programmed (nil
	// before the first and after a cleanup), programmedAt when that sync
	// finished.
	programmed   *model.Snapshot
	programmedAt time.Time
}

// New returns the reporter of node, for an agent that applies cfg in mode. A
// nil client writes nothing (tests).
func New(c client.Client, node string, cfg *kpov1.AgentConfiguration, mode kpov1.Mode, opts Options) *Reporter {
	if opts.Heartbeat <= 0 {
		opts.Heartbeat = DefaultHeartbeat
	}
	if opts.Clock == nil {
		opts.Clock = clock.RealClock{}
	}
	r := &Reporter{
		client: c, node: node, cfg: cfg, mode: mode,
		heartbeat: opts.Heartbeat, freshness: opts.Freshness, clock: opts.Clock,
		changed: true,
		changes: rate.NewLimiter(rate.Every(changeEvery), changeBurst),
		hasher:  explain.NewHasher(),
	}
	r.report = kpov1.ProxyNodeReport{
		Configuration:           cfg.ConfigurationName,
		ConfigurationGeneration: cfg.ConfigurationGeneration,
		RequestedMode:           cfg.Mode,
		AgentVersion:            opts.AgentVersion,
		StaleAfterSeconds:       int32(StaleAfter(opts.Heartbeat) / time.Second),
	}
	r.setCondition(kpov1.NodeConditionSynced, metav1.ConditionFalse, kpov1.NodeReasonNotSyncedYet, "the agent has not completed a sync yet")
	return r
}

// SetConntrack records what applying spec.conntrack did at start.
func (r *Reporter) SetConntrack(c *kpov1.ConntrackSysctls) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.report.Conntrack = c
	r.changed = true
}

// SetNode records the Node's UID: the report is owned by the Node (and so
// deleted with it), and nothing is written before the UID is known.
func (r *Reporter) SetNode(uid types.UID) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.nodeUID != uid {
		r.nodeUID = uid
		r.changed = true
	}
}

// setCondition must be called with mu held (or before the reporter runs).
// Only a real change is a change: the Healthy condition is re-evaluated every
// tick, and an idle node must not rewrite its status for nothing.
func (r *Reporter) setCondition(typ string, status metav1.ConditionStatus, reason, msg string) {
	if len(msg) > 1000 {
		msg = msg[:997] + "..."
	}
	if meta.SetStatusCondition(&r.report.Conditions, metav1.Condition{
		Type: typ, Status: status, Reason: reason, Message: msg, ObservedGeneration: r.cfg.ConfigurationGeneration,
		LastTransitionTime: metav1.NewTime(r.clock.Now()),
	}) {
		r.changed = true
	}
}

// SetUnavailable records that the kernel cannot run the configured mode.
func (r *Reporter) SetUnavailable(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.report.LastError = truncate(err.Error(), 1024)
	r.setCondition(kpov1.NodeConditionSynced, metav1.ConditionFalse, r.unavailableReason(), err.Error())
}

// SyncFailed records a failed sync.
func (r *Reporter) SyncFailed(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.report.LastError = truncate(err.Error(), 1024)
	r.setCondition(kpov1.NodeConditionSynced, metav1.ConditionFalse, kpov1.NodeReasonSyncFailed, err.Error())
}

// Synced records a successful sync. Its time, duration and counts are not a
// change: they are written with the next write (a change or the heartbeat).
func (r *Reporter) Synced(at time.Time, took time.Duration, full bool, counts model.Counts, rules int) {
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
	if r.report.ActiveMode != r.mode {
		r.report.ActiveMode = r.mode
		r.changed = true
	}
	if r.unavailable != nil {
		// Synced, but not in the requested mode: the operator must see why.
		r.setCondition(kpov1.NodeConditionSynced, metav1.ConditionFalse, r.unavailableReason(),
			fmt.Sprintf("%s mode cannot run here (%v); serving with %s mode, whose rules are synced",
				r.cfg.Mode, r.unavailable, r.mode))
		return
	}
	if r.report.LastError != "" {
		r.report.LastError = ""
		r.changed = true
	}
	r.setCondition(kpov1.NodeConditionSynced, metav1.ConditionTrue, kpov1.NodeReasonSynced, "the kernel holds the rules of the last sync")
}

// Programmed records the model a successful sync that finished at at
// programmed into the kernel. It is not a change: the next write (a change
// or the heartbeat) reports it, hashed then. snap must not be modified
// afterwards (a model.Snapshot never is).
func (r *Reporter) Programmed(at time.Time, snap *model.Snapshot) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.programmed, r.programmedAt = snap, at
}

// SetRejected records the grouped rejections (one per object and reason):
// the first MaxRejectedObjects by name, and how many there are.
func (r *Reporter) SetRejected(grouped []model.Rejection) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var named []kpov1.RejectedObject
	for _, rej := range grouped[:min(len(grouped), kpov1.MaxRejectedObjects)] {
		named = append(named, kpov1.RejectedObject{Kind: rej.Kind, Namespace: rej.Namespace, Name: rej.Name,
			Reason: rej.Reason, Message: truncate(rej.Message, 512)})
	}
	r.report.RejectedObjects = named
	r.report.RejectedObjectCount = int32(len(grouped))
	r.changed = true
}

// FallBack records that the agent keeps mode synced because the configured
// mode cannot run.
func (r *Reporter) FallBack(mode kpov1.Mode, unavailable error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.mode, r.unavailable = mode, unavailable
}

// CleanedUp records that the configuration is being deleted and every kpo
// rule is gone from the node.
func (r *Reporter) CleanedUp(at time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.report.ActiveMode = ""
	t := metav1.NewTime(at)
	r.report.LastSyncTime = &t
	r.report.Services, r.report.Endpoints, r.report.Rules = 0, 0, 0
	r.report.LastError = ""
	r.report.ProgrammedModel, r.programmed = nil, nil
	r.changed = true
	r.setCondition(kpov1.NodeConditionSynced, metav1.ConditionFalse, kpov1.NodeReasonCleanedUp,
		"the ProxyConfiguration is being deleted; every kpo rule was removed from this node")
}

// CleanupFailed records that removing the rules for a deletion failed.
func (r *Reporter) CleanupFailed(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.report.LastError = truncate(err.Error(), 1024)
	r.setCondition(kpov1.NodeConditionSynced, metav1.ConditionFalse, kpov1.NodeReasonCleanupFailed,
		"the ProxyConfiguration is being deleted; "+err.Error()+"; retrying with backoff (kpo-agent --cleanup removes them by hand)")
}

// HandedOver records that successor's agent takes the node over.
func (r *Reporter) HandedOver(at time.Time, successor string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	t := metav1.NewTime(at)
	r.report.LastSyncTime = &t
	r.changed = true
	r.setCondition(kpov1.NodeConditionSynced, metav1.ConditionFalse, kpov1.NodeReasonHandedOver,
		fmt.Sprintf("the ProxyConfiguration is being deleted and %s takes this node over; "+
			"the rules stay until its agent replaces them", successor))
}

func (r *Reporter) unavailableReason() string {
	if r.cfg.Mode == kpov1.ModeIPVS {
		return kpov1.NodeReasonIPVSUnavailable
	}
	return kpov1.NodeReasonModeUnavailable
}

// Report returns a copy of the report as it stands.
func (r *Reporter) Report() kpov1.ProxyNodeReport {
	r.mu.Lock()
	defer r.mu.Unlock()
	return *r.report.DeepCopy()
}

// Writes is how many writes succeeded.
func (r *Reporter) Writes() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.writes
}

// Run writes the report when due, every Tick, until ctx ends.
func (r *Reporter) Run(ctx context.Context) {
	if r.client == nil {
		return
	}
	t := time.NewTicker(Tick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if _, err := r.WriteIfDue(ctx); err != nil {
			klog.FromContext(ctx).Error(err, "writing ProxyNodeStatus; will retry", "node", r.node)
		}
	}
}

// WriteIfDue writes the report if a change waits (and the change rate
// allows it) or the heartbeat is due; it says whether it wrote.
func (r *Reporter) WriteIfDue(ctx context.Context) (bool, error) {
	if r.client == nil {
		return false, nil
	}
	r.writeMu.Lock()
	defer r.writeMu.Unlock()
	if r.final {
		return false, nil
	}
	w, ok := r.takeIfDue()
	if !ok {
		return false, nil
	}
	r.addModel(&w)
	err := r.write(ctx, w.uid, w.report)
	r.written(err)
	return err == nil, err
}

// pendingWrite is what a write sends: the report, stamped with the report
// time, for the Node's UID, and the model to hash into it.
type pendingWrite struct {
	report       kpov1.ProxyNodeReport
	uid          types.UID
	programmed   *model.Snapshot
	programmedAt time.Time
}

// takeIfDue decides whether a write is due and, if so, returns what to write.
func (r *Reporter) takeIfDue() (pendingWrite, bool) {
	now := r.clock.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.freshness != nil {
		if ok, why := r.freshness(now); ok {
			r.setCondition(kpov1.NodeConditionHealthy, metav1.ConditionTrue, kpov1.NodeReasonFresh, "rules are fresh")
		} else {
			r.setCondition(kpov1.NodeConditionHealthy, metav1.ConditionFalse, kpov1.NodeReasonStale, why)
		}
	}
	if r.nodeUID == "" || now.Before(r.retryAt) {
		return pendingWrite{}, false
	}
	heartbeat := !r.nextHeartbeat.IsZero() && !now.Before(r.nextHeartbeat)
	// A change spends a token of the change rate; a heartbeat does not.
	if !heartbeat && (!r.changed || !r.changes.AllowN(now, 1)) {
		return pendingWrite{}, false
	}
	r.changed = false
	r.stampLocked(now)
	return r.pendingLocked(), true
}

func (r *Reporter) pendingLocked() pendingWrite {
	return pendingWrite{report: *r.report.DeepCopy(), uid: r.nodeUID, programmed: r.programmed, programmedAt: r.programmedAt}
}

// addModel hashes the programmed model into the report about to be
// written: outside mu (the first hash at 10k Services takes tens of
// milliseconds; the agent's syncs must not wait for it), under writeMu
// (the hasher's). The same snapshot as the last write's is not hashed again.
func (r *Reporter) addModel(w *pendingWrite) {
	if w.programmed == nil {
		w.report.ProgrammedModel = nil
		return
	}
	if r.hashed.Value() != w.programmed {
		r.hashedAs = r.hasher.Sum(w.programmed)
		r.hashed = weak.Make(w.programmed)
	}
	w.report.ProgrammedModel = &kpov1.ProgrammedModel{Services: r.hashedAs.Services, Node: r.hashedAs.Node,
		SyncTime: metav1.NewTime(w.programmedAt)}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.programmed == w.programmed {
		r.report.ProgrammedModel = w.report.ProgrammedModel.DeepCopy()
	}
}

// stampLocked sets the report time and schedules the next heartbeat, jittered
// by up to a tenth so that nodes started together spread out.
func (r *Reporter) stampLocked(now time.Time) {
	t := metav1.NewTime(now)
	r.report.LastReportTime = &t
	r.nextHeartbeat = now.Add(r.heartbeat + rand.N(r.heartbeat/10+1))
}

// written records a write's outcome: a failure keeps the change pending and
// holds writes back for a doubling delay.
func (r *Reporter) written(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err == nil {
		r.writes++
		r.retryAt, r.retryDelay = time.Time{}, 0
		return
	}
	r.changed = true
	r.retryDelay = min(max(2*r.retryDelay, retryMin), retryMax)
	r.retryAt = r.clock.Now().Add(r.retryDelay/2 + rand.N(r.retryDelay/2+1))
}

// ErrNoNode: the final report could not be written because the Node is unknown.
var ErrNoNode = errors.New("the Node object is not known yet")

// WriteFinal writes the report now and then never again: another agent
// writes this node's ProxyNodeStatus from here on.
func (r *Reporter) WriteFinal(ctx context.Context) error {
	if r.client == nil {
		return nil
	}
	r.writeMu.Lock()
	defer r.writeMu.Unlock()
	r.mu.Lock()
	r.stampLocked(r.clock.Now())
	w := r.pendingLocked()
	r.mu.Unlock()
	if w.uid == "" {
		return ErrNoNode
	}
	r.addModel(&w)
	if err := r.write(ctx, w.uid, w.report); err != nil {
		return err
	}
	r.final = true
	return nil
}

// write applies the object's metadata (owned by the Node, so that it is
// deleted with it) once per Node UID, and the status subresource each time,
// both server-side. writeMu is held.
func (r *Reporter) write(ctx context.Context, nodeUID types.UID, report kpov1.ProxyNodeReport) error {
	if r.metaFor != nodeUID {
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
		if err := r.client.Apply(ctx, client.ApplyConfigurationFromUnstructured(obj), FieldOwner, client.ForceOwnership); err != nil {
			return err
		}
		r.metaFor = nodeUID
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
	err = r.client.Status().Apply(ctx, client.ApplyConfigurationFromUnstructured(withStatus), FieldOwner, client.ForceOwnership)
	if apierrors.IsNotFound(err) {
		// Deleted meanwhile (its Node was replaced, or by hand): the next
		// write creates it again.
		r.metaFor = ""
	}
	return err
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n-3] + "..."
	}
	return s
}
