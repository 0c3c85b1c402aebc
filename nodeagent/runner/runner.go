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

// Bounds the runner holds its intervals to, whatever it is given. Validation
// keeps the agent's settings well inside them (syncPeriod 1s–24h); these make
// the loop itself safe with any value: it never spins, and no deadline or
// doubled backoff comes near time.Duration's overflow.
const (
	// periodFloor is the shortest maxInterval: with a zero one every moment
	// would be due and the loop would never wait.
	periodFloor = time.Second
	// backoffFloor is the shortest retry delay after a failure.
	backoffFloor = 100 * time.Millisecond
	// intervalCeiling is the longest interval of any kind.
	intervalCeiling = 365 * 24 * time.Hour
)

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
// Intervals are held to sane bounds (see periodFloor and intervalCeiling):
// maxInterval to [1s, 1 year], minInterval to [0, maxInterval], maxBackoff to
// [max(minInterval, 100ms), 1 year].
func New(fn Func, minInterval, maxInterval, maxBackoff time.Duration, clk clock.Clock) *Runner {
	if clk == nil {
		clk = clock.RealClock{}
	}
	maxInterval = min(max(maxInterval, periodFloor), intervalCeiling)
	minInterval = min(max(minInterval, 0), maxInterval)
	maxBackoff = min(max(maxBackoff, minInterval, backoffFloor), intervalCeiling)
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
		// Checked before every run, not only while waiting: a run that is
		// due at once must not keep the loop from seeing the end.
		if ctx.Err() != nil {
			return
		}
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

// backoff doubles from minInterval (at least 100ms) up to maxBackoff. (d stays
// below maxBackoff, at most a year, before doubling: it cannot overflow.)
func (r *Runner) backoff(failures int) time.Duration {
	d := max(r.minInterval, backoffFloor)
	for i := 1; i < failures && d < r.maxBackoff; i++ {
		d *= 2
	}
	return min(d, r.maxBackoff)
}
