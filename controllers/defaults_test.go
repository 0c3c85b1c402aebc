package controllers

import (
	"encoding/json"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation/field"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
)

// TestCRDDefaultsMatchResolve: what the API server stores for a
// ProxyConfiguration that sets nothing (the CRD's OpenAPI defaults) is what
// kpov1.Resolve makes of the same empty spec, the function the operator and
// the agent resolve defaults with; also with an empty ipvs object (whose
// scheduler the CRD defaults inside it). A default added on one side only
// fails here.
func TestCRDDefaultsMatchResolve(t *testing.T) {
	needAPIServer(t)
	for _, tc := range []struct {
		name string
		spec kpov1.ProxyConfigurationSpec
	}{
		{"empty spec", kpov1.ProxyConfigurationSpec{}},
		{"empty ipvs settings", kpov1.ProxyConfigurationSpec{Mode: kpov1.ModeIPVS, ProxySettings: kpov1.ProxySettings{IPVS: &kpov1.IPVSSettings{}}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pc := &kpov1.ProxyConfiguration{ObjectMeta: metav1.ObjectMeta{Name: objectName("defaults " + tc.name)}, Spec: tc.spec}
			// Select no node: the operator renders it, no agent runs.
			pc.Spec.NodeSelector = map[string]string{"test": "defaults"}
			if err := k8s.Create(testCtx, pc); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = k8s.Delete(testCtx, pc) })
			stored := pc.Spec.ProxySettings

			resolved := tc.spec.ProxySettings.DeepCopy()
			mode, err := kpov1.Resolve(tc.spec.Mode, resolved, field.NewPath("spec"))
			if err != nil {
				t.Fatalf("Resolve refused the empty spec: %v", err)
			}
			if mode != pc.Spec.Mode {
				t.Errorf("mode: the API server defaults %q, Resolve %q", pc.Spec.Mode, mode)
			}
			got, _ := json.Marshal(stored)
			want, _ := json.Marshal(resolved)
			if string(got) != string(want) {
				t.Errorf("settings differ:\n API server %s\n Resolve    %s", got, want)
			}
		})
	}
}
