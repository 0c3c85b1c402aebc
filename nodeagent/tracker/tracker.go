// Package tracker turns informer events into model snapshots. Events only mark
// Services dirty (cheap, under a lock); Snapshot rebuilds the dirty ones and
// reuses every other ServicePort pointer, so that backends can rewrite just
// what changed (kube-proxy's change trackers, with the policies resolved here).
//
// Between building and the snapshot sits arbitration (package arbiter): when
// Services claim the same address and port, or NodePort, the loser's snapshot
// ServicePort goes without it. What the model skips as invalid and what loses
// a conflict are the tracker's rejections, reported by the agent.
package tracker

import (
	"maps"
	"reflect"
	"slices"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"

	"kpo.dev/kpo/nodeagent/arbiter"
	"kpo.dev/kpo/nodeagent/model"
)

// AnnotationLastChangeTriggerTime is set by the EndpointSlice controller to the
// time of the change that caused the slice's last update (for latency metrics).
const AnnotationLastChangeTriggerTime = "endpoints.kubernetes.io/last-change-trigger-time"

// Tracker holds the Services and EndpointSlices the agent has seen and the model
// built from them. It is safe for concurrent use.
type Tracker struct {
	mu       sync.Mutex
	node     model.NodeContext
	services map[types.NamespacedName]*corev1.Service
	// slices by Service, then by slice name.
	slices map[types.NamespacedName]map[string]*discoveryv1.EndpointSlice

	dirty    map[types.NamespacedName]bool
	allDirty bool
	// started is when the tracker was made: trigger times before it are not
	// this agent's to measure (see SetEndpointSlice).
	started time.Time
	// triggerTimes are the EndpointSlice change times behind pending changes,
	// per Service.
	triggerTimes map[types.NamespacedName][]time.Time
	// stats count changes for the agent's metrics; svcPending are the
	// Services with a Service change since the last snapshot.
	stats      Stats
	svcPending map[types.NamespacedName]bool

	// raw are the ServicePorts as built, ports what the snapshot holds: raw
	// without what they lost to other Services. byService are the keys of
	// each Service's ports.
	raw       map[model.ServicePortKey]*model.ServicePort
	ports     map[model.ServicePortKey]*model.ServicePort
	byService map[types.NamespacedName][]model.ServicePortKey
	arbiter   *arbiter.Arbiter

	// invalid is what building each Service skipped; reported is every
	// rejection of the last snapshot, current the same, sorted.
	invalid  map[types.NamespacedName][]model.Rejection
	reported map[model.Rejection]bool
	current  []model.Rejection

	// notify is called (without the lock) after every change.
	notify func()
}

// New returns an empty tracker; notify is called after each change (it must not block).
func New(node model.NodeContext, notify func()) *Tracker {
	if notify == nil {
		notify = func() {}
	}
	return &Tracker{
		node:         node,
		services:     map[types.NamespacedName]*corev1.Service{},
		slices:       map[types.NamespacedName]map[string]*discoveryv1.EndpointSlice{},
		dirty:        map[types.NamespacedName]bool{},
		started:      time.Now(),
		triggerTimes: map[types.NamespacedName][]time.Time{},
		svcPending:   map[types.NamespacedName]bool{},
		raw:          map[model.ServicePortKey]*model.ServicePort{},
		ports:        map[model.ServicePortKey]*model.ServicePort{},
		byService:    map[types.NamespacedName][]model.ServicePortKey{},
		arbiter:      arbiter.New(),
		invalid:      map[types.NamespacedName][]model.Rejection{},
		reported:     map[model.Rejection]bool{},
		notify:       notify,
	}
}

// SetService records a Service (added or updated).
func (t *Tracker) SetService(svc *corev1.Service) {
	name := types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}
	t.change(name, func() { t.services[name] = svc; t.serviceChanged(name) })
}

// DeleteService forgets a Service.
func (t *Tracker) DeleteService(namespace, name string) {
	n := types.NamespacedName{Namespace: namespace, Name: name}
	t.change(n, func() { delete(t.services, n); t.serviceChanged(n) })
}

// serviceChanged counts a Service change (under the lock).
func (t *Tracker) serviceChanged(n types.NamespacedName) {
	t.stats.ServiceChangesTotal++
	t.svcPending[n] = true
	t.stats.ServiceChangesPending = len(t.svcPending)
}

// SetEndpointSlice records an EndpointSlice (added or updated).
func (t *Tracker) SetEndpointSlice(s *discoveryv1.EndpointSlice) {
	svc, ok := serviceOf(s)
	if !ok {
		return
	}
	t.change(svc, func() {
		if t.slices[svc] == nil {
			t.slices[svc] = map[string]*discoveryv1.EndpointSlice{}
		}
		t.slices[svc][s.Name] = s
		t.endpointsChanged()
		// As kube-proxy (pkg/proxy/endpointschangetracker.go): only changes
		// made after this agent started are measured. The slices of the
		// initial list carry their last change's time, hours or days old,
		// which is no latency of this agent's.
		if tt := triggerTime(s); !tt.IsZero() && tt.After(t.started) {
			t.triggerTimes[svc] = append(t.triggerTimes[svc], tt)
		}
	})
}

// endpointsChanged counts an EndpointSlice change (under the lock).
func (t *Tracker) endpointsChanged() {
	t.stats.EndpointChangesTotal++
	t.stats.EndpointChangesPending++
}

// DeleteEndpointSlice forgets an EndpointSlice.
func (t *Tracker) DeleteEndpointSlice(s *discoveryv1.EndpointSlice) {
	svc, ok := serviceOf(s)
	if !ok {
		return
	}
	t.change(svc, func() {
		delete(t.slices[svc], s.Name)
		if len(t.slices[svc]) == 0 {
			delete(t.slices, svc)
		}
		t.endpointsChanged()
		// As kube-proxy: a deleted slice's trigger time is its last update's,
		// not the deletion's, so the Service's pending times are dropped and
		// none is recorded.
		delete(t.triggerTimes, svc)
	})
}

// SetNode records this node's topology; a zone change affects every Service.
func (t *Tracker) SetNode(node model.NodeContext) {
	t.mu.Lock()
	changed := node != t.node
	if changed {
		t.node = node
		t.allDirty = true
	}
	t.mu.Unlock()
	if changed {
		t.notify()
	}
}

// Pending is the number of Services with changes not yet in a snapshot.
func (t *Tracker) Pending() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.allDirty {
		return len(t.services)
	}
	return len(t.dirty)
}

// Stats count the changes the tracker has seen, with kube-proxy's meaning
// (kubeproxy_sync_proxy_rules_{service,endpoint}_changes_{total,pending}).
type Stats struct {
	// ServiceChangesTotal and EndpointChangesTotal count Service and
	// EndpointSlice events (additions, updates, deletions).
	ServiceChangesTotal, EndpointChangesTotal uint64
	// ServiceChangesPending are the Services changed since the last snapshot;
	// EndpointChangesPending the EndpointSlice events since then.
	ServiceChangesPending, EndpointChangesPending int
}

// Stats returns the change counts.
func (t *Tracker) Stats() Stats {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.stats
}

// change applies a change under the lock, marks the Service dirty and notifies.
func (t *Tracker) change(svc types.NamespacedName, apply func()) {
	t.mu.Lock()
	apply()
	t.dirty[svc] = true
	t.mu.Unlock()
	t.notify()
}

// Change is what a snapshot changed compared with the previous one.
type Change struct {
	// Changed are the service ports that are new or different, Removed those gone.
	Changed []*model.ServicePort
	Removed []*model.ServicePort
	// Previous maps each changed key to its previous version (nil when new).
	Previous map[model.ServicePortKey]*model.ServicePort
	// TriggerTimes are the EndpointSlice change times behind this snapshot, for
	// the network programming latency metric: those after the tracker started,
	// none of a Service whose slice was deleted since the last snapshot.
	TriggerTimes []time.Time
	// Rejected are the rejections new in this snapshot, Accepted those gone
	// (the object was fixed or deleted, or won its conflict now), both sorted.
	// They change only when objects do, not on every sync.
	Rejected, Accepted []model.Rejection
}

// Snapshot rebuilds the dirty Services and returns the model with what changed.
// The returned snapshot's map is the caller's; ServicePorts are shared.
func (t *Tracker) Snapshot() (*model.Snapshot, Change) {
	t.mu.Lock()
	defer t.mu.Unlock()

	dirty := t.dirty
	if t.allDirty {
		dirty = map[types.NamespacedName]bool{}
		for n := range t.services {
			dirty[n] = true
		}
		for n := range t.byService {
			dirty[n] = true
		}
	}
	// Sized for a port per Service: at a cold start every port is new, and
	// growing maps of thousands of entries step by step is garbage.
	change := Change{Previous: make(map[model.ServicePortKey]*model.ServicePort, len(dirty))}
	touched := make(map[model.ServicePortKey]bool, len(dirty))
	if len(t.ports) == 0 {
		t.ports = make(map[model.ServicePortKey]*model.ServicePort, len(dirty))
	}
	for name := range dirty {
		t.rebuild(name, touched)
		change.TriggerTimes = append(change.TriggerTimes, t.triggerTimes[name]...)
	}
	for _, k := range t.arbiter.Resolve() {
		touched[k] = true
	}
	for k := range touched {
		t.publish(k, &change)
	}
	if len(dirty) > 0 {
		t.updateRejections(&change)
	}
	t.dirty = map[types.NamespacedName]bool{}
	t.allDirty = false
	t.triggerTimes = map[types.NamespacedName][]time.Time{}
	t.svcPending = map[types.NamespacedName]bool{}
	t.stats.ServiceChangesPending, t.stats.EndpointChangesPending = 0, 0

	return &model.Snapshot{Services: maps.Clone(t.ports)}, change
}

// Rejections are the rejections of the last snapshot, sorted (the caller's copy).
func (t *Tracker) Rejections() []model.Rejection {
	t.mu.Lock()
	defer t.mu.Unlock()
	return slices.Clone(t.current)
}

// rebuild recomputes one Service's ports, reusing the old pointer of every port
// that comes out equal, and hands their claims to the arbiter. touched gets
// the keys of ports that are new, different or gone.
func (t *Tracker) rebuild(name types.NamespacedName, touched map[model.ServicePortKey]bool) {
	old := t.byService[name]
	var built []*model.ServicePort
	var invalid []model.Rejection
	var created time.Time
	if svc := t.services[name]; svc != nil {
		// In name order: when two slices list the same endpoint (the
		// EndpointSlice controller moving it), the first copy wins, and the
		// result must not depend on map order.
		ordered := slicesInNameOrder(t.slices[name])
		built, invalid = model.BuildServicePorts(svc, ordered, t.node)
		created = svc.CreationTimestamp.Time
	}
	if len(invalid) > 0 {
		t.invalid[name] = invalid
	} else {
		delete(t.invalid, name)
	}
	keys := make([]model.ServicePortKey, 0, len(built))
	for _, sp := range built {
		keys = append(keys, sp.Key)
		if prev := t.raw[sp.Key]; prev != nil && reflect.DeepEqual(prev, sp) {
			sp = prev // unchanged: the backend will see the same pointer
		} else {
			t.raw[sp.Key] = sp
			touched[sp.Key] = true
		}
		// Unchanged claims cost the arbiter nothing; the creation time
		// differs when the Service was deleted and created again.
		t.arbiter.Set(sp, created)
	}
	for _, k := range old {
		if !slices.Contains(keys, k) {
			delete(t.raw, k)
			t.arbiter.Remove(k)
			touched[k] = true
		}
	}
	if len(keys) == 0 {
		delete(t.byService, name)
	} else {
		t.byService[name] = keys
	}
}

// slicesInNameOrder are a Service's EndpointSlices in name order.
func slicesInNameOrder(byName map[string]*discoveryv1.EndpointSlice) []*discoveryv1.EndpointSlice {
	ordered := make([]*discoveryv1.EndpointSlice, 0, len(byName))
	for _, s := range byName {
		ordered = append(ordered, s)
	}
	slices.SortFunc(ordered, func(a, b *discoveryv1.EndpointSlice) int { return strings.Compare(a.Name, b.Name) })
	return ordered
}

// publish puts one port's arbitrated version into the model, keeping the
// previous pointer when it comes out equal.
func (t *Tracker) publish(k model.ServicePortKey, change *Change) {
	prev := t.ports[k]
	var sp *model.ServicePort
	if raw := t.raw[k]; raw != nil {
		sp = t.arbiter.Loss(k).Apply(raw)
	}
	switch {
	case sp == nil:
		if prev != nil {
			change.Removed = append(change.Removed, prev)
			delete(t.ports, k)
		}
	case prev == sp, prev != nil && reflect.DeepEqual(prev, sp):
	default:
		t.ports[k] = sp
		change.Changed = append(change.Changed, sp)
		change.Previous[k] = prev
	}
}

// updateRejections collects the rejections of every Service (what building
// skipped, what arbitration took) and records what changed since the last
// snapshot.
func (t *Tracker) updateRejections(change *Change) {
	now := map[model.Rejection]bool{}
	for _, rs := range t.invalid {
		for _, r := range rs {
			now[r] = true
		}
	}
	t.arbiter.Losses(func(k model.ServicePortKey, l *arbiter.Loss) {
		for _, r := range l.Rejections(k) {
			now[r] = true
		}
	})
	for r := range now {
		if !t.reported[r] {
			change.Rejected = append(change.Rejected, r)
		}
	}
	for r := range t.reported {
		if !now[r] {
			change.Accepted = append(change.Accepted, r)
		}
	}
	slices.SortFunc(change.Rejected, model.CompareRejections)
	slices.SortFunc(change.Accepted, model.CompareRejections)
	if len(change.Rejected) > 0 || len(change.Accepted) > 0 {
		t.reported = now
		t.current = slices.SortedFunc(maps.Keys(now), model.CompareRejections)
	}
}

func serviceOf(s *discoveryv1.EndpointSlice) (types.NamespacedName, bool) {
	name := s.Labels[discoveryv1.LabelServiceName]
	if name == "" {
		return types.NamespacedName{}, false
	}
	return types.NamespacedName{Namespace: s.Namespace, Name: name}, true
}

func triggerTime(s *discoveryv1.EndpointSlice) time.Time {
	v, ok := s.Annotations[AnnotationLastChangeTriggerTime]
	if !ok {
		return time.Time{}
	}
	tt, err := time.Parse(time.RFC3339Nano, v)
	if err != nil {
		return time.Time{}
	}
	return tt
}
