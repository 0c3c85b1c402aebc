package nftables

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
	"kpo.dev/kpo/hack/netns"
	"kpo.dev/kpo/nodeagent/backend"
	"kpo.dev/kpo/nodeagent/backend/backendtest"
	"kpo.dev/kpo/nodeagent/model"
	"kpo.dev/kpo/test/behaviour"
)

const dialTimeout = 2 * time.Second

// poll calls fn until it returns nil or the deadline passes.
func poll(t *testing.T, what string, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := fn()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// spread dials until every server in want answered.
func spread(t *testing.T, from *netns.NS, addr string, want ...string) {
	t.Helper()
	seen := map[string]bool{}
	poll(t, "reaching "+addr+" from "+from.Name, func() error {
		r, err := from.Dial("tcp", addr, dialTimeout)
		if err != nil {
			return err
		}
		seen[r.Server] = true
		for _, w := range want {
			if !seen[w] {
				return errors.New("not yet seen " + w)
			}
		}
		return nil
	})
}

func kernelSync(t *testing.T, node *netns.NS, b *Backend, s *model.Snapshot, full bool) {
	t.Helper()
	if err := node.Do(func() error { _, err := backendtest.Sync(context.Background(), b, s, full); return err }); err != nil {
		t.Fatal(err)
	}
}

// TestKernel runs the behaviour table (test/behaviour) against the backend
// on the real kernel, then what is particular to nftables: a full sync
// repairs drift in kpo's tables, and cleanup removes them (twice is fine).
func TestKernel(t *testing.T) {
	netns.Skip(t)
	w, kb := behaviour.RunKernel(t, kpov1.ModeNFTables, behaviour.KernelTiming,
		func() (backend.Backend, error) { return New(testSettings, nil) })
	b, node := kb.(*Backend), w.Node
	a, bb := w.Pod(behaviour.PodA), w.Pod(behaviour.PodB)
	cluster := svc("cluster", "10.96.0.10", 80, ep(a.IP4, behaviour.EchoPort, true), ep(bb.IP4, behaviour.EchoPort, true))
	t.Run("FullSyncRepairsDrift", func(t *testing.T) {
		node.MustRun(t, "nft", "add chain ip kpo intruder")
		node.MustRun(t, "nft", "add element ip kpo service-ips { 10.96.0.99 . tcp . 80 : goto intruder }")
		kernelSync(t, node, b, snapshot(testNode, cluster), true)
		out := node.MustRun(t, "nft", "list", "table", "ip", "kpo")
		if strings.Contains(out, "intruder") || strings.Contains(out, "10.96.0.99") {
			t.Fatalf("drift left:\n%s", out)
		}
		spread(t, w.Client, "10.96.0.10:80", string(behaviour.PodA), string(behaviour.PodB))
	})
	t.Run("Cleanup", func(t *testing.T) {
		if err := node.Do(func() error { return b.Cleanup(context.Background()) }); err != nil {
			t.Fatal(err)
		}
		out := node.MustRun(t, "nft", "list", "tables")
		if strings.Contains(out, "kpo") {
			t.Fatalf("tables left: %s", out)
		}
		if err := node.Do(func() error { return b.Cleanup(context.Background()) }); err != nil {
			t.Fatalf("second cleanup: %v", err)
		}
	})
}
