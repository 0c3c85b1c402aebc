package agent

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/utils/ptr"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
	"kpo.dev/kpo/nodeagent/backend"
	"kpo.dev/kpo/nodeagent/model"
)

// firstSyncBackend records when its first sync started.
type firstSyncBackend struct {
	recordingBackend
	once  sync.Once
	first chan time.Time
}

func (b *firstSyncBackend) Sync(ctx context.Context, snap *model.Snapshot, changes *backend.Changes) (backend.SyncResult, error) {
	b.once.Do(func() { b.first <- time.Now() })
	return b.recordingBackend.Sync(ctx, snap, changes)
}

// TestFirstSyncDoesNotWaitForAPollInterval: the first sync starts as soon as
// the handlers have seen the initial lists. cache.WaitForCacheSync, which the
// agent used before, checks at once and then every 100 ms: the lists are
// never in by the first check, so every cold start waited for the second,
// up to 100 ms of nothing (docs/nftables-backend.md, "The cold path"). With
// an in-memory API (client-go's fake) the lists of 200 Services take a few
// milliseconds; the old code never synced sooner than 100 ms after Run, so
// the best of three starts under 100 ms fails on it. (Three, because the
// machine is shared: one start can be descheduled that long.)
func TestFirstSyncDoesNotWaitForAPollInterval(t *testing.T) {
	var objs []runtime.Object
	objs = append(objs, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-1"}})
	for i := range 200 {
		name := fmt.Sprintf("svc-%d", i)
		objs = append(objs, &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name},
			Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeClusterIP, ClusterIP: fmt.Sprintf("10.96.%d.%d", i/250, i%250+1),
				Ports: []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}}},
		}, &discoveryv1.EndpointSlice{
			ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name + "-abc",
				Labels: map[string]string{discoveryv1.LabelServiceName: name}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Endpoints: []discoveryv1.Endpoint{{Addresses: []string{fmt.Sprintf("10.244.%d.%d", i/250, i%250+1)},
				Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}}},
			Ports: []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](8080), Protocol: ptr.To(corev1.ProtocolTCP)}},
		})
	}
	best := time.Hour
	for range 3 {
		cfg := &kpov1.AgentConfiguration{ConfigurationName: "default", ConfigurationGeneration: 1, Mode: kpov1.ModeNFTables}
		cfg.Default()
		be := &firstSyncBackend{first: make(chan time.Time, 1)}
		ctx, cancel := context.WithCancel(context.Background())
		a, err := New(Options{Config: cfg, NodeName: "node-1", Kube: fake.NewClientset(objs...),
			Backends:           map[kpov1.Mode]func() (backend.Backend, error){kpov1.ModeNFTables: func() (backend.Backend, error) { return be, nil }},
			HealthzBindAddress: "127.0.0.1:0", MetricsBindAddress: "127.0.0.1:0"})
		must(t, err)
		done := make(chan error, 1)
		start := time.Now()
		go func() { done <- a.Run(ctx) }()
		select {
		case at := <-be.first:
			best = min(best, at.Sub(start))
		case err := <-done:
			t.Fatalf("the agent stopped before its first sync: %v", err)
		case <-time.After(time.Minute):
			t.Fatal("no sync within a minute")
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		be.mu.Lock()
		first := be.syncs[0]
		be.mu.Unlock()
		if !first.full || len(first.snap.Services) != 200 {
			t.Fatalf("the first sync (full %v) held %d service ports, want a full one of 200", first.full, len(first.snap.Services))
		}
	}
	if best >= 100*time.Millisecond {
		t.Errorf("the first sync started %v after Run at best: the agent waits for a poll interval", best)
	}
	t.Logf("first sync %v after Run (best of 3)", best)
}
