package e2e

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
	"kpo.dev/kpo/hack/apiserver"
	"kpo.dev/kpo/hack/netns"
	"kpo.dev/kpo/test/testnet"
)

// TestBadAndConflictingObjects: objects the API server accepts but the
// kernel cannot hold as they are — two Services with the same externalIP and
// port, an externalIP equal to another Service's clusterIP, an EndpointSlice
// port of 70000 — must not fail a sync (each failed the whole sync before:
// nftables "File exists", iptables-restore "Port '70000' not valid"). The
// node keeps syncing, the winner and the rest of each object are programmed,
// a Service created afterwards answers, and the losers are reported.
func TestBadAndConflictingObjects(t *testing.T) {
	netns.Skip(t)
	for _, mode := range []kpov1.Mode{kpov1.ModeNFTables, kpov1.ModeIPTables} {
		t.Run(string(mode), func(t *testing.T) { badAndConflicting(t, mode) })
	}
}

func badAndConflicting(t *testing.T, mode kpov1.Mode) {
	tn := testnet.New(t, api, agentBin, 1, 2)
	node := tn.Nodes[0]
	p0, p1 := node.Pods[0], node.Pods[1]
	node.StartAgent(t, agentConfig(mode))
	waitSynced(t, node.Name, mode)

	withExternalIPs := func(ips ...string) func(*corev1.Service) {
		return func(s *corev1.Service) { s.Spec.ExternalIPs = ips }
	}
	// dup-a is created first (and sorts first): it keeps 203.0.113.70:80.
	dupA := tn.CreateService(t, testnet.ServiceSpec{Name: "dup-a", ClusterIPs: []string{"10.96.7.1"}, Pods: []*testnet.Pod{p0},
		Mutate: withExternalIPs("203.0.113.70")})
	tn.CreateService(t, testnet.ServiceSpec{Name: "dup-b", ClusterIPs: []string{"10.96.7.2"}, Pods: []*testnet.Pod{p1},
		Mutate: withExternalIPs("203.0.113.70")})
	// steal claims dup-a's clusterIP and port as an externalIP: the clusterIP wins.
	tn.CreateService(t, testnet.ServiceSpec{Name: "steal", ClusterIPs: []string{"10.96.7.3"}, Pods: []*testnet.Pod{p1},
		Mutate: withExternalIPs("10.96.7.1")})
	// badport has a good slice (p0) and one whose port is 70000 (p1).
	badport := tn.CreateService(t, testnet.ServiceSpec{Name: "badport", ClusterIPs: []string{"10.96.7.4"}, Pods: []*testnet.Pod{p0}})
	createSlice(t, badport, "badport-extra", 70000, p1)
	start := time.Now()

	// Syncs keep succeeding: a Service created now answers.
	tn.CreateService(t, testnet.ServiceSpec{Name: "after", ClusterIPs: []string{"10.96.7.5"}, Pods: []*testnet.Pod{p1}})
	expectServer(t, p0.NS, "tcp", "10.96.7.5:80", "n1p1")
	waitSyncedAfter(t, node.Name, start)

	// The winners, and the rest of each loser, are programmed: every
	// request answered by the winner's pod, none refused (a request sent to
	// the bad slice's endpoint would be: nothing listens on its port).
	expectOnly(t, tn.Client, "203.0.113.70:80", "n1p0")   // dup-a's, never dup-b's
	expectOnly(t, p1.NS, "10.96.7.1:80", "n1p0")          // dup-a's clusterIP, never steal's pod
	expectOnly(t, p1.NS, "10.96.7.4:80", "n1p0")          // badport's good slice only
	expectServer(t, p0.NS, "tcp", "10.96.7.2:80", "n1p1") // dup-b's own clusterIP
	expectServer(t, p0.NS, "tcp", "10.96.7.3:80", "n1p1") // steal's own clusterIP

	// The losers and the bad slice are reported.
	want := []string{
		"EndpointSlice testnet/badport-extra InvalidEndpointPort",
		"Service testnet/dup-b ExternalIPConflict",
		"Service testnet/steal ExternalIPConflict",
	}
	waitRejected(t, node.Name, want)

	// Each loser was logged once, not on every sync.
	logs := node.AgentLogs()
	for _, obj := range []string{`object="testnet/dup-b"`, `object="testnet/steal"`, `object="testnet/badport-extra"`} {
		if n := countLines(logs, "not programming", obj); n != 1 {
			t.Errorf("%s logged %d times, want once", obj, n)
		}
	}
	if strings.Contains(logs, "sync failed") {
		t.Errorf("a sync failed:\n%s", testnet.Tail(logs, 3000))
	}

	// Fixing the slice programs it, and the report follows.
	createSlice(t, badport, "badport-extra", 8080, p1)
	expectSpread(t, p0.NS, "tcp", "10.96.7.4:80", "n1p0", "n1p1")
	waitRejected(t, node.Name, want[1:])

	// When the winner goes, the losers take over in the same sync: dup-b
	// gets 203.0.113.70:80, steal gets 10.96.7.1:80.
	if err := api.Client.Delete(context.Background(), dupA); err != nil {
		t.Fatal(err)
	}
	expectServer(t, tn.Client, "tcp", "203.0.113.70:80", "n1p1")
	expectOnly(t, tn.Client, "203.0.113.70:80", "n1p1")
	expectOnly(t, p0.NS, "10.96.7.1:80", "n1p1")
	waitRejected(t, node.Name, nil)
}

// createSlice writes an IPv4 EndpointSlice of svc with one port (number port)
// and the pods as ready endpoints, creating or replacing it.
func createSlice(t *testing.T, svc *corev1.Service, name string, port int32, pods ...*testnet.Pod) {
	t.Helper()
	ctx := context.Background()
	s := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: svc.Namespace, Name: name,
			Labels: map[string]string{discoveryv1.LabelServiceName: svc.Name}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports: []discoveryv1.EndpointPort{{Name: ptr.To(svc.Spec.Ports[0].Name), Port: ptr.To(port),
			Protocol: ptr.To(corev1.ProtocolTCP)}},
	}
	for _, p := range pods {
		s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{Addresses: []string{p.IP4}, NodeName: ptr.To(p.Node.Name),
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}})
	}
	existing := &discoveryv1.EndpointSlice{}
	if err := api.Client.Get(ctx, types.NamespacedName{Namespace: s.Namespace, Name: name}, existing); err == nil {
		s.ResourceVersion = existing.ResourceVersion
		if err := api.Client.Update(ctx, s); err != nil {
			t.Fatal(err)
		}
		return
	}
	if err := api.Client.Create(ctx, s); err != nil {
		t.Fatalf("the API server refused slice %s (port %d): %v", name, port, err)
	}
	t.Cleanup(func() { _ = api.Client.Delete(context.Background(), s) })
}

// waitRejected polls until the node's ProxyNodeStatus names exactly want
// ("Kind namespace/name Reason") and counts them, while Synced stays True.
func waitRejected(t *testing.T, node string, want []string) {
	t.Helper()
	apiserver.Eventually(t, settle, func() error {
		pns := &kpov1.ProxyNodeStatus{}
		if err := api.Client.Get(context.Background(), types.NamespacedName{Name: node}, pns); err != nil {
			return err
		}
		var got []string
		for _, r := range pns.Status.RejectedObjects {
			got = append(got, fmt.Sprintf("%s %s/%s %s", r.Kind, r.Namespace, r.Name, r.Reason))
		}
		if !slices.Equal(got, want) || int(pns.Status.RejectedObjectCount) != len(want) {
			return fmt.Errorf("rejected %v (count %d), want %v", got, pns.Status.RejectedObjectCount, want)
		}
		if !meta.IsStatusConditionTrue(pns.Status.Conditions, kpov1.NodeConditionSynced) {
			return fmt.Errorf("not synced: %+v", pns.Status.Conditions)
		}
		t.Logf("%s reports %d rejected objects: %+v", node, pns.Status.RejectedObjectCount, pns.Status.RejectedObjects)
		return nil
	})
}

// expectOnly waits until TCP to addr is answered, then requires each of 10
// more requests to be answered by want.
func expectOnly(t *testing.T, from *netns.NS, addr, want string) {
	t.Helper()
	expectServer(t, from, "tcp", addr, "")
	for range 10 {
		r, err := from.Dial("tcp", addr, dialTimeout)
		if err != nil {
			t.Fatalf("tcp %s from %s: %v, want %s", addr, from.Name, err, want)
		}
		if r.Server != want {
			t.Fatalf("tcp %s from %s answered by %s, want %s", addr, from.Name, r.Server, want)
		}
	}
}

// countLines counts the lines of s that contain every one of subs.
func countLines(s string, subs ...string) int {
	n := 0
	for _, line := range strings.Split(s, "\n") {
		all := true
		for _, sub := range subs {
			all = all && strings.Contains(line, sub)
		}
		if all {
			n++
		}
	}
	return n
}
