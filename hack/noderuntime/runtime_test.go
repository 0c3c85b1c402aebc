package noderuntime

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestExpand(t *testing.T) {
	vars := []corev1.EnvVar{{Name: "A", Value: "1"}, {Name: "B", Value: "two"}, {Name: "A", Value: "3"}}
	for in, want := range map[string]string{
		"plain":            "plain",
		"$(A)":             "3", // the later definition wins
		"x-$(B)-$(A)":      "x-two-3",
		"$(UNDEFINED)":     "$(UNDEFINED)",
		"$$(A)":            "$(A)", // escaped
		"cost $5":          "cost $5",
		"unclosed $(A":     "unclosed $(A",
		"--name=$(B)$":     "--name=two$",
		"$(A)$(B)$$$(A)":   "3two$3",
		"--v=$(B) --x=$$x": "--v=two --x=$x",
	} {
		if got := expand(in, vars); got != want {
			t.Errorf("expand(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestImageLookup(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "kpo-agent"), []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "notes"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	images := Images{"kpo": {Dir: dir}}
	for _, ref := range []string{"kpo", "kpo:dev", "registry.example/team/kpo:v0.1.0", "kpo@sha256:abc", "localhost:5000/kpo:1"} {
		img, err := images.lookup(ref)
		if err != nil {
			t.Errorf("lookup(%q): %v", ref, err)
			continue
		}
		if _, err := img.executable("/kpo-agent"); err != nil {
			t.Errorf("%s: %v", ref, err)
		}
	}
	if _, err := images.lookup("nginx:1.27"); err == nil || !strings.Contains(err.Error(), "knows: kpo") {
		t.Errorf("unknown image: %v, want an error naming the known images", err)
	}
	img := images["kpo"]
	for _, bad := range []string{"/notes", "/missing", "/../../etc/passwd"} {
		if _, err := img.executable(bad); err == nil {
			t.Errorf("executable(%q) resolved; want an error (not executable, missing, or outside the image)", bad)
		}
	}
}

func TestFieldValue(t *testing.T) {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "ns", UID: "u-1",
			Labels: map[string]string{"app": "echo"}, Annotations: map[string]string{"note": "x"}},
		Spec: corev1.PodSpec{NodeName: "node-2", ServiceAccountName: "sa"},
		Status: corev1.PodStatus{PodIP: "10.244.2.10", PodIPs: []corev1.PodIP{{IP: "10.244.2.10"}, {IP: "fd10:244:0:2::a"}},
			HostIP: "198.51.100.2", HostIPs: []corev1.HostIP{{IP: "198.51.100.2"}}},
	}
	for path, want := range map[string]string{
		"metadata.name": "p", "metadata.namespace": "ns", "metadata.uid": "u-1", "spec.nodeName": "node-2",
		"spec.serviceAccountName": "sa", "status.podIP": "10.244.2.10", "status.podIPs": "10.244.2.10,fd10:244:0:2::a",
		"status.hostIP": "198.51.100.2", "status.hostIPs": "198.51.100.2",
		"metadata.labels['app']": "echo", "metadata.annotations['note']": "x", "metadata.labels": `app="echo"`,
	} {
		got, err := fieldValue(pod, path)
		if err != nil || got != want {
			t.Errorf("fieldValue(%s) = %q, %v; want %q", path, got, err, want)
		}
	}
	if _, err := fieldValue(pod, "spec.hostname"); err == nil {
		t.Error("an unsupported field path resolved; want an error")
	}
}

func TestUnsupportedAndIgnored(t *testing.T) {
	pod := &corev1.Pod{Spec: corev1.PodSpec{
		InitContainers: []corev1.Container{{Name: "init"}},
		Containers: []corev1.Container{{Name: "c",
			Lifecycle:      &corev1.Lifecycle{PreStop: &corev1.LifecycleHandler{}},
			ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{GRPC: &corev1.GRPCAction{Port: 1}}},
			SecurityContext: &corev1.SecurityContext{Capabilities: &corev1.Capabilities{},
				ReadOnlyRootFilesystem: new(true)},
		}},
	}}
	why := unsupported(pod)
	for _, want := range []string{"initContainers", "gRPC probes (container c)", "lifecycle hooks (container c)"} {
		if !strings.Contains(why, want) {
			t.Errorf("unsupported() = %q, want it to name %q", why, want)
		}
	}
	ign := strings.Join(ignored(pod), "; ")
	for _, want := range []string{"securityContext.capabilities", "readOnlyRootFilesystem", "service link"} {
		if !strings.Contains(ign, want) {
			t.Errorf("ignored() = %q, want it to name %q", ign, want)
		}
	}
	if why := unsupported(&corev1.Pod{Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c"}}}}); why != "" {
		t.Errorf("a plain pod is unsupported: %s", why)
	}
}
