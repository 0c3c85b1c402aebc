package soak

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
	"kpo.dev/kpo/hack/apiserver"
	"kpo.dev/kpo/hack/netns"
	"kpo.dev/kpo/test/testnet"
)

// settings of one soak run, from the environment (make soak sets them).
type settings struct {
	// Duration of the churn (KPO_SOAK_DURATION).
	Duration time.Duration
	// Services loaded before the churn starts (KPO_SOAK_SERVICES), two
	// endpoints each.
	Services int
	// Rate of changes per second (KPO_SOAK_RATE).
	Rate float64
	// Interval between samples (KPO_SOAK_INTERVAL).
	Interval time.Duration
	// Out is a directory for the samples (CSV) and the summary (KPO_SOAK_OUT).
	Out string
}

// The CI-sized run that `go test ./...` does; make soak runs 30 minutes.
const (
	defaultDuration = 5 * time.Minute
	defaultServices = 5000
	defaultRate     = 5
	defaultInterval = 5 * time.Second
)

func readSettings(t *testing.T) settings {
	s := settings{Duration: defaultDuration, Services: defaultServices, Rate: defaultRate,
		Interval: defaultInterval, Out: os.Getenv("KPO_SOAK_OUT")}
	for key, parse := range map[string]func(string) error{
		"KPO_SOAK_DURATION": func(v string) (err error) { s.Duration, err = time.ParseDuration(v); return },
		"KPO_SOAK_INTERVAL": func(v string) (err error) { s.Interval, err = time.ParseDuration(v); return },
		"KPO_SOAK_SERVICES": func(v string) (err error) { s.Services, err = strconv.Atoi(v); return },
		"KPO_SOAK_RATE":     func(v string) (err error) { s.Rate, err = strconv.ParseFloat(v, 64); return },
	} {
		if v := os.Getenv(key); v != "" {
			if err := parse(v); err != nil {
				t.Fatalf("%s=%q: %v", key, v, err)
			}
		}
	}
	if s.Duration < 4*s.Interval || s.Services < 1 || s.Rate <= 0 || s.Interval <= 0 {
		t.Fatalf("soak settings out of range: %+v (the duration must hold at least four samples)", s)
	}
	return s
}

// node is one node of the soak: its agent in one mode, the loads through it,
// the samples taken.
type node struct {
	*testnet.Node
	mode    kpov1.Mode
	agent   *Agent
	loads   []*testnet.Load
	samples []Sample
	// profile is the path of the agent's heap profiles without ".heap".
	profile string
	// afterColdSync and afterSoak are readings right after a full sync,
	// which returns the freed memory to the OS: the agent's floor before and
	// after the soak.
	afterColdSync, afterSoak Sample
}

// TestSoak is a bounded churn run: N Services loaded, then a steady stream of
// Service and EndpointSlice creations, updates and deletions for the run's
// duration, while stable Services carry TCP and UDP load from pods and from
// an external client. Both modes at once: node-1 runs the agent in nftables
// mode, node-2 in iptables mode, on the same API server and the same churn.
// Every few seconds it samples each agent (RSS, Go heap, goroutines, syncs,
// failed syncs) and the loads. It asserts that no request to a stable
// Service failed, that no sync failed, that the agents are still running and
// their kernels hold exactly the API's Services afterwards, and that RSS and
// goroutines are flat: the least-squares slope over the second half of the run
// below the bounds of bounds.go, and the live heap after a full sync no
// larger after the soak than after the cold sync, give or take the bound.
//
//	KPO_SOAK_DURATION=30m KPO_SOAK_SERVICES=5000 go test ./test/soak/ -run TestSoak -v -timeout 0
//
// (make soak). KPO_SOAK_RATE (changes per second, default 5), KPO_SOAK_INTERVAL
// (default 5s), KPO_SOAK_OUT (a directory for soak-samples.csv and
// soak-summary.txt).
func TestSoak(t *testing.T) {
	netns.Skip(t)
	s := readSettings(t)
	cfg := rest.CopyConfig(api.Config)
	cfg.QPS, cfg.Burst = 1000, 2000 // the loader's 16 workers
	kube := kubernetes.NewForConfigOrDie(cfg)
	t0 := time.Now()

	loader := testnet.NewLoader(kube)
	loader.Ensure(t, s.Services, 2)
	if _, err := kube.CoreV1().Namespaces().Create(context.Background(),
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: Namespace}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	tn := testnet.New(t, api, agentBin, 2, 2)
	stablePorts := createStable(t, kube, tn)
	nodes := []*node{{Node: tn.Nodes[0], mode: kpov1.ModeNFTables}, {Node: tn.Nodes[1], mode: kpov1.ModeIPTables}}
	profiles := s.Out
	if profiles == "" {
		profiles = t.TempDir()
	}
	for _, n := range nodes {
		// The agent writes a heap profile after each full sync: the cold one
		// now, the periodic one after the churn (settle).
		n.profile = filepath.Join(profiles, fmt.Sprintf("soak-%s-%s", n.Name, n.mode))
		t.Setenv("KPO_AGENT_HEAP_PROFILE", n.profile+".heap")
		startAgent(t, n, s.Services+stablePorts)
		n.afterColdSync = settled(t, n, "start")
	}
	for _, n := range nodes {
		startLoads(t, tn, n)
	}
	t.Logf("set-up: %d Services loaded, two agents synced, %d loads running, in %v",
		s.Services+3, 2*len(nodes[0].loads), time.Since(t0).Round(time.Second))

	churn := NewChurn(kube, loader, s.Services, 1)
	changes, churnTime := run(t, s, churn, nodes)
	t.Logf("churn: %d changes in %v (%.2f/s): %v", changes, churnTime.Round(time.Second),
		float64(changes)/churnTime.Seconds(), churn.Counts)

	for _, n := range nodes {
		for _, l := range n.loads {
			total, failures := l.Stop()
			if len(failures) > 0 {
				t.Errorf("%s (%s): %d of %d requests failed; first: %q", n.Name, l.What, len(failures), total,
					failures[:min(5, len(failures))])
			}
		}
		if !n.AgentRunning() || n.AgentPID() != n.agent.PID {
			t.Errorf("%s: the agent (pid %d) is no longer running", n.Name, n.agent.PID)
		}
	}
	for _, n := range nodes {
		expectConverged(t, kube, n)
	}
	for _, n := range nodes {
		n.afterSoak = settle(t, n)
	}
	for _, n := range nodes {
		expectCanary(t, kube, tn, n)
	}
	report(t, s, nodes, changes, churnTime)
}

// run churns and samples for the run's duration.
func run(t *testing.T, s settings, churn *Churn, nodes []*node) (changes int, took time.Duration) {
	stop := make(chan struct{})
	churned := make(chan error, 1)
	start := time.Now()
	go func() {
		n, err := churn.Run(stop, s.Rate)
		changes = n
		churned <- err
	}()
	tick := time.NewTicker(s.Interval)
	defer tick.Stop()
	var churnErr error
	done := false
	for !done {
		select {
		case err := <-churned:
			churnErr, done = err, true
			if err == nil {
				churnErr = fmt.Errorf("the churn stopped early")
			}
			continue
		case <-tick.C:
		}
		at := time.Since(start)
		for _, n := range nodes {
			sample(t, n, at)
		}
		if len(nodes[0].samples)%12 == 0 {
			logProgress(t, nodes)
		}
		done = at >= s.Duration
	}
	took = time.Since(start)
	if churnErr == nil {
		close(stop)
		churnErr = <-churned
	}
	if churnErr != nil {
		t.Fatalf("churn: %v", churnErr)
	}
	return changes, took
}

// sample reads the node's agent and loads once.
func sample(t *testing.T, n *node, at time.Duration) {
	s, err := n.agent.Read()
	if err != nil {
		t.Fatalf("%s: reading the agent at %v: %v", n.Name, at, err)
	}
	s.At = at
	for _, l := range n.loads {
		total, failed := l.Counts()
		s.Requests += total
		s.FailedRequests += failed
	}
	n.samples = append(n.samples, s)
}

func logProgress(t *testing.T, nodes []*node) {
	for _, n := range nodes {
		s := n.samples[len(n.samples)-1]
		t.Logf("%v %s %s: rss %.1f MiB, live heap %.1f MiB, %0.f goroutines, syncs %0.f full %0.f partial %0.f failed, "+
			"requests %d failed %d", s.At.Round(time.Second), n.Name, n.mode, s.RSSMiB, s.LiveHeapMiB, s.Goroutines,
			s.FullSyncs, s.PartialSyncs, s.FailedSyncs, s.Requests, s.FailedRequests)
	}
}

// settled reads the agent right after a full sync and keeps the heap profile
// that sync wrote as <profile>-<when>.heap.
func settled(t *testing.T, n *node, when string) Sample {
	s, err := n.agent.Read()
	if err != nil {
		t.Fatalf("%s: %v", n.Name, err)
	}
	if data, err := os.ReadFile(n.profile + ".heap"); err == nil {
		if err := os.WriteFile(n.profile+"-"+when+".heap", data, 0o644); err != nil {
			t.Error(err)
		}
	}
	return s
}

// settle waits, once the churn has stopped, for the periodic full sync
// (syncPeriod after the last sync) and reads the agent after it. The log line
// of a full sync comes after the agent returned memory to the OS and wrote
// the profile.
func settle(t *testing.T, n *node) Sample {
	before := len(syncedLine.FindAllString(n.AgentLogs(), -1))
	apiserver.Eventually(t, 2*time.Minute, func() error {
		if len(syncedLine.FindAllString(n.AgentLogs(), -1)) == before {
			return fmt.Errorf("%s: no full sync since the churn stopped", n.Name)
		}
		return nil
	})
	return settled(t, n, "end")
}

// syncedLine is the agent's log of a full sync, with its service ports.
var syncedLine = regexp.MustCompile(`"synced" full=true reason="[a-z]+" servicePorts=(\d+)`)

// agentSyncPeriod is the agents' syncPeriod (kube-proxy's default, as
// AgentConfiguration.Default sets it).
const agentSyncPeriod = 30 * time.Second

// startAgent starts the node's agent with kube-proxy's default sync periods
// (1s, 30s: the periodic full sync happens 60 times in 30 minutes) and waits
// for a full sync of at least ports service ports.
func startAgent(t *testing.T, n *node, ports int) {
	cfg := &kpov1.AgentConfiguration{ConfigurationName: "default", ConfigurationGeneration: 1, Mode: n.mode}
	cfg.ClusterCIDRs = []kpov1.CIDR{"10.244.0.0/16", "fd10:244::/48"}
	cfg.Default()
	n.StartAgent(t, cfg)
	n.agent = NewAgent(n.AgentPID(), n.NS)
	apiserver.Eventually(t, 5*time.Minute, func() error {
		if !n.AgentRunning() {
			t.Fatalf("%s: the agent exited:\n%s", n.Name, testnet.Tail(n.AgentLogs(), 4000))
		}
		for _, m := range syncedLine.FindAllStringSubmatch(n.AgentLogs(), -1) {
			if got, _ := strconv.Atoi(m[1]); got >= ports {
				return nil
			}
		}
		return fmt.Errorf("%s: no full sync of %d service ports yet", n.Name, ports)
	})
}

// The stable Services, each with a TCP and a UDP port 80 (targetPort 8080,
// the pods' echo servers):
//
//	stable-a  10.96.1.1                 endpoints n1p0 n2p0; load from n1p1, n2p1
//	stable-b  10.96.1.2, NodePort 30080 endpoints n1p1 n2p1; load from the external client to both nodes
//	stable-c  10.96.1.3, fd10:96::103   endpoints n1p1 n2p1; IPv6 load from n1p0, n2p0
const (
	stableA      = "10.96.1.1:80"
	stableC6     = "[fd10:96::103]:80"
	stableBPort  = 30080
	loadInterval = 100 * time.Millisecond
)

// createStable creates the stable Services and returns their number of
// IPv4 service ports (as the agents count them).
func createStable(t *testing.T, kube kubernetes.Interface, tn *testnet.Net) int {
	n1, n2 := tn.Nodes[0], tn.Nodes[1]
	stableService(t, kube, "stable-a", []string{"10.96.1.1"}, 0, n1.Pods[0], n2.Pods[0])
	stableService(t, kube, "stable-b", []string{"10.96.1.2"}, stableBPort, n1.Pods[1], n2.Pods[1])
	stableService(t, kube, "stable-c", []string{"10.96.1.3", "fd10:96::103"}, 0, n1.Pods[1], n2.Pods[1])
	return 3 * 2
}

func stableService(t *testing.T, kube kubernetes.Interface, name string, ips []string, nodePort int32, pods ...*testnet.Pod) {
	ctx := context.Background()
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: Namespace, Name: name},
		Spec: corev1.ServiceSpec{ClusterIP: ips[0], ClusterIPs: ips}}
	for _, p := range []corev1.Protocol{corev1.ProtocolTCP, corev1.ProtocolUDP} {
		svc.Spec.Ports = append(svc.Spec.Ports, corev1.ServicePort{Name: strings.ToLower(string(p)), Protocol: p, Port: 80,
			TargetPort: intstr.FromInt32(8080), NodePort: nodePort})
	}
	if nodePort != 0 {
		svc.Spec.Type = corev1.ServiceTypeNodePort
	}
	if len(ips) == 2 {
		svc.Spec.IPFamilyPolicy = ptr.To(corev1.IPFamilyPolicyRequireDualStack)
	}
	if _, err := kube.CoreV1().Services(Namespace).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating %s: %v", name, err)
	}
	for _, family := range []discoveryv1.AddressType{discoveryv1.AddressTypeIPv4, discoveryv1.AddressTypeIPv6} {
		slice := &discoveryv1.EndpointSlice{
			ObjectMeta: metav1.ObjectMeta{Namespace: Namespace, Name: name + "-" + strings.ToLower(string(family)),
				Labels: map[string]string{discoveryv1.LabelServiceName: name}},
			AddressType: family,
		}
		for _, p := range []corev1.Protocol{corev1.ProtocolTCP, corev1.ProtocolUDP} {
			slice.Ports = append(slice.Ports, discoveryv1.EndpointPort{Name: ptr.To(strings.ToLower(string(p))), Protocol: ptr.To(p), Port: ptr.To[int32](8080)})
		}
		for _, p := range pods {
			addr := p.IP4
			if family == discoveryv1.AddressTypeIPv6 {
				addr = p.IP6
			}
			slice.Endpoints = append(slice.Endpoints, discoveryv1.Endpoint{Addresses: []string{addr},
				NodeName: ptr.To(p.Node.Name), Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}})
		}
		if _, err := kube.DiscoveryV1().EndpointSlices(Namespace).Create(ctx, slice, metav1.CreateOptions{}); err != nil {
			t.Fatalf("creating %s: %v", slice.Name, err)
		}
	}
}

// startLoads waits until the stable Services answer through the node and
// starts the node's loads: TCP and UDP, from a pod to stable-a (IPv4) and to
// stable-c (IPv6), and from the external client to stable-b's NodePort.
func startLoads(t *testing.T, tn *testnet.Net, n *node) {
	nodePort := fmt.Sprintf("%s:%d", n.IP4, stableBPort)
	targets := []struct {
		from *netns.NS
		addr string
	}{{n.Pods[1].NS, stableA}, {n.Pods[0].NS, stableC6}, {tn.Client, nodePort}}
	for _, x := range targets {
		for _, network := range []string{"tcp", "udp"} {
			apiserver.Eventually(t, time.Minute, func() error {
				_, err := x.from.Dial(network, x.addr, 2*time.Second)
				return err
			})
			l := testnet.StartLoad(x.from, network, x.addr, loadInterval)
			t.Cleanup(func() { l.Stop() })
			n.loads = append(n.loads, l)
		}
	}
}

// expectConverged: once the churn has stopped, the node's kernel holds
// exactly the API's service ports (none missing, none left over from a
// deleted or changed Service).
func expectConverged(t *testing.T, kube kubernetes.Interface, n *node) {
	want, err := APIServicePorts(context.Background(), kube, testnet.BenchNamespace, Namespace)
	if err != nil {
		t.Fatal(err)
	}
	apiserver.Eventually(t, time.Minute, func() error {
		got, err := KernelServicePorts(n.NS, string(n.mode))
		if err != nil {
			return err
		}
		if d := Diff(want, got); d != "" {
			return fmt.Errorf("%s (%s): the kernel's service ports differ from the API's: %s", n.Name, n.mode, d)
		}
		return nil
	})
}

// expectCanary: after the soak, a new Service answers through the node.
func expectCanary(t *testing.T, kube kubernetes.Interface, tn *testnet.Net, n *node) {
	name := "canary-" + n.Name
	ip := "10.96.1.10"
	if n.Index == 2 {
		ip = "10.96.1.11"
	}
	stableService(t, kube, name, []string{ip}, 0, tn.Nodes[0].Pods[0])
	apiserver.Eventually(t, 30*time.Second, func() error {
		r, err := n.Pods[1].Dial("tcp", ip+":80", 2*time.Second)
		if err == nil && r.Server != tn.Nodes[0].Pods[0].Name {
			err = fmt.Errorf("answered by %s", r.Server)
		}
		return err
	})
}
