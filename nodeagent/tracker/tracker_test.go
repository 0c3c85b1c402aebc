package tracker

import (
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"kpo.dev/kpo/nodeagent/model"
)

func svc(name, ip string) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name},
		Spec: corev1.ServiceSpec{ClusterIP: ip, ClusterIPs: []string{ip},
			Ports: []corev1.ServicePort{{Port: 80, Protocol: corev1.ProtocolTCP}}},
	}
}

func eps(service string, trigger time.Time, ips ...string) *discoveryv1.EndpointSlice {
	s := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: service + "-abc",
			Labels:      map[string]string{discoveryv1.LabelServiceName: service},
			Annotations: map[string]string{AnnotationLastChangeTriggerTime: trigger.Format(time.RFC3339Nano)}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To(""), Port: ptr.To[int32](8080), Protocol: ptr.To(corev1.ProtocolTCP)}},
	}
	for _, ip := range ips {
		s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{Addresses: []string{ip}})
	}
	return s
}

func key(name string) model.ServicePortKey {
	return model.ServicePortKey{ServicePortName: model.ServicePortName{Namespace: "ns", Name: name, Protocol: corev1.ProtocolTCP}, Family: model.IPv4}
}

func TestSnapshotRebuildsOnlyWhatChanged(t *testing.T) {
	notified := 0
	tr := New(model.NodeContext{Name: "n"}, func() { notified++ })
	t0 := time.Now().Add(-time.Second).Truncate(time.Millisecond)
	tr.started = t0.Add(-time.Second) // the agent started before the change
	tr.SetService(svc("a", "10.96.0.1"))
	tr.SetService(svc("b", "10.96.0.2"))
	tr.SetEndpointSlice(eps("a", t0, "10.244.1.5"))
	if notified != 3 || tr.Pending() != 2 {
		t.Fatalf("notified %d pending %d", notified, tr.Pending())
	}
	snap1, ch := tr.Snapshot()
	if len(snap1.Services) != 2 || len(ch.Changed) != 2 || len(ch.TriggerTimes) != 1 || !ch.TriggerTimes[0].Equal(t0) {
		t.Fatalf("first snapshot: %d services, change %+v", len(snap1.Services), ch)
	}
	if tr.Pending() != 0 {
		t.Errorf("pending %d after a snapshot", tr.Pending())
	}

	// An endpoint change to a: a is rebuilt, b keeps its pointer.
	tr.SetEndpointSlice(eps("a", t0, "10.244.1.5", "10.244.1.6"))
	snap2, ch := tr.Snapshot()
	if snap2.Services[key("b")] != snap1.Services[key("b")] {
		t.Error("b was rebuilt although nothing of it changed")
	}
	if snap2.Services[key("a")] == snap1.Services[key("a")] || len(ch.Changed) != 1 || ch.Previous[key("a")] != snap1.Services[key("a")] {
		t.Errorf("a: change %+v", ch)
	}

	// An update that changes nothing visible keeps the pointer.
	tr.SetService(svc("a", "10.96.0.1"))
	snap3, ch := tr.Snapshot()
	if snap3.Services[key("a")] != snap2.Services[key("a")] || len(ch.Changed) != 0 {
		t.Errorf("a no-op update produced a change: %+v", ch)
	}

	// Deletion.
	tr.DeleteService("ns", "b")
	snap4, ch := tr.Snapshot()
	if _, ok := snap4.Services[key("b")]; ok || len(ch.Removed) != 1 || ch.Removed[0] != snap3.Services[key("b")] {
		t.Errorf("b not removed: %+v", ch)
	}
	// Earlier snapshots are not modified under the backend's feet.
	if len(snap1.Services) != 2 || len(snap3.Services) != 2 {
		t.Error("a later snapshot modified an earlier one's map")
	}
}

// A zone change rebuilds every Service; those it does not affect keep their pointer.
func TestFullRebuildKeepsUnchangedPointers(t *testing.T) {
	tr := New(model.NodeContext{Name: "n", Zone: "a"}, nil)
	tr.SetService(svc("a", "10.96.0.1"))
	snap1, _ := tr.Snapshot()
	tr.SetNode(model.NodeContext{Name: "n", Zone: "b"})
	snap2, ch := tr.Snapshot()
	if len(ch.Changed) != 0 || snap2.Services[key("a")] != snap1.Services[key("a")] {
		t.Errorf("a full rebuild of unchanged input changed something: %+v", ch)
	}
}

func TestZoneChangeRebuildsEverything(t *testing.T) {
	tr := New(model.NodeContext{Name: "n", Zone: "a"}, nil)
	tr.SetService(svc("a", "10.96.0.1"))
	tr.Snapshot()
	tr.SetNode(model.NodeContext{Name: "n", Zone: "b"})
	if tr.Pending() != 1 {
		t.Errorf("pending %d after a zone change, want every service", tr.Pending())
	}
}

func TestSliceWithoutServiceLabelIgnored(t *testing.T) {
	tr := New(model.NodeContext{Name: "n"}, nil)
	s := eps("a", time.Now(), "10.244.1.5")
	s.Labels = nil
	tr.SetEndpointSlice(s)
	if tr.Pending() != 0 {
		t.Error("a slice without kubernetes.io/service-name made a change")
	}
}

// TestDuplicateEndpointAcrossSlicesIsStable: an endpoint listed by two slices
// (the EndpointSlice controller moving it) resolves the same way on every
// rebuild: the slice first by name wins, never map order.
func TestDuplicateEndpointAcrossSlicesIsStable(t *testing.T) {
	tr := New(model.NodeContext{Name: "node-1"}, func() {})
	tr.SetService(svc("a", "10.96.0.1"))
	first := eps("a", time.Now(), "10.244.1.5")
	first.Endpoints[0].NodeName = ptr.To("node-1")
	second := eps("a", time.Now(), "10.244.1.5")
	second.Name, second.Endpoints[0].NodeName = "a-xyz", ptr.To("node-2")
	tr.SetEndpointSlice(second)
	tr.SetEndpointSlice(first)
	for i := range 50 {
		tr.SetNode(model.NodeContext{Name: "node-1", Zone: fmt.Sprint("zone-", i)}) // rebuilds every Service
		snap, _ := tr.Snapshot()
		sp := snap.Services[key("a")]
		if len(sp.ClusterEndpoints) != 1 || !sp.ClusterEndpoints[0].Local {
			t.Fatalf("rebuild %d: %+v, want the one endpoint, local (slice a-abc wins)", i, sp.ClusterEndpoints)
		}
	}
}

// TestTriggerTimesAsKubeProxy: as kube-proxy's EndpointsChangeTracker, only
// trigger times after the agent started count (the initial list's slices
// carry old ones), every update's time counts, and a deleted slice drops its
// Service's pending times (its annotation is its last update's, not the
// deletion's). The old tracker reported the initial list's days-old times
// and a deletion as a near-zero latency.
func TestTriggerTimesAsKubeProxy(t *testing.T) {
	tr := New(model.NodeContext{Name: "n"}, nil)
	tr.SetService(svc("a", "10.96.0.1"))
	tr.SetService(svc("b", "10.96.0.2"))
	old := time.Now().Add(-72 * time.Hour)
	tr.SetEndpointSlice(eps("a", old, "10.244.1.5"))
	if _, ch := tr.Snapshot(); len(ch.TriggerTimes) != 0 {
		t.Errorf("the initial list's trigger times (3 days old) were reported: %v", ch.TriggerTimes)
	}

	t1 := time.Now().Add(time.Millisecond)
	t2 := t1.Add(time.Millisecond)
	tr.SetEndpointSlice(eps("a", t1, "10.244.1.5", "10.244.1.6"))
	tr.SetEndpointSlice(eps("a", t2, "10.244.1.6"))
	tr.SetEndpointSlice(eps("b", t2, "10.244.1.7"))
	_, ch := tr.Snapshot()
	if len(ch.TriggerTimes) != 3 {
		t.Errorf("trigger times %v, want each update's (3)", ch.TriggerTimes)
	}

	tr.SetEndpointSlice(eps("a", t2.Add(time.Millisecond), "10.244.1.8"))
	tr.DeleteEndpointSlice(eps("a", t2.Add(time.Millisecond)))
	if _, ch := tr.Snapshot(); len(ch.TriggerTimes) != 0 {
		t.Errorf("a deleted slice's Service reported trigger times %v", ch.TriggerTimes)
	}
	st := tr.Stats()
	if st.ServiceChangesTotal != 2 || st.EndpointChangesTotal != 6 || st.ServiceChangesPending != 0 || st.EndpointChangesPending != 0 {
		t.Errorf("stats %+v, want 2 service and 6 endpoint changes, none pending", st)
	}
	tr.SetService(svc("a", "10.96.0.1"))
	tr.SetService(svc("a", "10.96.0.1"))
	tr.SetEndpointSlice(eps("b", t2, "10.244.1.9"))
	if st := tr.Stats(); st.ServiceChangesPending != 1 || st.EndpointChangesPending != 1 {
		t.Errorf("pending %+v, want one Service and one endpoint change", st)
	}
}
