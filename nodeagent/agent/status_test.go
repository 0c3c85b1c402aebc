package agent

import (
	"testing"
	"time"

	"k8s.io/utils/clock"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
	"kpo.dev/kpo/nodeagent/health"
	"kpo.dev/kpo/nodeagent/model"
)

// TestIdleStatusIsNotRewritten: re-evaluating an unchanged Healthy condition
// every tick must not mark the report for writing, or every idle node would
// rewrite its ProxyNodeStatus every refresh interval.
func TestIdleStatusIsNotRewritten(t *testing.T) {
	cfg := &kpov1.AgentConfiguration{ConfigurationName: "c", Mode: kpov1.ModeNFTables}
	r := newStatusReporter(nil, "n", cfg, kpov1.ModeNFTables)
	r.health = health.New(time.Minute, clock.RealClock{})
	r.health.Synced()
	r.synced(time.Now(), time.Millisecond, true, model.Counts{}, 0)

	r.mu.Lock()
	r.refreshHealthLocked() // Healthy appears: a change
	if !r.dirty {
		t.Error("the first Healthy condition did not mark the report dirty")
	}
	r.dirty, r.important = false, false // as after a write
	for range 3 {
		r.refreshHealthLocked()
	}
	dirty := r.dirty
	r.mu.Unlock()
	if dirty {
		t.Error("an unchanged Healthy condition marked the report dirty")
	}

	r.syncFailed(errTest("nft: boom"))
	if !r.dirty || !r.important {
		t.Error("a sync failure was not marked for an immediate write")
	}
}

type errTest string

func (e errTest) Error() string { return string(e) }
