package cluster_test

import (
	"context"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
	"kpo.dev/kpo/hack/apiserver"
	"kpo.dev/kpo/hack/cluster"
	"kpo.dev/kpo/test/testnet"
)

// TestHandOverUnderLoad deletes a ProxyConfiguration whose nodes a younger
// one selects too, under the steady load, twice: to a configuration of the
// same mode (nftables → nftables: the same tables, so a cleanup racing the
// new agents' first sync would remove the successor's rules, and one before
// it would leave the nodes without rules), then to another mode (nftables →
// iptables). The old agents must leave their rules for the new ones, which
// wait for each node's lock and replace them in one sync (removing the other
// mode's after it). No request fails; no node ever reports CleanedUp; every
// node ends up reporting the new configuration with only its mode's objects;
// the old configuration and its DaemonSet go.
//
// It runs after TestZZDeletionCleansNodes (files run in name order) and
// starts from no configuration.
func TestHandOverUnderLoad(t *testing.T) {
	c := need(t)
	ctx := context.Background()
	deleteAllConfigurations(t, c)
	t.Cleanup(func() { deleteAllConfigurations(t, c) })
	// Names sort as the ages: ownership ties (same second) go by name.
	first := createConfiguration(t, c, "handover-a", kpov1.ModeNFTables)
	if _, err := c.WaitProxyAvailable(ctx, first.Name, kpov1.ModeNFTables, settle); err != nil {
		t.Fatal(err)
	}
	ls := loads(t, c)
	second := handOver(t, c, first, "handover-b", kpov1.ModeNFTables)
	handOver(t, c, second, "handover-c", kpov1.ModeIPTables)
	var summary []string
	for _, l := range ls {
		total, failures := l.Stop()
		if len(failures) > 0 || total < 20 {
			t.Errorf("across two hand-overs (%s): %d of %d requests failed; first: %q", l.What, len(failures), total, failures[:min(5, len(failures))])
		}
		summary = append(summary, fmt.Sprintf("%s: %d failed of %d", l.What, len(failures), total))
	}
	t.Logf("loads: %s", strings.Join(summary, "; "))
}

// handOver creates the successor of old (younger, every node, mode), checks
// that old holds the nodes, deletes old and checks the hand-over.
func handOver(t *testing.T, c *cluster.Cluster, old *kpov1.ProxyConfiguration, name string, mode kpov1.Mode) *kpov1.ProxyConfiguration {
	t.Helper()
	ctx := context.Background()
	successor := createConfiguration(t, c, name, mode)
	watch := watchReports(c, name)
	t.Cleanup(func() { dumpOnFailure(t, c, watch) })
	apiserver.Eventually(t, settle, func() error {
		var pc kpov1.ProxyConfiguration
		if err := c.Client.Get(ctx, client.ObjectKey{Name: name}, &pc); err != nil {
			return err
		}
		if pc.Status.ObservedGeneration != pc.Generation || pc.Status.DesiredNodes != 0 {
			return fmt.Errorf("%s: observed %d, desired %d nodes: want every node held by %s", name,
				pc.Status.ObservedGeneration, pc.Status.DesiredNodes, old.Name)
		}
		return nil
	})

	began := watch.start()
	if err := c.Client.Delete(ctx, old); err != nil {
		t.Fatal(err)
	}
	if _, err := c.WaitProxyAvailable(ctx, name, mode, settle); err != nil {
		t.Fatal(err)
	}
	available := time.Since(began)
	apiserver.Eventually(t, settle, func() error {
		err := c.Client.Get(ctx, client.ObjectKey{Name: old.Name}, &kpov1.ProxyConfiguration{})
		if !apierrors.IsNotFound(err) {
			return fmt.Errorf("%s still there (%v)", old.Name, err)
		}
		err = c.Client.Get(ctx, client.ObjectKey{Namespace: "kpo-system", Name: "kpo-agent-" + old.Name}, &appsv1.DaemonSet{})
		if !apierrors.IsNotFound(err) {
			return fmt.Errorf("the DaemonSet of %s still there (%v)", old.Name, err)
		}
		return nil
	})
	gone := time.Since(began)
	taken, reasons := watch.finish(c)
	expectOnlyMode(t, c, mode)
	var perNode []string
	for _, n := range c.Nodes {
		perNode = append(perNode, fmt.Sprintf("%s %.1fs", n.Name, taken[n.Name].Seconds()))
		if slices.ContainsFunc(reasons[n.Name], func(s string) bool { return strings.HasSuffix(s, ":"+kpov1.NodeReasonCleanedUp) }) {
			t.Errorf("%s reported CleanedUp during the hand-over (reasons seen: %v)", n.Name, reasons[n.Name])
		}
	}
	t.Logf("hand-over %s (%s) → %s (%s): nodes synced by the new configuration after %s; %s Available after %.1fs; "+
		"%s and its DaemonSet gone after %.1fs; configuration:reason seen per node: %v", old.Name, old.Spec.Mode, name, mode,
		strings.Join(perNode, ", "), name, available.Seconds(), old.Name, gone.Seconds(), reasons)
	return successor
}

// dumpOnFailure prints the pods, the reports and the agents' logs (as last
// copied: a stopped pod's files go with it) of a failed test.
func dumpOnFailure(t *testing.T, c *cluster.Cluster, w *reportWatch) {
	if !t.Failed() {
		return
	}
	t.Logf("pods:\n%s", c.DescribePods(context.Background()))
	var reports kpov1.ProxyNodeStatusList
	if err := c.Client.List(context.Background(), &reports); err == nil {
		for _, r := range reports.Items {
			t.Logf("report %s: %+v", r.Name, r.Status)
		}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for path, log := range w.logs {
		t.Logf("%s:\n%s", path, testnet.Tail(log, 4000))
	}
}

// createConfiguration creates a ProxyConfiguration selecting every node.
func createConfiguration(t *testing.T, c *cluster.Cluster, name string, mode kpov1.Mode) *kpov1.ProxyConfiguration {
	t.Helper()
	pc := &kpov1.ProxyConfiguration{ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: kpov1.ProxyConfigurationSpec{Mode: mode, ProxySettings: kpov1.ProxySettings{
			ClusterCIDRs: []kpov1.CIDR{"10.244.0.0/16", "fd10:244::/48"}, MinSyncPeriod: "100ms"}}}
	if err := c.Client.Create(context.Background(), pc); err != nil {
		t.Fatal(err)
	}
	return pc
}

// deleteAllConfigurations deletes every ProxyConfiguration and waits until
// they are gone (their agents clean the nodes).
func deleteAllConfigurations(t *testing.T, c *cluster.Cluster) {
	t.Helper()
	ctx := context.Background()
	if err := c.Client.DeleteAllOf(ctx, &kpov1.ProxyConfiguration{}); err != nil {
		t.Fatal(err)
	}
	apiserver.Eventually(t, settle+CleanupBound, func() error {
		var list kpov1.ProxyConfigurationList
		if err := c.Client.List(ctx, &list); err != nil {
			return err
		}
		if len(list.Items) > 0 {
			return fmt.Errorf("%d ProxyConfigurations still there", len(list.Items))
		}
		return nil
	})
}

// CleanupBound is the operator's bound on a deletion's wait for the nodes.
const CleanupBound = 2 * time.Minute

// reportWatch samples the ProxyNodeStatus reports: the configuration:reason
// of Synced each node went through, and when each first reported the new
// configuration synced.
type reportWatch struct {
	began   time.Time
	newName string
	mu      sync.Mutex
	reasons map[string][]string
	taken   map[string]time.Duration
	// logs are the agents' container logs, as last read.
	logs map[string]string
	stop context.CancelFunc
	done chan struct{}
}

func watchReports(c *cluster.Cluster, newName string) *reportWatch {
	ctx, cancel := context.WithCancel(context.Background())
	w := &reportWatch{began: time.Now(), newName: newName, reasons: map[string][]string{}, taken: map[string]time.Duration{}, logs: map[string]string{},
		stop: cancel, done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for ctx.Err() == nil {
			w.sample(ctx, c)
			time.Sleep(100 * time.Millisecond) // the sampling rate
		}
	}()
	return w
}

// start (re)starts the clock of the times taken.
func (w *reportWatch) start() time.Time {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.began = time.Now()
	return w.began
}

func (w *reportWatch) sample(ctx context.Context, c *cluster.Cluster) {
	files, _ := filepath.Glob(filepath.Join(c.Dir, "nodes", "*", "pods", "kpo-system_kpo-agent-*", "*.log"))
	logs := map[string]string{}
	for _, f := range files {
		if b, err := os.ReadFile(f); err == nil {
			logs[strings.TrimPrefix(f, c.Dir)] = string(b)
		}
	}
	var reports kpov1.ProxyNodeStatusList
	if err := c.Client.List(ctx, &reports); err != nil {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	maps.Copy(w.logs, logs)
	for _, r := range reports.Items {
		for _, cond := range r.Status.Conditions {
			if cond.Type != kpov1.NodeConditionSynced {
				continue
			}
			seen := w.reasons[r.Name]
			label := r.Status.Configuration + ":" + cond.Reason
			if len(seen) == 0 || seen[len(seen)-1] != label {
				w.reasons[r.Name] = append(seen, label)
			}
			if _, ok := w.taken[r.Name]; !ok && r.Status.Configuration == w.newName && synced(&r) {
				w.taken[r.Name] = time.Since(w.began)
			}
		}
	}
}

// finish stops sampling and returns when each node first reported the new
// configuration synced, and the configuration:reason sequence of each node.
func (w *reportWatch) finish(c *cluster.Cluster) (map[string]time.Duration, map[string][]string) {
	w.stop()
	<-w.done
	w.sample(context.Background(), c)
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.taken, w.reasons
}
