// Package backendtest syncs backends in tests the way the agent does: the
// change set of a partial sync is what differs between the snapshot of the
// backend's last successful sync and the new one (the tracker keeps the
// pointer of an unchanged service port, modeltest.With too), and a change of
// the node makes the sync full.
package backendtest

import (
	"context"
	"sync"
	"testing"

	"kpo.dev/kpo/nodeagent/backend"
	"kpo.dev/kpo/nodeagent/model"
)

var (
	mu   sync.Mutex
	last = map[backend.Backend]*model.Snapshot{}
)

// Sync syncs snap into b: fully when full is set, when b has no successful
// sync through Sync yet, or when the node changed; otherwise with the change
// set since the snapshot of b's last successful sync.
func Sync(ctx context.Context, b backend.Backend, snap *model.Snapshot, full bool) (backend.SyncResult, error) {
	mu.Lock()
	prev := last[b]
	mu.Unlock()
	var changes *backend.Changes
	if !full && prev != nil && prev.Node.Equal(snap.Node) {
		changes = Changes(prev, snap)
	}
	res, err := b.Sync(ctx, snap, changes)
	mu.Lock()
	if err == nil {
		last[b] = snap
	} else {
		delete(last, b)
	}
	mu.Unlock()
	return res, err
}

// Changes is the change set from prev to next: the service ports new in
// next or with another pointer, and those next lacks.
func Changes(prev, next *model.Snapshot) *backend.Changes {
	c := &backend.Changes{}
	for k, sp := range next.Services {
		if prev.Services[k] != sp {
			c.Changed = append(c.Changed, k)
		}
	}
	for k := range prev.Services {
		if _, ok := next.Services[k]; !ok {
			c.Removed = append(c.Removed, k)
		}
	}
	return c
}

// Settings are the settings the backends' tests run with: the agent's
// default masquerade bit.
var Settings = backend.Settings{MasqueradeBit: 14}

// ColdSync is one iteration of a cold full-sync benchmark: be syncs snap
// fully inside do (timed), then cleans up (untimed).
func ColdSync(b *testing.B, do func(func() error) error, be backend.Backend, snap *model.Snapshot) {
	if err := do(func() error { _, err := Sync(context.Background(), be, snap, true); return err }); err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	if err := do(func() error { return be.Cleanup(context.Background()) }); err != nil {
		b.Fatal(err)
	}
	b.StartTimer()
}
