package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
	"kpo.dev/kpo/hack/apiserver"
	"kpo.dev/kpo/nodeagent/backend"
	"kpo.dev/kpo/nodeagent/conntrack"
	"kpo.dev/kpo/nodeagent/model"
)

// recordingBackend stands in for a kernel backend: it records what it is asked
// to sync and can be told to fail.
type recordingBackend struct {
	mu    sync.Mutex
	syncs []recordedSync
	fail  error
	// fullDelay makes each full sync take that long (a slow kernel).
	fullDelay time.Duration
}

type recordedSync struct {
	snap *model.Snapshot
	full bool
}

func (b *recordingBackend) Mode() kpov1.Mode              { return kpov1.ModeNFTables }
func (b *recordingBackend) Check(context.Context) error   { return nil }
func (b *recordingBackend) Cleanup(context.Context) error { return nil }
func (b *recordingBackend) setFail(err error)             { b.mu.Lock(); b.fail = err; b.mu.Unlock() }
func (b *recordingBackend) Sync(_ context.Context, snap *model.Snapshot, changes *backend.Changes) (backend.SyncResult, error) {
	full := changes == nil
	b.mu.Lock()
	defer b.mu.Unlock()
	if full && b.fullDelay > 0 {
		time.Sleep(b.fullDelay)
	}
	if b.fail != nil {
		return backend.SyncResult{}, b.fail
	}
	b.syncs = append(b.syncs, recordedSync{snap, full})
	return backend.SyncResult{Full: full, ServicePortsWritten: len(snap.Services), Rules: 7 * len(snap.Services)}, nil
}

func (b *recordingBackend) last() (recordedSync, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.syncs) == 0 {
		return recordedSync{}, false
	}
	return b.syncs[len(b.syncs)-1], true
}

var env *apiserver.Env

func TestMain(m *testing.M) {
	os.Exit(func() int {
		// flag parsing happens in m.Run; testing.Short needs it first.
		if len(os.Args) > 0 {
			for _, a := range os.Args {
				if a == "-test.short=true" || a == "-test.short" {
					return m.Run()
				}
			}
		}
		var err error
		env, err = apiserver.Start()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer func() { _ = env.Stop() }()
		return m.Run()
	}())
}

// runAgent runs an agent whose only mode is be until the test ends; cancel
// stops it, and the agent must then return without error.
func runAgent(t *testing.T, ctx context.Context, cancel context.CancelFunc, be backend.Backend, opts Options) {
	t.Helper()
	opts.Backends = map[kpov1.Mode]func() (backend.Backend, error){be.Mode(): func() (backend.Backend, error) { return be, nil }}
	a, err := New(opts)
	must(t, err)
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("agent stopped with %v", err)
		}
	})
}

func freePort(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = l.Close() }()
	return l.Addr().String()
}

// agentRig is an agent running in-process against the API server with a
// recording backend, and the objects it proxies.
type agentRig struct {
	ctx       context.Context
	c         client.Client
	be        *recordingBackend
	cleaner   *recordingCleaner
	healthz   string
	node      *corev1.Node
	svc       *corev1.Service
	slice     *discoveryv1.EndpointSlice
	webKey    model.ServicePortKey
	conntrack *kpov1.ConntrackSysctls
}

// TestAgentAgainstAPIServer runs the agent in-process against a real API server
// with a recording backend: informers → model → sync → ProxyNodeStatus.
func TestAgentAgainstAPIServer(t *testing.T) {
	if env == nil {
		t.Skip("needs kube-apiserver; not run with -short")
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r := startAgentRig(t, ctx, cancel)
	r.firstSync(t)
	r.report(t)
	r.endpointRemoved(t)
	r.healthAfterSync(t)
	r.failureAndRecovery(t)
	r.nodeDeleting(t)
}

// startAgentRig creates a Node, a UDP Service with two endpoints (one on
// this node) and a headless Service, and runs the agent.
func startAgentRig(t *testing.T, ctx context.Context, cancel context.CancelFunc) *agentRig {
	c := env.Client
	kube := kubernetes.NewForConfigOrDie(env.Config)

	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "agent-node-1", Labels: map[string]string{corev1.LabelTopologyZone: "a"}}}
	must(t, c.Create(ctx, node))
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "agent-test"}}
	must(t, c.Create(ctx, ns))
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "agent-test", Name: "web"},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolUDP}}},
	}
	must(t, c.Create(ctx, svc))
	headless := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "agent-test", Name: "headless"},
		Spec:       corev1.ServiceSpec{ClusterIP: corev1.ClusterIPNone, Ports: []corev1.ServicePort{{Port: 80}}},
	}
	must(t, c.Create(ctx, headless))
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: "agent-test", Name: "web-1",
			Labels: map[string]string{discoveryv1.LabelServiceName: "web"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](8080), Protocol: ptr.To(corev1.ProtocolUDP)}},
		Endpoints: []discoveryv1.Endpoint{
			{Addresses: []string{"10.244.1.5"}, NodeName: ptr.To("agent-node-1")},
			{Addresses: []string{"10.244.2.5"}, NodeName: ptr.To("agent-node-2")},
		},
	}
	must(t, c.Create(ctx, slice))

	be := &recordingBackend{}
	cleaner := &recordingCleaner{}
	cfg := &kpov1.AgentConfiguration{ConfigurationName: "default", ConfigurationGeneration: 3, Mode: kpov1.ModeNFTables}
	cfg.MinSyncPeriod = "50ms"
	cfg.Default()
	healthz := freePort(t)
	conntrackSysctls := &kpov1.ConntrackSysctls{Applied: []string{"net.netfilter.nf_conntrack_tcp_timeout_established=86400"},
		Failed: []string{"net.netfilter.nf_conntrack_max=131072: permission denied"}}
	runAgent(t, ctx, cancel, be, Options{
		Config: cfg, NodeName: "agent-node-1", Kube: kube, Client: c,
		ConntrackCleaner:   cleaner,
		ConntrackSysctls:   conntrackSysctls,
		HealthzBindAddress: healthz, MetricsBindAddress: freePort(t),
	})
	return &agentRig{ctx: ctx, c: c, be: be, cleaner: cleaner, healthz: healthz, node: node, svc: svc, slice: slice,
		conntrack: conntrackSysctls,
		webKey: model.ServicePortKey{ServicePortName: model.ServicePortName{Namespace: "agent-test", Name: "web", Port: "http",
			Protocol: corev1.ProtocolUDP}, Family: model.IPv4}}
}

// firstSync: the first sync is full and proxies web, not the headless Service.
func (r *agentRig) firstSync(t *testing.T) {
	apiserver.Eventually(t, 20*time.Second, func() error {
		s, ok := r.be.last()
		if !ok {
			return errors.New("no sync yet")
		}
		sp := s.snap.Services[r.webKey]
		if sp == nil || len(sp.ClusterEndpoints) != 2 {
			return fmt.Errorf("web not synced with 2 endpoints: %+v", s.snap.Services)
		}
		if n := inNamespace(s.snap, "agent-test"); n != 1 {
			return fmt.Errorf("%d service ports of agent-test proxied, want 1 (not the headless one): %v", n, s.snap.Services)
		}
		return nil
	})
	r.be.mu.Lock()
	first := r.be.syncs[0]
	r.be.mu.Unlock()
	if !first.full {
		t.Error("the first sync was not full")
	}
}

// report: the agent's report on the real API server.
func (r *agentRig) report(t *testing.T) {
	pns := &kpov1.ProxyNodeStatus{}
	apiserver.Eventually(t, 20*time.Second, func() error {
		if err := r.c.Get(r.ctx, types.NamespacedName{Name: "agent-node-1"}, pns); err != nil {
			return err
		}
		if !meta.IsStatusConditionTrue(pns.Status.Conditions, kpov1.NodeConditionSynced) ||
			pns.Status.Services != 2 || pns.Status.Endpoints != 3 || pns.Status.ActiveMode != kpov1.ModeNFTables {
			return fmt.Errorf("status %+v", pns.Status)
		}
		return nil
	})
	if pns.Status.Configuration != "default" || pns.Status.ConfigurationGeneration != 3 || pns.Status.Rules != 14 {
		t.Errorf("report %+v", pns.Status)
	}
	if !equality.Semantic.DeepEqual(pns.Status.Conntrack, r.conntrack) {
		t.Errorf("conntrack report %+v, want %+v", pns.Status.Conntrack, r.conntrack)
	}
	if refs := pns.OwnerReferences; len(refs) != 1 || refs[0].Kind != "Node" || refs[0].UID != r.node.UID {
		t.Errorf("owner references %+v, want the Node", refs)
	}
}

// endpointRemoved: an endpoint goes away: a partial sync, and its UDP flows are cleared.
func (r *agentRig) endpointRemoved(t *testing.T) {
	r.slice.Endpoints = r.slice.Endpoints[:1]
	must(t, r.c.Update(r.ctx, r.slice))
	apiserver.Eventually(t, 20*time.Second, func() error {
		s, _ := r.be.last()
		if sp := s.snap.Services[r.webKey]; sp == nil || len(sp.ClusterEndpoints) != 1 {
			return errors.New("endpoint removal not synced")
		}
		if s.full {
			return errors.New("an endpoint change caused a full sync")
		}
		return nil
	})
	apiserver.Eventually(t, 5*time.Second, func() error {
		if !r.cleaner.cleared("10.244.2.5") {
			return errors.New("stale UDP conntrack of the removed endpoint not cleared")
		}
		return nil
	})
}

// healthAfterSync: healthz answers 200 while rules are fresh; readyz too, after a sync.
func (r *agentRig) healthAfterSync(t *testing.T) {
	if code := get(t, "http://"+r.healthz+"/healthz"); code != http.StatusOK {
		t.Errorf("/healthz = %d", code)
	}
	if code := get(t, "http://"+r.healthz+ReadyPath); code != http.StatusOK {
		t.Errorf("%s = %d after a successful sync", ReadyPath, code)
	}
}

// failureAndRecovery: the kernel refuses a sync: reported, with the error;
// recovery is a full sync.
func (r *agentRig) failureAndRecovery(t *testing.T) {
	pns := &kpov1.ProxyNodeStatus{}
	r.be.setFail(errors.New("nft: Could not process rule: No such file or directory"))
	svc2 := r.svc.DeepCopy()
	svc2.ResourceVersion, svc2.Name, svc2.Spec.ClusterIP, svc2.Spec.ClusterIPs = "", "web2", "", nil
	must(t, r.c.Create(r.ctx, svc2))
	apiserver.Eventually(t, 20*time.Second, func() error {
		if err := r.c.Get(r.ctx, types.NamespacedName{Name: "agent-node-1"}, pns); err != nil {
			return err
		}
		cond := meta.FindStatusCondition(pns.Status.Conditions, kpov1.NodeConditionSynced)
		if cond == nil || cond.Status != metav1.ConditionFalse || cond.Reason != kpov1.NodeReasonSyncFailed || pns.Status.LastError == "" {
			return fmt.Errorf("failure not reported: %+v", pns.Status)
		}
		return nil
	})
	// Recovery is a full sync.
	r.be.setFail(nil)
	apiserver.Eventually(t, 30*time.Second, func() error {
		s, _ := r.be.last()
		if inNamespace(s.snap, "agent-test") != 2 || !s.full {
			return fmt.Errorf("no full sync with both services after the failure (full=%v, %d services)", s.full, len(s.snap.Services))
		}
		return nil
	})
}

// nodeDeleting: the node is being deleted: /healthz fails so that load
// balancers drain it; /livez and /readyz do not.
func (r *agentRig) nodeDeleting(t *testing.T) {
	r.node.Spec.Taints = []corev1.Taint{{Key: "ToBeDeletedByClusterAutoscaler", Effect: corev1.TaintEffectNoSchedule}}
	must(t, r.c.Update(r.ctx, r.node))
	apiserver.Eventually(t, 10*time.Second, func() error {
		if code := get(t, "http://"+r.healthz+"/healthz"); code != http.StatusServiceUnavailable {
			return fmt.Errorf("/healthz = %d while the node is being deleted", code)
		}
		if code := get(t, "http://"+r.healthz+"/livez"); code != http.StatusOK {
			return fmt.Errorf("/livez = %d", code)
		}
		if code := get(t, "http://"+r.healthz+ReadyPath); code != http.StatusOK {
			return fmt.Errorf("%s = %d while the node is being deleted", ReadyPath, code)
		}
		return nil
	})
}

// TestAgentThatCannotSyncIsNotReady: an agent whose every sync fails reports
// why in its ProxyNodeStatus and stays unready (the DaemonSet's probes use
// /readyz, so a roll stops there), while /healthz answers as kube-proxy's
// does for a proxy that has not synced yet: 200.
func TestAgentThatCannotSyncIsNotReady(t *testing.T) {
	if env == nil {
		t.Skip("needs kube-apiserver; not run with -short")
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c := env.Client
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "unready-node"}}
	must(t, c.Create(ctx, node))
	be := &recordingBackend{fail: errors.New("nft: Error: Could not process rule: Invalid argument")}
	cfg := &kpov1.AgentConfiguration{ConfigurationName: "unready", ConfigurationGeneration: 2, Mode: kpov1.ModeNFTables}
	cfg.Default()
	healthz := freePort(t)
	runAgent(t, ctx, cancel, be, Options{
		Config: cfg, NodeName: node.Name, Kube: kubernetes.NewForConfigOrDie(env.Config), Client: c,
		HealthzBindAddress: healthz, MetricsBindAddress: freePort(t),
	})
	apiserver.Eventually(t, 20*time.Second, func() error {
		pns := &kpov1.ProxyNodeStatus{}
		if err := c.Get(ctx, types.NamespacedName{Name: node.Name}, pns); err != nil {
			return err
		}
		cond := meta.FindStatusCondition(pns.Status.Conditions, kpov1.NodeConditionSynced)
		if cond == nil || cond.Reason != kpov1.NodeReasonSyncFailed || pns.Status.ConfigurationGeneration != 2 {
			return fmt.Errorf("failure not reported: %+v", pns.Status)
		}
		return nil
	})
	if code := get(t, "http://"+healthz+ReadyPath); code != http.StatusServiceUnavailable {
		t.Errorf("%s = %d while every sync fails, want 503", ReadyPath, code)
	}
	if code := get(t, "http://"+healthz+"/healthz"); code != http.StatusOK {
		t.Errorf("/healthz = %d before the first sync, want 200 as kube-proxy", code)
	}
}

func inNamespace(snap *model.Snapshot, ns string) int {
	n := 0
	for k := range snap.Services {
		if k.Namespace == ns {
			n++
		}
	}
	return n
}

type recordingCleaner struct {
	mu        sync.Mutex
	endpoints []string
}

// Reconcile records the endpoints a flow to the web Service's ClusterIP
// would be stale with.
func (r *recordingCleaner) Reconcile(f model.Family, w conntrack.Wanted) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, ep := range []string{"10.244.1.5", "10.244.2.5"} {
		for vip := range w.ByAddress {
			e := conntrack.Entry{OrigDst: vip, ReplySrc: netip.AddrPortFrom(netip.MustParseAddr(ep), 8080)}
			if f == model.IPv4 && w.Stale(e) && !slices.Contains(r.endpoints, ep) {
				r.endpoints = append(r.endpoints, ep)
			}
		}
	}
	return 0, nil
}
func (r *recordingCleaner) cleared(ip string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, e := range r.endpoints {
		if e == ip {
			return true
		}
	}
	return false
}

func get(t *testing.T, url string) int {
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	return resp.StatusCode
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// drainingBackend reports draining endpoints for its first few syncs.
type drainingBackend struct {
	recordingBackend
	draining int
}

func (b *drainingBackend) Sync(ctx context.Context, snap *model.Snapshot, changes *backend.Changes) (backend.SyncResult, error) {
	res, err := b.recordingBackend.Sync(ctx, snap, changes)
	b.mu.Lock()
	if b.draining > 0 {
		b.draining--
	}
	res.Draining = b.draining
	b.mu.Unlock()
	return res, err
}

// TestAgentResyncsWhileDraining: with nothing changing, the agent keeps syncing
// while the backend reports draining endpoints, and stops when they are gone.
func TestAgentResyncsWhileDraining(t *testing.T) {
	if env == nil {
		t.Skip("needs kube-apiserver; not run with -short")
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	be := &drainingBackend{draining: 3}
	cfg := &kpov1.AgentConfiguration{ConfigurationName: "drain", Mode: kpov1.ModeNFTables}
	cfg.MinSyncPeriod, cfg.SyncPeriod = "10ms", "1h"
	cfg.Default()
	runAgent(t, ctx, cancel, be, Options{
		Config: cfg, NodeName: "drain-node", Kube: kubernetes.NewForConfigOrDie(env.Config),
		HealthzBindAddress: freePort(t), MetricsBindAddress: freePort(t),
	})
	// The first sync plus one per drain step: 4 syncs without any change.
	apiserver.Eventually(t, 20*time.Second, func() error {
		be.mu.Lock()
		defer be.mu.Unlock()
		if len(be.syncs) < 4 {
			return fmt.Errorf("%d syncs, want 4", len(be.syncs))
		}
		return nil
	})
}

// TestFullSyncUnderContinuousChurn: while changes keep coming faster than
// syncPeriod, every run is a change and the runner's periodic (full) run never
// comes; the agent still makes a sync full once the last full one is
// syncPeriod old. (The soak found the old agent doing none in 30 minutes.)
func TestFullSyncUnderContinuousChurn(t *testing.T) {
	be := &recordingBackend{}
	churn(t, be, "churn", "2s")
	// Past the first full sync: at least two partial syncs, then a full one.
	apiserver.Eventually(t, 15*time.Second, func() error {
		be.mu.Lock()
		defer be.mu.Unlock()
		partials := 0
		for _, s := range be.syncs[1:] {
			if !s.full {
				partials++
			} else if partials >= 2 {
				return nil
			}
		}
		return fmt.Errorf("%d syncs, %d partial, no full sync after them", len(be.syncs), partials)
	})
}

// TestSlowFullSyncsLeaveRoomForPartials: full syncs slower than syncPeriod
// (10k Services in the IPVS VM: 60 s against 30 s) must not make every
// sync full; the period counts from the end of the last full sync. Every
// sync was full when it counted from the start.
func TestSlowFullSyncsLeaveRoomForPartials(t *testing.T) {
	be := &recordingBackend{fullDelay: 1500 * time.Millisecond}
	churn(t, be, "slow-full", "1s")
	apiserver.Eventually(t, 20*time.Second, func() error {
		be.mu.Lock()
		defer be.mu.Unlock()
		partials := 0
		for _, s := range be.syncs[1:] {
			if !s.full {
				partials++
			}
		}
		if partials < 2 {
			return fmt.Errorf("%d syncs, %d partial", len(be.syncs), partials)
		}
		return nil
	})
}

// churn runs an agent on be with syncPeriod and creates a Service every
// 200 ms in namespace ns (a change well inside every syncPeriod) until the
// test ends, once the first sync is done.
func churn(t *testing.T, be *recordingBackend, ns, syncPeriod string) {
	t.Helper()
	if env == nil {
		t.Skip("needs kube-apiserver; not run with -short")
	}
	ctx, cancel := context.WithCancel(context.Background())
	c := env.Client
	must(t, c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}))
	cfg := &kpov1.AgentConfiguration{ConfigurationName: ns, Mode: kpov1.ModeNFTables}
	cfg.MinSyncPeriod, cfg.SyncPeriod = "50ms", kpov1.Duration(syncPeriod)
	cfg.Default()
	runAgent(t, ctx, cancel, be, Options{
		Config: cfg, NodeName: ns + "-node", Kube: kubernetes.NewForConfigOrDie(env.Config),
		HealthzBindAddress: freePort(t), MetricsBindAddress: freePort(t),
	})
	apiserver.Eventually(t, 20*time.Second, func() error {
		if _, ok := be.last(); !ok {
			return errors.New("no first sync yet")
		}
		return nil
	})
	churnDone := make(chan struct{})
	go func() {
		defer close(churnDone)
		for i := 0; ctx.Err() == nil; i++ {
			svc := &corev1.Service{
				ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("s%d", i)},
				Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 80}}},
			}
			if err := c.Create(ctx, svc); err != nil && ctx.Err() == nil {
				t.Errorf("creating %s: %v", svc.Name, err)
				return
			}
			select {
			case <-ctx.Done():
			case <-time.After(200 * time.Millisecond):
			}
		}
	}()
	t.Cleanup(func() { cancel(); <-churnDone })
}
