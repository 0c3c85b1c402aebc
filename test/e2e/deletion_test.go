package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
	"kpo.dev/kpo/hack/apiserver"
	"kpo.dev/kpo/hack/netns"
	"kpo.dev/kpo/test/testnet"
)

// TestDeletionRemovesNodeRules deletes the ProxyConfiguration the agents run
// (held by a finalizer, as the operator does) and checks that every node's
// kernel loses its kpo rules and that the agents report CleanedUp.
func TestDeletionRemovesNodeRules(t *testing.T) {
	netns.Skip(t)
	ctx := context.Background()
	pc := &kpov1.ProxyConfiguration{ObjectMeta: metav1.ObjectMeta{Name: "default", Finalizers: []string{"test.kpo.dev/hold"}},
		Spec: kpov1.ProxyConfigurationSpec{Mode: kpov1.ModeNFTables}}
	if err := api.Client.Create(ctx, pc); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		latest := &kpov1.ProxyConfiguration{}
		if api.Client.Get(ctx, types.NamespacedName{Name: "default"}, latest) == nil {
			controllerutil.RemoveFinalizer(latest, "test.kpo.dev/hold")
			_ = api.Client.Update(ctx, latest)
		}
	})
	tn := testnet.New(t, api, agentBin, 2, 1)
	for _, node := range tn.Nodes {
		node.StartAgent(t, agentConfig(kpov1.ModeNFTables))
	}
	for _, node := range tn.Nodes {
		waitSynced(t, node.Name, kpov1.ModeNFTables)
		expectOnlyMode(t, node, kpov1.ModeNFTables)
	}
	if err := api.Client.Delete(ctx, pc); err != nil {
		t.Fatal(err)
	}
	for _, node := range tn.Nodes {
		apiserver.Eventually(t, 30*time.Second, func() error {
			pns := &kpov1.ProxyNodeStatus{}
			if err := api.Client.Get(ctx, types.NamespacedName{Name: node.Name}, pns); err != nil {
				return err
			}
			if c := meta.FindStatusCondition(pns.Status.Conditions, kpov1.NodeConditionSynced); c == nil || c.Reason != kpov1.NodeReasonCleanedUp {
				return fmt.Errorf("%s: Synced %+v, want reason CleanedUp", node.Name, c)
			}
			return nil
		})
		if out := node.MustRun(t, "nft", "list", "tables"); strings.Contains(out, " kpo") {
			t.Errorf("%s still has kpo tables after the deletion:\n%s", node.Name, out)
		}
		if !node.AgentRunning() {
			t.Errorf("%s: the agent exited; it should wait for its DaemonSet to go", node.Name)
		}
	}
}
