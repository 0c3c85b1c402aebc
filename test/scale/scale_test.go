package scale

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/intstr"

	"kpo.dev/kpo/hack/apiserver"
	"kpo.dev/kpo/nodeagent/report"
)

// TestScale runs the harness. Without KPO_SCALE_NODES it is the bounded
// slice `go test ./...` runs (100 nodes, short heartbeat and Lease, about a
// minute) and asserts the goals; with it (make scale) it measures at that
// size with the real timings (5-minute heartbeat, kubelet Leases) and writes
// the figures to KPO_SCALE_OUT (JSON) when set. docs/scale.md.
func TestScale(t *testing.T) {
	if testing.Short() {
		t.Skip("needs kube-apiserver and etcd; not run with -short")
	}
	cfg, full := configFromEnv(t)
	env, err := apiserver.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Stop() })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	h, err := Start(ctx, env, t.TempDir(), cfg, t.Logf)
	if h != nil {
		defer h.Stop()
		defer func() {
			if t.Failed() {
				t.Logf("operator output:\n%s", tail(h.OperatorLogs(), 4000))
			}
		}()
	}
	if err != nil {
		t.Fatal(err)
	}
	for _, phase := range []struct {
		name string
		run  func() error
	}{
		{"steady state", h.Steady},
		{"node failures", h.Failures},
		{"dead node", h.DeadNode},
		{"mode switch", h.ModeSwitch},
		// Last: it leaves every node failing.
		{"mass failure", h.MassFailure},
	} {
		start := time.Now()
		err := phase.run()
		// The figures so far, also when a phase fails.
		writeResult(t, h.Result)
		if err != nil {
			t.Fatalf("%s: %v", phase.name, err)
		}
		t.Logf("%s: done in %v", phase.name, time.Since(start).Round(100*time.Millisecond))
	}
	out, _ := json.MarshalIndent(h.Result, "", "  ")
	t.Logf("figures at %d nodes:\n%s", cfg.Nodes, out)
	checkGoals(t, cfg, h.Result, full)
}

// writeResult writes the figures to KPO_SCALE_OUT, if set.
func writeResult(t *testing.T, r Result) {
	path := os.Getenv("KPO_SCALE_OUT")
	if path == "" {
		return
	}
	out, _ := json.MarshalIndent(r, "", "  ")
	if err := os.WriteFile(path, append(out, '\n'), 0o644); err != nil {
		t.Error(err)
	}
}

// configFromEnv: KPO_SCALE_NODES (the size; unset: the CI slice),
// KPO_SCALE_STEADY (the steady window), KPO_SCALE_LEASE_RENEW,
// KPO_SCALE_MAX_UNAVAILABLE.
func configFromEnv(t *testing.T) (Config, bool) {
	cfg := Config{
		Nodes:   100,
		Special: map[Outcome]int{Failing: 2, Slow: 2, Flapping: 2, Dead: 2},
		// The CI slice: a heartbeat and Lease short enough for a minute.
		Heartbeat: 10 * time.Second, Steady: 12 * time.Second,
		LeaseRenew: 2 * time.Second, LeaseDuration: 6,
		MaxUnavailable: intstr.FromString("25%"), PodRestart: 500 * time.Millisecond,
		FailureProbes: 3, Workers: 16,
	}
	full := false
	if v := os.Getenv("KPO_SCALE_NODES"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 20 {
			t.Fatalf("KPO_SCALE_NODES=%q: want a number ≥ 20", v)
		}
		full = true
		cfg.Nodes = n
		cfg.Heartbeat = report.DefaultHeartbeat
		// One heartbeat and its jitter, so that every node's heartbeat falls
		// in the window once.
		cfg.Steady = report.DefaultHeartbeat + report.DefaultHeartbeat/10 + 10*time.Second
		cfg.LeaseRenew, cfg.LeaseDuration = 10*time.Second, 40
		cfg.MaxUnavailable = intstr.FromString("10%")
		cfg.PodRestart = 2 * time.Second
		cfg.FailureProbes = 5
		cfg.Workers = 32
		cfg.Baseline = 30 * time.Second
	}
	if v := os.Getenv("KPO_SCALE_STEADY"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("KPO_SCALE_STEADY: %v", err)
		}
		cfg.Steady = d
	}
	if v := os.Getenv("KPO_SCALE_LEASE_RENEW"); v != "" {
		// A longer renewal than the kubelet's, for a machine that cannot
		// take N/10 s Lease updates next to the rest; the duration stays 4×.
		d, err := time.ParseDuration(v)
		if err != nil || d < time.Second {
			t.Fatalf("KPO_SCALE_LEASE_RENEW=%q: want a duration ≥ 1s", v)
		}
		cfg.LeaseRenew, cfg.LeaseDuration = d, int32(4*d/time.Second)
	}
	if v := os.Getenv("KPO_SCALE_MAX_UNAVAILABLE"); v != "" {
		cfg.MaxUnavailable = intstr.Parse(v)
	}
	return cfg, full
}

// checkGoals asserts issue 16's goals: writes bounded by the heartbeat (plus
// what the flapping nodes may write), a failure named within 5 s, a dead
// node named within its Lease and a few seconds, the status bounded.
func checkGoals(t *testing.T, cfg Config, r Result, full bool) {
	// Each node's heartbeat, plus the flapping nodes' bounded changes (one per
	// 10 s), with a margin for jitter and the window's edges.
	bound := 1.5*float64(cfg.Nodes)/cfg.Heartbeat.Seconds() + float64(cfg.Special[Flapping])*0.1*1.5 + 1
	if r.StatusWritesPerSecond > bound {
		t.Errorf("%.2f status writes/s in the steady state, want ≤ %.2f (one per node per %v)", r.StatusWritesPerSecond, bound, cfg.Heartbeat)
	}
	if worst := slices.Max(r.FailureToDegraded); worst > 5 {
		t.Errorf("a failure took %.1f s to be named in the status, want ≤ 5 s", worst)
	}
	if limit := float64(cfg.LeaseDuration) + 5; r.DeadToNotReporting > limit {
		t.Errorf("a dead node took %.1f s to be named NotReporting, want ≤ %.0f s (its Lease duration + 5 s)", r.DeadToNotReporting, limit)
	}
	// Ten named failures of ≤ 1 KiB each, three conditions of ≤ 1 KiB.
	if r.StatusBytesMassFailure > 16<<10 {
		t.Errorf("status of %d bytes with every node failing, want ≤ 16 KiB", r.StatusBytesMassFailure)
	}
	if r.StatusBytesMassFailure == 0 || r.ModeSwitchSeconds == 0 {
		t.Errorf("missing figures: %+v", r)
	}
	if !full && r.FleetErrors > 0 {
		t.Errorf("%d status writes failed", r.FleetErrors)
	}
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return fmt.Sprintf("...%s", s[len(s)-n:])
}
