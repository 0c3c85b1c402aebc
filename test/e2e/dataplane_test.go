// Package e2e runs kpo's agents as processes in node namespaces against a
// real kube-apiserver, with pods serving echo and real packets: the
// behaviour table (test/behaviour) at the agent level, and what only a
// running agent shows (faults, restarts, mode switches, migration).
package e2e

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
	"kpo.dev/kpo/hack/apiserver"
	"kpo.dev/kpo/hack/netns"
	"kpo.dev/kpo/test/testnet"
)

var (
	api      *apiserver.Env
	agentBin string
)

func TestMain(m *testing.M) {
	os.Exit(func() int {
		flag.Parse() // for testing.Short
		if os.Geteuid() != 0 || testing.Short() {
			return m.Run() // the tests skip themselves with the reason
		}
		var err error
		var stop func()
		if api, agentBin, stop, err = testnet.Start(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer stop()
		return m.Run()
	}())
}

// settle bounds how long a change may take to reach the kernel: minSyncPeriod is
// 50ms here, so anything near this bound is a bug, not a slow machine.
const settle = 10 * time.Second

const dialTimeout = 2 * time.Second

// TestDataplane runs the behaviour table (test/behaviour) against the agents
// through the API server, in every mode this machine's kernel has, then what
// only a running agent shows: health-check node ports, affinity expiry,
// stale UDP conntrack entries cleared, a killed agent, --cleanup.
func TestDataplane(t *testing.T) {
	netns.Skip(t)
	for _, mode := range []kpov1.Mode{kpov1.ModeNFTables, kpov1.ModeIPTables} {
		t.Run(string(mode), func(t *testing.T) {
			tn := testnet.New(t, api, agentBin, 2, 3)
			cfg := agentConfig(mode)
			for _, node := range tn.Nodes {
				node.StartAgent(t, cfg)
			}
			for _, node := range tn.Nodes {
				waitSynced(t, node.Name, mode)
			}
			t.Run("table", func(t *testing.T) { runTable(t, mode, tn) })
			healthCheckAndAffinity(t, tn)
			udpConntrack(t, tn)
			agentLifecycle(t, tn, cfg)
		})
	}
}

func agentConfig(mode kpov1.Mode) *kpov1.AgentConfiguration { return testnet.AgentConfig(mode) }

// healthCheckAndAffinity: node-2's agent answers its health-check node port
// by whether it has local endpoints, and sends policy Local traffic to them
// with the client's address kept; ClientIP affinity expires.
func healthCheckAndAffinity(t *testing.T, tn *testnet.Net) {
	n1, n2 := tn.Nodes[0], tn.Nodes[1]
	local := tn.CreateService(t, testnet.ServiceSpec{Name: "local-n2", ClusterIPs: []string{"10.96.4.7"}, Pods: []*testnet.Pod{n2.Pods[0]},
		Mutate: func(s *corev1.Service) {
			s.Spec.Type = corev1.ServiceTypeLoadBalancer
			s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
		}})
	t.Run("healthCheckNodePort: 200 with local endpoints, 503 without", func(t *testing.T) {
		svc := getService(t, "local-n2")
		port := strconv.Itoa(int(svc.Spec.HealthCheckNodePort))
		expectHTTP(t, tn.Client, net.JoinHostPort(n2.IP4, port), 200)
		expectHTTP(t, tn.Client, net.JoinHostPort(n1.IP4, port), 503)
	})
	t.Run("externalTrafficPolicy Local on node-2: its endpoint, client address kept", func(t *testing.T) {
		addr := net.JoinHostPort(n2.IP4, strconv.Itoa(int(local.Spec.Ports[0].NodePort)))
		for range 6 {
			if r := expectServer(t, tn.Client, "tcp", addr, n2.Pods[0].Name); r.ClientIP() != "198.51.100.200" {
				t.Fatalf("server saw %s, want the client's own address", r.ClientIP())
			}
		}
	})
	tn.CreateService(t, testnet.ServiceSpec{Name: "sticky", ClusterIPs: []string{"10.96.4.5"}, Pods: []*testnet.Pod{n1.Pods[0], n2.Pods[0]},
		Mutate: func(s *corev1.Service) {
			s.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
			s.Spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: ptr.To[int32](2)}}
		}})
	t.Run("ClientIP affinity expires", func(t *testing.T) {
		from := n1.Pods[1].NS
		// After the timeout without traffic, a new choice is made: both
		// endpoints are seen again eventually.
		seen := map[string]bool{}
		apiserver.Eventually(t, 30*time.Second, func() error {
			time.Sleep(2100 * time.Millisecond) // not synchronisation: lets the affinity entry expire
			seen[expectServer(t, from, "tcp", "10.96.4.5:80", "").Server] = true
			if len(seen) < 2 {
				return fmt.Errorf("only %v seen after expiries", seen)
			}
			return nil
		})
	})
}

// udpConntrack: a UDP flow keeps working after its endpoint is replaced:
// the agent clears its stale conntrack entry.
func udpConntrack(t *testing.T, tn *testnet.Net) {
	n1, n2 := tn.Nodes[0], tn.Nodes[1]
	udp := tn.CreateService(t, testnet.ServiceSpec{Name: "dns", ClusterIPs: []string{"10.96.4.11"}, Protocol: corev1.ProtocolUDP,
		Pods: []*testnet.Pod{n1.Pods[0]}})
	t.Run("UDP keeps working after its endpoint is replaced (stale conntrack cleared)", func(t *testing.T) {
		// A fixed client port: the flow's conntrack entry is what must be cleared.
		from := n2.Pods[1].IP4 + ":5353"
		expectServerFrom(t, n2.Pods[1].NS, "udp", from, "10.96.4.11:80", n1.Pods[0].Name)
		tn.SetEndpoints(t, udp, []*testnet.Pod{n1.Pods[1]}, nil)
		expectServerFrom(t, n2.Pods[1].NS, "udp", from, "10.96.4.11:80", n1.Pods[1].Name)
	})
	udpNodePort := tn.CreateService(t, testnet.ServiceSpec{Name: "dns-np", ClusterIPs: []string{"10.96.4.12"}, Protocol: corev1.ProtocolUDP,
		Pods: []*testnet.Pod{n1.Pods[0]}, Mutate: func(s *corev1.Service) { s.Spec.Type = corev1.ServiceTypeNodePort }})
	t.Run("UDP NodePort keeps working after its endpoint is replaced (stale conntrack cleared)", func(t *testing.T) {
		// The external client, from a fixed port, to node 1's NodePort: a flow
		// whose conntrack entry names no VIP, only the NodePort.
		addr := net.JoinHostPort(n1.IP4, strconv.Itoa(int(udpNodePort.Spec.Ports[0].NodePort)))
		from := "198.51.100.200:5354"
		expectServerFrom(t, tn.Client, "udp", from, addr, n1.Pods[0].Name)
		tn.SetEndpoints(t, udpNodePort, []*testnet.Pod{n1.Pods[1]}, nil)
		expectServerFrom(t, tn.Client, "udp", from, addr, n1.Pods[1].Name)
	})
}

// agentLifecycle: traffic keeps flowing while an agent is down and after it
// restarts; --cleanup removes every kpo rule of the node it runs on.
func agentLifecycle(t *testing.T, tn *testnet.Net, cfg *kpov1.AgentConfiguration) {
	n1, n2 := tn.Nodes[0], tn.Nodes[1]
	client, web := n1.Pods[1].NS, "10.96.4.1:80"
	tn.CreateService(t, testnet.ServiceSpec{Name: "web", ClusterIPs: []string{"10.96.4.1"}, Pods: []*testnet.Pod{n1.Pods[0], n2.Pods[0]}})
	servers := []string{n1.Pods[0].Name, n2.Pods[0].Name}
	t.Run("agent killed: traffic keeps flowing; the restarted agent converges without a gap", func(t *testing.T) {
		expectSpread(t, client, "tcp", web, servers...)
		ld := testnet.StartLoad(client, "tcp", web, 20*time.Millisecond)
		n1.KillAgent()
		// While the agent is down, the existing rules still serve.
		expectSpread(t, client, "tcp", web, servers...)
		n1.StartAgent(t, cfg)
		waitSyncedAfter(t, n1.Name, time.Now())
		expectSpread(t, client, "tcp", web, servers...)
		ld.StopAndCheck(t, "across the agent's kill and restart", 3)
	})
	t.Run("kpo-agent --cleanup removes every kpo rule of every mode", func(t *testing.T) {
		n2.KillAgent() // a running agent would put its rules back
		if out, err := n2.Run(agentBin, "--cleanup", "--config=/nonexistent", "--lock-file="+n2.LockFile()); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		if out := n2.MustRun(t, "nft", "list", "tables"); strings.Contains(out, "kpo") {
			t.Errorf("nftables tables left: %s", out)
		}
		for _, save := range []string{"iptables-save", "ip6tables-save", "iptables-legacy-save"} {
			if out, err := n2.Run(save); err == nil && strings.Contains(out, "KPO-") {
				t.Errorf("%s still shows KPO- chains:\n%s", save, out)
			}
		}
		// The other node keeps serving: cleanup is per node.
		expectSpread(t, client, "tcp", web, servers...)
	})
}

func getService(t *testing.T, name string) *corev1.Service {
	t.Helper()
	svc := &corev1.Service{}
	if err := api.Client.Get(context.Background(), types.NamespacedName{Namespace: testnet.Namespace, Name: name}, svc); err != nil {
		t.Fatal(err)
	}
	return svc
}

func waitSynced(t *testing.T, node string, mode kpov1.Mode) {
	t.Helper()
	waitSyncedAfter(t, node, time.Time{})
	// Reports carry whole seconds: the previous agent's last report may still
	// be the one read, so the mode is waited for too.
	apiserver.Eventually(t, 60*time.Second, func() error {
		pns := &kpov1.ProxyNodeStatus{}
		if err := api.Client.Get(context.Background(), types.NamespacedName{Name: node}, pns); err != nil {
			return err
		}
		if pns.Status.ActiveMode != mode || !meta.IsStatusConditionTrue(pns.Status.Conditions, kpov1.NodeConditionSynced) {
			return fmt.Errorf("%s runs %q (synced: %v), want %q", node, pns.Status.ActiveMode,
				meta.IsStatusConditionTrue(pns.Status.Conditions, kpov1.NodeConditionSynced), mode)
		}
		return nil
	})
}

func waitSyncedAfter(t *testing.T, node string, after time.Time) {
	t.Helper()
	apiserver.Eventually(t, 60*time.Second, func() error {
		pns := &kpov1.ProxyNodeStatus{}
		if err := api.Client.Get(context.Background(), types.NamespacedName{Name: node}, pns); err != nil {
			return err
		}
		if !meta.IsStatusConditionTrue(pns.Status.Conditions, kpov1.NodeConditionSynced) {
			return fmt.Errorf("%s not synced: %+v", node, pns.Status.Conditions)
		}
		// A sync that changes nothing is not written on its own (issue 16,
		// docs/scale.md): a report written since then that says Synced.
		if pns.Status.LastReportTime == nil || pns.Status.LastReportTime.Time.Before(after.Truncate(time.Second)) {
			return fmt.Errorf("%s: no report since %v", node, after)
		}
		return nil
	})
}
