package agent

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"
)

func answer(t *testing.T, h http.Handler) (int, map[string]any) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil))
	var body map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
		t.Fatalf("body %q: %v", rec.Body.String(), err)
	}
	return rec.Code, body
}

// TestReadyzWaitsForTheFirstSync: /readyz is 503 until the first successful
// sync (while /livez, like kube-proxy's, is already 200: a starting proxy is
// healthy), then 200 while rules are fresh, and 503 again once they are stale.
func TestReadyzWaitsForTheFirstSync(t *testing.T) {
	clk := clocktesting.NewFakePassiveClock(time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC))
	h := newHealthState(30 * time.Second)
	h.started = clk.Now()
	ready := h.readyHandler(clk.Now)

	code, body := answer(t, ready)
	if code != http.StatusServiceUnavailable || body["ready"] != false || body["reason"] != "no successful sync yet" {
		t.Errorf("before any sync: %d %v, want 503 not ready", code, body)
	}
	if ok, _ := h.fresh(clk.Now()); !ok {
		t.Errorf("/livez must answer 200 while the agent starts, as kube-proxy's does")
	}
	// Failing syncs for a whole minute: still not ready.
	clk.SetTime(clk.Now().Add(59 * time.Second))
	if code, _ := answer(t, ready); code != http.StatusServiceUnavailable {
		t.Errorf("without a successful sync after 59s: %d, want 503", code)
	}

	h.synced(clk.Now())
	if code, body := answer(t, ready); code != http.StatusOK || body["ready"] != true {
		t.Errorf("after the first sync: %d %v, want 200", code, body)
	}
	// Node drain does not touch readiness (it is /healthz's business).
	h.setNodeDeleting(true)
	if code, _ := answer(t, ready); code != http.StatusOK {
		t.Errorf("while the node is being deleted: %d, want 200", code)
	}

	// An update waits 2 × syncPeriod without a successful sync: stale (as
	// kube-proxy's health; an idle proxy stays fresh however long ago it synced).
	clk.SetTime(clk.Now().Add(time.Hour))
	if code, _ := answer(t, ready); code != http.StatusOK {
		t.Errorf("idle for an hour: %d, want 200", code)
	}
	h.queued(clk.Now())
	clk.SetTime(clk.Now().Add(61 * time.Second))
	if code, body := answer(t, ready); code != http.StatusServiceUnavailable || body["ready"] != false {
		t.Errorf("with stale rules: %d %v, want 503", code, body)
	}
	h.synced(clk.Now())
	if code, _ := answer(t, ready); code != http.StatusOK {
		t.Errorf("after a new sync: %d, want 200", code)
	}
}

// TestHealthWithHugeSyncPeriod is the review's finding: syncPeriod 1300000h
// doubled into a negative bound, so /healthz and /livez answered 503 forever,
// even right after a sync.
func TestHealthWithHugeSyncPeriod(t *testing.T) {
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	for _, period := range []time.Duration{1300000 * time.Hour, time.Duration(1<<63 - 1), 0} {
		h := newHealthState(period)
		h.started = now
		if ok, why := h.fresh(now); !ok {
			t.Errorf("syncPeriod %v: stale at start: %s", period, why)
		}
		h.synced(now.Add(time.Second))
		if ok, why := h.fresh(now.Add(2 * time.Second)); !ok {
			t.Errorf("syncPeriod %v: stale a second after a sync: %s", period, why)
		}
	}
}
