package e2e

import (
	"context"
	"sync"
	"testing"
	"time"

	"kpo.dev/kpo/test/netns"
)

// load sends new TCP connections from a namespace to a service at a steady
// rate until stopped, counting failures: the "zero failed requests" of the
// restart, mode-switch and migration tests.
type load struct {
	cancel   context.CancelFunc
	done     chan struct{}
	mu       sync.Mutex
	total    int
	failures []string
}

// startLoad starts a load from `from` to addr, one connection every interval.
func startLoad(from *netns.NS, addr string, interval time.Duration) *load {
	ctx, cancel := context.WithCancel(context.Background())
	l := &load{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(l.done)
		for ctx.Err() == nil {
			_, err := from.Dial("tcp", addr, dialTimeout)
			l.mu.Lock()
			l.total++
			if err != nil {
				l.failures = append(l.failures, time.Now().Format("15:04:05.000")+" "+err.Error())
			}
			l.mu.Unlock()
			time.Sleep(interval) // the load's request rate, not synchronisation
		}
	}()
	return l
}

// stopAndCheck stops the load and fails the test if any request failed or if
// fewer than atLeast requests were sent.
func (l *load) stopAndCheck(t *testing.T, what string, atLeast int) {
	t.Helper()
	l.cancel()
	<-l.done
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.failures) > 0 || l.total < atLeast {
		first := l.failures[:min(len(l.failures), 5)]
		t.Errorf("%s: %d of %d requests failed (want none of at least %d); first: %q", what, len(l.failures), l.total, atLeast, first)
	}
}
