// Package nftables is kpo's nftables dataplane: it renders a model.Snapshot
// into the tables "ip kpo" and "ip6 kpo" (never anything else) through
// sigs.k8s.io/knftables, one `nft -f` transaction per sync.
//
// The backend remembers what it programmed (per service port: its pointer and
// rendered objects), so a partial sync writes only the service ports whose
// pointer changed, without listing the table. See docs/nftables-backend.md.
package nftables

import (
	"context"
	"fmt"
	"maps"
	"reflect"
	"slices"

	"sigs.k8s.io/knftables"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
	"kpo.dev/kpo/nodeagent/backend"
	"kpo.dev/kpo/nodeagent/model"
)

// Backend implements backend.Backend with nf_tables.
type Backend struct {
	settings settingsView
	families []model.Family
	kernel   Kernel

	// State of the last successful sync; nil forces the next sync to be full.
	synced *syncedState
}

type syncedState struct {
	node model.NodeInfo
	fams map[model.Family]*famState
}

type famState struct {
	base     *baseObjects
	services map[model.ServicePortKey]*svcState
	rules    int
}

type svcState struct {
	sp   *model.ServicePort
	objs *svcObjects
}

var _ backend.Backend = (*Backend)(nil)

// Option configures New.
type Option func(*Backend)

// WithKernel replaces nft with k (for instance a FakeKernel in tests).
func WithKernel(k Kernel) Option { return func(b *Backend) { b.kernel = k } }

// New returns an nftables backend for the given families (both when none are given).
func New(settings backend.Settings, families []model.Family, opts ...Option) (*Backend, error) {
	if len(families) == 0 {
		families = []model.Family{model.IPv4, model.IPv6}
	}
	b := &Backend{
		settings: settingsView{mark: settings.MasqueradeMark(), masqAll: settings.MasqueradeAll},
		families: slices.Clone(families),
	}
	for _, o := range opts {
		o(b)
	}
	if b.kernel == nil {
		k, err := newRealKernel()
		if err != nil {
			return nil, fmt.Errorf("%w: nftables: %v", backend.ErrUnavailable, err)
		}
		b.kernel = k
	}
	return b, nil
}

// Mode is nftables.
func (b *Backend) Mode() kpov1.Mode { return kpov1.ModeNFTables }

// Check asks the kernel, without committing, whether it accepts a table with
// the chain types and expressions the backend uses (nft --check).
func (b *Backend) Check(ctx context.Context) error {
	tx := b.kernel.NewTransaction()
	for _, fam := range b.families {
		fi := fams[fam]
		base := renderBase(fi, fam, b.settings, &model.NodeInfo{})
		writeBase(tx, fi, base, true)
		linkBase(tx, fi, base)
	}
	if err := b.kernel.Check(ctx, tx); err != nil {
		return fmt.Errorf("%w: nftables: %v", backend.ErrUnavailable, err)
	}
	return nil
}

// Cleanup deletes the kpo tables. "add" first makes the delete succeed when a
// table is absent (nft 1.0.6 has no "destroy"), all in one transaction.
func (b *Backend) Cleanup(ctx context.Context) error {
	tx := b.kernel.NewTransaction()
	for _, fam := range []model.Family{model.IPv4, model.IPv6} {
		t := &knftables.Table{Family: fams[fam].family, Name: tableName}
		tx.Add(t)
		tx.Delete(&knftables.Table{Family: t.Family, Name: tableName})
	}
	b.synced = nil
	return b.kernel.Run(ctx, tx)
}

// Sync implements backend.Backend.
func (b *Backend) Sync(ctx context.Context, snap *model.Snapshot, full bool) (backend.SyncResult, error) {
	if b.synced == nil || !reflect.DeepEqual(b.synced.node, snap.Node) {
		// Node settings (cluster CIDRs, NodePort addresses) shape every
		// service's rules: rewrite everything.
		full = true
	}
	prev := b.synced
	if full {
		prev = nil
	}
	next := &syncedState{node: snap.Node, fams: map[model.Family]*famState{}}
	tx := b.kernel.NewTransaction()
	written := 0
	for _, fam := range b.families {
		var pf *famState
		if prev != nil {
			pf = prev.fams[fam]
		}
		var stale staleObjects
		if full {
			var err error
			if stale, err = b.kernelObjects(ctx, fam); err != nil {
				return backend.SyncResult{}, fmt.Errorf("listing the %s kpo table: %w", fams[fam].family, err)
			}
		}
		nf, n := b.syncFamily(tx, fam, snap, pf, stale)
		next.fams[fam] = nf
		written += n
	}
	if err := b.kernel.Run(ctx, tx); err != nil {
		b.synced = nil
		return backend.SyncResult{}, fmt.Errorf("nftables transaction: %w", err)
	}
	b.synced = next
	res := backend.SyncResult{Full: full, ServicePortsWritten: written}
	for _, f := range next.fams {
		res.Rules += f.rules
	}
	return res, nil
}

// staleObjects are names found in the kernel (full sync only).
type staleObjects struct {
	chains, sets []string
}

func (b *Backend) kernelObjects(ctx context.Context, fam model.Family) (staleObjects, error) {
	chains, sets, err := b.kernel.Objects(ctx, fams[fam].family)
	return staleObjects{chains: chains, sets: sets}, err
}

// syncFamily appends one family's changes to tx. pf is the family's previous
// state (nil: full sync, where stale lists what the kernel holds).
//
// Ordering inside the transaction matters to the kernel: chains must exist
// before a rule or element refers to them, and a chain or set can only be
// deleted once nothing refers to it any more (EBUSY). So: base objects, then
// all chains (created and flushed), then their rules, then map element
// deletions and additions, and last the deletion of stale chains and sets.
func (b *Backend) syncFamily(tx *knftables.Transaction, fam model.Family, snap *model.Snapshot, pf *famState, stale staleObjects) (*famState, int) {
	fi := fams[fam]
	ftbl := fi.family
	rc := &renderCtx{fi: fi, masqAll: b.settings.masqAll, haveClusterCI: len(snap.Node.ClusterCIDRs[fam]) > 0}
	nf := &famState{services: map[model.ServicePortKey]*svcState{}}
	full := pf == nil
	if full {
		nf.base = renderBase(fi, fam, b.settings, &snap.Node)
		writeBase(tx, fi, nf.base, true)
		linkBase(tx, fi, nf.base)
	} else {
		nf.base = pf.base
	}

	type change struct {
		name     string
		old, new *svcObjects
	}
	var changes []change
	for k, sp := range snap.Services {
		if k.Family != fam || sp == nil {
			continue
		}
		var old *svcObjects
		if !full {
			o := pf.services[k]
			if o != nil && o.sp == sp {
				nf.services[k] = o
				continue
			}
			if o != nil {
				old = o.objs
			}
		}
		objs := renderService(rc, sp)
		nf.services[k] = &svcState{sp: sp, objs: objs}
		changes = append(changes, change{k.String(), old, objs})
	}
	if !full {
		for k, o := range pf.services {
			if _, ok := nf.services[k]; !ok {
				changes = append(changes, change{k.String(), o.objs, nil})
			}
		}
	}
	// A stable order: readable, reproducible transactions. Only the changed
	// ports are sorted (sorting all keys costs more than a partial sync).
	slices.SortFunc(changes, func(a, c change) int { return cmpString(a.name, c.name) })

	// Sets and chains first.
	for _, c := range changes {
		if c.new == nil {
			continue
		}
		for _, s := range c.new.sets {
			// No flush: the affinity entries must survive a rewrite.
			tx.Add(&knftables.Set{Family: ftbl, Table: tableName, Name: s.name, Type: fi.addrT,
				Flags: []knftables.SetFlag{knftables.DynamicFlag, knftables.TimeoutFlag}, Timeout: knftables.PtrTo(secs(s.timeout))})
		}
		for _, ch := range c.new.chains {
			tx.Add(&knftables.Chain{Family: ftbl, Table: tableName, Name: ch.name})
			// A chain new to this backend needs no flush; on a full sync the
			// kernel may still hold an old one.
			if full || c.old != nil {
				tx.Flush(&knftables.Chain{Family: ftbl, Table: tableName, Name: ch.name})
			}
		}
	}
	for _, c := range changes {
		if c.new == nil {
			continue
		}
		for _, ch := range c.new.chains {
			for _, r := range ch.rules {
				tx.Add(&knftables.Rule{Family: ftbl, Table: tableName, Chain: ch.name, Rule: r})
			}
		}
	}

	// Map elements: delete the ones that went or changed value, then add. On
	// a full sync the maps were flushed.
	for _, c := range changes {
		if c.old == nil {
			continue
		}
		newElems := map[string]string{}
		if c.new != nil {
			for _, e := range c.new.elems {
				newElems[e.id()] = e.value
			}
		}
		for _, e := range c.old.elems {
			if v, ok := newElems[e.id()]; !ok || v != e.value {
				tx.Delete(&knftables.Element{Family: ftbl, Table: tableName, Map: e.mapName, Key: e.key})
			}
		}
	}
	for _, c := range changes {
		if c.new == nil {
			continue
		}
		oldElems := map[string]string{}
		if c.old != nil {
			for _, e := range c.old.elems {
				oldElems[e.id()] = e.value
			}
		}
		for _, e := range c.new.elems {
			if v, ok := oldElems[e.id()]; ok && v == e.value {
				continue
			}
			tx.Add(&knftables.Element{Family: ftbl, Table: tableName, Map: e.mapName, Key: e.key, Value: []string{e.value}})
		}
	}

	// Stale chains and sets, last.
	wantChains, wantSets := map[string]bool{}, map[string]bool{}
	if full {
		for _, s := range nf.services {
			for _, ch := range s.objs.chains {
				wantChains[ch.name] = true
			}
			for _, st := range s.objs.sets {
				wantSets[st.name] = true
			}
		}
		for _, n := range stale.chains {
			if !wantChains[n] && !isBase(n) {
				tx.Delete(&knftables.Chain{Family: ftbl, Table: tableName, Name: n})
			}
		}
		for _, n := range stale.sets {
			if !wantSets[n] && !isBase(n) {
				tx.Delete(&knftables.Set{Family: ftbl, Table: tableName, Name: n})
			}
		}
	} else {
		for _, c := range changes {
			if c.old == nil {
				continue
			}
			if c.new != nil {
				for _, ch := range c.new.chains {
					wantChains[ch.name] = true
				}
				for _, st := range c.new.sets {
					wantSets[st.name] = true
				}
			}
			for _, ch := range c.old.chains {
				if !wantChains[ch.name] {
					tx.Delete(&knftables.Chain{Family: ftbl, Table: tableName, Name: ch.name})
				}
			}
			for _, st := range c.old.sets {
				if !wantSets[st.name] {
					tx.Delete(&knftables.Set{Family: ftbl, Table: tableName, Name: st.name})
				}
			}
		}
	}

	nf.rules = nf.base.nRules
	if !full {
		nf.rules = pf.rules
		for _, c := range changes {
			if c.old != nil {
				nf.rules -= c.old.count()
			}
			if c.new != nil {
				nf.rules += c.new.count()
			}
		}
	} else {
		for _, s := range nf.services {
			nf.rules += s.objs.count()
		}
	}
	n := 0
	for _, c := range changes {
		if c.new != nil {
			n++
		}
	}
	return nf, n
}

// ServicePorts lists the keys the backend holds, for tests and debugging.
func (b *Backend) ServicePorts() []model.ServicePortKey {
	if b.synced == nil {
		return nil
	}
	var out []model.ServicePortKey
	for _, f := range b.synced.fams {
		out = slices.AppendSeq(out, maps.Keys(f.services))
	}
	return out
}
