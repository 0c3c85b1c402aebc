// Package tracker turns informer events into model snapshots. Events only mark
// Services dirty (cheap, under a lock); Snapshot rebuilds the dirty ones and
// reuses every other ServicePort pointer, so that backends can rewrite just
// what changed (kube-proxy's change trackers, with the policies resolved here).
package tracker

import (
	"maps"
	"reflect"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"

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
	// triggerTimes are the earliest change times of pending changes, per Service.
	triggerTimes map[types.NamespacedName]time.Time

	// The current model and, per Service, the keys of its ports in it.
	ports     map[model.ServicePortKey]*model.ServicePort
	byService map[types.NamespacedName][]model.ServicePortKey

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
		triggerTimes: map[types.NamespacedName]time.Time{},
		ports:        map[model.ServicePortKey]*model.ServicePort{},
		byService:    map[types.NamespacedName][]model.ServicePortKey{},
		notify:       notify,
	}
}

// SetService records a Service (added or updated).
func (t *Tracker) SetService(svc *corev1.Service) {
	name := types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}
	t.change(name, time.Time{}, func() { t.services[name] = svc })
}

// DeleteService forgets a Service.
func (t *Tracker) DeleteService(namespace, name string) {
	n := types.NamespacedName{Namespace: namespace, Name: name}
	t.change(n, time.Time{}, func() { delete(t.services, n) })
}

// SetEndpointSlice records an EndpointSlice (added or updated).
func (t *Tracker) SetEndpointSlice(s *discoveryv1.EndpointSlice) {
	svc, ok := serviceOf(s)
	if !ok {
		return
	}
	t.change(svc, triggerTime(s), func() {
		if t.slices[svc] == nil {
			t.slices[svc] = map[string]*discoveryv1.EndpointSlice{}
		}
		t.slices[svc][s.Name] = s
	})
}

// DeleteEndpointSlice forgets an EndpointSlice.
func (t *Tracker) DeleteEndpointSlice(s *discoveryv1.EndpointSlice) {
	svc, ok := serviceOf(s)
	if !ok {
		return
	}
	t.change(svc, time.Now(), func() {
		delete(t.slices[svc], s.Name)
		if len(t.slices[svc]) == 0 {
			delete(t.slices, svc)
		}
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

func (t *Tracker) change(svc types.NamespacedName, trigger time.Time, apply func()) {
	t.mu.Lock()
	apply()
	t.dirty[svc] = true
	if !trigger.IsZero() {
		if old, ok := t.triggerTimes[svc]; !ok || trigger.Before(old) {
			t.triggerTimes[svc] = trigger
		}
	}
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
	// the network programming latency metric.
	TriggerTimes []time.Time
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
	change := Change{Previous: map[model.ServicePortKey]*model.ServicePort{}}
	for name := range dirty {
		t.rebuild(name, &change)
		if tt, ok := t.triggerTimes[name]; ok {
			change.TriggerTimes = append(change.TriggerTimes, tt)
		}
	}
	t.dirty = map[types.NamespacedName]bool{}
	t.allDirty = false
	t.triggerTimes = map[types.NamespacedName]time.Time{}

	return &model.Snapshot{Services: maps.Clone(t.ports)}, change
}

// rebuild recomputes one Service's ports, reusing the old pointer of every port
// that comes out equal.
func (t *Tracker) rebuild(name types.NamespacedName, change *Change) {
	old := t.byService[name]
	var built []*model.ServicePort
	if svc := t.services[name]; svc != nil {
		var slices []*discoveryv1.EndpointSlice
		for _, s := range t.slices[name] {
			slices = append(slices, s)
		}
		built = model.BuildServicePorts(svc, slices, t.node)
	}
	keep := map[model.ServicePortKey]bool{}
	keys := make([]model.ServicePortKey, 0, len(built))
	for _, sp := range built {
		keep[sp.Key] = true
		keys = append(keys, sp.Key)
		prev := t.ports[sp.Key]
		if prev != nil && reflect.DeepEqual(prev, sp) {
			continue // unchanged: the backend sees the same pointer
		}
		t.ports[sp.Key] = sp
		change.Changed = append(change.Changed, sp)
		change.Previous[sp.Key] = prev
	}
	for _, k := range old {
		if !keep[k] {
			change.Removed = append(change.Removed, t.ports[k])
			delete(t.ports, k)
		}
	}
	if len(keys) == 0 {
		delete(t.byService, name)
	} else {
		t.byService[name] = keys
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
