package scale

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
	"kpo.dev/kpo/nodeagent/model"
	"kpo.dev/kpo/nodeagent/report"
)

// Outcome is what a simulated agent's syncs do.
type Outcome string

const (
	// Healthy: a successful sync every syncPeriod (a full one every tenth).
	Healthy Outcome = "healthy"
	// Failing: every sync fails, with the same error.
	Failing Outcome = "failing"
	// Slow: syncs succeed, but an update waits longer than the health bound
	// (Healthy False): not ready, not failing.
	Slow Outcome = "slow"
	// Flapping: fails and recovers every flapEvery.
	Flapping Outcome = "flapping"
	// Dead: the node's kubelet and agent stop (no Lease renewal, no report).
	Dead Outcome = "dead"
)

const (
	syncPeriod = 30 * time.Second
	flapEvery  = 3 * time.Second
)

// agent is one simulated node agent: the agent's own reporter, driven by
// the outcome instead of a kernel.
type agent struct {
	index   int
	name    string
	uid     types.UID
	outcome atomic.Value // Outcome
	// failAt, if set, makes a healthy agent fail from then on (the failure
	// latency measurement); readyAt is when a restarted agent's first sync
	// completes (the mode switch).
	mu       sync.Mutex
	reporter *report.Reporter
	cfg      *kpov1.AgentConfiguration
	lastSync time.Time
	readyAt  time.Time
	fresh    bool
	failed   bool
}

func (a *agent) getOutcome() Outcome { return a.outcome.Load().(Outcome) }

// start (re)starts the agent for cfg: a new process, a new reporter.
func (a *agent) start(c client.Client, cfg *kpov1.AgentConfiguration, heartbeat time.Duration, firstSyncAfter time.Duration) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.cfg = cfg
	a.fresh = true
	a.reporter = report.New(c, a.name, cfg, cfg.Mode, report.Options{
		Heartbeat: heartbeat, AgentVersion: "scale-sim",
		Freshness: func(time.Time) (bool, string) {
			// mu is held by step, which calls WriteIfDue.
			if a.fresh {
				return true, ""
			}
			return false, "an update has waited 2m0s for a successful sync (healthz bound 1m0s)"
		},
	})
	a.reporter.SetNode(a.uid)
	a.lastSync = time.Time{}
	a.readyAt = time.Now().Add(firstSyncAfter)
}

// ready says whether the agent completed a sync since it started (a
// DaemonSet's readiness, which /readyz gates on).
func (a *agent) ready() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return !a.lastSync.IsZero() && a.cfg != nil
}

// errSim is a failed sync's error, as long as nft's can be (the reporter
// truncates it).
var errSim = errors.New("nftables: applying the transaction: Error: Could not process rule: No such file or directory (simulated): " +
	strings.Repeat("add rule ip kpo services ip daddr 10.96.0.1 tcp dport 443 goto service-ABCDEFGH-default/kubernetes/tcp/https; ", 20))

// step advances the agent to now and writes its report if due; it returns
// whether it wrote.
func (a *agent) step(ctx context.Context, now time.Time) (bool, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	r := a.reporter
	if r == nil {
		return false, nil
	}
	outcome := a.getOutcome()
	if outcome == Dead {
		return false, nil
	}
	if now.Before(a.readyAt) {
		return r.WriteIfDue(ctx)
	}
	due := a.lastSync.IsZero() || now.Sub(a.lastSync) >= syncPeriod
	switch outcome {
	case Failing:
		if due || !a.failed {
			r.SyncFailed(errSim)
			a.lastSync, a.failed = now, true
		}
	case Flapping:
		failNow := (now.UnixNano()/int64(flapEvery))%2 == 0
		if failNow != a.failed || due {
			if failNow {
				r.SyncFailed(errSim)
			} else {
				r.Synced(now, 3*time.Millisecond, false, model.Counts{ServicePorts: 120, Endpoints: 480}, 1900)
			}
			a.lastSync, a.failed = now, failNow
		}
	default:
		if due || a.failed {
			full := a.lastSync.IsZero() || (now.Unix()/int64(syncPeriod/time.Second))%10 == 0
			r.Synced(now, 3*time.Millisecond, full, model.Counts{ServicePorts: 120, Endpoints: 480}, 1900)
			a.lastSync, a.failed = now, false
		}
		a.fresh = outcome != Slow
	}
	return r.WriteIfDue(ctx)
}

// fleet drives every simulated agent once per report.Tick from a pool of
// workers, as N agents' reporters would each on their own.
type fleet struct {
	agents []*agent
	// written counts successful writes over every reporter the fleet ran.
	written  atomic.Int64
	errors   atomic.Int64
	lastErr  atomic.Value
	workers  int
	tickTook atomic.Int64 // nanoseconds of the last round
}

func (f *fleet) run(ctx context.Context) {
	t := time.NewTicker(report.Tick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		start := time.Now()
		_ = forEach(ctx, len(f.agents), f.workers, func(ctx context.Context, i int) error {
			wrote, err := f.agents[i].step(ctx, time.Now())
			if wrote {
				f.written.Add(1)
			}
			if err != nil && ctx.Err() == nil {
				f.errors.Add(1)
				f.lastErr.Store(fmt.Sprintf("%s: %v", f.agents[i].name, err))
			}
			return nil
		})
		f.tickTook.Store(int64(time.Since(start)))
	}
}
