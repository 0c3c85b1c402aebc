package cluster_test

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
	"kpo.dev/kpo/hack/apiserver"
	"kpo.dev/kpo/hack/cluster"
	"kpo.dev/kpo/hack/netns"
	"kpo.dev/kpo/test/testnet"
)

// settle bounds the waits of the suite: a roll of three agents, a restart.
const settle = 2 * time.Minute

// loadInterval is each load's pause between requests.
const loadInterval = 20 * time.Millisecond

// loads starts the steady load of the mode-switch and restart tests, on two
// Services: new TCP connections and UDP requests from a pod to the first's
// ClusterIP and to the second's, and from the external client to the first's
// NodePort. Each load starts once its target has answered: a Service's
// EndpointSlices being ready in the API does not mean the client's node has
// programmed it yet, and a request sent before that is lost to the set-up,
// not to what the test exercises.
func loads(t *testing.T, c *cluster.Cluster) []*testnet.Load {
	t.Helper()
	pod := clientPod(t, c)
	second, err := c.Kube.CoreV1().Services("demo").Get(context.Background(), secondService, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	vip := net.JoinHostPort(svc.Spec.ClusterIP, "80")
	vip2 := net.JoinHostPort(second.Spec.ClusterIP, "81")
	nodePort := net.JoinHostPort(netns.NodeAddr4(1), "30080")
	var ls []*testnet.Load
	for _, l := range []struct {
		from *netns.NS
		addr string
	}{{pod, vip}, {pod, vip2}, {c.External, nodePort}} {
		for _, network := range []string{"tcp", "udp"} {
			apiserver.Eventually(t, settle, func() error {
				_, err := l.from.Dial(network, l.addr, 2*time.Second)
				return err
			})
			ls = append(ls, testnet.StartLoad(l.from, network, l.addr, loadInterval))
		}
	}
	return ls
}

func stopLoads(t *testing.T, what string, ls []*testnet.Load) {
	t.Helper()
	sent, failed := 0, 0
	for _, l := range ls {
		total, failures := l.Stop()
		sent, failed = sent+total, failed+len(failures)
		if len(failures) > 0 || total < 20 {
			t.Errorf("%s (%s): %d of %d requests failed (want none of at least 20); first: %q",
				what, l.What, len(failures), total, failures[:min(len(failures), 5)])
		}
	}
	t.Logf("%s: %d requests over %d loads, %d failed", what, sent, len(ls), failed)
}

// clientPod is the network namespace of one of the demo app's pods.
func clientPod(t *testing.T, c *cluster.Cluster) *netns.NS {
	t.Helper()
	pods, err := c.Kube.CoreV1().Pods("demo").List(context.Background(), metav1.ListOptions{LabelSelector: "app=echo"})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pods.Items {
		if ns := c.PodNS(p.Namespace, p.Name); ns != nil && p.DeletionTimestamp == nil {
			return ns
		}
	}
	t.Fatal("no running demo pod")
	return nil
}

// setMode edits the sample ProxyConfiguration's mode, as `kubectl patch` does.
func setMode(t *testing.T, c *cluster.Cluster, mode kpov1.Mode) {
	t.Helper()
	if _, err := c.Kubectl(context.Background(), nil, "patch", "proxyconfig", "default", "--type", "merge",
		"-p", fmt.Sprintf(`{"spec":{"mode":%q}}`, mode)); err != nil {
		t.Fatal(err)
	}
}

// waitAgents waits until the agent DaemonSet is fully rolled out and available.
func waitAgents(t *testing.T, c *cluster.Cluster) {
	t.Helper()
	if err := c.WaitDaemonSet(context.Background(), "kpo-system", "kpo-agent-default", settle); err != nil {
		t.Fatal(err)
	}
}

// expectOnlyMode waits until every node's kernel holds the mode's objects and
// none of another mode's.
func expectOnlyMode(t *testing.T, c *cluster.Cluster, mode kpov1.Mode) {
	t.Helper()
	for _, n := range c.Nodes {
		apiserver.Eventually(t, settle, func() error {
			objects, err := testnet.KpoObjects(n.NS)
			if err != nil {
				return err
			}
			if err := testnet.OnlyMode(objects, string(mode)); err != nil {
				return fmt.Errorf("%s: %w", n.Name, err)
			}
			return nil
		})
	}
}

// rollWatch follows a roll of the agent DaemonSet: when each node first
// reports the new mode synced, and the largest number of nodes that were
// without a ready, non-terminating agent pod at once.
type rollWatch struct {
	began          time.Time
	mode           kpov1.Mode
	mu             sync.Mutex
	switched       map[string]time.Duration
	maxUnavailable int
	// worst describes the agent pods when maxUnavailable was reached.
	worst string
	stop  context.CancelFunc
	done  chan struct{}
}

func watchRoll(c *cluster.Cluster, mode kpov1.Mode) *rollWatch {
	ctx, cancel := context.WithCancel(context.Background())
	w := &rollWatch{began: time.Now(), mode: mode, switched: map[string]time.Duration{}, stop: cancel, done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for ctx.Err() == nil {
			w.sample(ctx, c)
			time.Sleep(100 * time.Millisecond) // the sampling rate of the watch
		}
	}()
	return w
}

func (w *rollWatch) sample(ctx context.Context, c *cluster.Cluster) {
	var reports kpov1.ProxyNodeStatusList
	if err := c.Client.List(ctx, &reports); err == nil {
		w.mu.Lock()
		for _, r := range reports.Items {
			if _, seen := w.switched[r.Name]; !seen && r.Status.ActiveMode == w.mode && synced(&r) {
				w.switched[r.Name] = time.Since(w.began)
			}
		}
		w.mu.Unlock()
	}
	var pods corev1.PodList
	if err := c.Client.List(ctx, &pods, client.InNamespace("kpo-system"),
		client.MatchingLabels{"app.kubernetes.io/name": "kpo-agent"}); err != nil {
		return
	}
	ready := map[string]bool{}
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil && podReady(&p) {
			ready[p.Spec.NodeName] = true
		}
	}
	w.mu.Lock()
	if n := len(c.Nodes) - len(ready); n > w.maxUnavailable {
		w.maxUnavailable = n
		var b strings.Builder
		for _, p := range pods.Items {
			fmt.Fprintf(&b, "%s on %s: deleting %v, ready %v; ", p.Name, p.Spec.NodeName, p.DeletionTimestamp != nil, podReady(&p))
		}
		w.worst = fmt.Sprintf("at %.1fs: %s", time.Since(w.began).Seconds(), b.String())
	}
	w.mu.Unlock()
}

func (w *rollWatch) finish(c *cluster.Cluster) (switched map[string]time.Duration, maxUnavailable int, worst string) {
	w.stop()
	<-w.done
	// One more look: the last node may have switched since the last sample.
	w.sample(context.Background(), c)
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.switched, w.maxUnavailable, w.worst
}

func synced(r *kpov1.ProxyNodeStatus) bool {
	for _, cond := range r.Status.Conditions {
		if cond.Type == kpov1.NodeConditionSynced {
			return cond.Status == metav1.ConditionTrue
		}
	}
	return false
}

func podReady(p *corev1.Pod) bool {
	for _, cond := range p.Status.Conditions {
		if cond.Type == corev1.PodReady {
			return cond.Status == corev1.ConditionTrue
		}
	}
	return false
}
