package cluster_test

// This file is named to sort before cluster_test.go's tests end with
// TestZZDeletionCleansNodes (which removes the ProxyConfiguration): it runs
// first, on the cluster as TestMain left it (nftables mode).

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"kpo.dev/kpo/hack/apiserver"
	"kpo.dev/kpo/hack/cluster"
	"kpo.dev/kpo/hack/netns"
	"kpo.dev/kpo/nodeagent/explain"
)

// explainNS holds the objects TestExplainOnTheCluster explains.
const explainNS = "explain"

// explainCase is one `kubectl kpo explain` and what its explanation must say.
type explainCase struct {
	args  []string
	check func(explain.Explanation) error
	// text must appear in the human-readable output.
	text []string
}

// TestExplainOnTheCluster runs `kubectl kpo` (built from this tree, found by
// kubectl on the PATH) against the local cluster of real kubelet nodes, on
// three situations made of real pods: a NodePort with externalTrafficPolicy
// Local reached on a node without its endpoint (dropped) and on the node
// with it (forwarded, source kept); a ClusterIP with zone hints
// (trafficDistribution: PreferSameZone; the suite's nodes are in zone-a,
// zone-b, zone-a); a Service whose only endpoint fails its readiness probe
// (refused). It waits until every explanation is the expected one AND its
// node's agent reports having programmed the very model explained (the line
// `programmed:`), then checks the packets agree. The outputs are README's
// examples (testdata/explain-examples.txt, rewritten with
// KPO_UPDATE_EXAMPLES=1).
func TestExplainOnTheCluster(t *testing.T) {
	c := need(t)
	ctx := context.Background()
	pluginDir := buildPlugin(t)
	n1, n2, n3 := c.Nodes[0].Name, c.Nodes[1].Name, c.Nodes[2].Name
	expectZones(t, c, map[string]string{n1: "zone-a", n2: "zone-b", n3: "zone-a"})

	createNamespace(t, c)
	ip := map[string]string{}
	for _, p := range []struct{ name, node, app string }{
		{"client", n1, "client"}, {"web", n2, "web"},
		{"api-1", n1, "api"}, {"api-2", n2, "api"}, {"api-3", n3, "api"}, {"db", n1, "db"},
	} {
		ip[p.name] = runEchoPod(t, c, p.name, p.node, p.app, p.app != "db")
	}
	np := createService(t, c, "web-local", "web", func(s *corev1.ServiceSpec) {
		s.Type = corev1.ServiceTypeNodePort
		s.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
	}).Spec.Ports[0].NodePort
	api := createService(t, c, "api", "api", func(s *corev1.ServiceSpec) {
		s.TrafficDistribution = ptr.To(corev1.ServiceTrafficDistributionPreferSameZone)
	})
	db := createService(t, c, "db", "db", func(*corev1.ServiceSpec) {})
	for svc, n := range map[string]int{"web-local": 1, "api": 3} {
		if err := c.WaitReadyEndpoints(ctx, explainNS, svc, n, settle); err != nil {
			t.Fatal(err)
		}
	}

	// The external client's address (hack/cluster: LAN.AddClient, host 200 of the node network).
	external := netns.NodeAddr4(200)
	cases := []explainCase{
		{[]string{"explain", "svc/web-local", "-n", explainNS, "--from-ip", external, "--to", "nodeport", "--node", n1},
			expect(explain.Dropped, false, nil, []string{ip["web"]}, explain.ReasonNoLocalEndpoints),
			[]string{"=> dropped", "NoLocalEndpoints", "on node " + n2}},
		{[]string{"explain", "svc/web-local", "-n", explainNS, "--from-ip", external, "--to", "nodeport", "--node", n2},
			expect(explain.Forwarded, false, []string{ip["web"]}, nil, explain.ReasonExternalLocal, explain.ReasonKeepSource),
			[]string{"=> forwarded, source kept", "ready, on this node"}},
		{[]string{"explain", "svc/api", "-n", explainNS, "--from", "pod/client"},
			expect(explain.Forwarded, false, []string{ip["api-1"], ip["api-3"]}, []string{ip["api-2"]}, explain.ReasonTopologyZone),
			[]string{"=> forwarded, source kept", "hinted for this zone", "does not include this node's zone"}},
		{[]string{"explain", "svc/db", "-n", explainNS, "--from", "pod/client"},
			expect(explain.Refused, false, nil, []string{ip["db"]}, explain.ReasonNoEndpoints),
			[]string{"=> refused", "not ready, not serving"}},
	}
	waitExplained(t, c, pluginDir, cases)

	var all strings.Builder
	for _, ec := range cases {
		out, err := kubectlKpo(ctx, c, pluginDir, ec.args...)
		if err != nil {
			t.Fatal(err)
		}
		for _, w := range append(ec.text, "programmed: ", "that its kernel holds this model") {
			if !strings.Contains(out, w) {
				t.Errorf("kubectl kpo %s: no %q in\n%s", strings.Join(ec.args, " "), w, out)
			}
		}
		all.WriteString("$ kubectl kpo " + strings.Join(ec.args, " ") + "\n" + out + "\n")
	}
	t.Logf("the explanations:\n%s", all.String())
	if os.Getenv("KPO_UPDATE_EXAMPLES") == "1" {
		if err := os.WriteFile(filepath.Join("testdata", "explain-examples.txt"), []byte(all.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	// The packets agree: the external client times out on node-1's NodePort
	// and reaches web, with its own address, on node-2's; the client pod
	// reaches only its zone's api pods, with its own address; db refuses.
	if r, err := c.External.Dial("tcp", net.JoinHostPort(netns.NodeAddr4(c.Nodes[0].Index), strconv.Itoa(int(np))), 2*time.Second); !errors.Is(err, netns.ErrTimeout) {
		t.Errorf("external → %s's NodePort: %+v, %v; want a timeout (dropped)", n1, r, err)
	}
	if r, err := c.External.Dial("tcp", net.JoinHostPort(netns.NodeAddr4(c.Nodes[1].Index), strconv.Itoa(int(np))), 2*time.Second); err != nil || r.Server != "web" || r.ClientIP() != external {
		t.Errorf("external → %s's NodePort: %+v, %v; want web seeing %s", n2, r, err, external)
	}
	client := c.PodNS(explainNS, "client")
	for range 10 {
		r, err := client.Dial("tcp", net.JoinHostPort(api.Spec.ClusterIP, "80"), 2*time.Second)
		if err != nil || (r.Server != "api-1" && r.Server != "api-3") || r.ClientIP() != ip["client"] {
			t.Errorf("client → api: %+v, %v; want api-1 or api-3 (zone-a) seeing %s", r, err, ip["client"])
		}
	}
	if r, err := client.Dial("tcp", net.JoinHostPort(db.Spec.ClusterIP, "80"), 2*time.Second); !errors.Is(err, netns.ErrRefused) {
		t.Errorf("client → db: %+v, %v; want refused", r, err)
	}
}

// expect checks an explanation's outcome, masquerade, endpoints (their
// addresses, any order), excluded endpoints (at least these) and reason codes
// (at least these).
func expect(outcome explain.Outcome, masquerade bool, endpoints, excluded []string, reasons ...string) func(explain.Explanation) error {
	return func(e explain.Explanation) error {
		var got, gotExcluded, codes []string
		for _, ep := range e.Endpoints {
			got = append(got, hostOf(ep.Address))
		}
		for _, ep := range e.Excluded {
			gotExcluded = append(gotExcluded, hostOf(ep.Address))
		}
		for _, r := range e.Reasons {
			codes = append(codes, r.Code)
		}
		slices.Sort(got)
		want := slices.Sorted(slices.Values(endpoints))
		switch {
		case e.Outcome != outcome || e.Masquerade != masquerade:
			return fmt.Errorf("%s, masquerade %v; want %s, masquerade %v", e.Outcome, e.Masquerade, outcome, masquerade)
		case !slices.Equal(got, want):
			return fmt.Errorf("endpoints %v, want %v", got, want)
		case !containsAll(gotExcluded, excluded):
			return fmt.Errorf("not used %v, want at least %v", gotExcluded, excluded)
		case !containsAll(codes, reasons):
			return fmt.Errorf("reasons %v, want at least %v", codes, reasons)
		}
		return nil
	}
}

// waitExplained polls `kubectl kpo explain -o json` until every case is
// explained as expected on a model its node reports it programmed. An agent
// writes its report on a change of state or with its heartbeat (5–5.5
// minutes), and the model it programmed rides those writes: rather than
// wait for a heartbeat, the test nudges the agents with a change of state
// they report within a second: an EndpointSlice they reject (port 70000) of
// the Service nudge (no selector, so no other slice), created and deleted in
// turn. The rejected port adds nothing to any model: the model explained
// and the one programmed hold the same nudge Service without endpoints.
func waitExplained(t *testing.T, c *cluster.Cluster, pluginDir string, cases []explainCase) {
	t.Helper()
	ctx := context.Background()
	createService(t, c, "nudge", "", func(*corev1.ServiceSpec) {})
	var lastNudge time.Time
	began, nudges := time.Now(), 0
	defer func() {
		t.Logf("explained as expected, programmed, after %.1fs and %d nudges", time.Since(began).Seconds(), nudges)
	}()
	apiserver.Eventually(t, 2*settle, func() error {
		var errs []error
		for _, ec := range cases {
			out, err := kubectlKpo(ctx, c, pluginDir, append(ec.args, "-o", "json")...)
			if err != nil {
				return err
			}
			var got []explain.Explanation
			if err := json.Unmarshal([]byte(out), &got); err != nil {
				return fmt.Errorf("%w in %s", err, out)
			}
			if len(got) != 1 {
				return fmt.Errorf("kubectl kpo %s: %d explanations, want 1: %s", strings.Join(ec.args, " "), len(got), out)
			}
			if err := ec.check(got[0]); err != nil {
				return fmt.Errorf("kubectl kpo %s: %w", strings.Join(ec.args, " "), err)
			}
			if p := got[0].Programmed; p == nil || p.State != explain.ModelProgrammed {
				errs = append(errs, fmt.Errorf("%s: programmed %+v", got[0].Node, p))
			}
		}
		if len(errs) > 0 && time.Since(lastNudge) > 3*time.Second {
			lastNudge, nudges = time.Now(), nudges+1
			nudgeAgents(t, c)
		}
		return errors.Join(errs...)
	})
}

// nudgeAgents creates the rejected EndpointSlice, or deletes it if it is there.
func nudgeAgents(t *testing.T, c *cluster.Cluster) {
	t.Helper()
	ctx := context.Background()
	slicesAPI := c.Kube.DiscoveryV1().EndpointSlices(explainNS)
	err := slicesAPI.Delete(ctx, "nudge", metav1.DeleteOptions{})
	if !apierrors.IsNotFound(err) {
		if err != nil {
			t.Fatal(err)
		}
		return
	}
	_, err = slicesAPI.Create(ctx, &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "nudge", Labels: map[string]string{discoveryv1.LabelServiceName: "nudge"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"10.244.1.250"}}},
		Ports: []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](70000),
			Protocol: ptr.To(corev1.ProtocolTCP)}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
}

// buildPlugin builds kubectl-kpo from this tree into a directory to put on
// kubectl's PATH.
func buildPlugin(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	cmd := exec.Command("go", "build", "-o", filepath.Join(dir, "kubectl-kpo"), "./cmd/kubectl-kpo")
	cmd.Dir = apiserver.RepoRoot()
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build kubectl-kpo: %v\n%s", err, out)
	}
	return dir
}

// kubectlKpo runs `kubectl kpo ARGS` as a user would: kubectl finds the
// plugin on the PATH, both read the cluster's kubeconfig from KUBECONFIG.
func kubectlKpo(ctx context.Context, c *cluster.Cluster, pluginDir string, args ...string) (string, error) {
	bin, err := apiserver.Binary("kubectl")
	if err != nil {
		return "", err
	}
	cmd := exec.CommandContext(ctx, bin, append([]string{"kpo"}, args...)...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+c.Kubeconfig,
		"PATH="+pluginDir+string(os.PathListSeparator)+os.Getenv("PATH"))
	var out, errOut strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("kubectl kpo %s: %w: %s", strings.Join(args, " "), err, errOut.String())
	}
	return out.String(), nil
}

// expectZones checks the nodes' zone labels (hack/cluster sets them).
func expectZones(t *testing.T, c *cluster.Cluster, want map[string]string) {
	t.Helper()
	for name, zone := range want {
		n, err := c.Kube.CoreV1().Nodes().Get(context.Background(), name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if got := n.Labels[corev1.LabelTopologyZone]; got != zone {
			t.Fatalf("%s is in zone %q, want %q", name, got, zone)
		}
	}
}

// createNamespace creates explainNS, deleted (and waited for) at the end.
func createNamespace(t *testing.T, c *cluster.Cluster) {
	t.Helper()
	ctx := context.Background()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: explainNS}}
	if _, err := c.Kube.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Kube.CoreV1().Namespaces().Delete(ctx, explainNS, metav1.DeleteOptions{}); err != nil {
			t.Error(err)
			return
		}
		apiserver.Eventually(t, settle, func() error {
			_, err := c.Kube.CoreV1().Namespaces().Get(ctx, explainNS, metav1.GetOptions{})
			if !apierrors.IsNotFound(err) {
				return fmt.Errorf("namespace %s still there (%v)", explainNS, err)
			}
			return nil
		})
	})
}

// runEchoPod runs the demo's echo server (answering with its name) on node,
// with a readiness probe that fails unless ready, and returns its IPv4
// address once it runs (and, if ready, is ready).
func runEchoPod(t *testing.T, c *cluster.Cluster, name, node, app string, ready bool) string {
	t.Helper()
	ctx := context.Background()
	probePort := intstr.FromInt32(8080)
	if !ready {
		probePort = intstr.FromInt32(8081) // nothing listens there
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app": app}},
		Spec: corev1.PodSpec{NodeName: node, TerminationGracePeriodSeconds: ptr.To[int64](1),
			Containers: []corev1.Container{{Name: "echo", Image: "kpo-echo:dev", Args: []string{"--port=8080"},
				Env: []corev1.EnvVar{{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{
					FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}}},
				ReadinessProbe: &corev1.Probe{PeriodSeconds: 2,
					ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: probePort}}}}}},
	}
	if _, err := c.Kube.CoreV1().Pods(explainNS).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var addr string
	apiserver.Eventually(t, settle, func() error {
		p, err := c.Kube.CoreV1().Pods(explainNS).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if p.Status.Phase != corev1.PodRunning || p.Status.PodIP == "" || podReady(p) != ready {
			return fmt.Errorf("pod %s: %s, IP %q, ready %v (want %v)", name, p.Status.Phase, p.Status.PodIP, podReady(p), ready)
		}
		addr = p.Status.PodIP
		return nil
	})
	return addr
}

// createService creates a Service of port http 80 (TCP, to 8080) on the pods
// of app (no selector if app is "").
func createService(t *testing.T, c *cluster.Cluster, name, app string, edit func(*corev1.ServiceSpec)) *corev1.Service {
	t.Helper()
	s := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{
			{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80, TargetPort: intstr.FromInt32(8080)}}},
	}
	if app != "" {
		s.Spec.Selector = map[string]string{"app": app}
	}
	edit(&s.Spec)
	s, err := c.Kube.CoreV1().Services(explainNS).Create(context.Background(), s, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func hostOf(addrPort string) string {
	if host, _, err := net.SplitHostPort(addrPort); err == nil {
		return host
	}
	return addrPort
}

func containsAll(have, want []string) bool {
	for _, w := range want {
		if !slices.Contains(have, w) {
			return false
		}
	}
	return true
}
