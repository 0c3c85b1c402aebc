package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// DefaultLockFile is the host lock of the node's kpo agents. The DaemonSet
// mounts the host's /run/kpo, so that every agent on a node (of any
// configuration, and a kpo-agent --cleanup run by hand) takes the same lock.
const DefaultLockFile = "/run/kpo/agent.lock"

// HostLock is an exclusive flock(2) on a file, held by at most one agent of a
// node at a time: two agents programming one kernel would interleave their
// syncs (each full sync removes what it does not know, and each mode's first
// sync removes the other modes' rules), so a second agent — a DaemonSet pod
// that starts before the previous one is gone, the successor of a deleted
// ProxyConfiguration, a second configuration selecting the node by mistake —
// waits until the first exits or hands the node over.
//
// The kernel drops the lock when its holder exits, however it exits, so a
// crashed agent never blocks its successor. The file is never deleted (a
// waiter may have it open); the holder writes who it is into it, for the
// waiters' log.
type HostLock struct {
	f    *os.File
	path string
}

// lockPoll is how often a waiting agent tries the lock again. flock(2) blocks
// without a way to cancel it, so waiting is non-blocking attempts.
const lockPoll = 200 * time.Millisecond

// lockLogEvery is how often a waiting agent says again that it waits.
const lockLogEvery = 30 * time.Second

// AcquireHostLock takes the lock at path, waiting while another process holds
// it, until ctx ends. owner describes this agent to later waiters.
func AcquireHostLock(ctx context.Context, path, owner string) (*HostLock, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("host lock: %w", err)
	}
	// O_CLOEXEC (Go's default): nft, iptables and ipset children must not
	// inherit the lock and hold it beyond this process.
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("host lock: %w", err)
	}
	logger := klog.FromContext(ctx)
	var lastLog time.Time
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			_ = f.Close()
			return nil, fmt.Errorf("host lock %s: %w", path, err)
		}
		if time.Since(lastLog) >= lockLogEvery {
			lastLog = time.Now()
			logger.Info("another kpo agent holds this node's lock; waiting until it exits or hands the node over",
				"lock", path, "holder", holderOf(path))
		}
		select {
		case <-ctx.Done():
			_ = f.Close()
			return nil, fmt.Errorf("waiting for host lock %s (held by %s): %w", path, holderOf(path), ctx.Err())
		case <-time.After(lockPoll):
		}
	}
	if !lastLog.IsZero() {
		logger.Info("acquired this node's lock", "lock", path)
	}
	// Who holds it, for the waiters' messages; best effort.
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(fmt.Sprintf("pid %d, %s, since %s\n", os.Getpid(), owner, time.Now().UTC().Format(time.RFC3339))), 0)
	}
	return &HostLock{f: f, path: path}, nil
}

// holderOf reads what the lock's holder wrote into it.
func holderOf(path string) string {
	b, err := os.ReadFile(path)
	if err != nil || len(b) == 0 {
		return "unknown"
	}
	return strings.TrimSpace(string(b))
}

// Release drops the lock; a nil lock and a second call are no-ops.
func (l *HostLock) Release() {
	if l == nil || l.f == nil {
		return
	}
	_ = unix.Flock(int(l.f.Fd()), unix.LOCK_UN)
	_ = l.f.Close()
	l.f = nil
}

// Path is the lock's file.
func (l *HostLock) Path() string { return l.path }
