package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
	"kpo.dev/kpo/controllers/render"
	"kpo.dev/kpo/hack/apiserver"
	"kpo.dev/kpo/nodeagent/explain"
)

// TestPlugin runs kubectl-kpo against a real API server holding two nodes
// with their agents' reports, a ProxyConfiguration, a client pod and three
// Services (node-1 reports the model built from them as programmed, node-2
// another one): the README's examples (testdata/readme-examples.txt, rewritten
// with KPO_UPDATE_EXAMPLES=1) are this test's output.
func TestPlugin(t *testing.T) {
	if testing.Short() {
		t.Skip("starts kube-apiserver")
	}
	if _, err := apiserver.Binary("kube-apiserver"); err != nil {
		t.Skip(err)
	}
	env, err := apiserver.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Stop() })
	seed(t, env.Client)
	reportProgrammed(t, env.Client)

	run := func(args ...string) string {
		t.Helper()
		var out, errOut bytes.Buffer
		root := newRoot(&out, &errOut)
		root.SetArgs(append(args, "--kubeconfig", env.Kubeconfig))
		if err := root.Execute(); err != nil {
			t.Fatalf("kubectl kpo %s: %v\n%s", strings.Join(args, " "), err, errOut.String())
		}
		return out.String()
	}
	examples := []struct {
		args []string
		want []string
	}{
		{[]string{"explain", "svc/web-local", "-n", "demo", "--from-ip", "198.51.100.200", "--to", "nodeport", "--node", "node-1"},
			[]string{"=> dropped", "NoLocalEndpoints", "spec.externalTrafficPolicy: Local", "on node node-2",
				"programmed: node-1 reported at", "that its kernel holds this model"}},
		{[]string{"explain", "svc/web-local", "-n", "demo", "--from-ip", "198.51.100.200", "--to", "nodeport", "--node", "node-2"},
			[]string{"=> forwarded", "node-2's last report", "names another model (00000000000000aa, synced", "either it has not synced these objects yet"}},
		{[]string{"explain", "svc/api", "-n", "demo", "--from", "pod/client"},
			[]string{"=> forwarded, source kept", "TopologyZoneHints", "hints.forZones [zone-b] does not include this node's zone"}},
		{[]string{"explain", "svc/db", "-n", "demo", "--from", "pod/client"},
			[]string{"=> refused", "NoEndpoints", "not ready, not serving", "terminating, not serving"}},
		{[]string{"status"}, []string{"node-1", "node-2", "generation 1 of 2", "1 lagging: node-2", "MODEL", "00000000 "}},
	}
	var all strings.Builder
	for _, ex := range examples {
		out := run(ex.args...)
		for _, w := range ex.want {
			if !strings.Contains(out, w) {
				t.Errorf("kubectl kpo %s: no %q in\n%s", strings.Join(ex.args, " "), w, out)
			}
		}
		all.WriteString("$ kubectl kpo " + strings.Join(ex.args, " ") + "\n" + out + "\n")
	}
	golden := filepath.Join("testdata", "readme-examples.txt")
	if os.Getenv("KPO_UPDATE_EXAMPLES") == "1" {
		if err := os.WriteFile(golden, []byte(all.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	// Tools get the same explanation as JSON.
	var got []explain.Explanation
	if err := json.Unmarshal([]byte(run("explain", "svc/web-local", "-n", "demo", "--from", "pod/client", "--to", "nodeport", "-o", "json")), &got); err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Node != "node-1" || got[0].Outcome != explain.Forwarded || got[0].Masquerade {
		t.Errorf("a pod to the eTP Local NodePort of every node: %+v", got)
	}
	// With whether each node programmed the model explained.
	if len(got) == 2 && (got[0].Programmed == nil || got[0].Programmed.State != explain.ModelProgrammed ||
		got[1].Programmed == nil || got[1].Programmed.State != explain.OtherModel || got[1].Programmed.Reported.Services != "00000000000000aa") {
		t.Errorf("programmed: node-1 %+v, node-2 %+v; want Programmed and OtherModel", got[0].Programmed, got[1].Programmed)
	}
	var st Status
	if err := json.Unmarshal([]byte(run("status", "-o", "json")), &st); err != nil {
		t.Fatal(err)
	}
	if len(st.Nodes) != 2 || st.Nodes[0].ProgrammedModel == nil || st.Nodes[0].ProgrammedModel.Services != got[0].Programmed.Model.Services {
		t.Errorf("status -o json: %+v, want node-1's programmed model %v", st.Nodes, got[0].Programmed.Model)
	}
}

// reportProgrammed writes into node-1's report the model kubectl kpo builds
// for it (as its agent would after syncing these objects), and another one
// into node-2's, reported a second ago.
func reportProgrammed(t *testing.T, c client.Client) {
	t.Helper()
	ctx := context.Background()
	objs, err := explain.Load(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	pc := &kpov1.ProxyConfiguration{}
	node := &corev1.Node{}
	if err := c.Get(ctx, client.ObjectKey{Name: "default"}, pc); err != nil {
		t.Fatal(err)
	}
	if err := c.Get(ctx, client.ObjectKey{Name: "node-1"}, node); err != nil {
		t.Fatal(err)
	}
	cfg := render.AgentConfiguration(pc)
	if cfg.Mode, err = kpov1.Resolve(cfg.Mode, &cfg.ProxySettings, nil); err != nil {
		t.Fatal(err)
	}
	h := explain.Hash(explain.BuildNode(objs, explain.NodeFacts{Node: node, Config: cfg}).Snapshot)
	now := time.Now().Add(-time.Second).Truncate(time.Second)
	for name, pm := range map[string]kpov1.ProgrammedModel{
		"node-1": {Services: h.Services, Node: h.Node, SyncTime: metav1.NewTime(now.Add(-time.Second))},
		"node-2": {Services: "00000000000000aa", Node: "00000000000000bb", SyncTime: metav1.NewTime(now.Add(-4 * time.Second))},
	} {
		pns := &kpov1.ProxyNodeStatus{}
		if err := c.Get(ctx, client.ObjectKey{Name: name}, pns); err != nil {
			t.Fatal(err)
		}
		pns.Status.ProgrammedModel = &pm
		pns.Status.LastReportTime = &metav1.Time{Time: now}
		if err := c.Status().Update(ctx, pns); err != nil {
			t.Fatal(err)
		}
	}
}

// seed writes the objects of the examples.
func seed(t *testing.T, c client.Client) {
	t.Helper()
	ctx := context.Background()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "demo"}}))
	for i, zone := range []string{"zone-a", "zone-b"} {
		name := []string{"node-1", "node-2"}[i]
		n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{corev1.LabelTopologyZone: zone}}}
		must(c.Create(ctx, n))
		n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: []string{"198.51.100.1", "198.51.100.2"}[i]}}
		must(c.Status().Update(ctx, n))
	}
	pc := &kpov1.ProxyConfiguration{ObjectMeta: metav1.ObjectMeta{Name: "default"},
		Spec: kpov1.ProxyConfigurationSpec{Mode: kpov1.ModeNFTables, ProxySettings: kpov1.ProxySettings{ClusterCIDRs: []kpov1.CIDR{"10.244.0.0/16"}}}}
	must(c.Create(ctx, pc))
	pc.Spec.MasqueradeAll = false
	pc.Spec.SyncPeriod = "1m0s"
	must(c.Update(ctx, pc)) // generation 2; node-2 still runs 1
	synced := time.Now().Add(-5 * time.Second).Truncate(time.Second)
	for i, name := range []string{"node-1", "node-2"} {
		pns := &kpov1.ProxyNodeStatus{ObjectMeta: metav1.ObjectMeta{Name: name}}
		must(c.Create(ctx, pns))
		pns.Status = kpov1.ProxyNodeReport{Configuration: "default", ConfigurationGeneration: int64(2 - i),
			RequestedMode: kpov1.ModeNFTables, ActiveMode: kpov1.ModeNFTables, LastSyncTime: &metav1.Time{Time: synced},
			Services: 3, Endpoints: 4,
			Conditions: []metav1.Condition{{Type: kpov1.NodeConditionSynced, Status: metav1.ConditionTrue, Reason: kpov1.NodeReasonSynced, LastTransitionTime: metav1.Time{Time: synced}},
				{Type: kpov1.NodeConditionHealthy, Status: metav1.ConditionTrue, Reason: kpov1.NodeReasonFresh, LastTransitionTime: metav1.Time{Time: synced}}}}
		must(c.Status().Update(ctx, pns))
	}
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: "client"},
		Spec: corev1.PodSpec{NodeName: "node-1", Containers: []corev1.Container{{Name: "c", Image: "client"}}}}
	must(c.Create(ctx, pod))
	pod.Status.PodIP, pod.Status.PodIPs = "10.244.1.5", []corev1.PodIP{{IP: "10.244.1.5"}}
	must(c.Status().Update(ctx, pod))

	svc := func(name, ip string, f func(*corev1.Service)) {
		s := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: name},
			Spec: corev1.ServiceSpec{ClusterIP: ip, ClusterIPs: []string{ip},
				Ports: []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP, TargetPort: intstr.FromInt32(8080)}}}}
		if f != nil {
			f(s)
		}
		must(c.Create(ctx, s))
	}
	svc("web-local", "10.96.0.20", func(s *corev1.Service) {
		s.Spec.Type = corev1.ServiceTypeNodePort
		s.Spec.Ports[0].NodePort = 30080
		s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
	})
	svc("api", "10.96.0.21", func(s *corev1.Service) {
		s.Spec.TrafficDistribution = ptr.To(corev1.ServiceTrafficDistributionPreferClose)
	})
	svc("db", "10.96.0.22", nil)
	type ep struct {
		ip, node, zone              string
		ready, serving, terminating bool
	}
	slice := func(service string, eps ...ep) {
		s := &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: service + "-1",
			Labels: map[string]string{discoveryv1.LabelServiceName: service}}, AddressType: discoveryv1.AddressTypeIPv4,
			Ports: []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](8080), Protocol: ptr.To(corev1.ProtocolTCP)}}}
		for _, e := range eps {
			x := discoveryv1.Endpoint{Addresses: []string{e.ip}, NodeName: ptr.To(e.node), Zone: ptr.To(e.zone),
				Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(e.ready), Serving: ptr.To(e.serving), Terminating: ptr.To(e.terminating)}}
			if service == "api" {
				x.Hints = &discoveryv1.EndpointHints{ForZones: []discoveryv1.ForZone{{Name: e.zone}}}
			}
			s.Endpoints = append(s.Endpoints, x)
		}
		must(c.Create(ctx, s))
	}
	slice("web-local", ep{"10.244.2.7", "node-2", "zone-b", true, true, false})
	slice("api", ep{"10.244.1.8", "node-1", "zone-a", true, true, false}, ep{"10.244.1.9", "node-1", "zone-a", true, true, false},
		ep{"10.244.2.8", "node-2", "zone-b", true, true, false})
	slice("db", ep{"10.244.2.9", "node-2", "zone-b", false, false, true}, ep{"10.244.1.10", "node-1", "zone-a", false, false, false})
}
