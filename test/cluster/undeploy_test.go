package cluster_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
	"kpo.dev/kpo/hack/apiserver"
	"kpo.dev/kpo/hack/cluster"
	"kpo.dev/kpo/test/testnet"
)

// TestZZZUndeploy (the last test: its file sorts last, and it removes kpo)
// runs `make undeploy` while a ProxyConfiguration's agents run: the
// configuration goes first, its agents removing the nodes' rules, and only
// then the operator and the CRDs, which therefore do not get stuck on
// finalizers; no node keeps a kpo object.
func TestZZZUndeploy(t *testing.T) {
	c := need(t)
	ctx := context.Background()
	deleteAllConfigurations(t, c)
	createConfiguration(t, c, "undeploy", kpov1.ModeIPTables)
	if _, err := c.WaitProxyAvailable(ctx, "undeploy", kpov1.ModeIPTables, settle); err != nil {
		t.Fatal(err)
	}
	kubectl, err := apiserver.Binary("kubectl")
	if err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	cmd := exec.CommandContext(ctx, "make", "undeploy", "KUBECTL="+kubectl, "UNDEPLOY_TIMEOUT=4m")
	cmd.Dir = cluster.Repo(".")
	cmd.Env = append(os.Environ(), "KUBECONFIG="+c.Kubeconfig)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("make undeploy: %v:\n%s", err, out)
	}
	took := time.Since(began)
	for _, n := range c.Nodes {
		objects, err := testnet.KpoObjects(n.NS)
		if err != nil {
			t.Fatal(err)
		}
		if len(objects) > 0 {
			t.Errorf("%s still holds %v after make undeploy", n.Name, objects)
		}
	}
	for _, crd := range []string{"proxyconfigurations.proxy.kpo.dev", "proxynodestatuses.proxy.kpo.dev"} {
		if got, err := c.Kubectl(ctx, nil, "get", "crd", crd, "--ignore-not-found", "-o", "name"); err != nil || strings.TrimSpace(got) != "" {
			t.Errorf("CRD %s after make undeploy: %q (%v)", crd, got, err)
		}
	}
	apiserver.Eventually(t, settle, func() error {
		err := c.Client.Get(ctx, client.ObjectKey{Namespace: "kpo-system", Name: "kpo-operator"}, &appsv1.Deployment{})
		if !apierrors.IsNotFound(err) {
			return fmt.Errorf("the operator's Deployment is still there (%v)", err)
		}
		return nil
	})
	t.Logf("make undeploy with a running configuration took %v:\n%s", took.Round(100*time.Millisecond), out)
}
