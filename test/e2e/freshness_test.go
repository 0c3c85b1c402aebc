package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
	"kpo.dev/kpo/controllers/render"
	"kpo.dev/kpo/hack/apiserver"
	"kpo.dev/kpo/hack/netns"
	"kpo.dev/kpo/nodeagent/explain"
	"kpo.dev/kpo/test/testnet"
)

// TestExplainFreshness (issue 18): a real agent reports the model it
// programmed, and kubectl kpo (the real binary, on the real API server)
// compares it with the model it builds from the objects. Once the agent has
// synced a Service and reported, kubectl kpo says the node programmed it;
// after an endpoint change the (killed) agent could not sync, it says the
// node's last report names another model, never that it programmed it; a
// restarted agent syncs and reports it, and kubectl kpo says so. Before
// issue 18 kubectl kpo could never say a node programmed a model.
func TestExplainFreshness(t *testing.T) {
	netns.Skip(t)
	ctx := context.Background()
	const name = "freshness"
	pc := &kpov1.ProxyConfiguration{ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: kpov1.ProxyConfigurationSpec{Mode: kpov1.ModeNFTables, ProxySettings: kpov1.ProxySettings{
			ClusterCIDRs: []kpov1.CIDR{"10.244.0.0/16", "fd10:244::/48"}, MinSyncPeriod: "50ms"}}}
	if err := api.Client.Create(ctx, pc); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = api.Client.Delete(context.Background(), pc) })
	// The agent runs what the operator would render for pc; kubectl kpo
	// renders the same to build the node's model.
	cfg := render.AgentConfiguration(pc)
	if _, err := kpov1.Resolve(cfg.Mode, &cfg.ProxySettings, nil); err != nil {
		t.Fatal(err)
	}
	plugin := buildPlugin(t)

	tn := testnet.New(t, api, agentBin, 1, 2)
	node := tn.Nodes[0]
	p0, p1 := node.Pods[0], node.Pods[1]
	node.StartAgent(t, cfg)
	waitSynced(t, node.Name, kpov1.ModeNFTables)
	svc := tn.CreateService(t, testnet.ServiceSpec{Name: "fresh", ClusterIPs: []string{"10.96.8.1"}, Pods: []*testnet.Pod{p0}})
	expectOnly(t, p1.NS, "10.96.8.1:80", "n1p0")
	explainFresh := func() explain.Explanation { return explainFrom(t, plugin, "fresh", node.Name) }

	// The Service is in the kernel; the agent reports it with its next
	// write. Kill the agent, then change the endpoints: the node cannot have
	// programmed the new model, and kubectl kpo must not say it has.
	first := explainFresh()
	node.KillAgent()
	tn.SetEndpoints(t, svc, []*testnet.Pod{p0, p1}, nil)
	apiserver.Eventually(t, settle, func() error {
		e := explainFresh()
		if len(e.Endpoints) != 2 {
			return fmt.Errorf("kubectl kpo explains %d endpoints, want the new 2", len(e.Endpoints))
		}
		if p := e.Programmed; p == nil || p.State != explain.OtherModel {
			return fmt.Errorf("with the agent killed before the change, kubectl kpo says %+v, want %s", p, explain.OtherModel)
		}
		if !hasWarning(e, node.Name+"'s last report", "names another model", "has not synced these objects yet") {
			return fmt.Errorf("no warning of another model in %q", e.Warnings)
		}
		return nil
	})
	t.Logf("before the change kubectl kpo said %s; after it, with the agent killed: %s", first.Programmed.State, explain.OtherModel)

	// A restarted agent syncs the change and reports (its Synced condition
	// is a change): kubectl kpo says the node programmed exactly this model.
	restarted := time.Now()
	node.StartAgent(t, cfg)
	var programmed explain.Explanation
	apiserver.Eventually(t, 60*time.Second, func() error {
		programmed = explainFresh()
		p := programmed.Programmed
		if p == nil || p.State != explain.ModelProgrammed {
			return fmt.Errorf("kubectl kpo says %+v (warnings %q), want %s", p, programmed.Warnings, explain.ModelProgrammed)
		}
		if p.Reported.SyncTime.Time.Before(restarted.Truncate(time.Second)) {
			return fmt.Errorf("programmed as of a sync at %v, before the restart at %v", p.Reported.SyncTime, restarted)
		}
		return nil
	})
	expectSpread(t, p1.NS, "tcp", "10.96.8.1:80", "n1p0", "n1p1")
	t.Logf("after the restart: %s, model %v, reported at %v", programmed.Programmed.State, programmed.Programmed.Model, programmed.Programmed.ReportTime)

	// A change the running agent syncs at once is reported with its next
	// write (at the latest the heartbeat): until then kubectl kpo names the
	// previous model as the node's last word, never this one.
	changed := time.Now()
	tn.SetEndpoints(t, svc, []*testnet.Pod{p1}, nil)
	expectOnly(t, p0.NS, "10.96.8.1:80", "n1p1")
	e := explainFresh()
	switch p := e.Programmed; {
	case p == nil:
		t.Fatal("no programmed model in the explanation")
	case p.State == explain.OtherModel && p.Reported.Services != programmed.Programmed.Model.Services:
		t.Errorf("the node's last report names %s, neither the previous model %s nor this one", p.Reported.Services, programmed.Programmed.Model.Services)
	case p.State == explain.ModelProgrammed && p.ReportTime.Time.Before(changed.Truncate(time.Second)):
		t.Errorf("kubectl kpo says the node programmed the new model in a report of %v, before the change at %v", p.ReportTime, changed)
	case p.State != explain.OtherModel && p.State != explain.ModelProgrammed:
		t.Errorf("after a synced change kubectl kpo says %+v", p)
	default:
		t.Logf("after a change the agent synced: %s (the node's last report names %s)", p.State, p.Reported.Services)
	}
}

// buildPlugin builds kubectl-kpo for the test.
func buildPlugin(t *testing.T) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "kubectl-kpo")
	cmd := exec.Command("go", "build", "-o", out, "./cmd/kubectl-kpo")
	cmd.Dir = apiserver.RepoRoot()
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building kubectl-kpo: %v\n%s", err, b)
	}
	return out
}

// explainFrom runs kubectl kpo explain for the traffic of node to the test
// Service svc, as JSON, and returns node's explanation.
func explainFrom(t *testing.T, plugin, svc, node string) explain.Explanation {
	t.Helper()
	cmd := exec.Command(plugin, "explain", "svc/"+svc, "-n", testnet.Namespace, "--from", "node/"+node, "-o", "json",
		"--kubeconfig", api.Kubeconfig)
	out, err := cmd.Output()
	if err != nil {
		stderr := ""
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = string(ee.Stderr)
		}
		t.Fatalf("kubectl kpo explain: %v\n%s%s", err, out, stderr)
	}
	var es []explain.Explanation
	if err := json.Unmarshal(out, &es); err != nil || len(es) != 1 || es[0].Node != node {
		t.Fatalf("kubectl kpo explain -o json: %v\n%s", err, out)
	}
	return es[0]
}

func hasWarning(e explain.Explanation, subs ...string) bool {
	for _, w := range e.Warnings {
		all := true
		for _, s := range subs {
			all = all && strings.Contains(w, s)
		}
		if all {
			return true
		}
	}
	return false
}
