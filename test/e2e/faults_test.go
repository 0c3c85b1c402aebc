package e2e

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
	"kpo.dev/kpo/hack/apiserver"
	"kpo.dev/kpo/hack/netns"
	"kpo.dev/kpo/test/testnet"
)

// outageEnv sets the API server outage of TestAPIServerOutage (a Go
// duration); the default is CI-sized. docs/robustness.md has the 2-minute
// figures: KPO_FAULTS_API_OUTAGE=2m go test ./test/e2e -run TestAPIServerOutage -v
const outageEnv = "KPO_FAULTS_API_OUTAGE"

func outageDuration(t *testing.T) time.Duration {
	d := 20 * time.Second
	if v := os.Getenv(outageEnv); v != "" {
		var err error
		if d, err = time.ParseDuration(v); err != nil {
			t.Fatalf("%s=%q: %v", outageEnv, v, err)
		}
	}
	return d
}

// TestAPIServerOutage cuts every node's path to the API server (the API
// server keeps running) under steady TCP and UDP load, one node in nftables
// and one in iptables mode: the rules stay and serve (no failed request), the
// agents keep running (same process), /livez and /readyz answer 200 all
// along (nothing is pending: the agents see no change), and a Service created
// during the outage is programmed soon after the path is back; the test logs
// how soon, per node.
func TestAPIServerOutage(t *testing.T) {
	netns.Skip(t)
	outage := outageDuration(t)
	tn := testnet.New(t, api, agentBin, 2, 2)
	n1, n2 := tn.Nodes[0], tn.Nodes[1]
	modes := map[*testnet.Node]kpov1.Mode{n1: kpov1.ModeNFTables, n2: kpov1.ModeIPTables}
	for node, mode := range modes {
		node.StartAgent(t, agentConfig(mode))
	}
	for node, mode := range modes {
		waitSynced(t, node.Name, mode)
	}
	servers := []*testnet.Pod{n1.Pods[0], n2.Pods[0]}
	tn.CreateService(t, testnet.ServiceSpec{Name: "steady", ClusterIPs: []string{"10.96.10.1"}, Pods: servers})
	tn.CreateService(t, testnet.ServiceSpec{Name: "steady-udp", ClusterIPs: []string{"10.96.10.2"}, Protocol: corev1.ProtocolUDP, Pods: servers})
	var loads []*testnet.Load
	for _, node := range tn.Nodes {
		client := node.Pods[1]
		expectServer(t, client.NS, "tcp", "10.96.10.1:80", "")
		expectServer(t, client.NS, "udp", "10.96.10.2:80", "")
		loads = append(loads, testnet.StartLoad(client.NS, "tcp", "10.96.10.1:80", 20*time.Millisecond),
			testnet.StartLoad(client.NS, "udp", "10.96.10.2:80", 20*time.Millisecond))
	}
	pids := map[*testnet.Node]int{n1: n1.AgentPID(), n2: n2.AgentPID()}

	var restores []func()
	for _, node := range tn.Nodes {
		restores = append(restores, cutAPIServer(t, node))
	}
	cut := time.Now()
	// A change the agents cannot see until the path is back.
	tn.CreateService(t, testnet.ServiceSpec{Name: "during-outage", ClusterIPs: []string{"10.96.10.3"}, Pods: servers})
	probes, unhealthy := 0, []string{}
	for time.Since(cut) < outage {
		for _, node := range tn.Nodes {
			for _, path := range []string{"/livez", kpov1.AgentReadyPath} {
				code, body, err := httpGet(node.NS, "127.0.0.1:10256", path)
				probes++
				if err != nil || code != http.StatusOK {
					unhealthy = append(unhealthy, fmt.Sprintf("%s %s at %v: %d %v %s", node.Name, path,
						time.Since(cut).Round(time.Second), code, err, body))
				}
			}
		}
		holdFor(time.Second) // the probes' period, as kubelet's
	}
	for _, restore := range restores {
		restore()
	}
	back := time.Now()
	recovered := map[string]time.Duration{}
	for _, node := range tn.Nodes {
		client := node.Pods[1]
		apiserver.Eventually(t, 2*time.Minute, func() error {
			_, err := client.Dial("tcp", "10.96.10.3:80", 500*time.Millisecond)
			return err
		})
		recovered[node.Name] = time.Since(back)
	}
	// The agents' state did not change (issue 16: nothing to write), so their
	// reports must still say Synced in their mode.
	for node, mode := range modes {
		waitSynced(t, node.Name, mode)
	}
	statusBack := time.Since(back)
	summary := stopLoads(t, fmt.Sprintf("across a %v API server outage", outage), loads, int(outage/(40*time.Millisecond)))
	if len(unhealthy) > 0 {
		t.Errorf("%d of %d health probes failed during the outage; first: %v", len(unhealthy), probes, unhealthy[:min(5, len(unhealthy))])
	}
	for node, pid := range pids {
		if !node.AgentRunning() || node.AgentPID() != pid {
			t.Errorf("%s: the agent did not keep running through the outage", node.Name)
		}
	}
	t.Logf("API server outage of %v: %d health probes, all 200; the Service created during it answered %v (node-1, nftables) "+
		"and %v (node-2, iptables) after the path came back; both reports current after %v; loads: %s",
		outage, probes, recovered[n1.Name].Round(100*time.Millisecond), recovered[n2.Name].Round(100*time.Millisecond),
		statusBack.Round(100*time.Millisecond), summary)
}

// TestKernelRefusesTransaction makes the kernel refuse the node's next
// transactions with an object the sync cannot remove — a foreign reference to
// a kpo chain that the deletion of a Service must delete (EBUSY) — under
// steady load, in both modes: the previous rules stay and serve (the deleted
// Service's too), the failure is reported (ProxyNodeStatus SyncFailed with
// the kernel's message, the failures metric), retries back off, and once the
// obstacle goes the node syncs again.
func TestKernelRefusesTransaction(t *testing.T) {
	netns.Skip(t)
	for _, mode := range []kpov1.Mode{kpov1.ModeNFTables, kpov1.ModeIPTables} {
		t.Run(string(mode), func(t *testing.T) { kernelRefuses(t, mode) })
	}
}

// refusalHeld is how long the obstacle stays: long enough for the backoff
// to show, short of the 2 × syncPeriod after which /livez turns 503.
const refusalHeld = 15 * time.Second

func kernelRefuses(t *testing.T, mode kpov1.Mode) {
	tn := testnet.New(t, api, agentBin, 1, 3)
	node := tn.Nodes[0]
	client, a, b := node.Pods[0], node.Pods[1], node.Pods[2]
	node.StartAgent(t, agentConfig(mode))
	waitSynced(t, node.Name, mode)
	tn.CreateService(t, testnet.ServiceSpec{Name: "keep", ClusterIPs: []string{"10.96.11.1"}, Pods: []*testnet.Pod{a}})
	tn.CreateService(t, testnet.ServiceSpec{Name: "keep-udp", ClusterIPs: []string{"10.96.11.2"}, Protocol: corev1.ProtocolUDP, Pods: []*testnet.Pod{a}})
	// ClientIP affinity gives the Service chains of its own in both modes
	// (others share chains by shape, which its deletion would not delete).
	doomed := tn.CreateService(t, testnet.ServiceSpec{Name: "doomed", ClusterIPs: []string{"10.96.11.3"}, Pods: []*testnet.Pod{b},
		Mutate: func(s *corev1.Service) { s.Spec.SessionAffinity = corev1.ServiceAffinityClientIP }})
	expectServer(t, client.NS, "tcp", "10.96.11.1:80", a.Name)
	expectServer(t, client.NS, "udp", "10.96.11.2:80", a.Name)
	expectServer(t, client.NS, "tcp", "10.96.11.3:80", b.Name)
	loads := []*testnet.Load{
		testnet.StartLoad(client.NS, "tcp", "10.96.11.1:80", 20*time.Millisecond),
		testnet.StartLoad(client.NS, "udp", "10.96.11.2:80", 20*time.Millisecond),
	}

	removeObstacle := refuseServiceDeletion(t, node, mode, "10.96.11.3")
	before, err := agentMetric(node, "kpo_sync_proxy_rules_failures_total")
	if err != nil {
		t.Fatal(err)
	}
	deleteService(t, doomed)
	start := time.Now()
	busy := map[kpov1.Mode]string{kpov1.ModeNFTables: "Device or resource busy", kpov1.ModeIPTables: "resource busy"}[mode]
	cond := waitReason(t, node.Name, kpov1.NodeReasonSyncFailed, busy)
	t.Logf("reported %v after the deletion: %s", time.Since(start).Round(100*time.Millisecond), testnet.Tail(cond.Message, 300))
	// The previous rules stay: the deleted Service still answers.
	expectServer(t, client.NS, "tcp", "10.96.11.3:80", b.Name)
	holdFor(refusalHeld - time.Since(start))
	// Within 2 × syncPeriod of the first failure the agent stays live and
	// ready (health.go): kubelet does not restart it for a refusal it would
	// meet again.
	for _, path := range []string{"/livez", kpov1.AgentReadyPath} {
		if code, body, err := httpGet(node.NS, "127.0.0.1:10256", path); err != nil || code != http.StatusOK {
			t.Errorf("%s after %v of refusals: %d %v %s", path, refusalHeld, code, err, body)
		}
	}
	after, err := agentMetric(node, "kpo_sync_proxy_rules_failures_total")
	if err != nil {
		t.Fatal(err)
	}
	// Retries double from 100 ms (minSyncPeriod 50 ms): about 8 in 15 s;
	// without backoff they would be one per minSyncPeriod, 300.
	failures := int(after - before)
	if failures < 3 || failures > 12 {
		t.Errorf("%d failed syncs in %v of refusals, want retries with exponential backoff (3–12)", failures, refusalHeld)
	}

	removeObstacle()
	removed := time.Now()
	waitSyncedAfter(t, node.Name, removed)
	recovery := time.Since(removed)
	expectUnanswered(t, client.NS, "10.96.11.3:80")
	summary := stopLoads(t, "while the kernel refused every transaction", loads, int(refusalHeld/(40*time.Millisecond)))
	t.Logf("%s: %d failed syncs in %v of refusals; synced %v after the obstacle went; loads: %s",
		mode, failures, refusalHeld, recovery.Round(100*time.Millisecond), summary)
}

var nftServiceChain = regexp.MustCompile(`chain (svc-\S+-testnet-doomed-echo) \{`)

// refuseServiceDeletion adds, beside the node's kpo rules, a foreign object
// that jumps to the kpo chain of the Service with clusterIP, so that the
// kernel refuses (EBUSY) every transaction that deletes that chain. nftables:
// a verdict map in the kpo table (jumps cannot cross tables; a full sync
// flushes every chain of the table, so a foreign rule would not hold, but
// the table's chains are deleted before its sets and maps). iptables: a
// foreign nat chain jumping to the Service's KPO-SVC- chain. It returns the
// removal of the obstacle.
func refuseServiceDeletion(t *testing.T, node *testnet.Node, mode kpov1.Mode, clusterIP string) func() {
	t.Helper()
	if mode == kpov1.ModeNFTables {
		m := nftServiceChain.FindStringSubmatch(node.MustRun(t, "nft", "list", "table", "ip", "kpo"))
		if m == nil {
			t.Fatalf("no service chain of testnet/doomed in table ip kpo:\n%s", node.MustRun(t, "nft", "list", "table", "ip", "kpo"))
		}
		node.MustRun(t, "nft", "add", "map", "ip", "kpo", "fault-injection", "{ type ipv4_addr : verdict ; }")
		node.MustRun(t, "nft", "add", "element", "ip", "kpo", "fault-injection", "{ 203.0.113.250 : jump "+m[1]+" }")
		return func() { node.MustRun(t, "nft", "delete", "map", "ip", "kpo", "fault-injection") }
	}
	bin := iptablesBinary(t, node)
	chain := ""
	for _, line := range strings.Split(node.MustRun(t, bin+"-save", "-t", "nat"), "\n") {
		if m := iptablesServiceJump.FindStringSubmatch(line); m != nil && strings.Contains(line, "-d "+clusterIP+"/32") {
			chain = m[1]
		}
	}
	if chain == "" {
		t.Fatalf("no KPO-SVC- chain for %s:\n%s", clusterIP, node.MustRun(t, bin+"-save", "-t", "nat"))
	}
	return foreignJump(t, node, bin, chain)
}

// foreignJump adds a foreign nat chain that jumps to a kpo chain, and returns
// its removal.
func foreignJump(t *testing.T, node *testnet.Node, bin, target string) func() {
	t.Helper()
	node.MustRun(t, bin, "-t", "nat", "-N", "FAULT-INJECTION")
	node.MustRun(t, bin, "-t", "nat", "-A", "FAULT-INJECTION", "-j", target)
	return func() {
		node.MustRun(t, bin, "-t", "nat", "-F", "FAULT-INJECTION")
		node.MustRun(t, bin, "-t", "nat", "-X", "FAULT-INJECTION")
	}
}

// deleteService deletes a Service and its EndpointSlices.
func deleteService(t *testing.T, svc *corev1.Service) {
	t.Helper()
	ctx := context.Background()
	if err := api.Client.Delete(ctx, svc); err != nil {
		t.Fatal(err)
	}
	if err := api.Client.DeleteAllOf(ctx, &discoveryv1.EndpointSlice{}, client.InNamespace(svc.Namespace),
		client.MatchingLabels{discoveryv1.LabelServiceName: svc.Name}); err != nil {
		t.Fatal(err)
	}
}

// TestTwoAgentsOnOneNode starts a second agent (another configuration, the
// other mode, other ports: nothing else keeps them apart) on a node whose
// agent runs, under load: it waits for the node's lock and touches nothing —
// the kernel keeps only the first agent's mode, the report stays the first
// agent's — until the first exits; then it takes over make-before-break.
func TestTwoAgentsOnOneNode(t *testing.T) {
	netns.Skip(t)
	tn := testnet.New(t, api, agentBin, 1, 2)
	node := tn.Nodes[0]
	client, server := node.Pods[0], node.Pods[1]
	node.StartAgent(t, agentConfig(kpov1.ModeNFTables))
	waitSynced(t, node.Name, kpov1.ModeNFTables)
	tn.CreateService(t, testnet.ServiceSpec{Name: "shared", ClusterIPs: []string{"10.96.12.1"}, Pods: []*testnet.Pod{server}})
	expectServer(t, client.NS, "tcp", "10.96.12.1:80", server.Name)
	loads := []*testnet.Load{testnet.StartLoad(client.NS, "tcp", "10.96.12.1:80", 20*time.Millisecond)}

	second := agentConfig(kpov1.ModeIPTables)
	second.ConfigurationName, second.ConfigurationGeneration = "second", 7
	p := startAgentProcess(t, tn, node, second, "--lock-file="+node.LockFile(),
		"--healthz-bind-address=0.0.0.0:20256", "--metrics-bind-address=127.0.0.1:20249")
	apiserver.Eventually(t, settle, func() error {
		if !strings.Contains(p.logs.String(), "another kpo agent holds this node's lock") {
			return fmt.Errorf("the second agent does not say it waits:\n%s", testnet.Tail(p.logs.String(), 2000))
		}
		return nil
	})
	// While the first runs (and syncs: a change), the second touches nothing.
	tn.CreateService(t, testnet.ServiceSpec{Name: "while-two", ClusterIPs: []string{"10.96.12.2"}, Pods: []*testnet.Pod{server}})
	expectServer(t, client.NS, "tcp", "10.96.12.2:80", server.Name)
	for range 5 {
		objects, err := testnet.KpoObjects(node.NS)
		if err != nil {
			t.Fatal(err)
		}
		if err := testnet.OnlyMode(objects, string(kpov1.ModeNFTables)); err != nil {
			t.Fatalf("while the first agent runs: %v", err)
		}
		if _, pns, err := syncedCondition(node.Name); err != nil || pns.Status.Configuration != "default" {
			t.Fatalf("while the first agent runs, the report is %+v (%v)", pns.Status, err)
		}
		holdFor(500 * time.Millisecond) // the sampling period
	}
	if strings.Contains(p.logs.String(), "caches synced") {
		t.Fatalf("the second agent started syncing while the first ran:\n%s", testnet.Tail(p.logs.String(), 2000))
	}

	node.KillAgent()
	killed := time.Now()
	apiserver.Eventually(t, settle, func() error {
		_, pns, err := syncedCondition(node.Name)
		if err != nil {
			return err
		}
		if pns.Status.Configuration != "second" || pns.Status.ActiveMode != kpov1.ModeIPTables {
			return fmt.Errorf("report %s/%s, want the second agent's", pns.Status.Configuration, pns.Status.ActiveMode)
		}
		return nil
	})
	waitSyncedAfter(t, node.Name, killed)
	took := time.Since(killed)
	expectOnlyMode(t, node, kpov1.ModeIPTables)
	expectServer(t, client.NS, "tcp", "10.96.12.2:80", server.Name)
	summary := stopLoads(t, "with a second agent waiting and then taking over", loads, 50)
	t.Logf("the second agent reported synced %v after the first was killed; load: %s", took.Round(100*time.Millisecond), summary)
}

// TestCleanupFailsHalfway makes kpo's iptables cleanup fail (a foreign nat
// chain jumps to KPO-SERVICES): kpo-agent --cleanup exits non-zero naming
// what remains; the deletion of the configuration reports CleanupFailed on
// the ProxyNodeStatus with what remains, retries, and reports CleanedUp once
// the obstacle goes, leaving nothing of kpo's.
func TestCleanupFailsHalfway(t *testing.T) {
	netns.Skip(t)
	ctx := context.Background()
	const name = "faults-cleanup"
	pc := &kpov1.ProxyConfiguration{ObjectMeta: metav1.ObjectMeta{Name: name, Finalizers: []string{"test.kpo.dev/hold"}},
		Spec: kpov1.ProxyConfigurationSpec{Mode: kpov1.ModeIPTables}}
	if err := api.Client.Create(ctx, pc); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		latest := &kpov1.ProxyConfiguration{}
		if api.Client.Get(ctx, types.NamespacedName{Name: name}, latest) == nil {
			controllerutil.RemoveFinalizer(latest, "test.kpo.dev/hold")
			_ = api.Client.Update(ctx, latest)
			_ = api.Client.Delete(ctx, latest)
		}
	})
	tn := testnet.New(t, api, agentBin, 1, 1)
	node := tn.Nodes[0]
	cfg := agentConfig(kpov1.ModeIPTables)
	cfg.ConfigurationName = name
	node.StartAgent(t, cfg)
	waitSynced(t, node.Name, kpov1.ModeIPTables)
	bin := iptablesBinary(t, node)
	removeObstacle := foreignJump(t, node, bin, "KPO-SERVICES")

	// By hand: kpo-agent --cleanup (the agent stopped first, or it would wait
	// for the agent's lock).
	node.KillAgent()
	out, err := node.Run(agentBin, "--cleanup", "--config=/nonexistent", "--lock-file="+node.LockFile())
	if err == nil {
		t.Fatalf("kpo-agent --cleanup succeeded although a foreign chain jumps to KPO-SERVICES:\n%s", out)
	}
	for _, want := range []string{"exit status 1", "still holds:", bin + " nat KPO-SERVICES"} {
		if !strings.Contains(out+err.Error(), want) {
			t.Errorf("kpo-agent --cleanup: %v, output does not say %q:\n%s", err, want, testnet.Tail(out, 3000))
		}
	}

	// Through the deletion of the configuration.
	node.StartAgent(t, cfg)
	waitSyncedAfter(t, node.Name, time.Now())
	if err := api.Client.Delete(ctx, pc); err != nil {
		t.Fatal(err)
	}
	cond := waitReason(t, node.Name, kpov1.NodeReasonCleanupFailed, "still holds:", bin+" nat KPO-SERVICES")
	t.Logf("reported: %s", testnet.Tail(cond.Message, 600))
	removeObstacle()
	waitReason(t, node.Name, kpov1.NodeReasonCleanedUp)
	objects, err := testnet.KpoObjects(node.NS)
	if err != nil {
		t.Fatal(err)
	}
	if len(objects) > 0 {
		t.Errorf("after the cleanup the node still holds %v", objects)
	}
}
