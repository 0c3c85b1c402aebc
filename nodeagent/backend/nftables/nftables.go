// Package nftables is kpo's nftables dataplane: it renders a model.Snapshot
// into the tables "ip kpo" and "ip6 kpo" (never anything else): full syncs
// through sigs.k8s.io/knftables, one `nft -f` transaction; partial syncs over
// netlink (github.com/google/nftables), one nfnetlink batch (netlink.go).
//
// The backend remembers what it programmed (per service port: its pointer and
// rendered objects), so a partial sync writes only the service ports whose
// pointer changed, without listing the table. See docs/nftables-backend.md.
package nftables

import (
	"context"
	"errors"
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
	// noNetlink makes partial syncs use nft too (benchmarks, comparisons).
	noNetlink bool
	// lastVia is how the last sync was applied: "nft" or "netlink" (tests).
	lastVia string
}

type syncedState struct {
	node model.NodeInfo
	fams map[model.Family]*famState
}

type famState struct {
	base     *baseObjects
	services map[model.ServicePortKey]*svcState
	// Users of the shared objects: pick chains and shared set elements
	// exist while their count is positive.
	classes map[class]int
	shared  map[sharedElem]int
	rules   int
	// pending are a partial sync's changes to services (nil: removed), and
	// pendingClasses/pendingShared the changes of the counts, applied once
	// the kernel took the sync. The maps are shared with the previous state
	// until then: copying a 10k-entry map every partial sync cost more
	// (allocation, GC) than the rest of the Go side.
	pending        map[model.ServicePortKey]*svcState
	pendingClasses map[class]int
	pendingShared  map[sharedElem]int
}

// apply commits the pending changes.
func (f *famState) apply() {
	for k, s := range f.pending {
		if s == nil {
			delete(f.services, k)
		} else {
			f.services[k] = s
		}
	}
	addCounts(f.classes, f.pendingClasses)
	addCounts(f.shared, f.pendingShared)
	f.pending, f.pendingClasses, f.pendingShared = nil, nil, nil
}

// usageChanges lists the shared objects whose use count the pending deltas
// take from zero to positive (to create) and from positive to zero (to delete).
func usageChanges[K comparable](counts, deltas map[K]int) (appear, vanish []K) {
	for k, d := range deltas {
		switch before := counts[k]; {
		case before == 0 && d > 0:
			appear = append(appear, k)
		case before > 0 && before+d == 0:
			vanish = append(vanish, k)
		}
	}
	return appear, vanish
}

func addCounts[K comparable](m, delta map[K]int) {
	for k, d := range delta {
		if m[k]+d == 0 {
			delete(m, k)
		} else {
			m[k] += d
		}
	}
}

// countUses adds (sign 1) or removes (-1) o's uses of the shared objects.
func countUses(o *svcObjects, sign int, classes map[class]int, shared map[sharedElem]int) {
	for _, c := range o.classes {
		classes[c] += sign
	}
	for _, e := range o.shared {
		shared[e] += sign
	}
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
		writeBase(tx, fi, base, true, nil)
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
	stale := map[model.Family]staleObjects{}
	if full {
		for _, fam := range b.families {
			st, err := b.kernelObjects(ctx, fam)
			if err != nil {
				return backend.SyncResult{}, fmt.Errorf("listing the %s kpo table: %w", fams[fam].family, err)
			}
			stale[fam] = st
		}
	}
	// build renders the sync into w; on a full sync the fixed objects go into
	// tx first (full syncs always use knftables, see docs/nftables-backend.md).
	build := func(w objWriter, tx *knftables.Transaction) (*syncedState, int) {
		next := &syncedState{node: snap.Node, fams: map[model.Family]*famState{}}
		written := 0
		for _, fam := range b.families {
			var pf *famState
			var base *baseObjects
			if prev != nil {
				pf = prev.fams[fam]
				base = pf.base
			} else {
				fi := fams[fam]
				base = renderBase(fi, fam, b.settings, &snap.Node)
				st := stale[fam]
				writeBase(tx, fi, base, true, &st)
				linkBase(tx, fi, base)
			}
			nf, n := b.syncFamily(w, fam, snap, pf, base, stale[fam])
			next.fams[fam] = nf
			written += n
		}
		return next, written
	}

	var next *syncedState
	var written int
	var err error
	b.lastVia = ""
	// A partial sync goes over netlink when the kernel can: no `nft` exec, no
	// listing of the table into nft's cache.
	if nk, ok := b.kernel.(netlinkKernel); ok && !full && !b.noNetlink {
		var nb *nlBatch
		if nb, err = nk.newBatch(); err == nil {
			next, written = build(nb, nil)
			switch {
			case errors.Is(nb.err, errGrammar):
				// A rule the netlink encoder does not know: nft can say it.
				next = nil
			case nb.err != nil:
				err = nb.err
			default:
				err = nb.flush()
				b.lastVia = "netlink"
			}
		}
		if err != nil {
			b.synced = nil
			return backend.SyncResult{}, fmt.Errorf("nftables netlink batch: %w", err)
		}
	}
	if next == nil {
		tx := b.kernel.NewTransaction()
		w := &knftWriter{tx: tx}
		rk, bulk := b.kernel.(*realKernel)
		if bulk && full {
			w.bulk = &bulkElems{}
		}
		next, written = build(w, tx)
		run := b.kernel.Run
		if w.bulk != nil {
			run = func(ctx context.Context, tx *knftables.Transaction) error { return rk.runBulk(ctx, tx, w.bulk) }
		}
		if err := run(ctx, tx); err != nil {
			b.synced = nil
			return backend.SyncResult{}, fmt.Errorf("nftables transaction: %w", err)
		}
		b.lastVia = "nft"
	}
	for _, f := range next.fams {
		f.apply()
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

// syncFamily writes one family's service objects to w. pf is the family's previous
// state (nil: full sync, where stale lists what the kernel holds).
//
// Ordering inside the transaction matters to the kernel: chains must exist
// before a rule or element refers to them, and a chain or set can only be
// deleted once nothing refers to it any more (EBUSY). So: base objects, then
// all chains (created and flushed), then their rules, then map element
// deletions and additions, and last the deletion of stale chains and sets.
func (b *Backend) syncFamily(w objWriter, fam model.Family, snap *model.Snapshot, pf *famState, base *baseObjects, stale staleObjects) (*famState, int) {
	fi := fams[fam]
	rc := &renderCtx{fi: fi, masqAll: b.settings.masqAll}
	rc.isLocal, rc.notLocal = localMatch(fi, &snap.Node, fam)
	nf := &famState{base: base, services: map[model.ServicePortKey]*svcState{},
		classes: map[class]int{}, shared: map[sharedElem]int{}}
	full := pf == nil

	type change struct {
		name     string
		old, new *svcObjects
	}
	var changes []change
	if !full {
		nf.services, nf.pending = pf.services, map[model.ServicePortKey]*svcState{}
		nf.classes, nf.shared = pf.classes, pf.shared
		nf.pendingClasses, nf.pendingShared = map[class]int{}, map[sharedElem]int{}
	}
	kept := 0 // previous ports still in the snapshot
	for k, sp := range snap.Services {
		if k.Family != fam || sp == nil {
			continue
		}
		var old *svcObjects
		if !full {
			o := pf.services[k]
			if o != nil {
				kept++
				if o.sp == sp {
					continue
				}
				old = o.objs
			}
		}
		objs := renderService(rc, sp)
		if full {
			nf.services[k] = &svcState{sp: sp, objs: objs}
		} else {
			nf.pending[k] = &svcState{sp: sp, objs: objs}
		}
		changes = append(changes, change{k.String(), old, objs})
	}
	if !full && kept < len(pf.services) {
		for k, o := range pf.services {
			if sp := snap.Services[k]; sp == nil {
				nf.pending[k] = nil
				changes = append(changes, change{k.String(), o.objs, nil})
			}
		}
	}
	// A stable order: readable, reproducible transactions. Only the changed
	// ports are sorted (sorting all keys costs more than a partial sync).
	slices.SortFunc(changes, func(a, c change) int { return cmpString(a.name, c.name) })

	// Shared objects: which pick chains and set elements appear (count from
	// 0 to positive) and disappear (back to 0).
	var newClasses, goneClasses []class
	var newShared, goneShared []sharedElem
	if full {
		for _, s := range nf.services {
			countUses(s.objs, 1, nf.classes, nf.shared)
		}
		newClasses = slices.Collect(maps.Keys(nf.classes))
		newShared = slices.Collect(maps.Keys(nf.shared))
	} else {
		for _, c := range changes {
			if c.old != nil {
				countUses(c.old, -1, nf.pendingClasses, nf.pendingShared)
			}
			if c.new != nil {
				countUses(c.new, 1, nf.pendingClasses, nf.pendingShared)
			}
		}
		newClasses, goneClasses = usageChanges(nf.classes, nf.pendingClasses)
		newShared, goneShared = usageChanges(nf.shared, nf.pendingShared)
	}
	byName := func(a, c class) int { return cmpString(a.name(), c.name()) }
	slices.SortFunc(newClasses, byName)
	slices.SortFunc(goneClasses, byName)
	bySetAddr := func(a, c sharedElem) int {
		if a.set != c.set {
			return cmpString(a.set, c.set)
		}
		return a.addr.Compare(c.addr)
	}
	slices.SortFunc(newShared, bySetAddr)
	slices.SortFunc(goneShared, bySetAddr)

	// Sets and chains first, pick chains with their rules (they only refer
	// to fixed objects).
	for _, c := range newClasses {
		w.addChain(fi, c.name())
		for _, r := range classRules(rc, c) {
			w.addRule(fi, c.name(), r)
		}
	}
	for _, c := range changes {
		if c.new == nil {
			continue
		}
		for _, s := range c.new.sets {
			// No flush: the affinity entries must survive a rewrite.
			w.addSet(fi, s)
		}
		for _, ch := range c.new.chains {
			w.addChain(fi, ch.name)
			// A full sync flushed every chain the kernel holds (writeBase);
			// a partial one flushes the chains it rewrites.
			if c.old != nil {
				w.flushChain(fi, ch.name)
			}
		}
	}
	for _, c := range changes {
		if c.new == nil {
			continue
		}
		for _, ch := range c.new.chains {
			for _, r := range ch.rules {
				w.addRule(fi, ch.name, r)
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
				w.delElem(fi, e)
			}
		}
	}
	for _, e := range goneShared {
		w.delElem(fi, e.elem())
	}
	for _, e := range newShared {
		w.addElem(fi, e.elem())
	}
	// Additions, grouped by map on a full sync: readable, and for the real
	// kernel they become one statement per map anyway (bulkElems).
	var byMap map[string][]elemDef
	if full {
		byMap = map[string][]elemDef{}
	}
	for _, c := range changes {
		if c.new == nil {
			continue
		}
		if full {
			for _, e := range c.new.elems {
				byMap[e.mapName] = append(byMap[e.mapName], e)
			}
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
			w.addElem(fi, e)
		}
	}
	for _, m := range slices.Sorted(maps.Keys(byMap)) {
		for _, e := range byMap[m] {
			w.addElem(fi, e)
		}
	}

	// Stale chains and sets, last.
	wantChains, wantSets := map[string]bool{}, map[string]bool{}
	if full {
		for c := range nf.classes {
			wantChains[c.name()] = true
		}
		for _, s := range nf.services {
			for _, ch := range s.objs.chains {
				wantChains[ch.name] = true
			}
			for _, st := range s.objs.sets {
				wantSets[st.name] = true
			}
		}
		// Stale chains may still jump to each other (a removed service's
		// svc- chain to its ep- chains), and the kernel refuses to delete a
		// chain that is still referenced at that point of the transaction
		// (EBUSY). writeBase flushed them all first, which drops those
		// references.
		for _, n := range stale.chains {
			if !wantChains[n] && !isBase(n) {
				w.delChain(fi, n)
			}
		}
		for _, n := range stale.sets {
			if !wantSets[n] && !isBase(n) {
				w.delSet(fi, n)
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
			// Referrers first: renderService creates ep- chains before the
			// svc-/ext-/fw- chains that jump to them (and svc- before the ext-
			// chain that may goto it), so deleting in reverse order never
			// deletes a chain that a rule still refers to (EBUSY).
			for _, ch := range slices.Backward(c.old.chains) {
				if !wantChains[ch.name] {
					w.delChain(fi, ch.name)
				}
			}
			for _, st := range c.old.sets {
				if !wantSets[st.name] {
					w.delSet(fi, st.name)
				}
			}
		}
		// Pick chains nobody uses any more, after the elements that pointed
		// at them are gone.
		for _, c := range goneClasses {
			w.delChain(fi, c.name())
		}
	}

	nf.rules = nf.base.nRules
	if !full {
		nf.rules = pf.rules
		for _, c := range newClasses {
			nf.rules += len(classRules(rc, c))
		}
		for _, c := range goneClasses {
			nf.rules -= len(classRules(rc, c))
		}
		nf.rules += len(newShared) - len(goneShared)
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
		for c := range nf.classes {
			nf.rules += len(classRules(rc, c))
		}
		nf.rules += len(nf.shared)
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
