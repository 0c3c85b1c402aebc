package main

import (
	"context"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"

	"kpo.dev/kpo/controllers/imagepolicy"
)

// ownDigestWait bounds the wait for the kubelet to report the operator's own
// container: the policy then goes without the digest.
const ownDigestWait = 30 * time.Second

// pinnedOwnImage returns the agent image by the digest the operator's own
// container runs, when the agent image is the operator's image (one image
// holds both binaries) and the node's runtime reports a registry digest for
// it. The agents then run exactly what the operator runs, whatever the tag
// points to later. It reads the operator's own Pod (namespace/name from the
// downward API); "" means no digest is known.
func pinnedOwnImage(ctx context.Context, c client.Reader, namespace, pod, image string) string {
	if pod == "" || image == "" {
		return ""
	}
	logger := log.FromContext(ctx)
	var pinned string
	err := wait.PollUntilContextTimeout(ctx, time.Second, ownDigestWait, true, func(ctx context.Context) (bool, error) {
		p := &corev1.Pod{}
		if err := c.Get(ctx, client.ObjectKey{Namespace: namespace, Name: pod}, p); err != nil {
			logger.V(1).Info("reading the operator's own pod", "err", err)
			return false, nil
		}
		if len(p.Status.ContainerStatuses) == 0 {
			return false, nil // not reported yet
		}
		for _, cs := range p.Status.ContainerStatuses {
			if got, ok := imagepolicy.Pinned(image, cs.ImageID); ok {
				pinned = got
				return true, nil
			}
		}
		return true, nil // reported, but no registry digest of this image
	})
	if err != nil {
		logger.Info("no digest of the operator's own image known: the agents run it by its reference", "image", image, "err", err)
	}
	return pinned
}

// splitList splits a comma-separated flag value.
func splitList(s string) []string {
	var out []string
	for _, e := range strings.Split(s, ",") {
		if e = strings.TrimSpace(e); e != "" {
			out = append(out, e)
		}
	}
	return out
}
