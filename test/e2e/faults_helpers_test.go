package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
	"kpo.dev/kpo/hack/apiserver"
	"kpo.dev/kpo/hack/netns"
	"kpo.dev/kpo/test/testnet"
)

// httpGet sends GET path to addr from inside ns (a hand-written request:
// http.Client dials on another goroutine, outside the namespace).
func httpGet(ns *netns.NS, addr, path string) (code int, body string, err error) {
	err = ns.Do(func() error {
		c, err := net.DialTimeout("tcp", addr, dialTimeout)
		if err != nil {
			return err
		}
		defer func() { _ = c.Close() }()
		_ = c.SetDeadline(time.Now().Add(dialTimeout))
		if _, err := fmt.Fprintf(c, "GET %s HTTP/1.0\r\nHost: %s\r\n\r\n", path, addr); err != nil {
			return err
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			return err
		}
		defer func() { _ = resp.Body.Close() }()
		b, err := io.ReadAll(resp.Body)
		code, body = resp.StatusCode, string(b)
		return err
	})
	return code, body, err
}

// agentMetric reads one unlabelled metric from the node's agent (metricsPort
// 10249 on the namespace's loopback).
func agentMetric(node *testnet.Node, name string) (float64, error) {
	code, body, err := httpGet(node.NS, "127.0.0.1:10249", "/metrics")
	if err != nil {
		return 0, err
	}
	if code != http.StatusOK {
		return 0, fmt.Errorf("/metrics: %d", code)
	}
	for _, line := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			return strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
	}
	return 0, fmt.Errorf("no metric %s", name)
}

// syncedCondition is the node's Synced condition and its whole report.
func syncedCondition(node string) (*metav1.Condition, *kpov1.ProxyNodeStatus, error) {
	pns := &kpov1.ProxyNodeStatus{}
	if err := api.Client.Get(context.Background(), types.NamespacedName{Name: node}, pns); err != nil {
		return nil, nil, err
	}
	return meta.FindStatusCondition(pns.Status.Conditions, kpov1.NodeConditionSynced), pns, nil
}

// waitReason waits until the node's Synced condition has reason (and its
// message contains every one of contains), and returns it.
func waitReason(t *testing.T, node, reason string, contains ...string) *metav1.Condition {
	t.Helper()
	var cond *metav1.Condition
	apiserver.Eventually(t, settle+20*time.Second, func() error {
		var err error
		if cond, _, err = syncedCondition(node); err != nil {
			return err
		}
		if cond == nil || cond.Reason != reason {
			return fmt.Errorf("%s: Synced %+v, want reason %s", node, cond, reason)
		}
		for _, c := range contains {
			if !strings.Contains(cond.Message, c) {
				return fmt.Errorf("%s: Synced message %q does not contain %q", node, cond.Message, c)
			}
		}
		return nil
	})
	return cond
}

// cutAPIServer blackholes the node's path to the API server: every packet to
// or from the in-namespace forwarder (127.0.0.1:6443) is dropped, by an
// nftables table of the test's own in the node namespace, so that open
// connections hang and new ones get no answer, as behind a network
// partition. The API server itself keeps running. The returned func restores
// the path (dropping the table); it also runs at the end of the test.
func cutAPIServer(t *testing.T, node *testnet.Node) (restore func()) {
	t.Helper()
	node.MustRun(t, "nft", "add", "table", "inet", "kpotest-cut")
	node.MustRun(t, "nft", "add", "chain", "inet", "kpotest-cut", "out", "{ type filter hook output priority 0 ; }")
	node.MustRun(t, "nft", "add", "rule", "inet", "kpotest-cut", "out", "oifname", "lo", "tcp", "dport", "6443", "drop")
	node.MustRun(t, "nft", "add", "rule", "inet", "kpotest-cut", "out", "oifname", "lo", "tcp", "sport", "6443", "drop")
	done := false
	restore = func() {
		if !done {
			done = true
			node.MustRun(t, "nft", "delete", "table", "inet", "kpotest-cut")
		}
	}
	t.Cleanup(restore)
	return restore
}

// agentProcess is a kpo-agent started by a test besides the node's own
// (testnet's StartAgent runs one per node).
type agentProcess struct {
	logs *testnet.LockedBuffer
	done chan struct{}
	kill func()
}

// startAgentProcess runs kpo-agent in the node's namespace with cfg and the
// extra flags; it is killed when the test ends, its logs printed if it failed.
func startAgentProcess(t *testing.T, tn *testnet.Net, node *testnet.Node, cfg *kpov1.AgentConfiguration, extra ...string) *agentProcess {
	t.Helper()
	data, err := kpov1.MarshalAgentConfiguration(cfg)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "agent.yaml")
	if err := os.WriteFile(file, data, 0o600); err != nil {
		t.Fatal(err)
	}
	p := &agentProcess{logs: &testnet.LockedBuffer{}, done: make(chan struct{})}
	args := append([]string{"--config=" + file, "--kubeconfig=" + tn.Kubeconfig(t), "--node-name=" + node.Name, "--v=2"}, extra...)
	cmd := node.Command(agentBin, args...)
	cmd.Stdout, cmd.Stderr = p.logs, p.logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = cmd.Wait(); close(p.done) }()
	p.kill = func() {
		_ = cmd.Process.Kill()
		<-p.done
	}
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("second agent on %s:\n%s", node.Name, testnet.Tail(p.logs.String(), 6000))
		}
	})
	return p
}

// holdFor keeps a fault in place for d: the fault's duration, not
// synchronisation (what the test waits for afterwards is polled).
func holdFor(d time.Duration) { <-time.After(d) }

var iptablesServiceJump = regexp.MustCompile(`-j (KPO-SVC-[A-Z0-9]+)`)

// iptablesBinary is the iptables flavour that holds the node's kpo chains.
func iptablesBinary(t *testing.T, node *testnet.Node) string {
	t.Helper()
	objects, err := testnet.KpoObjects(node.NS)
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range objects {
		if bin, _, ok := strings.Cut(o, " "); ok && strings.HasPrefix(bin, "iptables-") {
			return bin
		}
	}
	t.Fatalf("no kpo iptables chains on %s: %v", node.Name, objects)
	return ""
}

// stopLoads stops the loads, fails the test if any request failed or fewer
// than atLeast were sent by one of them, and returns a summary for the log.
func stopLoads(t *testing.T, what string, loads []*testnet.Load, atLeast int) string {
	t.Helper()
	var parts []string
	for _, l := range loads {
		total, failures := l.Stop()
		if len(failures) > 0 || total < atLeast {
			t.Errorf("%s (%s): %d of %d requests failed (want none of at least %d); first: %q",
				what, l.What, len(failures), total, atLeast, failures[:min(len(failures), 5)])
		}
		parts = append(parts, fmt.Sprintf("%s: %d failed of %d", l.What, len(failures), total))
	}
	return strings.Join(parts, "; ")
}
