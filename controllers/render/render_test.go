package render

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
	"kpo.dev/kpo/controllers/imagepolicy"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// sample is a configuration as the API server stores it (with its defaults).
func sample() *kpov1.ProxyConfiguration {
	pc := &kpov1.ProxyConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: "default", UID: "0b1c2d3e-0000-4000-8000-000000000001", Generation: 3},
		Spec: kpov1.ProxyConfigurationSpec{
			Mode:         kpov1.ModeNFTables,
			NodeSelector: map[string]string{"node-role.kubernetes.io/worker": ""},
			Tolerations:  []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
			Agent: kpov1.AgentPodSpec{
				ImagePullPolicy:   corev1.PullIfNotPresent,
				PriorityClassName: "system-node-critical",
				LogLevel:          2,
				Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{
					corev1.ResourceCPU: resource.MustParse("100m"), corev1.ResourceMemory: resource.MustParse("64Mi"),
				}},
				UpdateStrategy: kpov1.AgentUpdateStrategy{MaxUnavailable: ptr.To(intstr.FromString("10%"))},
			},
			ProxySettings: kpov1.ProxySettings{ClusterCIDRs: []kpov1.CIDR{"10.244.0.0/16", "fd10:244::/48"}},
		},
	}
	pc.Spec.Default()
	return pc
}

func TestRenderGolden(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts Options
	}{
		{"default", Options{Namespace: "kpo-system", DefaultAgentImage: "registry.example/kpo:v0.1.0"}},
		{"excluded-nodes", Options{Namespace: "kpo-system", DefaultAgentImage: "registry.example/kpo:v0.1.0",
			ExcludedNodes: []string{"node-b", "node-a"}}},
		{"apiserver-address", Options{Namespace: "kpo-system", DefaultAgentImage: "registry.example/kpo:v0.1.0",
			APIServerHost: "198.51.100.254", APIServerPort: "6443"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			objs, err := Render(sample(), tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			var out bytes.Buffer
			for _, o := range []any{objs.ServiceAccount, objs.ConfigMap, objs.DaemonSet} {
				data, err := yaml.Marshal(o)
				if err != nil {
					t.Fatal(err)
				}
				out.WriteString("---\n")
				out.Write(data)
			}
			compareGolden(t, tc.name, out.Bytes())
		})
	}
}

// compareGolden compares got with testdata/<name>.golden.yaml (rewritten with -update).
func compareGolden(t *testing.T, name string, got []byte) {
	t.Helper()
	golden := filepath.Join("testdata", name+".golden.yaml")
	if *update {
		if err := os.WriteFile(golden, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run 'go test ./controllers/render -update' to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("rendering differs from %s (rerun with -update and review the diff):\n%s", golden, got)
	}
}

func TestRenderIsDeterministic(t *testing.T) {
	opts := Options{Namespace: "kpo-system", DefaultAgentImage: "img", ExcludedNodes: []string{"c", "a", "b"}}
	first, err := Render(sample(), opts)
	if err != nil {
		t.Fatal(err)
	}
	for range 20 {
		again, _ := Render(sample(), opts)
		a, _ := json.Marshal(first.DaemonSet)
		b, _ := json.Marshal(again.DaemonSet)
		if !bytes.Equal(a, b) {
			t.Fatalf("two renderings of the same input differ:\n%s\n%s", a, b)
		}
	}
}

func TestConfigHashFollowsAgentConfiguration(t *testing.T) {
	opts := Options{Namespace: "kpo-system", DefaultAgentImage: "img"}
	base, _ := Render(sample(), opts)
	for _, tc := range []struct {
		name    string
		mutate  func(*kpov1.ProxyConfiguration)
		changes bool
	}{
		{"mode", func(pc *kpov1.ProxyConfiguration) { pc.Spec.Mode = kpov1.ModeIPTables }, true},
		{"setting", func(pc *kpov1.ProxyConfiguration) { pc.Spec.MasqueradeAll = true }, true},
		{"generation", func(pc *kpov1.ProxyConfiguration) { pc.Generation++ }, true},
		{"image only", func(pc *kpov1.ProxyConfiguration) { pc.Spec.Agent.Image = "other" }, false},
	} {
		pc := sample()
		tc.mutate(pc)
		objs, err := Render(pc, opts)
		if err != nil {
			t.Fatal(err)
		}
		if (objs.ConfigHash != base.ConfigHash) != tc.changes {
			t.Errorf("%s: hash changed=%v, want %v", tc.name, objs.ConfigHash != base.ConfigHash, tc.changes)
		}
	}
}

func TestRenderErrors(t *testing.T) {
	if _, err := Render(sample(), Options{Namespace: "kpo-system"}); err == nil {
		t.Error("no image anywhere: want an error")
	}
	if _, err := Render(sample(), Options{DefaultAgentImage: "img"}); err == nil {
		t.Error("no namespace: want an error")
	}
}

// TestImageOutsidePolicyRendersNothing: a spec naming an image outside the
// operator's agent image policy gets the policy's refusal and no object.
func TestImageOutsidePolicyRendersNothing(t *testing.T) {
	policy, err := imagepolicy.New("registry.example/kpo:v0.1.0", "", []string{"registry.example/approved/"})
	if err != nil {
		t.Fatal(err)
	}
	opts := Options{Namespace: "kpo-system", DefaultAgentImage: policy.Default(), ImagePolicy: policy}
	for image, allowed := range map[string]bool{
		"":                                  true, // the default
		"registry.example/kpo:v0.1.0":       true,
		"registry.example/approved/kpo:v2":  true,
		"attacker.example/root-shell:v1":    false,
		"registry.example/approved-not/x:1": false,
	} {
		pc := sample()
		pc.Spec.Agent.Image = image
		objs, err := Render(pc, opts)
		if allowed {
			if err != nil {
				t.Errorf("%q: %v", image, err)
			}
			continue
		}
		var refused *imagepolicy.NotAllowedError
		if !errors.As(err, &refused) || objs != nil {
			t.Errorf("%q: rendered %v with error %v, want nothing and the policy's refusal", image, objs, err)
		}
	}
}

// TestAgentBindingGolden: one binding of the fixed kpo-agent ClusterRole to
// every configuration's ServiceAccount, owned by all of them.
func TestAgentBindingGolden(t *testing.T) {
	a, b, deleting := sample(), sample(), sample()
	b.Name, b.UID = "canary", "0b1c2d3e-0000-4000-8000-000000000002"
	// Its agents still need the role to report CleanedUp; it owns nothing any more.
	deleting.Name, deleting.UID, deleting.DeletionTimestamp = "old", "0b1c2d3e-0000-4000-8000-000000000003", &metav1.Time{}
	data, err := yaml.Marshal(AgentBinding("kpo-system", []*kpov1.ProxyConfiguration{a, deleting, b}))
	if err != nil {
		t.Fatal(err)
	}
	compareGolden(t, "agent-binding", data)
	again, _ := yaml.Marshal(AgentBinding("kpo-system", []*kpov1.ProxyConfiguration{b, a, deleting}))
	if !bytes.Equal(data, again) {
		t.Errorf("the binding depends on the order of the configurations:\n%s\n%s", data, again)
	}
	// Only configurations being deleted: they own it, so that it goes with the last.
	last := AgentBinding("kpo-system", []*kpov1.ProxyConfiguration{deleting})
	if len(last.OwnerReferences) != 1 || *last.OwnerReferences[0].UID != deleting.UID {
		t.Errorf("owners %+v, want the configuration being deleted", last.OwnerReferences)
	}
}

// TestInvalidSettingsRenderNothing: settings the agent would refuse (say,
// stored under an older CRD without today's rules) are refused before any
// object is rendered, with the field's name, so nothing rolls out.
func TestInvalidSettingsRenderNothing(t *testing.T) {
	pc := sample()
	pc.Spec.SyncPeriod, pc.Spec.MinSyncPeriod = "0s", "0s"
	pc.Spec.NFTables.MasqueradeBit = ptr.To[int32](15)
	objs, err := Render(pc, Options{Namespace: "kpo-system", DefaultAgentImage: "img"})
	if err == nil || objs != nil {
		t.Fatalf("rendered %v, want an error", objs)
	}
	for _, want := range []string{"invalid configuration", "spec.syncPeriod", "spec.nftables.masqueradeBit"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
}

// TestProbesGateTheRollOnReadyz: the pods turn ready only through /readyz
// (503 until the agent's first successful sync), so that a rolling update
// waits for a working node; liveness stays on /livez, which (as kube-proxy's)
// is healthy while the agent starts.
func TestProbesGateTheRollOnReadyz(t *testing.T) {
	pc := sample()
	pc.Spec.HealthzPort = 20256
	objs, err := Render(pc, Options{Namespace: "kpo-system", DefaultAgentImage: "img"})
	if err != nil {
		t.Fatal(err)
	}
	c := objs.DaemonSet.Spec.Template.Spec.Containers[0]
	for name, p := range map[string]*corev1ac.ProbeApplyConfiguration{"startup": c.StartupProbe, "readiness": c.ReadinessProbe} {
		if p == nil || *p.HTTPGet.Path != "/readyz" || p.HTTPGet.Port.IntValue() != 20256 {
			t.Errorf("%s probe %+v, want GET /readyz on the healthz port", name, p)
		}
	}
	if p := c.LivenessProbe; p == nil || *p.HTTPGet.Path != "/livez" {
		t.Errorf("liveness probe %+v, want /livez", p)
	}
	ru := objs.DaemonSet.Spec.UpdateStrategy
	if *ru.Type != "RollingUpdate" || ru.RollingUpdate.MaxUnavailable.String() != "10%" {
		t.Errorf("update strategy %+v, want a rolling update bounded by spec.agent.updateStrategy", ru)
	}
}

func TestSelects(t *testing.T) {
	pc := sample()
	pc.Spec.NodeSelector = map[string]string{"pool": "a"}
	node := func(labels map[string]string, taints ...corev1.Taint) *corev1.Node {
		return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n", Labels: labels}, Spec: corev1.NodeSpec{Taints: taints}}
	}
	noSchedule := corev1.Taint{Key: "dedicated", Value: "gpu", Effect: corev1.TaintEffectNoSchedule}
	now := metav1.NewTime(time.Now())
	deleting := node(map[string]string{"pool": "a"})
	deleting.DeletionTimestamp = &now
	for _, tc := range []struct {
		name        string
		tolerations []corev1.Toleration
		node        *corev1.Node
		want        bool
	}{
		{"matching labels", pc.Spec.Tolerations, node(map[string]string{"pool": "a"}), true},
		{"other labels", pc.Spec.Tolerations, node(map[string]string{"pool": "b"}), false},
		{"windows node", pc.Spec.Tolerations, node(map[string]string{"pool": "a", corev1.LabelOSStable: "windows"}), false},
		{"tainted, tolerate everything", pc.Spec.Tolerations, node(map[string]string{"pool": "a"}, noSchedule), true},
		{"tainted, no tolerations", nil, node(map[string]string{"pool": "a"}, noSchedule), false},
		{"PreferNoSchedule is no bar", nil, node(map[string]string{"pool": "a"},
			corev1.Taint{Key: "k", Effect: corev1.TaintEffectPreferNoSchedule}), true},
		{"being deleted", pc.Spec.Tolerations, deleting, false},
	} {
		p := pc.DeepCopy()
		p.Spec.Tolerations = tc.tolerations
		if got := Selects(p, tc.node); got != tc.want {
			t.Errorf("%s: Selects=%v, want %v", tc.name, got, tc.want)
		}
	}
}
