package main

import (
	"context"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
)

const digest = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"

// TestPinnedOwnImage: the operator pins the agents to the digest its own
// container runs when the runtime reports a registry digest of that image,
// and to nothing otherwise (a local image, another image).
func TestPinnedOwnImage(t *testing.T) {
	for _, tc := range []struct {
		name, image, imageID, want string
	}{
		{"registry digest", "registry.example/kpo:v0.1.0", "registry.example/kpo@" + digest, "registry.example/kpo@" + digest},
		{"local image", "kpo:dev", digest, ""},
		{"another image", "registry.example/kpo:v0.1.0", "registry.example/other@" + digest, ""},
	} {
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "kpo-operator-0", Namespace: "kpo-system"},
			Status: corev1.PodStatus{ContainerStatuses: []corev1.ContainerStatus{
				{Name: "operator", Image: tc.image, ImageID: tc.imageID},
			}},
		}
		c := fake.NewClientBuilder().WithObjects(pod).Build()
		if got := pinnedOwnImage(context.Background(), c, "kpo-system", pod.Name, tc.image); got != tc.want {
			t.Errorf("%s: pinned %q, want %q", tc.name, got, tc.want)
		}
	}
	if got := pinnedOwnImage(context.Background(), fake.NewClientBuilder().Build(), "kpo-system", "", "kpo:dev"); got != "" {
		t.Errorf("without a pod name: %q", got)
	}
}
