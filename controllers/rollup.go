package controllers

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
)

const (
	// DefaultStatusInterval bounds how often the rollup writes one
	// configuration's status: a burst of node events is one write.
	DefaultStatusInterval = time.Second
	// defaultLeaseDuration is a Lease's when it names none (the kubelet's).
	defaultLeaseDuration = 40 * time.Second
	// NodeLeaseNamespace holds the kubelets' node heartbeats.
	NodeLeaseNamespace = "kube-node-lease"
)

// Rollup keeps every ProxyConfiguration's aggregate (node counts, modes,
// failing nodes) up to date one event at a time: a node's report or Lease
// changes what that node adds, nothing is recounted from all reports. It
// writes a configuration's status at most once per interval, and it counts a
// node whose report or Lease was not renewed in time as NotReporting (not
// ready, named), whatever its last report said. docs/scale.md has the figures.
type Rollup struct {
	client   client.Client
	clock    clock.PassiveClock
	interval time.Duration

	mu      sync.Mutex
	nodes   map[string]*nodeEntry
	configs map[string]*configEntry

	// writes holds configurations whose status is due; expiries holds nodes
	// to look at again when their report or Lease may have run out.
	writes   workqueue.TypedDelayingInterface[string]
	expiries workqueue.TypedDelayingInterface[string]

	// OnWritten, when set, is told of every status the rollup wrote, with
	// the conditions it replaced: the operator records its Events there.
	OnWritten func(pc *kpov1.ProxyConfiguration, old []metav1.Condition)
}

// nodeEntry is what the rollup knows of one node.
type nodeEntry struct {
	// report is the node's report as cached (read only), nil if none.
	report *kpov1.ProxyNodeReport
	// reportRV, reportSeen: the report's resourceVersion and when the
	// operator saw it change; reportStaleAfter: how long it may be trusted.
	reportRV         string
	reportSeen       time.Time
	reportStaleAfter time.Duration
	// leaseRV, leaseSeen, leaseDuration: the same for the node's Lease.
	leaseRV       string
	leaseSeen     time.Time
	leaseDuration time.Duration
	// holder is the configuration that holds the node ("" none), and counted
	// what the node adds to its aggregate.
	holder  string
	counted contribution
}

// configEntry is one configuration's aggregate and what it was computed for.
type configEntry struct {
	generation int64
	mode       kpov1.Mode
	deleting   bool
	agg        aggregate
	// failing are all failing held nodes; agg.failing is filled from it at
	// write time.
	failing   map[string]kpov1.NodeFailure
	lastWrite time.Time
}

// NewRollup returns a rollup that writes statuses with c (whose reads come
// from the manager's cache) at most once per interval (DefaultStatusInterval if 0).
func NewRollup(c client.Client, clk clock.PassiveClock, interval time.Duration) *Rollup {
	if interval <= 0 {
		interval = DefaultStatusInterval
	}
	if clk == nil {
		clk = clock.RealClock{}
	}
	return &Rollup{
		client: c, clock: clk, interval: interval,
		nodes: map[string]*nodeEntry{}, configs: map[string]*configEntry{},
		writes: workqueue.NewTypedDelayingQueueWithConfig(workqueue.TypedDelayingQueueConfig[string]{
			Name: "kpo_status_rollup"}),
		expiries: workqueue.NewTypedDelayingQueueWithConfig(workqueue.TypedDelayingQueueConfig[string]{
			Name: "kpo_report_expiry"}),
	}
}

func (ro *Rollup) node(name string) *nodeEntry {
	n := ro.nodes[name]
	if n == nil {
		n = &nodeEntry{}
		ro.nodes[name] = n
	}
	return n
}

// SetConfiguration records what a reconcile of pc found: the nodes it holds,
// the nodes older configurations hold, and the error of applying its objects.
// Only nodes that join or leave are recounted, unless the generation or mode
// changed (then every held node is).
func (ro *Rollup) SetConfiguration(pc *kpov1.ProxyConfiguration, held []string, conflicts map[string]string, applyErr error) {
	ro.mu.Lock()
	defer ro.mu.Unlock()
	now := ro.clock.Now()
	ce := ro.configs[pc.Name]
	if ce == nil {
		ce = &configEntry{failing: map[string]kpov1.NodeFailure{}, agg: aggregate{modes: map[kpov1.Mode]int32{}}}
		ro.configs[pc.Name] = ce
	}
	respec := ce.generation != pc.Generation || ce.mode != pc.Spec.Mode
	ce.generation, ce.mode, ce.deleting = pc.Generation, pc.Spec.Mode, false
	ce.agg.conflicts, ce.agg.applyErr = conflicts, applyErr
	ce.agg.desired = int32(len(held))
	isHeld := make(map[string]bool, len(held))
	for _, name := range held {
		isHeld[name] = true
	}
	for name, n := range ro.nodes {
		if n.holder == pc.Name && !isHeld[name] {
			ro.setHolder(name, n, "", now)
		}
	}
	for _, name := range held {
		n := ro.node(name)
		switch {
		case n.holder != pc.Name:
			ro.setHolder(name, n, pc.Name, now)
		case respec:
			ro.recount(name, n, now)
		}
	}
	ro.queueWrite(pc.Name, now)
}

// Deleting marks a configuration as being deleted: the finalizer writes its
// status from then on, and its nodes' reports wake the reconciler instead.
func (ro *Rollup) Deleting(name string) {
	ro.mu.Lock()
	defer ro.mu.Unlock()
	if ce := ro.configs[name]; ce != nil {
		ce.deleting = true
	}
}

// Forget drops a configuration that is gone.
func (ro *Rollup) Forget(name string) {
	ro.mu.Lock()
	defer ro.mu.Unlock()
	for _, n := range ro.nodes {
		if n.holder == name {
			n.holder, n.counted = "", contribution{}
		}
	}
	delete(ro.configs, name)
}

// setHolder moves a node from its holder's aggregate to another's (mu held).
func (ro *Rollup) setHolder(name string, n *nodeEntry, holder string, now time.Time) {
	ro.count(name, n, contribution{}, now)
	n.holder = holder
	ro.recount(name, n, now)
}

// recount classifies a node again and, if what it adds changed, updates its
// holder's aggregate and queues a status write (mu held).
func (ro *Rollup) recount(name string, n *nodeEntry, now time.Time) {
	ce := ro.configs[n.holder]
	if n.holder == "" || ce == nil {
		return
	}
	ro.count(name, n, classify(name, n.report, n.notReporting(now), n.holder, ce.generation, ce.mode), now)
}

// count replaces what a node adds to its holder's aggregate (mu held).
func (ro *Rollup) count(name string, n *nodeEntry, c contribution, now time.Time) {
	ce := ro.configs[n.holder]
	if n.holder == "" || ce == nil || c.same(n.counted) {
		return
	}
	ce.agg.addSigned(n.counted, -1)
	ce.agg.addSigned(c, 1)
	if c.failure != nil {
		ce.failing[name] = *c.failure
	} else {
		delete(ce.failing, name)
	}
	n.counted = c
	ro.queueWrite(n.holder, now)
}

// notReporting says why a node's report is not to be trusted any more, or "".
func (n *nodeEntry) notReporting(now time.Time) string {
	if !n.leaseSeen.IsZero() && now.Sub(n.leaseSeen) > n.leaseDuration {
		return fmt.Sprintf("the node's Lease was not renewed for more than %v (last seen %s): the node is down or cut off",
			n.leaseDuration, n.leaseSeen.UTC().Format(time.RFC3339))
	}
	if n.report != nil && n.reportStaleAfter > 0 && now.Sub(n.reportSeen) > n.reportStaleAfter {
		return fmt.Sprintf("the agent wrote no report for more than %v (last seen %s): it stopped reporting",
			n.reportStaleAfter, n.reportSeen.UTC().Format(time.RFC3339))
	}
	return ""
}

// nextExpiry is when the node's report or Lease runs out next, zero if never.
func (n *nodeEntry) nextExpiry(now time.Time) time.Time {
	var next time.Time
	for _, t := range []time.Time{leaseEnd(n), reportEnd(n)} {
		if !t.IsZero() && t.After(now) && (next.IsZero() || t.Before(next)) {
			next = t
		}
	}
	return next
}

func leaseEnd(n *nodeEntry) time.Time {
	if n.leaseSeen.IsZero() {
		return time.Time{}
	}
	return n.leaseSeen.Add(n.leaseDuration)
}

func reportEnd(n *nodeEntry) time.Time {
	if n.report == nil || n.reportStaleAfter <= 0 {
		return time.Time{}
	}
	return n.reportSeen.Add(n.reportStaleAfter)
}

// scheduleExpiry has the node looked at again just after its next expiry
// (mu held). A node already waiting keeps its earlier time: it is looked at
// then and scheduled again.
func (ro *Rollup) scheduleExpiry(name string, n *nodeEntry, now time.Time) {
	if next := n.nextExpiry(now); !next.IsZero() {
		ro.expiries.AddAfter(name, next.Sub(now)+10*time.Millisecond)
	}
}

// queueWrite has the configuration's status written now, or once the
// interval since its last write has passed (mu held).
func (ro *Rollup) queueWrite(name string, now time.Time) {
	ce := ro.configs[name]
	if ce == nil || ce.deleting {
		return
	}
	if wait := ce.lastWrite.Add(ro.interval).Sub(now); wait > 0 {
		ro.writes.AddAfter(name, wait)
		return
	}
	ro.writes.Add(name)
}

// Report records a node's ProxyNodeStatus (nil: deleted).
func (ro *Rollup) Report(name string, pns *kpov1.ProxyNodeStatus) {
	ro.mu.Lock()
	defer ro.mu.Unlock()
	now := ro.clock.Now()
	n := ro.node(name)
	if pns == nil {
		n.report, n.reportRV, n.reportSeen, n.reportStaleAfter = nil, "", time.Time{}, 0
	} else {
		n.report = &pns.Status
		if pns.ResourceVersion != n.reportRV {
			// A resync brings the same version: not a new word from the agent.
			n.reportRV, n.reportSeen = pns.ResourceVersion, now
		}
		n.reportStaleAfter = time.Duration(pns.Status.StaleAfterSeconds) * time.Second
	}
	ro.recount(name, n, now)
	ro.scheduleExpiry(name, n, now)
}

// Lease records a node's Lease (nil: deleted; the node is then judged by its
// report alone).
func (ro *Rollup) Lease(name string, lease *coordinationv1.Lease) {
	ro.mu.Lock()
	defer ro.mu.Unlock()
	now := ro.clock.Now()
	n := ro.node(name)
	if lease == nil {
		n.leaseRV, n.leaseSeen = "", time.Time{}
	} else {
		if lease.ResourceVersion != n.leaseRV {
			n.leaseRV, n.leaseSeen = lease.ResourceVersion, now
		}
		n.leaseDuration = defaultLeaseDuration
		if d := lease.Spec.LeaseDurationSeconds; d != nil && *d > 0 {
			n.leaseDuration = time.Duration(*d) * time.Second
		}
	}
	ro.recount(name, n, now)
	ro.scheduleExpiry(name, n, now)
}

// expire looks at a node whose report or Lease may have run out.
func (ro *Rollup) expire(name string) {
	ro.mu.Lock()
	defer ro.mu.Unlock()
	n := ro.nodes[name]
	if n == nil {
		return
	}
	now := ro.clock.Now()
	ro.recount(name, n, now)
	ro.scheduleExpiry(name, n, now)
}

// snapshot returns a configuration's aggregate with its first failing nodes
// by name, and the generation it describes; ok is false if there is none to
// write (unknown, or being deleted).
func (ro *Rollup) snapshot(name string) (agg aggregate, generation int64, ok bool) {
	ro.mu.Lock()
	defer ro.mu.Unlock()
	ce := ro.configs[name]
	if ce == nil || ce.deleting {
		return aggregate{}, 0, false
	}
	agg = ce.agg
	agg.modes = maps.Clone(ce.agg.modes)
	// Selecting the first few of F failing names costs O(F log F) per write
	// (at most one a second), not per event.
	names := slices.Sorted(maps.Keys(ce.failing))
	agg.failing = nil
	for _, node := range names[:min(len(names), kpov1.MaxFailingNodes)] {
		agg.failing = append(agg.failing, ce.failing[node])
	}
	return agg, ce.generation, true
}

// Start runs the status writer and the expiry worker until ctx ends.
func (ro *Rollup) Start(ctx context.Context) error {
	go func() {
		<-ctx.Done()
		ro.writes.ShutDown()
		ro.expiries.ShutDown()
	}()
	go func() {
		for {
			name, shutdown := ro.expiries.Get()
			if shutdown {
				return
			}
			ro.expire(name)
			ro.expiries.Done(name)
		}
	}()
	logger := log.FromContext(ctx).WithName("rollup")
	for {
		name, shutdown := ro.writes.Get()
		if shutdown {
			return nil
		}
		if err := ro.write(ctx, name); err != nil {
			logger.Error(err, "writing the status", "configuration", name)
			ro.writes.AddAfter(name, ro.interval)
		}
		ro.writes.Done(name)
	}
}

// write writes one configuration's status if it changed and is due.
func (ro *Rollup) write(ctx context.Context, name string) error {
	now := ro.clock.Now()
	ro.mu.Lock()
	ce := ro.configs[name]
	if ce != nil && now.Before(ce.lastWrite.Add(ro.interval)) {
		ro.writes.AddAfter(name, ce.lastWrite.Add(ro.interval).Sub(now))
		ro.mu.Unlock()
		return nil
	}
	ro.mu.Unlock()
	agg, generation, ok := ro.snapshot(name)
	if !ok {
		return nil
	}
	pc := &kpov1.ProxyConfiguration{}
	if err := ro.client.Get(ctx, types.NamespacedName{Name: name}, pc); err != nil {
		return client.IgnoreNotFound(err)
	}
	if pc.DeletionTimestamp != nil || pc.Generation != generation {
		// The reconcile of the new generation (or the finalizer) comes.
		return nil
	}
	status := statusFrom(pc, generation, agg, metav1.NewTime(now))
	if equality.Semantic.DeepEqual(status, pc.Status) {
		return nil
	}
	// An update, not a merge patch: zero counts must be written out, not
	// omitted as "unchanged". The resourceVersion makes it fail on a
	// concurrent change; the cache brings that change and we retry.
	old := pc.Status.Conditions
	pc.Status = status
	if err := ro.client.Status().Update(ctx, pc); err != nil {
		if apierrors.IsConflict(err) || apierrors.IsNotFound(err) {
			ro.writes.AddAfter(name, 50*time.Millisecond)
			return nil
		}
		return err
	}
	if ro.OnWritten != nil {
		ro.OnWritten(pc, old) // only once the status that says it is written
	}
	ro.mu.Lock()
	if ce := ro.configs[name]; ce != nil {
		ce.lastWrite = now
	}
	ro.mu.Unlock()
	return nil
}

// reportHandler feeds ProxyNodeStatus events to the rollup. A report of a
// configuration the rollup does not count (being deleted, or not reconciled
// yet) wakes that configuration's reconcile instead: its finalizer waits for
// the nodes' reports.
func (ro *Rollup) reportHandler() handler.TypedEventHandler[client.Object, reconcile.Request] {
	wake := func(q workqueue.TypedRateLimitingInterface[reconcile.Request], objs ...client.Object) {
		for _, o := range objs {
			pns, ok := o.(*kpov1.ProxyNodeStatus)
			if !ok || pns.Status.Configuration == "" {
				continue
			}
			ro.mu.Lock()
			ce := ro.configs[pns.Status.Configuration]
			counted := ce != nil && !ce.deleting
			ro.mu.Unlock()
			if !counted {
				q.Add(reconcile.Request{NamespacedName: types.NamespacedName{Name: pns.Status.Configuration}})
			}
		}
	}
	return handler.TypedFuncs[client.Object, reconcile.Request]{
		CreateFunc: func(_ context.Context, e event.CreateEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			if pns, ok := e.Object.(*kpov1.ProxyNodeStatus); ok {
				ro.Report(pns.Name, pns)
			}
			wake(q, e.Object)
		},
		UpdateFunc: func(_ context.Context, e event.UpdateEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			if pns, ok := e.ObjectNew.(*kpov1.ProxyNodeStatus); ok {
				ro.Report(pns.Name, pns)
			}
			wake(q, e.ObjectOld, e.ObjectNew)
		},
		DeleteFunc: func(_ context.Context, e event.DeleteEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			ro.Report(e.Object.GetName(), nil)
			wake(q, e.Object)
		},
	}
}

// leaseHandler feeds the node Leases' events to the rollup; they wake no
// reconcile.
func (ro *Rollup) leaseHandler() handler.TypedEventHandler[client.Object, reconcile.Request] {
	lease := func(o client.Object) {
		if l, ok := o.(*coordinationv1.Lease); ok && l.Namespace == NodeLeaseNamespace {
			ro.Lease(l.Name, l)
		}
	}
	return handler.TypedFuncs[client.Object, reconcile.Request]{
		CreateFunc: func(_ context.Context, e event.CreateEvent, _ workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			lease(e.Object)
		},
		UpdateFunc: func(_ context.Context, e event.UpdateEvent, _ workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			lease(e.ObjectNew)
		},
		DeleteFunc: func(_ context.Context, e event.DeleteEvent, _ workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			if e.Object.GetNamespace() == NodeLeaseNamespace {
				ro.Lease(e.Object.GetName(), nil)
			}
		},
	}
}
