package controllers

import (
	"fmt"
	"slices"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
	"kpo.dev/kpo/hack/apiserver"
)

// TestStatusTransitionsBecomeEvents runs the suite's operator against the real
// API server: the status the rollup writes (a roll starting on a new
// configuration's node) is recorded as an Event on the configuration. The
// Events were once recorded only where the reconciler wrote the status, and
// went silent when the rollup took the writes over.
func TestStatusTransitionsBecomeEvents(t *testing.T) {
	needAPIServer(t)
	sel := uniqueName(t, "")
	createNode(t, sel+"-1", map[string]string{"test": sel})
	pc := createConfig(t, sel, sel, nil)
	apiserver.Eventually(t, wait, func() error {
		evs, err := clientset(t).EventsV1().Events(metav1.NamespaceDefault).List(testCtx, metav1.ListOptions{})
		if err != nil {
			return err
		}
		var reasons []string
		for _, e := range evs.Items {
			if e.Regarding.Kind == "ProxyConfiguration" && e.Regarding.Name == pc.Name {
				reasons = append(reasons, e.Reason)
			}
		}
		if !slices.Contains(reasons, kpov1.ReasonRollingOut) {
			return fmt.Errorf("events of %s: %v, want %s", pc.Name, reasons, kpov1.ReasonRollingOut)
		}
		return nil
	})
}
