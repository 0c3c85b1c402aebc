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
	// With full false the backend may rewrite only the service ports whose
	// pointers differ from its last successful sync (model.ServicePort is
	// immutable), plus those that went away. With full true it rewrites
	// everything and removes whatever of its own it does not know (repairing
	// drift); the first sync of a backend is always full.
	//
	// A sync is one atomic kernel transaction where the mechanism allows it: when
	// it fails, the previous rules stay in place, the error says why, and the
	// next sync must be full.
	Sync(ctx context.Context, snap *model.Snapshot, full bool) (SyncResult, error)

	// Cleanup removes every kernel object of this mode that kpo made. It is safe
	// to call when there is nothing to remove, and it never touches objects of
	// other software (kube-proxy's KUBE-* chains, its kube-proxy tables).
	Cleanup(ctx context.Context) error
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
