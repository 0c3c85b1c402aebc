package runner

import (
	"context"
	"errors"
	"math"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"
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
	start(t, rec, 10*time.Millisecond, time.Second, time.Second) // 1s: the shortest period
	waitRun(t, rec, time.Second)
	waitRun(t, rec, 3*time.Second)
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

// loopWith runs a runner on a fake clock; stop cancels it and fails the test
// unless Loop returns promptly.
func loopWith(t *testing.T, fn Func, minInterval, maxInterval, maxBackoff time.Duration) (clk *clocktesting.FakeClock, r *Runner, stop func()) {
	t.Helper()
	clk = clocktesting.NewFakeClock(time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC))
	r = New(fn, minInterval, maxInterval, maxBackoff, clk)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Loop(ctx); close(done) }()
	return clk, r, func() {
		t.Helper()
		cancel()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("Loop ignored the cancellation (an agent would ignore SIGTERM)")
		}
	}
}

// waitIdle waits until the loop sleeps on its fake timer: it has nothing due.
func waitIdle(t *testing.T, clk *clocktesting.FakeClock, runs *atomic.Int64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !clk.HasWaiters() {
		if time.Now().After(deadline) {
			t.Fatalf("the loop never waited: %d runs and counting (it spins)", runs.Load())
		}
		time.Sleep(time.Millisecond) // polling with a deadline
	}
}

// TestZeroIntervalsDoNotSpin is the review's finding: syncPeriod 0s with
// minSyncPeriod 0s made the loop run millions of times a second and never
// look at its context, so the agent ignored SIGTERM. Validation refuses those
// values now; the runner must be safe with them anyway.
func TestZeroIntervalsDoNotSpin(t *testing.T) {
	var runs atomic.Int64
	clk, r, stop := loopWith(t, func(context.Context, Reason) error { runs.Add(1); return nil }, 0, 0, 0)
	defer stop()
	waitIdle(t, clk, &runs)
	if n := runs.Load(); n != 1 {
		t.Errorf("%d runs before any time passed, want the first one only", n)
	}
	// A change with minInterval 0 runs at once, once.
	r.Trigger()
	deadline := time.Now().Add(5 * time.Second)
	for runs.Load() < 2 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	waitIdle(t, clk, &runs)
	if n := runs.Load(); n != 2 {
		t.Errorf("%d runs after one trigger, want 2", n)
	}
	// The period is held to at least a second.
	clk.Step(999 * time.Millisecond)
	waitIdle(t, clk, &runs)
	if n := runs.Load(); n != 2 {
		t.Errorf("a periodic run %v after the last one", 999*time.Millisecond)
	}
	clk.Step(time.Millisecond)
	deadline = time.Now().Add(5 * time.Second)
	for runs.Load() < 3 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if n := runs.Load(); n != 3 {
		t.Errorf("%d runs a second after the last one, want the periodic run", n)
	}
}

// TestFailuresWithHugeIntervalsBackOff: with syncPeriod near time.Duration's
// limit (the review's 1300000h and beyond), the doubled backoff overflowed to
// a negative delay and a failing sync was retried at once, forever.
func TestFailuresWithHugeIntervalsBackOff(t *testing.T) {
	huge := time.Duration(math.MaxInt64)
	for _, maxBackoff := range []time.Duration{1300000 * time.Hour, huge} {
		r := New(nil, 0, huge, maxBackoff, nil)
		prev := time.Duration(0)
		for failures := 1; failures <= 100; failures++ {
			d := r.backoff(failures)
			if d < 100*time.Millisecond || d < prev || d > intervalCeiling {
				t.Fatalf("maxBackoff %v: backoff after %d failures = %v (previous %v)", maxBackoff, failures, d, prev)
			}
			prev = d
		}
	}

	var runs atomic.Int64
	clk, _, stop := loopWith(t, func(context.Context, Reason) error { runs.Add(1); return errors.New("boom") }, 0, huge, huge)
	defer stop()
	waitIdle(t, clk, &runs)
	if n := runs.Load(); n != 1 {
		t.Errorf("%d runs of a failing function before any time passed, want 1", n)
	}
}

// TestCancelledWhileDue: a context cancelled while the next run is already
// due (zero intervals make every run due at once) ends the loop before
// another run.
func TestCancelledWhileDue(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	runs := 0
	r := New(func(context.Context, Reason) error {
		runs++
		cancel() // SIGTERM arrives during the run
		return nil
	}, 0, 0, 0, nil)
	done := make(chan struct{})
	go func() { r.Loop(ctx); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Loop did not return after its context ended")
	}
	if runs != 1 {
		t.Errorf("%d runs, want 1", runs)
	}
}
