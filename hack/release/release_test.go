package release

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"kpo.dev/kpo/hack/apiserver"
)

// A digest for rendering; the API server does not pull.
const testDigest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func kubectl(t *testing.T) string {
	t.Helper()
	bin, err := apiserver.Binary("kubectl")
	if err != nil {
		t.Skip(err)
	}
	return bin
}

// helm is the helm binary `make helm` installs (bin/helm-<version>).
func helm(t *testing.T) string {
	t.Helper()
	found, _ := filepath.Glob(filepath.Join(apiserver.RepoRoot(), "bin", "helm-v*"))
	if len(found) == 0 {
		t.Fatal("no bin/helm-<version>: run 'make helm'")
	}
	sort.Strings(found)
	return found[len(found)-1]
}

// TestChartIsCurrent: the chart's generated files are what config/ renders
// now (a new RBAC marker or CRD field reaches the chart by `make chart`).
func TestChartIsCurrent(t *testing.T) {
	repo := apiserver.RepoRoot()
	files, err := ChartFiles(context.Background(), repo, kubectl(t))
	if err != nil {
		t.Fatal(err)
	}
	for path, want := range files {
		got, err := os.ReadFile(filepath.Join(repo, "charts", "kpo", path))
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("charts/kpo/%s is stale (%v): run 'make chart' and commit", path, err)
		}
	}
}

func TestImageDigest(t *testing.T) {
	f := filepath.Join(t.TempDir(), "digests.txt")
	data := "kpo:dev@sha256:aaa linux/amd64@sha256:bbb\nkpo-echo:dev@sha256:ccc linux/amd64@sha256:ddd\n"
	if err := os.WriteFile(f, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	if d, err := ImageDigest(f, "kpo"); err != nil || d != "sha256:aaa" {
		t.Errorf("kpo: %q %v", d, err)
	}
	if d, err := ImageDigest(f, "kpo-echo"); err != nil || d != "sha256:ccc" {
		t.Errorf("kpo-echo: %q %v", d, err)
	}
	if _, err := ImageDigest(f, "other"); err == nil {
		t.Error("a missing image gave no error")
	}
}

// TestInstallYAMLIsPinned: install.yaml runs the operator and hands the
// agents the image by digest, and refuses to render without one.
func TestInstallYAMLIsPinned(t *testing.T) {
	ctx := context.Background()
	o := Options{Repo: apiserver.RepoRoot(), Kubectl: kubectl(t), Version: "v9.8.7", Image: "registry.example/kpo", Digest: testDigest}
	out, err := InstallYAML(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	objs, err := decode(out)
	if err != nil {
		t.Fatal(err)
	}
	d := find(objs, "Deployment", Namespace, OperatorDeployment)
	if d == nil {
		t.Fatal("no operator Deployment")
	}
	c := d.Object["spec"].(map[string]any)["template"].(map[string]any)["spec"].(map[string]any)["containers"].([]any)[0].(map[string]any)
	if c["image"] != "registry.example/kpo@"+testDigest {
		t.Errorf("operator image %v", c["image"])
	}
	if !strings.Contains(fmt.Sprint(c["env"]), "value:registry.example/kpo@"+testDigest) {
		t.Errorf("AGENT_IMAGE not pinned: %v", c["env"])
	}
	if d.GetLabels()["app.kubernetes.io/version"] != "v9.8.7" {
		t.Errorf("labels %v", d.GetLabels())
	}
	o.Digest = "latest"
	if _, err := InstallYAML(ctx, o); err == nil {
		t.Error("rendered without a digest")
	}
}

func find(objs []*unstructured.Unstructured, kind, namespace, name string) *unstructured.Unstructured {
	for _, o := range objs {
		if o.GetKind() == kind && o.GetNamespace() == namespace && o.GetName() == name {
			return o
		}
	}
	return nil
}

func key(o *unstructured.Unstructured) string {
	return o.GetKind() + " " + o.GetNamespace() + "/" + o.GetName()
}

// TestBundleAppliesToAPIServer: install.yaml and the chart's `helm template`
// output both pass a server-side dry-run apply on a real kube-apiserver
// (schemas, CEL, RBAC escalation checks, admission), and the chart with its
// default values renders the same objects as install.yaml.
func TestBundleAppliesToAPIServer(t *testing.T) {
	if testing.Short() {
		t.Skip("needs kube-apiserver")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	env, err := apiserver.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = env.Stop() }()
	repo := apiserver.RepoRoot()
	install, err := InstallYAML(ctx, Options{Repo: repo, Kubectl: kubectl(t), Version: "dev", Image: "kpo", Digest: testDigest})
	if err != nil {
		t.Fatal(err)
	}
	// A dry run creates nothing, so the namespaced objects need their
	// namespaces to exist already (kpo-system, default).
	if out, err := env.Kubectl(ctx, nil, "create", "namespace", Namespace); err != nil {
		t.Fatal(out, err)
	}
	if out, err := env.Kubectl(ctx, install, "apply", "--server-side", "--dry-run=server", "-f", "-"); err != nil {
		t.Fatalf("install.yaml: %v\n%s", err, out)
	}

	cmd := exec.CommandContext(ctx, helm(t), "template", "kpo", filepath.Join(repo, "charts", "kpo"),
		"--namespace", Namespace, "--include-crds", "--set", "image.digest="+testDigest)
	var chart, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &chart, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("helm template: %v: %s", err, stderr.String())
	}
	if out, err := env.Kubectl(ctx, chart.Bytes(), "apply", "--server-side", "--dry-run=server", "-f", "-"); err != nil {
		t.Fatalf("helm template output: %v\n%s", err, out)
	}

	fromInstall, err := decode(install)
	if err != nil {
		t.Fatal(err)
	}
	rendered, err := decode(chart.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	// The uninstall hook is the chart's own (install.yaml's uninstall is
	// `make undeploy`'s order, docs/install.md).
	var fromChart []*unstructured.Unstructured
	hooks := 0
	for _, o := range rendered {
		if o.GetAnnotations()["helm.sh/hook"] == "pre-delete" {
			hooks++
			continue
		}
		fromChart = append(fromChart, o)
	}
	if hooks != 6 {
		t.Errorf("%d pre-delete hook objects, want the uninstall Job and its ServiceAccount and RBAC (6)", hooks)
	}
	// Helm keeps its release in the namespace, so it must exist before the
	// chart installs: the chart has none (docs/install.md creates it).
	fromInstall = slices.DeleteFunc(fromInstall, func(o *unstructured.Unstructured) bool { return o.GetKind() == "Namespace" })
	if len(fromChart) != len(fromInstall) {
		t.Errorf("the chart renders %d objects, install.yaml %d", len(fromChart), len(fromInstall))
	}
	for _, want := range fromInstall {
		got := find(fromChart, want.GetKind(), want.GetNamespace(), want.GetName())
		if got == nil {
			t.Errorf("the chart lacks %s", key(want))
			continue
		}
		if !equality.Semantic.DeepEqual(got.Object, want.Object) {
			g, _ := Encode([]*unstructured.Unstructured{got})
			w, _ := Encode([]*unstructured.Unstructured{want})
			t.Errorf("%s differs:\nchart:\n%s\ninstall.yaml:\n%s", key(want), g, w)
		}
	}
}

func TestPinValues(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(apiserver.RepoRoot(), "charts", "kpo", "values.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	out, err := pinValues(data, "registry.example/kpo", testDigest)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), "\n  repository: registry.example/kpo\n") || !strings.Contains(string(out), "\n  digest: "+testDigest+"\n") {
		t.Errorf("values not pinned:\n%s", out)
	}
	if _, err := pinValues([]byte("other: 1\n"), "x", testDigest); err == nil {
		t.Error("no error for values without image")
	}
}

// helmTemplate renders the chart with args.
func helmTemplate(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(helm(t), append([]string{"template", "kpo", filepath.Join(apiserver.RepoRoot(), "charts", "kpo")}, args...)...)
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	err := cmd.Run()
	if err != nil {
		err = fmt.Errorf("%w: %s", err, stderr.String())
	}
	return out.String(), err
}

// TestChartValues: the documented values act, and a namespace other than
// kpo-system is refused with a message saying which to use.
func TestChartValues(t *testing.T) {
	out, err := helmTemplate(t, "-n", Namespace, "--set", "kubeAPIServer=198.51.100.254:6443",
		"--set", "agentKubeAPIServer=198.51.100.253:6443", "--set", "operator.metricsBindAddress=:8080",
		"--set", "image.repository=registry.example/kpo", "--set", "image.tag=v1.2.3",
		"--set", "agentImageAllow=registry.example/")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"name: KPO_KUBE_APISERVER\n              value: \"198.51.100.254:6443\"",
		"name: KPO_AGENT_KUBE_APISERVER\n              value: \"198.51.100.253:6443\"",
		"--metrics-bind-address=:8080",
		"image: registry.example/kpo:v1.2.3",
		"name: KPO_AGENT_IMAGE_ALLOW\n              value: \"registry.example/\"",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("helm template output lacks %q", want)
		}
	}
	if strings.Contains(out, "kind: Namespace") {
		t.Error("the chart renders a Namespace, which helm install cannot own (it keeps the release there)")
	}
	if _, err := helmTemplate(t, "-n", "other"); err == nil || !strings.Contains(err.Error(), "kpo installs into the namespace kpo-system only") {
		t.Errorf("namespace other: %v", err)
	}
}
