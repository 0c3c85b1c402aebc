// Package iptables is kpo's iptables dataplane: it renders a model.Snapshot
// into iptables rules with the semantics of kube-proxy's iptables mode, in
// chains prefixed KPO- that never touch kube-proxy's KUBE-* chains.
//
// Layout (per family, see docs/iptables-backend.md):
//
//	nat    PREROUTING, OUTPUT -> KPO-SERVICES -> KPO-DST-xx (by the last byte of the
//	       destination): plain ClusterIP services DNAT right there (-m statistic),
//	       the others jump to KPO-SVC/EXT/FW-<hash>, which DNAT themselves; only
//	       session affinity uses KPO-SEP-<hash> chains (one per endpoint)
//	       KPO-SERVICES -> KPO-NODEPORTS (local destinations) -> KPO-EXT-<hash>
//	nat    POSTROUTING -> KPO-POSTROUTING (masquerade the marked; hairpin:
//	       KPO-HAIRPIN -> KPO-HAIRPIN-xx masquerades a connection DNATed back
//	       to its own source)
//	filter INPUT, FORWARD, OUTPUT (new, untranslated) -> KPO-SERVICES -> KPO-DST-xx /
//	       KPO-NODEPORTS: REJECT services without endpoints, DROP what policy Local
//	       or source ranges refuse.
//	filter FORWARD -> KPO-FORWARD, INPUT and OUTPUT -> KPO-FIREWALL: kube-proxy's
//	       host rules (host.go).
//
// Everything, base chains and the jumps from the built-in chains included, is
// written with one iptables-restore --noflush per family and sync, holding
// only the chains that changed. Per-chain cost is what makes iptables-nft
// slow, hence few chains; see docs/iptables-backend.md.
package iptables

import (
	"bytes"
	"context"
	"fmt"
	"slices"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
	"kpo.dev/kpo/nodeagent/backend"
	"kpo.dev/kpo/nodeagent/model"
)

// Option configures a Backend.
type Option func(*Backend)

// WithKernel replaces the iptables binaries, for tests (see Fake).
func WithKernel(k Kernel) Option { return func(b *Backend) { b.kernel = k } }

// WithVariant chooses iptables-nft or iptables-legacy instead of the
// flavour the host uses (see DetectVariant).
func WithVariant(v Variant) Option { return func(b *Backend) { b.variant = v } }

// WithSysctls replaces the kernel's sysctls (tests: FakeSysctls with a
// real kernel in a namespace).
func WithSysctls(s Sysctls) Option { return func(b *Backend) { b.sysctls = s } }

// Backend is the iptables mode. It is used by one goroutine at a time.
type Backend struct {
	settings backend.Settings
	families []model.Family
	variant  Variant
	kernel   Kernel
	sysctls  Sysctls

	fams map[model.Family]*famState
	// needFull is set until a full sync succeeded: at start, and after any
	// failure, since then the kernel may hold anything.
	needFull bool
}

var _ backend.Backend = (*Backend)(nil)

// New returns the iptables backend for families (both when none are given).
func New(settings backend.Settings, families []model.Family, opts ...Option) (*Backend, error) {
	if len(families) == 0 {
		families = []model.Family{model.IPv4, model.IPv6}
	}
	if settings.MasqueradeBit < 0 || settings.MasqueradeBit > 31 {
		return nil, fmt.Errorf("masquerade bit %d out of range 0..31", settings.MasqueradeBit)
	}
	b := &Backend{settings: settings, families: slices.Clone(families), needFull: true, fams: map[model.Family]*famState{}}
	for _, o := range opts {
		o(b)
	}
	if b.kernel == nil {
		k, err := NewExecKernel(b.variant, b.families...)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", backend.ErrUnavailable, err)
		}
		b.kernel = k
	}
	if b.sysctls == nil {
		b.sysctls = b.kernel.Sysctls()
	}
	return b, nil
}

// Mode implements backend.Backend.
func (b *Backend) Mode() kpov1.Mode { return kpov1.ModeIPTables }

// Check implements backend.Backend.
func (b *Backend) Check(ctx context.Context) error {
	for _, f := range b.families {
		if err := b.kernel.Check(f); err != nil {
			return fmt.Errorf("%w: %s: %v", backend.ErrUnavailable, f, err)
		}
	}
	return nil
}

// jumps are inserted first in the built-in chains, as kube-proxy does: rules of
// other software (a firewall's ACCEPT) must not bypass service translation.
var jumps = []Jump{
	{tableNAT, "PREROUTING", []string{"-m", "comment", "--comment", "kpo service portals", "-j", chainServices}},
	{tableNAT, "OUTPUT", []string{"-m", "comment", "--comment", "kpo service portals", "-j", chainServices}},
	{tableNAT, "POSTROUTING", []string{"-m", "comment", "--comment", "kpo postrouting", "-j", chainPostrouting}},
	// Filter only sees what nat did not translate: new connections to VIPs
	// without endpoints (REJECT) or refused by policy (DROP). Excluding DNATed
	// packets keeps a hostNetwork endpoint on a node port from being rejected.
	// As kube-proxy hooks them: ClusterIPs (and source ranges) on forward and
	// output, external addresses and node ports on input and forward.
	// (Each is inserted first, so the later entry runs first: in forward,
	// KPO-SERVICES, then KPO-EXTERNAL-SERVICES.)
	{tableFilter, "INPUT", externalJump},
	{tableFilter, "FORWARD", externalJump},
	{tableFilter, "FORWARD", filterJump},
	{tableFilter, "OUTPUT", filterJump},
	// Inserted after (so above) the service rejects, as kube-proxy orders
	// KUBE-FORWARD before KUBE-SERVICES in FORWARD.
	{tableFilter, "FORWARD", []string{"-m", "comment", "--comment", "kpo forwarding rules", "-j", chainForward}},
	// The localnet guard sees every packet, as kubelet's and kube-proxy's
	// KUBE-FIREWALL jumps do (host.go).
	{tableFilter, "INPUT", []string{"-m", "comment", "--comment", "kpo firewall", "-j", chainFirewall}},
	{tableFilter, "OUTPUT", []string{"-m", "comment", "--comment", "kpo firewall", "-j", chainFirewall}},
}

var filterJump = []string{"-m", "conntrack", "--ctstate", "NEW", "-m", "conntrack", "!", "--ctstate", "DNAT",
	"-m", "comment", "--comment", "kpo service rejects", "-j", chainServices}

var externalJump = []string{"-m", "conntrack", "--ctstate", "NEW", "-m", "conntrack", "!", "--ctstate", "DNAT",
	"-m", "comment", "--comment", "kpo external service rejects", "-j", chainExternalServices}

// retiredJumps are jumps earlier versions inserted: cleanup removes them too.
var retiredJumps = []Jump{{tableFilter, "INPUT", filterJump}}

var baseChains = []struct{ table, chain string }{
	{tableNAT, chainServices}, {tableNAT, chainNodePorts}, {tableNAT, chainPostrouting},
	{tableNAT, chainMarkMasq}, {tableNAT, chainClusterMasq},
	{tableFilter, chainServices}, {tableFilter, chainNodePorts}, {tableFilter, chainExternalServices},
	{tableFilter, chainForward}, {tableFilter, chainFirewall},
}

func isBase(table, name string) bool {
	for _, c := range baseChains {
		if c.table == table && c.chain == name {
			return true
		}
	}
	return false
}

// Sync implements backend.Backend: one restore per family.
func (b *Backend) Sync(ctx context.Context, snap *model.Snapshot, changes *backend.Changes) (backend.SyncResult, error) {
	if err := ctx.Err(); err != nil {
		return backend.SyncResult{}, err
	}
	if b.needFull {
		changes = nil
	}
	res := backend.SyncResult{Full: changes == nil}
	for _, f := range b.families {
		n, err := b.syncFamily(snap, f, changes)
		if err != nil {
			// The kernel may now hold part of this sync (one table committed,
			// the other not): forget what we believe and repair with a full sync.
			b.needFull = true
			b.fams = map[model.Family]*famState{}
			return backend.SyncResult{}, fmt.Errorf("iptables %s sync: %w", f, err)
		}
		res.ServicePortsWritten += n
	}
	b.needFull = false
	for _, s := range b.fams {
		res.Rules += s.rules()
	}
	return res, nil
}

// syncFamily writes one family's changes (nil: everything) in one restore.
func (b *Backend) syncFamily(snap *model.Snapshot, f model.Family, changes *backend.Changes) (int, error) {
	nat, filter := newTableWriter(tableNAT), newTableWriter(tableFilter)
	st := b.fams[f]
	full := changes == nil || st == nil
	var written int
	if full {
		var err error
		if st, err = b.writeFull(snap, f, nat, filter); err != nil {
			return 0, err
		}
		written = len(st.svcs)
	} else {
		written = st.writeChanges(snap, f, changes, nat, filter)
	}
	if !nat.empty() || !filter.empty() {
		// One restore, two sections, each committed atomically by itself.
		var data bytes.Buffer
		filter.appendTo(&data)
		nat.appendTo(&data)
		if err := b.kernel.Restore(f, data.Bytes()); err != nil {
			return 0, err
		}
	}
	b.fams[f] = st
	return written, nil
}

// writeFull writes every chain of the family: the services', the shared
// dispatch chains, the fixed and host chains, and the repair of drift (a
// new state, since the kernel may hold anything).
func (b *Backend) writeFull(snap *model.Snapshot, f model.Family, nat, filter *tableWriter) (*famState, error) {
	node := nodeViewOf(snap.Node, f)
	// Base chains and the jumps to them are made by the restore (declared,
	// and inserted where the listing lacks them), which saves two dozen
	// iptables executions per family; only sysctls come first.
	host, err := b.prepareHost(f, node)
	if err != nil {
		return nil, err
	}
	r := newRenderer(f, b.settings, localMatches(node))
	st := newFamState(f, r, node, b.kernel.RandomFully(f))
	d := newDirty()
	for k, sp := range snap.Services {
		if k.Family == f {
			st.write(k, sp, d, nat)
		}
	}
	st.writeShared(d, nat, filter, true)
	st.fixedRules = len(st.r.nodePortDispatch(node.nodePortIPs, node.explicitNP)) + 1
	for _, c := range st.r.fixedNAT(st.randomFully) {
		nat.write(c)
		st.fixedRules += len(c.rules)
	}
	for _, c := range st.r.hostFilter(host) {
		filter.write(c)
		st.fixedRules += len(c.rules)
	}
	// Drift repair: delete every chain of this mode we do not mean to
	// have, and (re)insert missing jumps from the built-in chains.
	for _, t := range []*tableWriter{nat, filter} {
		if err := b.repair(f, t); err != nil {
			return nil, err
		}
	}
	return st, nil
}

// writeChanges writes the family's changed service ports and the shared
// chains they touch; it returns how many it rewrote.
func (s *famState) writeChanges(snap *model.Snapshot, f model.Family, changes *backend.Changes, nat, filter *tableWriter) int {
	d := newDirty()
	written := 0
	for _, k := range changes.Changed {
		if k.Family == f {
			if sp := snap.Services[k]; sp != nil {
				s.write(k, sp, d, nat)
				written++
			} else {
				s.write(k, nil, d, nat)
			}
		}
	}
	for _, k := range changes.Removed {
		if k.Family == f && s.svcs[k] != nil {
			s.write(k, nil, d, nat)
		}
	}
	s.writeShared(d, nat, filter, false)
	return written
}

// repair lists a table, deletes this mode's chains t does not write and inserts
// the jumps that are missing. t declares every base chain (a full sync
// writes them all), so the jumps' targets exist when they are inserted.
func (b *Backend) repair(f model.Family, t *tableWriter) error {
	lines, err := b.kernel.ListRules(f, t.name)
	if err != nil {
		return fmt.Errorf("listing %s: %w", t.name, err)
	}
	for _, c := range chainsOf(lines) {
		if ownChain(c) && !t.declared[c] && !isBase(t.name, c) {
			t.remove(c)
		}
	}
	for _, j := range jumps {
		if j.Table == t.name && !j.In(lines) {
			t.edit(j.Insert())
		}
	}
	return nil
}

// Cleanup implements backend.Backend: it deletes the jumps and every chain of
// this mode in both tables (not the ipvs mode's KPO-IPVS-* ones: a mode
// switch to ipvs cleans up after its first sync), see RemoveOwn. Sysctls
// stay as they are, as with kube-proxy.
func (b *Backend) Cleanup(ctx context.Context) error {
	b.needFull = true
	b.fams = map[model.Family]*famState{}
	return RemoveOwn(b.kernel, b.families, ownChain, slices.Concat(jumps, retiredJumps))
}
