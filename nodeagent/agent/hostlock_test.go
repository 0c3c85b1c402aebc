package agent

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestHostLockIsExclusive: a second holder waits until the first releases,
// and a waiter whose context ends gets an error naming the holder. flock
// locks belong to open file descriptions, so two opens in one process
// exclude each other as two agents do.
func TestHostLockIsExclusive(t *testing.T) {
	path := filepath.Join(t.TempDir(), "run", "kpo", "agent.lock")
	first, err := AcquireHostLock(context.Background(), path, "configuration \"a\" generation 1")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*lockPoll)
	defer cancel()
	if _, err := AcquireHostLock(ctx, path, "b"); !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), `configuration "a"`) {
		t.Fatalf("second acquire while held: %v, want a deadline error naming the holder", err)
	}

	got := make(chan error, 1)
	go func() {
		second, err := AcquireHostLock(context.Background(), path, "b")
		if err == nil {
			second.Release()
		}
		got <- err
	}()
	select {
	case err := <-got:
		t.Fatalf("second holder got the lock while the first held it (%v)", err)
	case <-time.After(5 * lockPoll):
	}
	first.Release()
	first.Release() // a second release is a no-op
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the second holder did not get the lock after the first released it")
	}
	var none *HostLock
	none.Release() // agents without a lock
}
