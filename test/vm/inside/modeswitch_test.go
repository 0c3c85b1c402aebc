//go:build vmtest

package inside

import (
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
	"kpo.dev/kpo/hack/netns"
	"kpo.dev/kpo/test/testnet"
)

// agentBin is where test/vm's host side puts kpo-agent in the VM.
const agentBin = "/kpo-agent"

// TestModeSwitchThroughAgent switches one node through every ordered pair of
// modes, ipvs included (this is the only kernel with IPVS the tests have):
// iptables → ipvs → nftables → iptables → nftables → ipvs → iptables, the
// way a DaemonSet roll does it (the old agent is killed, the new one starts
// with the other mode and removes the old mode's rules after its first
// sync). Under a steady load of new connections from a pod to the ClusterIP
// and from the external client to the node port, no request may fail, and
// after each switch the node holds the new mode's objects and nothing of the
// others (chains in either iptables flavour, nftables tables, ipsets,
// kpo-ipvs0, IPVS virtual servers).
//
// It failed before the fix of the iptables mode's cleanup: that cleanup
// deleted (tried to, the kernel refused) the ipvs mode's KPO-IPVS-* chains,
// so switching from ipvs to iptables left them and switching from iptables to
// ipvs never finished removing the iptables rules; and switching away from
// ipvs left the node port's virtual server.
func TestModeSwitchThroughAgent(t *testing.T) {
	api := vmAPI(t)
	netns.Skip(t)
	tn := testnet.New(t, api, agentBin, 1, 2)
	node := tn.Nodes[0]
	client, server := node.Pods[0], node.Pods[1]
	modes := []kpov1.Mode{kpov1.ModeIPTables, kpov1.ModeIPVS, kpov1.ModeNFTables, kpov1.ModeIPTables,
		kpov1.ModeNFTables, kpov1.ModeIPVS, kpov1.ModeIPTables}

	started := time.Now()
	node.StartAgent(t, agentConfig(modes[0]))
	waitSyncedAfter(t, api, node.Name, modes[0], time.Time{})
	t.Logf("%s: synced %v after the agent started", modes[0], time.Since(started).Round(time.Millisecond))
	tn.CreateService(t, testnet.ServiceSpec{Name: "switch", ClusterIPs: []string{"10.96.2.1"}, Pods: []*testnet.Pod{server},
		Mutate: func(s *corev1.Service) {
			s.Spec.Type = corev1.ServiceTypeNodePort
			s.Spec.Ports[0].NodePort = 30080
		}})
	nodePort := node.IP4 + ":30080"
	expectServer(t, client.NS, "tcp", "10.96.2.1:80", server.Name)
	expectServer(t, tn.Client, "tcp", nodePort, server.Name)
	expectOnlyMode(t, node, modes[0])

	pods := testnet.StartLoad(client.NS, "tcp", "10.96.2.1:80", 20*time.Millisecond)
	external := testnet.StartLoad(tn.Client, "tcp", nodePort, 20*time.Millisecond)
	for i, mode := range modes[1:] {
		node.KillAgent()
		started := time.Now()
		node.StartAgent(t, agentConfig(mode))
		waitSyncedAfter(t, api, node.Name, mode, started)
		t.Logf("%s → %s: synced %v after the new agent started", modes[i], mode, time.Since(started).Round(time.Millisecond))
		expectServer(t, client.NS, "tcp", "10.96.2.1:80", server.Name)
		expectServer(t, tn.Client, "tcp", nodePort, server.Name)
		expectOnlyMode(t, node, mode)
		t.Logf("%s → %s: only %s's objects %v after the new agent started", modes[i], mode, mode, time.Since(started).Round(time.Millisecond))
	}
	for _, ld := range []*testnet.Load{pods, external} {
		total, failures := ld.Stop()
		t.Logf("%s: %d requests, %d failed", ld.What, total, len(failures))
		if len(failures) > 0 || total < 50 {
			t.Errorf("%s across six mode switches: %d of %d requests failed (want none of at least 50); first: %q",
				ld.What, len(failures), total, failures[:min(len(failures), 5)])
		}
	}
}
