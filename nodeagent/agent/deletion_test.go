package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
	"kpo.dev/kpo/hack/apiserver"
	"kpo.dev/kpo/nodeagent/backend"
)

// cleanupBackend records syncs and cleanups; its cleanup fails while
// cleanupErr is set.
type cleanupBackend struct {
	recordingBackend
	mode       kpov1.Mode
	cleanups   int
	cleanupErr error
}

func (b *cleanupBackend) Mode() kpov1.Mode { return b.mode }
func (b *cleanupBackend) Cleanup(context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.cleanups++
	return b.cleanupErr
}
func (b *cleanupBackend) setCleanupErr(err error) { b.mu.Lock(); b.cleanupErr = err; b.mu.Unlock() }
func (b *cleanupBackend) cleanupCount() int       { b.mu.Lock(); defer b.mu.Unlock(); return b.cleanups }

// deletionFixture is an agent on a fresh node for configuration name (held
// by a test finalizer, as the operator's would), with an nftables and an
// iptables backend; it returns once the agent has synced.
type deletionFixture struct {
	node        string
	pc          *kpov1.ProxyConfiguration
	nft, ipt    *cleanupBackend
	lock        string
	healthz     string
	mu          sync.Mutex
	leftovers   []string
	leftoverErr error
}

const testHold = "test.kpo.dev/hold"

func newDeletionFixture(t *testing.T, ctx context.Context, name string) *deletionFixture {
	t.Helper()
	c := env.Client
	f := &deletionFixture{node: name + "-node", lock: filepath.Join(t.TempDir(), "agent.lock"), healthz: freePort(t),
		nft: &cleanupBackend{mode: kpov1.ModeNFTables}, ipt: &cleanupBackend{mode: kpov1.ModeIPTables}}
	must(t, c.Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: f.node}}))
	f.pc = &kpov1.ProxyConfiguration{ObjectMeta: metav1.ObjectMeta{Name: name, Finalizers: []string{testHold}},
		Spec: kpov1.ProxyConfigurationSpec{Mode: kpov1.ModeNFTables, NodeSelector: map[string]string{"kpo-test": name}}}
	must(t, c.Create(ctx, f.pc))
	t.Cleanup(func() { release(t, name) })
	// The node carries the label the configurations of this test select.
	node := &corev1.Node{}
	must(t, c.Get(ctx, types.NamespacedName{Name: f.node}, node))
	node.Labels = map[string]string{"kpo-test": name}
	must(t, c.Update(ctx, node))

	lock, err := AcquireHostLock(ctx, f.lock, name)
	must(t, err)
	cfg := &kpov1.AgentConfiguration{ConfigurationName: name, ConfigurationGeneration: 1, Mode: kpov1.ModeNFTables}
	cfg.MinSyncPeriod = "50ms"
	cfg.Default()
	// With watch, as kpo-agent's: the agent watches its configuration.
	wc, err := client.NewWithWatch(env.Config, client.Options{Scheme: env.Client.Scheme()})
	must(t, err)
	a, err := New(Options{
		Config: cfg, NodeName: f.node, Kube: kubernetes.NewForConfigOrDie(env.Config), Client: wc,
		Backends: map[kpov1.Mode]func() (backend.Backend, error){
			kpov1.ModeNFTables: func() (backend.Backend, error) { return f.nft, nil },
			kpov1.ModeIPTables: func() (backend.Backend, error) { return f.ipt, nil },
		},
		HealthzBindAddress: f.healthz, MetricsBindAddress: freePort(t),
		HostLock: lock,
		Leftovers: func(context.Context) ([]string, error) {
			f.mu.Lock()
			defer f.mu.Unlock()
			return f.leftovers, f.leftoverErr
		},
	})
	must(t, err)
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- a.Run(runCtx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("agent stopped with %v", err)
		}
		lock.Release()
	})
	f.waitReason(t, kpov1.NodeReasonSynced)
	return f
}

// release removes the test's finalizer so that the configuration goes.
func release(t *testing.T, name string) {
	pc := &kpov1.ProxyConfiguration{}
	if env.Client.Get(context.Background(), types.NamespacedName{Name: name}, pc) == nil {
		controllerutil.RemoveFinalizer(pc, testHold)
		_ = env.Client.Update(context.Background(), pc)
	}
}

// waitReason waits until the node's Synced condition has reason and returns it.
func (f *deletionFixture) waitReason(t *testing.T, reason string) *metav1.Condition {
	t.Helper()
	var cond *metav1.Condition
	apiserver.Eventually(t, 20*time.Second, func() error {
		pns := &kpov1.ProxyNodeStatus{}
		if err := env.Client.Get(context.Background(), types.NamespacedName{Name: f.node}, pns); err != nil {
			return err
		}
		cond = meta.FindStatusCondition(pns.Status.Conditions, kpov1.NodeConditionSynced)
		if cond == nil || cond.Reason != reason {
			return fmt.Errorf("Synced %+v, want reason %s", cond, reason)
		}
		return nil
	})
	return cond
}

// TestDeletionHandsTheNodeOver: a deleted configuration whose node another
// (younger) configuration selects leaves its rules for that configuration's
// agent — no mode is cleaned up — reports HandedOver, stops listening and
// releases the host lock; without a successor it removes every mode's rules.
func TestDeletionHandsTheNodeOver(t *testing.T) {
	if env == nil {
		t.Skip("needs kube-apiserver; not run with -short")
	}
	ctx := context.Background()
	f := newDeletionFixture(t, ctx, "handover-old")
	successor := &kpov1.ProxyConfiguration{ObjectMeta: metav1.ObjectMeta{Name: "handover-new"},
		Spec: kpov1.ProxyConfigurationSpec{Mode: kpov1.ModeIPTables, NodeSelector: map[string]string{"kpo-test": "handover-old"}}}
	must(t, env.Client.Create(ctx, successor))
	t.Cleanup(func() { _ = env.Client.Delete(ctx, successor) })

	// (The first sync removed the other modes' leftovers: counted before.)
	nftBefore, iptBefore := f.nft.cleanupCount(), f.ipt.cleanupCount()
	must(t, env.Client.Delete(ctx, f.pc))
	cond := f.waitReason(t, kpov1.NodeReasonHandedOver)
	if !strings.Contains(cond.Message, "handover-new") {
		t.Errorf("HandedOver message %q does not name the successor", cond.Message)
	}
	if n, m := f.nft.cleanupCount()-nftBefore, f.ipt.cleanupCount()-iptBefore; n+m != 0 {
		t.Errorf("a handed-over node had its rules removed (nftables %d, iptables %d cleanups)", n, m)
	}
	// The successor's agent gets the lock and the ports at once.
	lockCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	lock, err := AcquireHostLock(lockCtx, f.lock, "successor")
	if err != nil {
		t.Fatalf("the host lock was not released on hand-over: %v", err)
	}
	lock.Release()
	apiserver.Eventually(t, 10*time.Second, func() error {
		l, err := net.Listen("tcp", f.healthz)
		if err != nil {
			return fmt.Errorf("the healthz port is still in use after the hand-over: %w", err)
		}
		return l.Close()
	})
}

// TestDeletionWithoutSuccessorCleansUp: with nobody to take the node over,
// every mode's rules go; a mode whose cleanup fails does not keep the others
// from going, the report says CleanupFailed with what remains, and the
// cleanup is retried until it succeeds.
func TestDeletionWithoutSuccessorCleansUp(t *testing.T) {
	if env == nil {
		t.Skip("needs kube-apiserver; not run with -short")
	}
	ctx := context.Background()
	f := newDeletionFixture(t, ctx, "cleanup-halfway")
	f.ipt.setCleanupErr(errors.New("iptables-restore: CHAIN_USER_DEL failed (Device or resource busy): chain KPO-SVC-ABC"))
	f.mu.Lock()
	f.leftovers = []string{"iptables-nft nat KPO-SVC-ABC"}
	f.mu.Unlock()

	must(t, env.Client.Delete(ctx, f.pc))
	cond := f.waitReason(t, kpov1.NodeReasonCleanupFailed)
	for _, want := range []string{"iptables: iptables-restore: CHAIN_USER_DEL failed", "still holds: iptables-nft nat KPO-SVC-ABC"} {
		if !strings.Contains(cond.Message, want) {
			t.Errorf("CleanupFailed message %q does not say %q", cond.Message, want)
		}
	}
	if f.nft.cleanupCount() < 1 {
		t.Error("the nftables rules were not removed because the iptables cleanup failed")
	}
	// Retried with backoff: the failing mode is tried again.
	apiserver.Eventually(t, 10*time.Second, func() error {
		if n := f.ipt.cleanupCount(); n < 3 {
			return fmt.Errorf("%d iptables cleanups so far", n)
		}
		return nil
	})
	f.ipt.setCleanupErr(nil)
	f.waitReason(t, kpov1.NodeReasonCleanedUp)
}
