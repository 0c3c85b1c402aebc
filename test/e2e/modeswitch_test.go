package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/types"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
	"kpo.dev/kpo/hack/apiserver"
	"kpo.dev/kpo/hack/netns"
	"kpo.dev/kpo/test/testnet"
)

// TestModeSwitchMakeBeforeBreak switches a node iptables → nftables → iptables
// the way a DaemonSet roll does (the old agent stops, the new one starts with
// the other mode) under a steady load of new TCP connections from a pod, and
// checks that no request fails and that only the active mode's rules remain.
func TestModeSwitchMakeBeforeBreak(t *testing.T) {
	netns.Skip(t)
	tn := testnet.New(t, api, agentBin, 1, 2)
	node := tn.Nodes[0]
	client, server := node.Pods[0], node.Pods[1]
	node.StartAgent(t, agentConfig(kpov1.ModeIPTables))
	waitSynced(t, node.Name, kpov1.ModeIPTables)
	tn.CreateService(t, testnet.ServiceSpec{Name: "switch", ClusterIPs: []string{"10.96.2.1"}, Pods: []*testnet.Pod{server}})
	expectServer(t, client.NS, "tcp", "10.96.2.1:80", server.Name)

	ld := testnet.StartLoad(client.NS, "tcp", "10.96.2.1:80", 10*time.Millisecond)

	for _, mode := range []kpov1.Mode{kpov1.ModeNFTables, kpov1.ModeIPTables} {
		node.KillAgent()
		started := time.Now()
		node.StartAgent(t, agentConfig(mode))
		waitSyncedAfter(t, node.Name, started)
		waitSynced(t, node.Name, mode)
		t.Logf("switch to %s: synced %v after the new agent started", mode, time.Since(started).Round(time.Millisecond))
		expectServer(t, client.NS, "tcp", "10.96.2.1:80", server.Name)
		expectOnlyMode(t, node, mode)
	}
	ld.StopAndCheck(t, "across two mode switches", 50)
}

// expectOnlyMode polls until the node's kernel holds only the given mode's rules.
func expectOnlyMode(t *testing.T, node *testnet.Node, mode kpov1.Mode) {
	t.Helper()
	apiserver.Eventually(t, settle, func() error {
		objects, err := testnet.KpoObjects(node.NS)
		if err != nil {
			return err
		}
		return testnet.OnlyMode(objects, string(mode))
	})
}

// TestUnavailableModeKeepsServing switches a node to ipvs on this kernel, which
// has no IPVS: the node keeps serving with the mode it ran before, keeps those
// rules synced (an endpoint change is followed), and says why on its status.
func TestUnavailableModeKeepsServing(t *testing.T) {
	netns.Skip(t)
	if ok, _ := netns.KernelHasIPVS(); ok {
		t.Skip("this kernel has IPVS")
	}
	tn := testnet.New(t, api, agentBin, 1, 3)
	node := tn.Nodes[0]
	client, a, b := node.Pods[0], node.Pods[1], node.Pods[2]
	node.StartAgent(t, agentConfig(kpov1.ModeIPTables))
	waitSynced(t, node.Name, kpov1.ModeIPTables)
	svc := tn.CreateService(t, testnet.ServiceSpec{Name: "keep", ClusterIPs: []string{"10.96.3.1"}, Pods: []*testnet.Pod{a}})
	expectServer(t, client.NS, "tcp", "10.96.3.1:80", a.Name)

	ld := testnet.StartLoad(client.NS, "tcp", "10.96.3.1:80", 10*time.Millisecond)
	node.KillAgent()
	node.StartAgent(t, agentConfig(kpov1.ModeIPVS))
	apiserver.Eventually(t, 30*time.Second, func() error {
		pns := &kpov1.ProxyNodeStatus{}
		if err := api.Client.Get(context.Background(), types.NamespacedName{Name: node.Name}, pns); err != nil {
			return err
		}
		c := meta.FindStatusCondition(pns.Status.Conditions, kpov1.NodeConditionSynced)
		if pns.Status.ActiveMode != kpov1.ModeIPTables || pns.Status.RequestedMode != kpov1.ModeIPVS ||
			c == nil || c.Reason != kpov1.NodeReasonIPVSUnavailable {
			return fmt.Errorf("status: active %q requested %q, Synced %+v", pns.Status.ActiveMode, pns.Status.RequestedMode, c)
		}
		return nil
	})
	// The iptables rules are still synced: an endpoint change is followed.
	tn.SetEndpoints(t, svc, []*testnet.Pod{b}, nil)
	expectServer(t, client.NS, "tcp", "10.96.3.1:80", b.Name)
	// Requests during the endpoint change may reach the old pod; none may fail.
	ld.StopAndCheck(t, "while switching to an unavailable mode", 10)
	expectOnlyMode(t, node, kpov1.ModeIPTables)
}
