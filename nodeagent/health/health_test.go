package health

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

func newClock() *clocktesting.FakePassiveClock {
	return clocktesting.NewFakePassiveClock(time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC))
}

// TestReadyzWaitsForTheFirstSync: /readyz is 503 until the first successful
// sync (while /livez, like kube-proxy's, is already 200: a starting proxy is
// healthy), then 200 while rules are fresh, and 503 again once they are stale.
func TestReadyzWaitsForTheFirstSync(t *testing.T) {
	clk := newClock()
	h := New(30*time.Second, clk)
	ready := h.Readyz()

	code, body := answer(t, ready)
	if code != http.StatusServiceUnavailable || body["ready"] != false || body["reason"] != "no successful sync yet" {
		t.Errorf("before any sync: %d %v, want 503 not ready", code, body)
	}
	if code, _ := answer(t, h.Livez()); code != http.StatusOK {
		t.Errorf("/livez = %d while the agent starts, want 200 as kube-proxy's", code)
	}
	// Failing syncs for a whole minute: still not ready.
	clk.SetTime(clk.Now().Add(59 * time.Second))
	if code, _ := answer(t, ready); code != http.StatusServiceUnavailable {
		t.Errorf("without a successful sync after 59s: %d, want 503", code)
	}

	h.Synced()
	if code, body := answer(t, ready); code != http.StatusOK || body["ready"] != true {
		t.Errorf("after the first sync: %d %v, want 200", code, body)
	}
	// Node drain does not touch readiness (it is /healthz's business).
	h.SetNodeDeleting(true)
	if code, _ := answer(t, ready); code != http.StatusOK {
		t.Errorf("while the node is being deleted: %d, want 200", code)
	}

	// An update waits 2 × syncPeriod without a successful sync: stale (as
	// kube-proxy's health; an idle proxy stays fresh however long ago it synced).
	clk.SetTime(clk.Now().Add(time.Hour))
	if code, _ := answer(t, ready); code != http.StatusOK {
		t.Errorf("idle for an hour: %d, want 200", code)
	}
	h.Queued()
	clk.SetTime(clk.Now().Add(61 * time.Second))
	if code, body := answer(t, ready); code != http.StatusServiceUnavailable || body["ready"] != false {
		t.Errorf("with stale rules: %d %v, want 503", code, body)
	}
	h.Synced()
	if code, _ := answer(t, ready); code != http.StatusOK {
		t.Errorf("after a new sync: %d, want 200", code)
	}
}

// TestHealthzAndLivez: kube-proxy's answers, on the clock: /livez follows
// freshness only; /healthz also the node's eligibility (unknown node, node
// being deleted: 503); a healthy answer is current (lastUpdated = now) and
// names both families once synced.
func TestHealthzAndLivez(t *testing.T) {
	clk := newClock()
	h := New(time.Minute, clk)
	if code, body := answer(t, h.Healthz()); code != http.StatusServiceUnavailable || body["nodeEligible"] != false {
		t.Errorf("/healthz with no Node seen: %d %v, want 503, not eligible", code, body)
	}
	h.SetNode(true, false)
	h.Synced()
	clk.SetTime(clk.Now().Add(10 * time.Minute))
	code, body := answer(t, h.Healthz())
	if code != http.StatusOK || body["healthy"] != true || body["lastUpdated"] != clk.Now().Format(time.RFC3339) {
		t.Errorf("/healthz, synced and idle: %d %v, want 200 updated now", code, body)
	}
	if st, _ := body["status"].(map[string]any); len(st) != 2 {
		t.Errorf("/healthz status %v, want both families", body["status"])
	}
	h.Queued()
	clk.SetTime(clk.Now().Add(2*time.Minute - time.Millisecond))
	if code, _ := answer(t, h.Livez()); code != http.StatusOK {
		t.Errorf("/livez just under two sync periods: %d, want 200", code)
	}
	clk.SetTime(clk.Now().Add(time.Millisecond))
	if code, body := answer(t, h.Livez()); code != http.StatusServiceUnavailable || body["healthy"] != false {
		t.Errorf("/livez at two sync periods: %d %v, want 503", code, body)
	}
	h.Synced()
	h.SetNodeDeleting(true)
	if code, _ := answer(t, h.Livez()); code != http.StatusOK {
		t.Errorf("/livez while the node is deleted: %d, want 200", code)
	}
	if code, body := answer(t, h.Healthz()); code != http.StatusServiceUnavailable || body["nodeEligible"] != false {
		t.Errorf("/healthz while the node is deleted: %d %v, want 503", code, body)
	}
}

// TestHealthWithHugeSyncPeriod is the review's finding: syncPeriod 1300000h
// doubled into a negative bound, so /healthz and /livez answered 503 forever,
// even right after a sync.
func TestHealthWithHugeSyncPeriod(t *testing.T) {
	for _, period := range []time.Duration{1300000 * time.Hour, time.Duration(1<<63 - 1), 0} {
		clk := newClock()
		h := New(period, clk)
		if ok, why := h.Fresh(); !ok {
			t.Errorf("syncPeriod %v: stale at start: %s", period, why)
		}
		clk.SetTime(clk.Now().Add(time.Second))
		h.Synced()
		clk.SetTime(clk.Now().Add(time.Second))
		if ok, why := h.Fresh(); !ok {
			t.Errorf("syncPeriod %v: stale a second after a sync: %s", period, why)
		}
	}
}
