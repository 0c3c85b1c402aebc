// Package runner runs the agent's sync function with bounded frequency, as
// kube-proxy's BoundedFrequencyRunner does: changes trigger a run, but never
// sooner than minInterval after the previous one (changes arriving meanwhile
// are batched into one run); a run happens at least every maxInterval (a full
// resync that repairs drift); a failed run is retried with exponential backoff.
package runner

import (
	"context"
	"time"

	"k8s.io/utils/clock"
)

// Reason says why a run happens.
type Reason int

const (
	// Change: something changed (Trigger was called).
	Change Reason = iota
	// Periodic: maxInterval passed since the last run.
	Periodic
	// Retry: the last run failed.
	Retry
)

func (r Reason) String() string {
	return [...]string{"change", "periodic", "retry"}[r]
}

// Func is the work; an error schedules a retry.
type Func func(ctx context.Context, reason Reason) error

// Runner calls a Func with bounded frequency.
type Runner struct {
	fn          Func
	minInterval time.Duration
	maxInterval time.Duration
	maxBackoff  time.Duration
	clock       clock.Clock
	trigger     chan struct{}
}

// New returns a runner. maxBackoff bounds the retry delay after failures.
func New(fn Func, minInterval, maxInterval, maxBackoff time.Duration, clk clock.Clock) *Runner {
	if clk == nil {
		clk = clock.RealClock{}
	}
	if maxBackoff < minInterval {
		maxBackoff = minInterval
	}
	return &Runner{fn: fn, minInterval: minInterval, maxInterval: maxInterval, maxBackoff: maxBackoff,
		clock: clk, trigger: make(chan struct{}, 1)}
}

// Trigger asks for a run; it never blocks. Triggers before the run are merged.
func (r *Runner) Trigger() {
	select {
	case r.trigger <- struct{}{}:
	default:
	}
}

// Loop runs until ctx ends. The first run happens at once.
func (r *Runner) Loop(ctx context.Context) {
	var (
		lastRun  time.Time
		pending  = true // the first run is due at once
		failures int
		retryAt  time.Time
	)
	for {
		now := r.clock.Now()
		// When is the next run due, and why?
		due, reason := lastRun.Add(r.maxInterval), Periodic
		if pending {
			if at := lastRun.Add(r.minInterval); at.Before(due) {
				due, reason = at, Change
			}
		}
		if failures > 0 && retryAt.Before(due) {
			due, reason = retryAt, Retry
		}
		if !due.After(now) {
			err := r.fn(ctx, reason)
			lastRun = r.clock.Now()
			pending = false
			if err != nil {
				failures++
				retryAt = lastRun.Add(r.backoff(failures))
			} else {
				failures = 0
			}
			continue
		}
		t := r.clock.NewTimer(due.Sub(now))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-r.trigger:
			pending = true
		case <-t.C():
		}
		t.Stop()
	}
}

// backoff doubles from minInterval (at least 100ms) up to maxBackoff.
func (r *Runner) backoff(failures int) time.Duration {
	d := max(r.minInterval, 100*time.Millisecond)
	for i := 1; i < failures && d < r.maxBackoff; i++ {
		d *= 2
	}
	return min(d, r.maxBackoff)
}
