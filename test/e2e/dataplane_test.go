// Package e2e holds the dataplane behaviour table: real kube-apiserver, kpo
// agents as processes in node namespaces, pods with echo servers, real packets.
// The same table runs for every mode.
package e2e

import (
	"context"
	"errors"
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
	"kpo.dev/kpo/test/apiserver"
	"kpo.dev/kpo/test/netns"
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

func TestDataplane(t *testing.T) {
	netns.Skip(t)
	for _, mode := range []kpov1.Mode{kpov1.ModeNFTables, kpov1.ModeIPTables} {
		t.Run(string(mode), func(t *testing.T) { behaviourTable(t, mode) })
	}
}

func agentConfig(mode kpov1.Mode) *kpov1.AgentConfiguration {
	cfg := &kpov1.AgentConfiguration{ConfigurationName: "default", ConfigurationGeneration: 1, Mode: mode}
	cfg.ClusterCIDRs = []kpov1.CIDR{"10.244.0.0/16", "fd10:244::/48"}
	cfg.MinSyncPeriod = "50ms"
	cfg.Default()
	return cfg
}

func behaviourTable(t *testing.T, mode kpov1.Mode) {
	tn := testnet.New(t, api, agentBin, 2, 2)
	n1, n2 := tn.Nodes[0], tn.Nodes[1]
	n1p0, n1p1, n2p0, n2p1 := n1.Pods[0], n1.Pods[1], n2.Pods[0], n2.Pods[1]
	cfg := agentConfig(mode)
	for _, node := range tn.Nodes {
		node.StartAgent(t, cfg)
	}
	waitSynced(t, n1.Name, mode)
	waitSynced(t, n2.Name, mode)

	web := tn.CreateService(t, testnet.ServiceSpec{Name: "web", ClusterIPs: []string{"10.96.1.1", "fd10:96::101"},
		Pods: []*testnet.Pod{n1p0, n2p0}})
	webVIP := "10.96.1.1:80"

	t.Run("ClusterIP from the node and from pods on both nodes, spread over all endpoints", func(t *testing.T) {
		for _, from := range []*netns.NS{n1.NS, n1p1.NS, n2p1.NS} {
			expectSpread(t, from, "tcp", webVIP, "n1p0", "n2p0")
		}
	})
	t.Run("pod-to-service keeps the pod's address (no masquerade inside the cluster)", func(t *testing.T) {
		r := expectServer(t, n2p1.NS, "tcp", webVIP, "")
		if r.ClientIP() != n2p1.IP4 {
			t.Errorf("server saw %s, want the client pod %s", r.ClientIP(), n2p1.IP4)
		}
	})
	t.Run("IPv6 ClusterIP", func(t *testing.T) {
		expectSpread(t, n1p1.NS, "tcp", "[fd10:96::101]:80", "n1p0", "n2p0")
	})

	nodePortSvc := tn.CreateService(t, testnet.ServiceSpec{Name: "np", ClusterIPs: []string{"10.96.1.2"}, Pods: []*testnet.Pod{n2p0},
		Mutate: func(s *corev1.Service) {
			s.Spec.Type = corev1.ServiceTypeNodePort
			s.Spec.ExternalIPs = []string{"203.0.113.2"}
		}})
	nodePort := strconv.Itoa(int(nodePortSvc.Spec.Ports[0].NodePort))
	t.Run("NodePort from the external client, masqueraded (off-cluster source)", func(t *testing.T) {
		r := expectServer(t, tn.Client, "tcp", net.JoinHostPort(n1.IP4, nodePort), "n2p0")
		if r.ClientIP() != n1.IP4 {
			t.Errorf("server saw %s, want node-1's address %s (masquerade)", r.ClientIP(), n1.IP4)
		}
	})
	t.Run("ExternalIP", func(t *testing.T) {
		expectServer(t, tn.Client, "tcp", "203.0.113.2:80", "n2p0")
	})

	tn.CreateService(t, testnet.ServiceSpec{Name: "lb", ClusterIPs: []string{"10.96.1.3"}, Pods: []*testnet.Pod{n1p0},
		Mutate: func(s *corev1.Service) {
			s.Spec.Type = corev1.ServiceTypeLoadBalancer
			s.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{
				{IP: "203.0.113.3"}, {IP: "203.0.113.4", IPMode: ptr.To(corev1.LoadBalancerIPModeProxy)}}
		}})
	t.Run("load-balancer ingress IP; ipMode Proxy is not captured", func(t *testing.T) {
		expectServer(t, tn.Client, "tcp", "203.0.113.3:80", "n1p0")
		expectUnanswered(t, tn.Client, "203.0.113.4:80")
	})

	tn.CreateService(t, testnet.ServiceSpec{Name: "ranges", ClusterIPs: []string{"10.96.1.4"}, Pods: []*testnet.Pod{n1p0},
		Mutate: func(s *corev1.Service) {
			s.Spec.Type = corev1.ServiceTypeLoadBalancer
			s.Spec.LoadBalancerSourceRanges = []string{"198.51.100.0/30"}
			s.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: "203.0.113.5"}}
		}})
	t.Run("loadBalancerSourceRanges enforced", func(t *testing.T) {
		expectUnanswered(t, tn.Client, "203.0.113.5:80") // 198.51.100.200 is outside the range
	})

	tn.CreateService(t, testnet.ServiceSpec{Name: "sticky", ClusterIPs: []string{"10.96.1.5"}, Pods: []*testnet.Pod{n1p0, n2p0},
		Mutate: func(s *corev1.Service) {
			s.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
			s.Spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: ptr.To[int32](2)}}
		}})
	t.Run("ClientIP affinity sticks, then expires", func(t *testing.T) {
		first := expectServer(t, n1p1.NS, "tcp", "10.96.1.5:80", "")
		for range 15 {
			if r := expectServer(t, n1p1.NS, "tcp", "10.96.1.5:80", ""); r.Server != first.Server {
				t.Fatalf("affinity broken: %s then %s", first.Server, r.Server)
			}
		}
		// After the timeout without traffic, a new choice is made: both endpoints
		// are seen again eventually.
		seen := map[string]bool{}
		apiserver.Eventually(t, 30*time.Second, func() error {
			time.Sleep(2100 * time.Millisecond) // not synchronisation: lets the affinity entry expire
			seen[expectServer(t, n1p1.NS, "tcp", "10.96.1.5:80", "").Server] = true
			if len(seen) < 2 {
				return fmt.Errorf("only %v seen after expiries", seen)
			}
			return nil
		})
	})

	local := tn.CreateService(t, testnet.ServiceSpec{Name: "local", ClusterIPs: []string{"10.96.1.6"}, Pods: []*testnet.Pod{n1p0, n2p0},
		Mutate: func(s *corev1.Service) {
			s.Spec.Type = corev1.ServiceTypeLoadBalancer
			s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
			s.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: "203.0.113.6"}}
		}})
	localNodePort := strconv.Itoa(int(local.Spec.Ports[0].NodePort))
	t.Run("externalTrafficPolicy Local: local endpoints only, client address kept", func(t *testing.T) {
		for _, tc := range []struct {
			node *testnet.Node
			want string
		}{{n1, "n1p0"}, {n2, "n2p0"}} {
			for range 6 {
				r := expectServer(t, tn.Client, "tcp", net.JoinHostPort(tc.node.IP4, localNodePort), tc.want)
				if r.ClientIP() != "198.51.100.200" {
					t.Fatalf("server saw %s, want the client's own address", r.ClientIP())
				}
			}
		}
	})
	tn.CreateService(t, testnet.ServiceSpec{Name: "local-n2", ClusterIPs: []string{"10.96.1.7"}, Pods: []*testnet.Pod{n2p0},
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

	tn.CreateService(t, testnet.ServiceSpec{Name: "itp", ClusterIPs: []string{"10.96.1.8"}, Pods: []*testnet.Pod{n1p0, n2p0},
		Mutate: func(s *corev1.Service) {
			s.Spec.InternalTrafficPolicy = ptr.To(corev1.ServiceInternalTrafficPolicyLocal)
		}})
	t.Run("internalTrafficPolicy Local", func(t *testing.T) {
		for range 6 {
			expectServer(t, n1p1.NS, "tcp", "10.96.1.8:80", "n1p0")
			expectServer(t, n2p1.NS, "tcp", "10.96.1.8:80", "n2p0")
		}
	})

	empty := tn.CreateService(t, testnet.ServiceSpec{Name: "empty", ClusterIPs: []string{"10.96.1.9"}})
	t.Run("no endpoints: refused at once, not a timeout", func(t *testing.T) {
		apiserver.Eventually(t, settle, func() error {
			start := time.Now()
			_, err := n1p1.Dial("tcp", "10.96.1.9:80", dialTimeout)
			if !errors.Is(err, netns.ErrRefused) {
				return fmt.Errorf("got %v, want refused", err)
			}
			if d := time.Since(start); d > 500*time.Millisecond {
				return fmt.Errorf("refusal took %v", d)
			}
			return nil
		})
	})
	t.Run("endpoint added: traffic follows", func(t *testing.T) {
		tn.SetEndpoints(t, empty, []*testnet.Pod{n2p1}, nil)
		expectServer(t, n1p1.NS, "tcp", "10.96.1.9:80", "n2p1")
	})
	t.Run("only terminating endpoints: still served", func(t *testing.T) {
		tn.SetEndpoints(t, empty, []*testnet.Pod{n2p1}, map[*testnet.Pod]testnet.EndpointState{
			n2p1: {Ready: false, Serving: true, Terminating: true}})
		for range 5 {
			expectServer(t, n1p1.NS, "tcp", "10.96.1.9:80", "n2p1")
		}
	})
	t.Run("endpoint removed: traffic follows", func(t *testing.T) {
		tn.SetEndpoints(t, empty, nil, nil)
		apiserver.Eventually(t, settle, func() error {
			if _, err := n1p1.Dial("tcp", "10.96.1.9:80", dialTimeout); !errors.Is(err, netns.ErrRefused) {
				return fmt.Errorf("got %v, want refused", err)
			}
			return nil
		})
	})

	tn.CreateService(t, testnet.ServiceSpec{Name: "hairpin", ClusterIPs: []string{"10.96.1.10"}, Pods: []*testnet.Pod{n1p0}})
	t.Run("hairpin: a pod reaches itself through its service", func(t *testing.T) {
		expectServer(t, n1p0.NS, "tcp", "10.96.1.10:80", "n1p0")
	})

	udp := tn.CreateService(t, testnet.ServiceSpec{Name: "dns", ClusterIPs: []string{"10.96.1.11"}, Protocol: corev1.ProtocolUDP,
		Pods: []*testnet.Pod{n1p0}})
	t.Run("UDP keeps working after its endpoint is replaced (stale conntrack cleared)", func(t *testing.T) {
		// A fixed client port: the flow's conntrack entry is what must be cleared.
		from := n2p1.IP4 + ":5353"
		expectServerFrom(t, n2p1.NS, "udp", from, "10.96.1.11:80", "n1p0")
		tn.SetEndpoints(t, udp, []*testnet.Pod{n1p1}, nil)
		expectServerFrom(t, n2p1.NS, "udp", from, "10.96.1.11:80", "n1p1")
	})

	udpNodePort := tn.CreateService(t, testnet.ServiceSpec{Name: "dns-np", ClusterIPs: []string{"10.96.1.12"}, Protocol: corev1.ProtocolUDP,
		Pods: []*testnet.Pod{n1p0}, Mutate: func(s *corev1.Service) { s.Spec.Type = corev1.ServiceTypeNodePort }})
	t.Run("UDP NodePort keeps working after its endpoint is replaced (stale conntrack cleared)", func(t *testing.T) {
		// The external client, from a fixed port, to node 1's NodePort: a flow
		// whose conntrack entry names no VIP, only the NodePort.
		addr := net.JoinHostPort(tn.Nodes[0].IP4, strconv.Itoa(int(udpNodePort.Spec.Ports[0].NodePort)))
		from := "198.51.100.200:5354"
		expectServerFrom(t, tn.Client, "udp", from, addr, "n1p0")
		tn.SetEndpoints(t, udpNodePort, []*testnet.Pod{n1p1}, nil)
		expectServerFrom(t, tn.Client, "udp", from, addr, "n1p1")
	})

	t.Run("agent killed: traffic keeps flowing; the restarted agent converges without a gap", func(t *testing.T) {
		ld := testnet.StartLoad(n1p1.NS, "tcp", webVIP, 20*time.Millisecond)
		n1.KillAgent()
		// While the agent is down, an endpoint change is not programmed, but the
		// existing rules still serve.
		expectSpread(t, n1p1.NS, "tcp", webVIP, "n1p0", "n2p0")
		n1.StartAgent(t, cfg)
		waitSyncedAfter(t, n1.Name, time.Now())
		expectSpread(t, n1p1.NS, "tcp", webVIP, "n1p0", "n2p0")
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
		expectSpread(t, n1p1.NS, "tcp", webVIP, "n1p0", "n2p0")
	})
	_ = web
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
	pns := &kpov1.ProxyNodeStatus{}
	_ = api.Client.Get(context.Background(), types.NamespacedName{Name: node}, pns)
	if pns.Status.ActiveMode != mode {
		t.Fatalf("%s runs %q, want %q", node, pns.Status.ActiveMode, mode)
	}
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
