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

	kpov1 "kpo.dev/kpo/api/v1alpha1"
	"kpo.dev/kpo/hack/apiserver"
	"kpo.dev/kpo/hack/netns"
	"kpo.dev/kpo/test/testnet"
)

// TestIPVSUnavailableReported runs an agent in ipvs mode on this machine, whose
// kernel has no IPVS: it must say so in its ProxyNodeStatus (Synced=False,
// reason IPVSUnavailable) and keep running, not crash-loop silently.
func TestIPVSUnavailableReported(t *testing.T) {
	netns.Skip(t)
	if ok, _ := netns.KernelHasIPVS(); ok {
		t.Skip("this kernel has IPVS; the VM tests cover the mode")
	}
	tn := testnet.New(t, api, agentBin, 1, 0)
	node := tn.Nodes[0]
	cfg := agentConfig(kpov1.ModeIPVS)
	node.StartAgent(t, cfg)
	apiserver.Eventually(t, 60*time.Second, func() error {
		pns := &kpov1.ProxyNodeStatus{}
		if err := api.Client.Get(context.Background(), types.NamespacedName{Name: node.Name}, pns); err != nil {
			return err
		}
		c := meta.FindStatusCondition(pns.Status.Conditions, kpov1.NodeConditionSynced)
		if c == nil || c.Status != metav1.ConditionFalse || c.Reason != kpov1.NodeReasonIPVSUnavailable {
			return fmt.Errorf("Synced condition %+v, want False/IPVSUnavailable", c)
		}
		if !strings.Contains(strings.ToLower(c.Message), "ipvs") {
			return fmt.Errorf("message %q does not say what is missing", c.Message)
		}
		return nil
	})
	if node.AgentPID() == 0 || !node.AgentRunning() {
		t.Errorf("the agent exited instead of reporting and waiting:\n%s", node.AgentLogs())
	}
	if !strings.Contains(node.AgentLogs(), "IPVS") {
		t.Errorf("no log line names IPVS:\n%s", node.AgentLogs())
	}
}
