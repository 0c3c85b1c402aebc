package e2e

import (
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
	"kpo.dev/kpo/hack/netns"
	"kpo.dev/kpo/test/testnet"
)

// TestUDPFlowsOrphanedAcrossRestart: a UDP flow's conntrack entry outlives
// the agent. The restarted agent's first sync reconciles the whole table
// (kube-proxy's CleanStaleEntries): a flow whose endpoint was replaced while
// no agent ran follows the change, a flow whose Service lost every endpoint is
// refused (the agent before cleared only flows of services with endpoints: it
// stayed on the removed, still running pod), and a flow to an endpoint that
// is still there keeps it (the agent before cleared every flow of every UDP
// service on start).
func TestUDPFlowsOrphanedAcrossRestart(t *testing.T) {
	netns.Skip(t)
	for _, mode := range []kpov1.Mode{kpov1.ModeNFTables, kpov1.ModeIPTables} {
		t.Run(string(mode), func(t *testing.T) {
			tn := testnet.New(t, api, agentBin, 1, 3)
			node := tn.Nodes[0]
			client, a, b := node.Pods[0], node.Pods[1], node.Pods[2]
			cfg := agentConfig(mode)
			node.StartAgent(t, cfg)
			waitSynced(t, node.Name, mode)
			svc := tn.CreateService(t, testnet.ServiceSpec{Name: "dns-restart", ClusterIPs: []string{"10.96.5.1"},
				Protocol: corev1.ProtocolUDP, Pods: []*testnet.Pod{a}})
			from := client.IP4 + ":5355"
			expectServerFrom(t, client.NS, "udp", from, "10.96.5.1:80", a.Name)

			gone := tn.CreateService(t, testnet.ServiceSpec{Name: "dns-gone", ClusterIPs: []string{"10.96.5.2"},
				Protocol: corev1.ProtocolUDP, Pods: []*testnet.Pod{a}})
			expectServerFrom(t, client.NS, "udp", from, "10.96.5.2:80", a.Name)
			tn.CreateService(t, testnet.ServiceSpec{Name: "dns-kept", ClusterIPs: []string{"10.96.5.3"},
				Protocol: corev1.ProtocolUDP, Pods: []*testnet.Pod{a, b}})
			kept := expectServerFrom(t, client.NS, "udp", from, "10.96.5.3:80", "")

			node.KillAgent()
			// No agent sees these changes.
			tn.SetEndpoints(t, svc, []*testnet.Pod{b}, nil)
			tn.SetEndpoints(t, gone, nil, nil)
			node.StartAgent(t, cfg)
			waitSyncedAfter(t, node.Name, time.Now())
			expectServerFrom(t, client.NS, "udp", from, "10.96.5.1:80", b.Name)
			if r, err := client.DialFrom("udp", from, "10.96.5.2:80", time.Second); err == nil {
				t.Errorf("the flow of a Service without endpoints still reaches %s", r.Server)
			}
			for range 10 {
				expectServerFrom(t, client.NS, "udp", from, "10.96.5.3:80", kept.Server)
			}
		})
	}
}
