// Package cluster_test is kpo's whole-system suite: one local cluster of real
// Kubernetes components (hack/cluster: kube-apiserver, etcd,
// kube-controller-manager, kube-scheduler, and kubelet + containerd on each
// node), the operator deployed from install.yaml as `make release` renders it
// and run from the image `make images` built, the sample ProxyConfiguration and the demo app, and then mode
// switches, restarts and deletion under load, checked by real packets and by
// each node's kernel state.
//
// The tests share the cluster and run in order (Go runs a package's tests
// sequentially, files in name order); the deletion test runs after the others
// of cluster_test.go, then the hand-over test, undeploy, the rollback to
// kube-proxy (which installs kpo again) and the Helm install and uninstall.
package cluster_test

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
	"kpo.dev/kpo/hack/cluster"
)

// secondService is a second Service on the demo app's pods (port 81).
const secondService = "echo-b"

var (
	lc  *cluster.Cluster
	svc *corev1.Service
	// setupErr is why the cluster did not come up (the tests fail with it).
	setupErr error
)

func TestMain(m *testing.M) {
	ctrllog.SetLogger(logr.Discard())
	// Root and the Kubernetes binaries are checked by the tests (netns.Skip);
	// a short run skips the whole suite.
	flag.Parse() // for testing.Short
	if os.Geteuid() != 0 || testing.Short() {
		os.Exit(m.Run())
	}
	var stop func()
	lc, svc, stop, setupErr = start()
	code := m.Run()
	if stop != nil {
		stop()
		// Nothing of the run may stay on the machine.
		if left := cluster.Leftovers("", os.Getpid()); len(left) > 0 {
			fmt.Fprintf(os.Stderr, "the local cluster left on the machine:\n  %s\n", strings.Join(left, "\n  "))
			code = 1
		}
	}
	os.Exit(code)
}

// start brings up the cluster the tests share, as `make demo` does.
func start() (*cluster.Cluster, *corev1.Service, func(), error) {
	ctx := context.Background()
	c, err := cluster.Start(ctx, cluster.Options{Nodes: 3})
	if err != nil {
		return nil, nil, nil, err
	}
	stop := c.Close
	fail := func(err error) (*cluster.Cluster, *corev1.Service, func(), error) {
		err = fmt.Errorf("%w\n%s", err, c.DescribePods(ctx))
		stop()
		return nil, nil, nil, err
	}
	if err := c.WaitNodesReady(ctx, 2*time.Minute); err != nil {
		return fail(err)
	}
	if err := c.DeployOperator(ctx, 3*time.Minute); err != nil {
		return fail(err)
	}
	if _, err := c.Kubectl(ctx, nil, "apply", "-f", cluster.Repo(cluster.SamplesDir)); err != nil {
		return fail(err)
	}
	if _, err := c.WaitProxyAvailable(ctx, "default", kpov1.ModeNFTables, 3*time.Minute); err != nil {
		return fail(err)
	}
	s, err := c.DeployEcho(ctx, 3, 3*time.Minute)
	if err != nil {
		return fail(err)
	}
	// A second Service on the same pods, so that the loads cover several Services.
	second := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: secondService, Namespace: "demo"},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "echo"}, Ports: []corev1.ServicePort{
			{Name: "tcp", Protocol: corev1.ProtocolTCP, Port: 81, TargetPort: intstr.FromInt32(8080)},
			{Name: "udp", Protocol: corev1.ProtocolUDP, Port: 81, TargetPort: intstr.FromInt32(8080)},
		}},
	}
	if err := c.Client.Create(ctx, second); err != nil {
		return fail(err)
	}
	if err := c.WaitReadyEndpoints(ctx, "demo", secondService, 3, time.Minute); err != nil {
		return fail(err)
	}
	return c, s, stop, nil
}

// need skips without root and fails if the shared cluster did not come up.
func need(t *testing.T) *cluster.Cluster {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("whole-system test: needs root (network namespaces, mounts)")
	}
	if testing.Short() {
		t.Skip("whole-system test: not run with -short")
	}
	if setupErr != nil {
		t.Fatalf("the local cluster did not come up: %v", setupErr)
	}
	if lc == nil {
		t.Fatal("no local cluster")
	}
	return lc
}
