package cluster_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
	"kpo.dev/kpo/hack/apiserver"
	"kpo.dev/kpo/hack/cluster"
	"kpo.dev/kpo/hack/images"
	"kpo.dev/kpo/hack/netns"
	"kpo.dev/kpo/hack/release"
	"kpo.dev/kpo/test/testnet"
)

// TestZZZZZHelmInstallAndUninstall (after the rollback: a cluster without
// kpo or kube-proxy) installs kpo with the Helm chart, runs a
// ProxyConfiguration, and uninstalls with `helm uninstall`: the chart's
// pre-delete hook deletes the configuration and waits for its agents'
// cleanup before Helm removes the operator, so nothing is stuck on a
// finalizer and no node keeps a kpo rule.
func TestZZZZZHelmInstallAndUninstall(t *testing.T) {
	c := need(t)
	ctx := context.Background()
	found, _ := filepath.Glob(cluster.Repo("bin/helm-v*"))
	if len(found) == 0 {
		t.Fatal("no bin/helm-<version>: run 'make helm'")
	}
	sort.Strings(found)
	digest, err := release.ImageDigest(filepath.Join(cluster.ImagesDir(), "digests.txt"), images.Kpo.Name)
	if err != nil {
		t.Fatal(err)
	}
	helm := func(args ...string) string {
		t.Helper()
		cmd := exec.CommandContext(ctx, found[len(found)-1], append(args, "--kubeconfig", c.Kubeconfig)...)
		cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+t.TempDir(), "HELM_CONFIG_HOME="+t.TempDir(), "HELM_DATA_HOME="+t.TempDir())
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("helm %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	// As docs/install.md: the namespace first, labelled for the privileged agents.
	if out, err := c.Kubectl(ctx, nil, "create", "namespace", release.Namespace); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if out, err := c.Kubectl(ctx, nil, "label", "namespace", release.Namespace, "pod-security.kubernetes.io/enforce=privileged"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	helm("install", "kpo", cluster.Repo("charts/kpo"), "--namespace", release.Namespace, "--wait", "--timeout", "3m",
		"--set", "image.repository="+images.Kpo.Name, "--set", "image.digest="+digest,
		// This cluster has no proxy at all: the operator needs the address.
		"--set", fmt.Sprintf("kubeAPIServer=%s:%d", netns.LANIP4, cluster.APIServerPort))
	if _, err := c.Kubectl(ctx, nil, "apply", "-f", cluster.Repo(cluster.SamplesDir)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.WaitProxyAvailable(ctx, "default", kpov1.ModeNFTables, settle); err != nil {
		t.Fatal(err)
	}
	for _, n := range c.Nodes {
		if objects, err := testnet.KpoObjects(n.NS); err != nil || len(objects) == 0 {
			t.Fatalf("%s holds no kpo rules before the uninstall (%v)", n.Name, err)
		}
	}

	began := time.Now()
	out := helm("uninstall", "kpo", "--namespace", release.Namespace, "--wait", "--timeout", "6m")
	t.Logf("helm uninstall took %v: %s", time.Since(began).Round(100*time.Millisecond), strings.TrimSpace(out))
	var list kpov1.ProxyConfigurationList
	if err := c.Client.List(ctx, &list); err != nil || len(list.Items) > 0 {
		t.Errorf("ProxyConfigurations after helm uninstall: %d (%v)", len(list.Items), err)
	}
	for _, n := range c.Nodes {
		if objects, err := testnet.KpoObjects(n.NS); err != nil || len(objects) > 0 {
			t.Errorf("%s still holds kpo's %v (%v)", n.Name, objects, err)
		}
	}
	// Helm never deletes the chart's crds/ nor the namespace it installed
	// into: the last steps by hand (docs/install.md).
	if out, err := c.Kubectl(ctx, nil, "delete", "crd", "proxyconfigurations.proxy.kpo.dev", "proxynodestatuses.proxy.kpo.dev", "--wait", "--timeout=2m"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if out, err := c.Kubectl(ctx, nil, "delete", "namespace", release.Namespace, "--wait=false"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	apiserver.Eventually(t, settle, func() error {
		if err := kpoLeftInAPI(ctx, c); err != nil {
			return err
		}
		for _, get := range []func() error{
			func() error {
				_, err := c.Kube.RbacV1().ClusterRoles().Get(ctx, "kpo-uninstall", metav1.GetOptions{})
				return err
			},
			func() error {
				_, err := c.Kube.RbacV1().Roles(metav1.NamespaceDefault).Get(ctx, "kpo-uninstall", metav1.GetOptions{})
				return err
			},
		} {
			if err := get(); !apierrors.IsNotFound(err) {
				return fmt.Errorf("the uninstall hook's RBAC is still there (%v)", err)
			}
		}
		return nil
	})
}
