// Package iptables is kpo's iptables dataplane: it renders a model.Snapshot
// into iptables rules with the semantics of kube-proxy's iptables mode, in
// chains prefixed KPO- that never touch kube-proxy's KUBE-* chains.
//
// Layout (per family, see docs/iptables-backend.md):
//
//	nat    PREROUTING, OUTPUT -> KPO-SERVICES -> KPO-DST-xx (by the last byte of the
//	       destination) -> KPO-SVC/EXT/FW-<hash> -> KPO-SEP-<hash> (DNAT)
//	       KPO-SERVICES -> KPO-NODEPORTS (local destinations) -> KPO-EXT-<hash>
//	nat    POSTROUTING -> KPO-POSTROUTING (masquerade the marked)
//	filter INPUT, FORWARD, OUTPUT (new, untranslated) -> KPO-SERVICES -> KPO-DST-xx /
//	       KPO-NODEPORTS: REJECT services without endpoints, DROP what policy Local
//	       or source ranges refuse.
//
// Base chains and the jumps from the built-in chains are made with go-iptables;
// everything else is written with one iptables-restore --noflush per family
// and sync, holding only the chains that changed.
package iptables

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
	"kpo.dev/kpo/nodeagent/backend"
	"kpo.dev/kpo/nodeagent/model"
)

// Option configures a Backend.
type Option func(*Backend)

// WithKernel replaces the iptables binaries, for tests (see Fake).
func WithKernel(k Kernel) Option { return func(b *Backend) { b.kernel = k } }

// WithVariant chooses iptables-nft or iptables-legacy instead of the
// system's default "iptables".
func WithVariant(v Variant) Option { return func(b *Backend) { b.variant = v } }

// Backend is the iptables mode. It is used by one goroutine at a time.
type Backend struct {
	settings backend.Settings
	families []model.Family
	variant  Variant
	kernel   Kernel
	realKern bool // kernel runs binaries: sysctls are ours to set too

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
		b.kernel, b.realKern = k, true
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

// jump is a rule in a built-in chain that sends traffic to a base chain.
type jump struct {
	table, chain string
	rule         []string
}

// jumps are inserted first in the built-in chains, as kube-proxy does: rules of
// other software (a firewall's ACCEPT) must not bypass service translation.
var jumps = []jump{
	{tableNAT, "PREROUTING", []string{"-m", "comment", "--comment", "kpo service portals", "-j", chainServices}},
	{tableNAT, "OUTPUT", []string{"-m", "comment", "--comment", "kpo service portals", "-j", chainServices}},
	{tableNAT, "POSTROUTING", []string{"-m", "comment", "--comment", "kpo postrouting", "-j", chainPostrouting}},
	// Filter only sees what nat did not translate: new connections to VIPs
	// without endpoints (REJECT) or refused by policy (DROP). Excluding DNATed
	// packets keeps a hostNetwork endpoint on a node port from being rejected.
	{tableFilter, "INPUT", filterJump},
	{tableFilter, "FORWARD", filterJump},
	{tableFilter, "OUTPUT", filterJump},
}

var filterJump = []string{"-m", "conntrack", "--ctstate", "NEW", "-m", "conntrack", "!", "--ctstate", "DNAT",
	"-m", "comment", "--comment", "kpo service rejects", "-j", chainServices}

var baseChains = []struct{ table, chain string }{
	{tableNAT, chainServices}, {tableNAT, chainNodePorts}, {tableNAT, chainPostrouting},
	{tableNAT, chainMarkMasq}, {tableNAT, chainClusterMasq},
	{tableFilter, chainServices}, {tableFilter, chainNodePorts},
}

func isBase(table, name string) bool {
	for _, c := range baseChains {
		if c.table == table && c.chain == name {
			return true
		}
	}
	return false
}

// bootstrap makes the base chains and the jumps to them. The chains are empty
// when first made, so the jumps are harmless until the restore fills them.
func (b *Backend) bootstrap(f model.Family) error {
	for _, c := range baseChains {
		if err := b.kernel.EnsureChain(f, c.table, c.chain); err != nil {
			return fmt.Errorf("creating %s %s: %w", c.table, c.chain, err)
		}
	}
	for _, j := range jumps {
		if err := b.kernel.EnsureRule(f, j.table, j.chain, j.rule...); err != nil {
			return fmt.Errorf("jump from %s %s: %w", j.table, j.chain, err)
		}
	}
	if f == model.IPv4 && b.settings.LocalhostNodePorts && b.realKern {
		// DNAT of 127.0.0.1 to a pod is dropped as martian unless route_localnet.
		if err := os.WriteFile("/proc/sys/net/ipv4/conf/all/route_localnet", []byte("1"), 0o644); err != nil {
			return fmt.Errorf("route_localnet: %w", err)
		}
	}
	return nil
}

// Sync implements backend.Backend.
func (b *Backend) Sync(ctx context.Context, snap *model.Snapshot, full bool) (backend.SyncResult, error) {
	if err := ctx.Err(); err != nil {
		return backend.SyncResult{}, err
	}
	full = full || b.needFull
	res := backend.SyncResult{Full: full}
	for _, f := range b.families {
		n, err := b.syncFamily(snap, f, full)
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

func (b *Backend) syncFamily(snap *model.Snapshot, f model.Family, full bool) (int, error) {
	node := nodeViewOf(snap.Node, f)
	st := b.fams[f]
	if st == nil || !st.node.equal(node) {
		// Node info is baked into many rules (pod CIDRs in EXT chains, node
		// port addresses): a change rewrites everything.
		full = true
	}
	if full {
		if err := b.bootstrap(f); err != nil {
			return 0, err
		}
		r := &renderer{fam: f, settings: b.settings, clusterCIDRs: node.clusterCIDRs}
		st = newFamState(f, r, node, b.kernel.RandomFully(f))
	}
	nat, filter := newTableWriter(tableNAT), newTableWriter(tableFilter)
	d := newDirty()
	written := 0
	for k, sp := range snap.Services {
		if k.Family != f {
			continue
		}
		if old := st.svcs[k]; !full && old != nil && old.sp == sp {
			continue
		}
		nr := st.r.render(sp)
		for _, name := range st.apply(k, nr, d) {
			nat.remove(name)
		}
		for _, c := range nr.nat {
			nat.write(c)
		}
		written++
	}
	if !full {
		for k := range st.svcs {
			if _, ok := snap.Services[k]; !ok {
				for _, name := range st.apply(k, nil, d) {
					nat.remove(name)
				}
			}
		}
	}
	st.writeShared(d, nat, filter, full)
	if full {
		fixed := st.r.fixedNAT(st.randomFully)
		st.fixedRules = 2 * len(st.r.nodePortDispatch(node.nodePortIPs, node.explicitNP))
		for _, c := range fixed {
			nat.write(c)
			st.fixedRules += len(c.rules)
		}
		// Drift repair: delete every KPO- chain we do not mean to have.
		for _, t := range []*tableWriter{nat, filter} {
			if err := b.removeStale(f, t); err != nil {
				return 0, err
			}
		}
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

// removeStale lists a table and deletes the KPO- chains t does not write.
func (b *Backend) removeStale(f model.Family, t *tableWriter) error {
	chains, err := b.kernel.ListChains(f, t.name)
	if err != nil {
		return fmt.Errorf("listing %s: %w", t.name, err)
	}
	for _, c := range chains {
		if strings.HasPrefix(c, chainPrefix) && !t.declared[c] && !isBase(t.name, c) {
			t.remove(c)
		}
	}
	return nil
}

// Cleanup implements backend.Backend: jumps first, so that no packet enters a
// chain being deleted, then every KPO- chain of both tables in one restore.
func (b *Backend) Cleanup(ctx context.Context) error {
	b.needFull = true
	b.fams = map[model.Family]*famState{}
	var errs []error
	for _, f := range b.families {
		for _, j := range jumps {
			if err := b.kernel.DeleteRule(f, j.table, j.chain, j.rule...); err != nil {
				errs = append(errs, fmt.Errorf("%s: %s %s: %w", f, j.table, j.chain, err))
			}
		}
		var tables []*tableWriter
		for _, table := range []string{tableFilter, tableNAT} {
			t := newTableWriter(table)
			chains, err := b.kernel.ListChains(f, table)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: listing %s: %w", f, table, err))
				continue
			}
			for _, c := range chains {
				if strings.HasPrefix(c, chainPrefix) {
					t.remove(c)
				}
			}
			tables = append(tables, t)
		}
		var out bytes.Buffer
		for _, t := range tables {
			t.appendTo(&out)
		}
		if out.Len() > 0 {
			if err := b.kernel.Restore(f, out.Bytes()); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", f, err))
			}
		}
	}
	return errors.Join(errs...)
}
