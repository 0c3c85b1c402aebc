package testnet

import (
	"context"
	"sync"
	"testing"
	"time"

	"kpo.dev/kpo/hack/netns"
)

// Load sends new connections (TCP) or datagrams (UDP) from a namespace to a
// service at a steady rate until stopped, counting failures: the "zero failed
// requests" of the restart, mode-switch and migration tests.
type Load struct {
	What     string
	cancel   context.CancelFunc
	done     chan struct{}
	mu       sync.Mutex
	total    int
	failures []string
}

// loadTimeout bounds one request; an answer later than this is a failure.
const loadTimeout = 2 * time.Second

// StartLoad starts a load from `from` to addr over network ("tcp" or "udp"),
// one request every interval.
func StartLoad(from *netns.NS, network, addr string, interval time.Duration) *Load {
	ctx, cancel := context.WithCancel(context.Background())
	l := &Load{What: network + " " + addr, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(l.done)
		for ctx.Err() == nil {
			_, err := from.Dial(network, addr, loadTimeout)
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

// Stop stops the load and returns how many requests were sent and which failed.
func (l *Load) Stop() (total int, failures []string) {
	l.cancel()
	<-l.done
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.total, l.failures
}

// Counts is how many requests were sent so far and how many failed, while
// the load runs (the soak test samples it).
func (l *Load) Counts() (total, failed int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.total, len(l.failures)
}

// StopAndCheck stops the load and fails the test if any request failed or if
// fewer than atLeast requests were sent.
func (l *Load) StopAndCheck(t testing.TB, what string, atLeast int) {
	t.Helper()
	total, failures := l.Stop()
	if len(failures) > 0 || total < atLeast {
		first := failures[:min(len(failures), 5)]
		t.Errorf("%s (%s): %d of %d requests failed (want none of at least %d); first: %q", what, l.What, len(failures), total, atLeast, first)
	}
}
