package runner

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

// recorder records runs; fail makes the next runs fail.
type recorder struct {
	mu      sync.Mutex
	reasons []Reason
	times   []time.Time
	fail    int
	ran     chan struct{}
}

func (r *recorder) fn(_ context.Context, reason Reason) error {
	r.mu.Lock()
	r.reasons = append(r.reasons, reason)
	r.times = append(r.times, time.Now())
	fail := r.fail > 0
	if fail {
		r.fail--
	}
	r.mu.Unlock()
	r.ran <- struct{}{}
	if fail {
		return errors.New("boom")
	}
	return nil
}

func waitRun(t *testing.T, r *recorder, within time.Duration) {
	t.Helper()
	select {
	case <-r.ran:
	case <-time.After(within):
		t.Fatalf("no run within %v", within)
	}
}

func noRun(t *testing.T, r *recorder, during time.Duration) {
	t.Helper()
	select {
	case <-r.ran:
		t.Fatalf("unexpected run")
	case <-time.After(during):
	}
}

func start(t *testing.T, rec *recorder, min, max, backoff time.Duration) *Runner {
	ctx, cancel := context.WithCancel(context.Background())
	r := New(rec.fn, min, max, backoff, nil)
	done := make(chan struct{})
	go func() { r.Loop(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return r
}

func TestBurstsAreBatchedByMinInterval(t *testing.T) {
	rec := &recorder{ran: make(chan struct{}, 100)}
	r := start(t, rec, 200*time.Millisecond, time.Hour, time.Second)
	waitRun(t, rec, time.Second) // the first run is immediate
	for range 10 {
		r.Trigger()
	}
	waitRun(t, rec, time.Second)
	noRun(t, rec, 300*time.Millisecond) // ten triggers, one run
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if gap := rec.times[1].Sub(rec.times[0]); gap < 190*time.Millisecond {
		t.Errorf("second run %v after the first, want at least minInterval", gap)
	}
	if rec.reasons[1] != Change {
		t.Errorf("reason %v, want change", rec.reasons[1])
	}
}

func TestChangeAfterQuietPeriodRunsAtOnce(t *testing.T) {
	rec := &recorder{ran: make(chan struct{}, 100)}
	// A wide minInterval, so that "at once" and "waited for minInterval" stay
	// distinguishable on a loaded machine.
	r := start(t, rec, 500*time.Millisecond, time.Hour, time.Second)
	waitRun(t, rec, time.Second)
	time.Sleep(600 * time.Millisecond) // not synchronisation: lets minInterval pass
	begin := time.Now()
	r.Trigger()
	waitRun(t, rec, time.Second)
	if d := time.Since(begin); d > 300*time.Millisecond {
		t.Errorf("a change after a quiet period waited %v", d)
	}
}

func TestPeriodicRun(t *testing.T) {
	rec := &recorder{ran: make(chan struct{}, 100)}
	start(t, rec, 10*time.Millisecond, 150*time.Millisecond, time.Second)
	waitRun(t, rec, time.Second)
	waitRun(t, rec, time.Second)
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if rec.reasons[1] != Periodic {
		t.Errorf("reason %v, want periodic", rec.reasons[1])
	}
}

func TestFailureRetriesWithBackoff(t *testing.T) {
	rec := &recorder{ran: make(chan struct{}, 100), fail: 3}
	start(t, rec, 10*time.Millisecond, time.Hour, 400*time.Millisecond)
	for range 4 {
		waitRun(t, rec, 2*time.Second)
	}
	noRun(t, rec, 200*time.Millisecond) // success: no more retries
	rec.mu.Lock()
	defer rec.mu.Unlock()
	for i, want := range []Reason{Change, Retry, Retry, Retry} {
		if rec.reasons[i] != want {
			t.Errorf("run %d: reason %v, want %v", i, rec.reasons[i], want)
		}
	}
}

// TestBackoffSchedule checks the retry delays themselves (wall-clock gaps are too
// noisy on a loaded machine to assert on).
func TestBackoffSchedule(t *testing.T) {
	r := New(nil, 10*time.Millisecond, time.Hour, 1500*time.Millisecond, nil)
	want := []time.Duration{100, 200, 400, 800, 1500, 1500}
	for i, w := range want {
		if got := r.backoff(i + 1); got != w*time.Millisecond {
			t.Errorf("backoff after %d failures = %v, want %v", i+1, got, w*time.Millisecond)
		}
	}
	r = New(nil, 2*time.Second, time.Hour, time.Second, nil)
	if got := r.backoff(1); got != 2*time.Second {
		t.Errorf("backoff below minInterval: %v, want minInterval 2s", got)
	}
}
