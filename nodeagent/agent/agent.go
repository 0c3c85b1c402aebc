// Package agent is the node agent: it watches Services, EndpointSlices and its
// own Node, keeps the node-local model up to date, and syncs it into the kernel
// through the backend of the configured mode, with bounded frequency. It serves
// health and metrics and reports what it runs in its ProxyNodeStatus.
package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime/debug"
	"runtime/pprof"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
	"kpo.dev/kpo/nodeagent/backend"
	"kpo.dev/kpo/nodeagent/conntrack"
	"kpo.dev/kpo/nodeagent/health"
	"kpo.dev/kpo/nodeagent/migrate"
	"kpo.dev/kpo/nodeagent/model"
	"kpo.dev/kpo/nodeagent/nodeinfo"
	"kpo.dev/kpo/nodeagent/report"
	"kpo.dev/kpo/nodeagent/runner"
	"kpo.dev/kpo/nodeagent/tracker"
	"kpo.dev/kpo/version"
)

// Version is the agent's version, reported in its ProxyNodeStatus
// (agentVersion) and its User-Agent: the build's stamp (package version).
var Version = version.Get()

// Options configure an Agent.
type Options struct {
	Config   *kpov1.AgentConfiguration
	NodeName string
	// Kube reads Services, EndpointSlices and Nodes; Client writes ProxyNodeStatus.
	Kube   kubernetes.Interface
	Client client.Client
	// Backends make a backend per mode. The configured mode's is used; the others
	// only clean up their leftovers once the configured mode has synced.
	Backends map[kpov1.Mode]func() (backend.Backend, error)
	// ConntrackCleaner removes stale UDP flows; nil disables it.
	ConntrackCleaner ConntrackCleaner
	// ConntrackSysctls is what applying spec.conntrack at start did, for the
	// ProxyNodeStatus (package sysctl); nil reports nothing.
	ConntrackSysctls *kpov1.ConntrackSysctls
	// HealthzBindAddress and MetricsBindAddress override the ports of the config
	// (tests use 127.0.0.1:0). Empty means the config's ports.
	HealthzBindAddress string
	MetricsBindAddress string
	// HostLock is this node's agent lock, held (AcquireHostLock) before New;
	// the agent releases it when it hands the node over to another
	// configuration's agent. nil: no lock (tests with fake backends).
	HostLock *HostLock
	// Leftovers lists kpo's objects in the kernel, to name what a failed
	// cleanup left; nil names nothing.
	Leftovers func(context.Context) ([]string, error)
	// NothingToRemove says, cheaply, that the kernel holds nothing of a
	// mode, whose cleanup after the first sync is then skipped
	// (NothingToRemove, othermodes.go); nil: every other mode's cleanup runs.
	NothingToRemove func(kpov1.Mode) bool
}

// ConntrackCleaner reconciles the UDP conntrack entries with the services
// (kube-proxy's CleanStaleEntries): UDP has no connection to break, so a
// flow's entry keeps its datagrams on an endpoint that is gone, or on the
// refusal cached while its service had none, until it times out.
type ConntrackCleaner interface {
	// Reconcile deletes the family's UDP entries that Wanted calls stale and
	// returns how many went.
	Reconcile(f model.Family, w conntrack.Wanted) (int, error)
}

// Agent is one node's service proxy.
type Agent struct {
	opts    Options
	backend backend.Backend
	tracker *tracker.Tracker
	runner  *runner.Runner
	health  *health.State
	metrics *metrics
	status  *report.Reporter
	hc      *health.CheckServers

	minSync, syncPeriod time.Duration
	needFull            bool
	// lastFull is when the last successful full sync ended: a sync is full
	// once that is syncPeriod ago, also while changes keep every run a
	// Change. From the end, not the start: full syncs slower than
	// syncPeriod (10k Services under the IPVS VM's emulation: 60 s) would
	// otherwise make every sync full, and changes wait a full sync each.
	lastFull time.Time
	// leftoversRemoved is set once the other modes' rules are gone.
	leftoversRemoved bool
	// deleting is set when the ProxyConfiguration is being deleted; cleanedUp once
	// the rules are gone (the agent then stops syncing).
	deleting  atomic.Bool
	cleanedUp bool
	// handedOver is set once another configuration's agent takes the node
	// over (deletion.go); stopServing stops the health and metrics servers.
	handedOver  bool
	stopServing context.CancelFunc
	last        *model.Snapshot
	// serviceCIDRs are the cluster's service ranges.
	serviceCIDRs serviceCIDRs
	nodeMu       sync.Mutex
	node         *corev1.Node
}

// New validates options and builds an agent.
func New(opts Options) (*Agent, error) {
	cfg := opts.Config
	if cfg == nil || opts.NodeName == "" || opts.Kube == nil {
		return nil, errors.New("agent: config, node name and a Kubernetes client are required")
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("agent: invalid configuration: %w", err)
	}
	minSync, err := cfg.MinSyncPeriodDuration()
	if err != nil {
		return nil, err
	}
	syncPeriod, err := cfg.SyncPeriodDuration()
	if err != nil {
		return nil, err
	}
	mk, ok := opts.Backends[cfg.Mode]
	if !ok {
		return nil, fmt.Errorf("agent: mode %q is not built into this agent", cfg.Mode)
	}
	be, err := mk()
	if err != nil {
		return nil, fmt.Errorf("agent: %s backend: %w", cfg.Mode, err)
	}
	a := &Agent{
		opts: opts, backend: be, minSync: minSync, syncPeriod: syncPeriod, needFull: true,
		health:  health.New(syncPeriod, clock.RealClock{}),
		metrics: newMetrics(),
	}
	a.hc = health.NewCheckServers(func() bool { ok, _ := a.health.Fresh(); return ok })
	a.serviceCIDRs.byName = map[string][]string{}
	a.tracker = tracker.New(model.NodeContext{Name: opts.NodeName}, func() {
		a.health.Queued()
		a.metrics.queued(time.Now(), a.tracker.Stats())
		a.runner.Trigger()
	})
	a.runner = runner.New(a.sync, minSync, syncPeriod, max(syncPeriod, 30*time.Second), nil)
	a.status = report.New(opts.Client, opts.NodeName, cfg, be.Mode(), report.Options{
		// health keeps its own clock (the real one here, as the reporter's).
		Freshness:    func(time.Time) (bool, string) { return a.health.Fresh() },
		AgentVersion: Version})
	if opts.ConntrackSysctls != nil {
		a.status.SetConntrack(opts.ConntrackSysctls)
	}
	a.metrics.setInfo(Version, cfg.ConfigurationName, string(cfg.Mode), string(be.Mode()))
	return a, nil
}

// Run runs the agent until ctx ends. Rules stay in the kernel when it returns:
// a restarting agent must not interrupt traffic.
func (a *Agent) Run(ctx context.Context) error {
	logger := klog.FromContext(ctx)
	serveCtx, stopServing := context.WithCancel(ctx)
	defer stopServing()
	a.stopServing = stopServing
	if err := a.serve(serveCtx); err != nil {
		return err
	}
	// The informers list first: everything else before the first sync (the
	// kernel check, the configuration's deletion) runs while the API server
	// serves the lists, instead of before them (docs/nftables-backend.md,
	// "The cold path").
	synced, err := a.startInformers(ctx)
	if err != nil {
		return err
	}
	if err := a.backend.Check(ctx); err != nil {
		a.status.SetUnavailable(err)
		logger.Error(err, "the kernel cannot run the configured mode", "mode", a.backend.Mode())
		a.fallBack(ctx, err)
	}
	a.checkDeletion(ctx)
	// The first sync waits until our handlers have seen the initial lists: a sync
	// from a partial view would delete the rules of every Service not seen yet,
	// and a restarting agent would cut traffic. (The informers' own HasSynced is
	// not enough: it says the store is filled, while the handlers may still be
	// receiving the initial events.) WaitFor is woken by the registrations
	// themselves; cache.WaitForCacheSync polls every 100 ms, which added up
	// to that much to every cold start.
	if !cache.WaitFor(ctx, "", synced...) {
		return fmt.Errorf("informer caches did not sync: %w", ctx.Err())
	}
	logger.Info("caches synced; syncing rules", "mode", a.backend.Mode(), "minSyncPeriod", a.minSync, "syncPeriod", a.syncPeriod)

	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); a.status.Run(ctx) }()
	wg.Add(1)
	go func() { defer wg.Done(); a.watchConfiguration(ctx) }()
	a.runner.Loop(ctx)
	a.hc.CloseAll()
	wg.Wait()
	return nil
}

// startInformers starts the informers of Services, EndpointSlices, this
// node and (where the API server serves them) ServiceCIDRs, with the
// tracker's handlers; the checkers are done once each handler has seen its
// initial list.
func (a *Agent) startInformers(ctx context.Context) ([]cache.DoneChecker, error) {
	noProxyName, _ := labels.NewRequirement(model.LabelServiceProxyName, selection.DoesNotExist, nil)
	noHeadless, _ := labels.NewRequirement(model.LabelHeadless, selection.DoesNotExist, nil)
	selector := labels.NewSelector().Add(*noProxyName, *noHeadless).String()
	resync := time.Duration(0)
	svcFactory := informers.NewSharedInformerFactoryWithOptions(a.opts.Kube, resync,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = selector }),
		informers.WithTransform(slimObject))
	nodeFactory := informers.NewSharedInformerFactoryWithOptions(a.opts.Kube, resync,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("metadata.name", a.opts.NodeName).String()
		}),
		informers.WithTransform(dropManagedFields))

	svcReg, err := svcFactory.Core().V1().Services().Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { a.tracker.SetService(o.(*corev1.Service)) },
		UpdateFunc: func(_, o any) { a.tracker.SetService(o.(*corev1.Service)) },
		DeleteFunc: func(o any) {
			if svc, ok := unwrap[*corev1.Service](o); ok {
				a.tracker.DeleteService(svc.Namespace, svc.Name)
			}
		},
	})
	if err != nil {
		return nil, err
	}
	sliceReg, err := svcFactory.Discovery().V1().EndpointSlices().Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { a.tracker.SetEndpointSlice(o.(*discoveryv1.EndpointSlice)) },
		UpdateFunc: func(_, o any) { a.tracker.SetEndpointSlice(o.(*discoveryv1.EndpointSlice)) },
		DeleteFunc: func(o any) {
			if s, ok := unwrap[*discoveryv1.EndpointSlice](o); ok {
				a.tracker.DeleteEndpointSlice(s)
			}
		},
	})
	if err != nil {
		return nil, err
	}
	nodeReg, err := nodeFactory.Core().V1().Nodes().Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { a.setNode(o.(*corev1.Node)) },
		UpdateFunc: func(_, o any) { a.setNode(o.(*corev1.Node)) },
	})
	if err != nil {
		return nil, err
	}
	svcFactory.Start(ctx.Done())
	nodeFactory.Start(ctx.Done())
	synced := []cache.DoneChecker{svcReg.HasSyncedChecker(), sliceReg.HasSyncedChecker(), nodeReg.HasSyncedChecker()}
	// Asked while the lists above are served; Start again starts only the
	// informer added since.
	if servesServiceCIDRs(a.opts.Kube.Discovery()) {
		reg, err := svcFactory.Networking().V1().ServiceCIDRs().Informer().AddEventHandler(a.serviceCIDRs.handler(a.runner.Trigger))
		if err != nil {
			return nil, err
		}
		svcFactory.Start(ctx.Done())
		synced = append(synced, reg.HasSyncedChecker())
	}
	return synced, nil
}

func (a *Agent) setNode(n *corev1.Node) {
	a.nodeMu.Lock()
	a.node = n
	a.nodeMu.Unlock()
	a.status.SetNode(n.UID)
	a.health.SetNodeDeleting(n.DeletionTimestamp != nil || hasTaint(n, "ToBeDeletedByClusterAutoscaler"))
	a.tracker.SetNode(model.NodeContext{Name: n.Name, Zone: n.Labels[corev1.LabelTopologyZone]})
}

// sync is the runner's function: one snapshot, one backend sync.
func (a *Agent) sync(ctx context.Context, reason runner.Reason) error {
	logger := klog.FromContext(ctx)
	if a.deleting.Load() {
		return a.syncDeletion(ctx)
	}
	// A full sync rewrites the kernel from the model; the model itself is always
	// current (the tracker folds every event in), so it is not rebuilt.
	now := time.Now()
	full := a.needFull || reason != runner.Change || a.fullSyncDue(now)
	snap, change := a.tracker.Snapshot()
	snap.Node = a.nodeInfo()
	a.reportRejections(logger, change)
	a.metrics.setChanges(a.tracker.Stats())
	// The node's settings (pod CIDRs, NodePort addresses) shape every
	// service's rules: a change of them is a full sync.
	full = full || a.last == nil || !a.last.Node.Equal(snap.Node)
	var changes *backend.Changes // nil: a full sync
	if !full {
		changes = backend.ChangesOf(change.Changed, change.Removed)
	}

	start := time.Now()
	res, err := a.backend.Sync(ctx, snap, changes)
	elapsed := time.Since(start)
	if err != nil {
		a.needFull = true
		a.health.Queued() // the kernel does not hold what it should
		a.metrics.syncFailures.Inc()
		if errors.Is(err, backend.ErrUnavailable) {
			// Not a bad rule set: this kernel cannot run the mode at all.
			a.status.SetUnavailable(err)
		} else {
			a.status.SyncFailed(err)
		}
		logger.Error(err, "sync failed; the previous rules stay in place", "full", full, "reason", reason.String())
		return err
	}
	a.needFull = false
	if res.Full {
		a.lastFull = start.Add(elapsed)
	}
	a.last = snap
	a.metrics.observeSync(res.Full, elapsed, res.Rules, change.TriggerTimes)
	a.health.Synced()
	counts := snap.Count()
	done := time.Now()
	// The kernel holds snap now: the next report names it (hashed only
	// when that report is written).
	a.status.Programmed(done, snap)
	a.status.Synced(done, elapsed, res.Full, counts, res.Rules)
	a.hc.Update(snap)
	a.clearStaleUDP(ctx, snap)
	a.resyncWhileDraining(res)
	if !a.leftoversRemoved {
		a.leftoversRemoved = a.removeOtherModes(ctx)
		if a.opts.Config.MigrateFromKubeProxy {
			// Only now that kpo's rules are in place: make-before-break.
			if err := migrate.RemoveKubeProxyLeftovers(ctx); err != nil {
				logger.Error(err, "removing kube-proxy's leftovers; will retry after the next sync")
				a.leftoversRemoved = false
			} else {
				logger.Info("removed kube-proxy's leftovers (migrateFromKubeProxy)")
			}
		}
	}
	if res.Full {
		// A full sync builds the whole rule set in memory (at 10k Services, tens
		// of MiB of transaction text) and drops it at once. Return it to the OS
		// now rather than at the scavenger's pace: full syncs are rare (start,
		// syncPeriod, after failures), and node memory is the cluster's.
		debug.FreeOSMemory()
		stopCPUProfile()
		writeHeapProfile(logger)
	}
	logger.V(2).Info("synced", "full", res.Full, "reason", reason.String(), "servicePorts", counts.ServicePorts,
		"written", res.ServicePortsWritten, "rules", res.Rules, "duration", elapsed)
	return nil
}

// fullSyncDue says whether the last full sync is syncPeriod old. The runner's
// periodic run is full, but under continuous churn every run is a Change and
// the periodic one never comes: this bounds how long rules someone else
// changed (or a missed partial update) can last, as kube-proxy bounds it with
// FullSyncPeriod (pkg/proxy/nftables/proxier.go, doFullSync).
func (a *Agent) fullSyncDue(now time.Time) bool {
	return now.Sub(a.lastFull) >= a.syncPeriod
}

// fallBack keeps the node serving when the kernel cannot run the configured
// mode: if the node's last report says it ran another mode, the agent keeps
// that mode's rules synced (and says so in its status) instead of leaving them
// to go stale. A node that ran nothing before stays without rules.
func (a *Agent) fallBack(ctx context.Context, unavailable error) {
	logger := klog.FromContext(ctx)
	if a.opts.Client == nil {
		return
	}
	pns := &kpov1.ProxyNodeStatus{}
	if err := a.opts.Client.Get(ctx, client.ObjectKey{Name: a.opts.NodeName}, pns); err != nil {
		return
	}
	previous := pns.Status.ActiveMode
	mk, ok := a.opts.Backends[previous]
	if previous == "" || previous == a.backend.Mode() || !ok {
		return
	}
	b, err := mk()
	if err == nil {
		err = b.Check(ctx)
	}
	if err != nil {
		logger.Error(err, "cannot fall back to the previous mode either", "mode", previous)
		return
	}
	logger.Info("keeping the previous mode's rules synced until the configured mode can run",
		"configured", a.backend.Mode(), "active", previous)
	a.status.FallBack(previous, unavailable)
	a.metrics.setInfo(Version, a.opts.Config.ConfigurationName, string(a.opts.Config.Mode), string(previous))
	a.backend = b
}

// drainInterval is how soon the agent syncs again while a backend drains
// removed endpoints (IPVS graceful termination progresses only on syncs).
const drainInterval = time.Second

// resyncWhileDraining schedules another sync while the backend has removed
// endpoints still draining, so that they go once their connections end (or at
// the backend's bound) even when nothing else changes.
func (a *Agent) resyncWhileDraining(res backend.SyncResult) {
	if res.Draining > 0 {
		time.AfterFunc(drainInterval, a.runner.Trigger)
	}
}

// removeOtherModes removes the rules of every other mode, once this mode's rules
// are in place: make-before-break, so that a mode switch never leaves a moment
// without rules. (Both sets briefly coexist; each translates the same way, and
// whichever hook sees a new connection first handles it.) Until this mode has
// synced once, for instance when the kernel cannot run it, the old rules stay
// and keep serving.
func (a *Agent) removeOtherModes(ctx context.Context) bool {
	logger := klog.FromContext(ctx)
	done := true
	for mode, mk := range a.opts.Backends {
		if mode == a.backend.Mode() {
			continue
		}
		if a.opts.NothingToRemove != nil && a.opts.NothingToRemove(mode) {
			logger.V(2).Info("nothing of another mode to remove", "mode", mode)
			continue
		}
		b, err := mk()
		if err == nil {
			err = b.Cleanup(ctx)
		}
		if err != nil {
			logger.Error(err, "removing another mode's rules; will retry after the next sync", "mode", mode)
			done = false
			continue
		}
		logger.V(2).Info("removed leftovers of another mode", "mode", mode)
	}
	return done
}

// clearStaleUDP removes conntrack entries of UDP flows whose endpoint went away,
// and of UDP services that gained their first endpoint: to the service's VIPs
// and to its NodePort.
func (a *Agent) clearStaleUDP(ctx context.Context, snap *model.Snapshot) {
	if a.opts.ConntrackCleaner == nil {
		return
	}
	for _, f := range []model.Family{model.IPv4, model.IPv6} {
		if _, err := a.opts.ConntrackCleaner.Reconcile(f, conntrack.WantedFor(snap, f)); err != nil {
			klog.FromContext(ctx).Error(err, "reconciling UDP conntrack entries", "family", f)
		}
	}
}

// nodeInfo is what backends need of the node: node-port addresses and cluster CIDRs.
func (a *Agent) nodeInfo() model.NodeInfo {
	a.nodeMu.Lock()
	node := a.node
	a.nodeMu.Unlock()
	return nodeinfo.Resolve(a.opts.Config, a.opts.NodeName, node, localAddrs(), a.serviceCIDRs.prefixes())
}

// localAddrs are the addresses of the node's interfaces (the agent runs in
// the node's network namespace).
func localAddrs() []netip.Addr {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil
	}
	var out []netip.Addr
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil {
			out = append(out, p.Addr())
		}
	}
	return out
}

func hasTaint(n *corev1.Node, key string) bool {
	for _, t := range n.Spec.Taints {
		if t.Key == key {
			return true
		}
	}
	return false
}

// dropManagedFields strips what the agent never reads before objects enter the
// informer caches: managedFields are often the largest part of an object, and
// at 10k Services and EndpointSlices they are most of the agent's memory.
func dropManagedFields(o any) (any, error) {
	if m, ok := o.(metav1.Object); ok {
		m.SetManagedFields(nil)
	}
	return o, nil
}

// unwrap handles the tombstones informers deliver for deletions they missed.
func unwrap[T any](o any) (T, bool) {
	if t, ok := o.(T); ok {
		return t, true
	}
	if d, ok := o.(cache.DeletedFinalStateUnknown); ok {
		t, ok := d.Obj.(T)
		return t, ok
	}
	var zero T
	return zero, false
}

// writeHeapProfile writes the heap profile after a full sync to the file named
// by $KPO_AGENT_HEAP_PROFILE, if set: what the memory figures of the
// benchmarks are made of (go tool pprof -sample_index=inuse_space).
func writeHeapProfile(logger klog.Logger) {
	path := os.Getenv("KPO_AGENT_HEAP_PROFILE")
	if path == "" {
		return
	}
	f, err := os.Create(path)
	if err != nil {
		logger.Error(err, "heap profile")
		return
	}
	defer func() { _ = f.Close() }()
	if err := pprof.WriteHeapProfile(f); err != nil {
		logger.Error(err, "heap profile")
	}
}
