// Package backend defines what a dataplane mode (iptables, nftables, ipvs) does
// for the agent: render a model.Snapshot into the kernel, in one atomic
// transaction per sync, and remove everything it made.
package backend

import (
	"context"
	"errors"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
	"kpo.dev/kpo/nodeagent/model"
)

// Backend programs one mode's kernel objects.
//
// A Backend is used by one goroutine at a time (the agent's sync loop).
type Backend interface {
	// Mode is the mode this backend implements.
	Mode() kpov1.Mode

	// Check reports whether this node's kernel can run the mode, with an error
	// wrapping ErrUnavailable when it cannot (for instance no IPVS).
	Check(ctx context.Context) error

	// Sync makes the kernel hold snap's rules.
	//
	// changes says what to rewrite. nil is a full sync: the backend rewrites
	// everything and removes whatever of its own it does not know (repairing
	// drift). Otherwise the sync is partial: the backend rewrites exactly the
	// service ports changes lists, and trusts the rest to be as its last
	// successful sync left them. The agent decides which (see Changes); a
	// backend with no record of a successful sync (new, cleaned up, or after a
	// failure) syncs fully whatever changes says, and says so in SyncResult.
	//
	// A sync is one atomic kernel transaction where the mechanism allows it: when
	// it fails, the previous rules stay in place, the error says why, and the
	// next sync must be full.
	Sync(ctx context.Context, snap *model.Snapshot, changes *Changes) (SyncResult, error)

	// Cleanup removes every kernel object of this mode that kpo made. It is safe
	// to call when there is nothing to remove, and it never touches objects of
	// other software (kube-proxy's KUBE-* chains, its kube-proxy tables).
	Cleanup(ctx context.Context) error
}

// Changes are the service ports a partial sync rewrites: what differs between
// the snapshot of the last successful sync and this one, as the tracker
// found it (tracker.Change). A nil *Changes is a full sync.
//
// The agent makes a sync full at start, after a failure, periodically
// (syncPeriod), and when the snapshot's Node differs from the last sync's
// (node settings shape every service's rules); a partial sync's Node is
// always the last sync's.
type Changes struct {
	// Changed are the service ports that are new or different in the snapshot.
	Changed []model.ServicePortKey
	// Removed are the service ports the last sync held that the snapshot lacks.
	Removed []model.ServicePortKey
}

// ChangesOf lists the keys of the tracker's changed and removed service ports.
func ChangesOf(changed, removed []*model.ServicePort) *Changes {
	c := &Changes{Changed: make([]model.ServicePortKey, 0, len(changed)), Removed: make([]model.ServicePortKey, 0, len(removed))}
	for _, sp := range changed {
		c.Changed = append(c.Changed, sp.Key)
	}
	for _, sp := range removed {
		c.Removed = append(c.Removed, sp.Key)
	}
	return c
}

// SyncResult describes one successful sync.
type SyncResult struct {
	// Full is true when every service port was rewritten.
	Full bool
	// ServicePortsWritten is how many service ports the sync rewrote.
	ServicePortsWritten int
	// Rules is the number of rules, map or set elements (or IPVS virtual servers
	// and destinations) the mode holds after the sync.
	Rules int
	// Draining is how many removed endpoints still drain (IPVS graceful
	// termination, which progresses only during syncs): while it is positive,
	// the agent syncs again soon even when nothing changes, so that they go
	// once their connections end (or at the backend's bound).
	Draining int
}

// ErrUnavailable says that the kernel cannot run a mode.
var ErrUnavailable = errors.New("mode unavailable in this kernel")

// Settings are the agent configuration's settings that shape the rules.
type Settings struct {
	// MasqueradeBit is the packet-mark bit that flags packets to masquerade.
	MasqueradeBit int
	// MasqueradeAll masquerades all service traffic, not only off-cluster sources.
	MasqueradeAll bool
	// LocalhostNodePorts accepts NodePort traffic on 127.0.0.1 (iptables, IPv4).
	LocalhostNodePorts bool
}

// MasqueradeMark is the mark value of the masquerade bit.
func (s Settings) MasqueradeMark() uint32 { return 1 << uint(s.MasqueradeBit) }
