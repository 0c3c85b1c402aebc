package nftables

import (
	"maps"
	"slices"

	"kpo.dev/kpo/nodeagent/backend"
	"kpo.dev/kpo/nodeagent/model"
)

// One family's part of a sync: which service ports move from which objects to
// which (planFull, planPartial), then the writes in transaction order (write).
//
// Ordering inside the transaction matters to the kernel: chains must exist
// before a rule or element refers to them, and a chain or set can only be
// deleted once nothing refers to it any more (EBUSY). So: base objects (by
// Sync), then all chains (created and flushed), then their rules, then map
// element deletions and additions, and last the deletion of stale chains and
// sets.

// svcChange is one service port's move from old objects to new ones (nil:
// none, the port is new or gone).
type svcChange struct {
	name     string
	old, new *svcObjects
}

// famSync is one family's sync: prev is the state of the last sync (nil on a
// full one), next the state this one makes.
type famSync struct {
	fi      famInfo
	rc      *renderCtx
	prev    *famState
	next    *famState
	changes []svcChange
	// Shared objects (pick chains, shared set elements) that this sync makes
	// appear (use count from 0 to positive) and disappear (back to 0).
	newClasses, goneClasses []class
	newShared, goneShared   []sharedElem
}

func (b *Backend) newFamSync(fam model.Family, node *model.NodeInfo, base *baseObjects) *famSync {
	fi := fams[fam]
	rc := newRenderCtx(fam, node, b.settings.masqAll)
	return &famSync{fi: fi, rc: rc, next: &famState{base: base, rc: rc, services: map[model.ServicePortKey]*svcState{},
		classes: map[class]int{}, shared: map[sharedElem]int{}}}
}

func (s *famSync) full() bool { return s.prev == nil }

// planFull renders every service port of the family.
func (b *Backend) planFull(fam model.Family, snap *model.Snapshot, base *baseObjects) *famSync {
	s := b.newFamSync(fam, &snap.Node, base)
	nf := s.next
	for k, sp := range snap.Services {
		if k.Family != fam || sp == nil {
			continue
		}
		objs := renderService(s.rc, sp)
		nf.services[k] = &svcState{sp: sp, rules: objs.count()}
		s.changes = append(s.changes, svcChange{k.String(), nil, objs})
	}
	s.sortChanges()
	for _, c := range s.changes {
		countUses(c.new, 1, nf.classes, nf.shared)
	}
	s.newClasses = slices.Collect(maps.Keys(nf.classes))
	s.newShared = slices.Collect(maps.Keys(nf.shared))
	s.sortShared()
	return s
}

// planPartial renders the family's changed service ports. The new state
// shares the previous one's maps and records its changes as pending, applied
// once the kernel took the sync (famState.apply).
func (b *Backend) planPartial(fam model.Family, snap *model.Snapshot, changes *backend.Changes, pf *famState) *famSync {
	s := b.newFamSync(fam, &snap.Node, pf.base)
	s.prev = pf
	nf := s.next
	// The services kept are those pf.rc rendered: a node change (the only
	// input of renderCtx besides the settings) makes the agent's sync full.
	nf.rc = pf.rc
	nf.services, nf.pending = pf.services, map[model.ServicePortKey]*svcState{}
	nf.classes, nf.shared = pf.classes, pf.shared
	nf.pendingClasses, nf.pendingShared = map[class]int{}, map[sharedElem]int{}
	move := func(k model.ServicePortKey) {
		if k.Family != fam {
			return
		}
		if _, done := nf.pending[k]; done {
			return
		}
		var old *svcObjects
		if o := pf.services[k]; o != nil {
			old = renderService(pf.rc, o.sp) // what the last sync wrote for it
		}
		sp := snap.Services[k]
		if sp == nil {
			if old != nil {
				nf.pending[k] = nil
				s.changes = append(s.changes, svcChange{k.String(), old, nil})
			}
			return
		}
		objs := renderService(s.rc, sp)
		nf.pending[k] = &svcState{sp: sp, rules: objs.count()}
		s.changes = append(s.changes, svcChange{k.String(), old, objs})
	}
	for _, k := range changes.Changed {
		move(k)
	}
	for _, k := range changes.Removed {
		move(k)
	}
	s.sortChanges()
	for _, c := range s.changes {
		if c.old != nil {
			countUses(c.old, -1, nf.pendingClasses, nf.pendingShared)
		}
		if c.new != nil {
			countUses(c.new, 1, nf.pendingClasses, nf.pendingShared)
		}
	}
	s.newClasses, s.goneClasses = usageChanges(nf.classes, nf.pendingClasses)
	s.newShared, s.goneShared = usageChanges(nf.shared, nf.pendingShared)
	s.sortShared()
	return s
}

// sortChanges gives a stable order: readable, reproducible transactions.
// Only the changed ports are sorted (sorting all keys costs more than a
// partial sync).
func (s *famSync) sortChanges() {
	slices.SortFunc(s.changes, func(a, c svcChange) int { return cmpString(a.name, c.name) })
}

func (s *famSync) sortShared() {
	byName := func(a, c class) int { return cmpString(a.name(), c.name()) }
	slices.SortFunc(s.newClasses, byName)
	slices.SortFunc(s.goneClasses, byName)
	bySetAddr := func(a, c sharedElem) int {
		if a.set != c.set {
			return cmpString(a.set, c.set)
		}
		return a.addr.Compare(c.addr)
	}
	slices.SortFunc(s.newShared, bySetAddr)
	slices.SortFunc(s.goneShared, bySetAddr)
}

// written is how many service ports the sync rewrites.
func (s *famSync) written() int {
	n := 0
	for _, c := range s.changes {
		if c.new != nil {
			n++
		}
	}
	return n
}

// write writes the sync to w, in transaction order, and counts the rules
// the family holds after it. stale is what the kernel holds (full syncs).
func (s *famSync) write(w objWriter, stale staleObjects) {
	s.writeChains(w)
	s.writeElemDeletions(w)
	s.writeElemAdditions(w)
	if s.full() {
		s.deleteStale(w, stale)
	} else {
		s.deleteGone(w)
	}
	s.countRules()
}

// writeChains creates the new pick chains with their rules (they only refer
// to fixed objects), the changed services' sets and chains, then the
// services' rules.
func (s *famSync) writeChains(w objWriter) {
	fi := s.fi
	for _, c := range s.newClasses {
		w.write(fi, op{kind: opAddChain, name: c.name()})
		for _, r := range classRules(s.rc, c) {
			w.write(fi, op{kind: opAddRule, name: c.name(), rule: r})
		}
	}
	for _, c := range s.changes {
		if c.new == nil {
			continue
		}
		for _, st := range c.new.sets {
			// No flush: the affinity entries must survive a rewrite.
			w.write(fi, op{kind: opAddSet, set: st})
		}
		for _, ch := range c.new.chains {
			w.write(fi, op{kind: opAddChain, name: ch.name})
			// A full sync flushed every chain the kernel holds (writeBase);
			// a partial one flushes the chains it rewrites.
			if c.old != nil {
				w.write(fi, op{kind: opFlushChain, name: ch.name})
			}
		}
	}
	for _, c := range s.changes {
		if c.new == nil {
			continue
		}
		for _, ch := range c.new.chains {
			for _, r := range ch.rules {
				w.write(fi, op{kind: opAddRule, name: ch.name, rule: r})
			}
		}
	}
}

// writeElemDeletions deletes the map elements that went or changed value,
// and the shared elements nobody uses any more. (A full sync flushed the
// maps.)
func (s *famSync) writeElemDeletions(w objWriter) {
	for _, c := range s.changes {
		if c.old == nil {
			continue
		}
		newElems := elemValues(c.new)
		for _, e := range c.old.elems {
			if v, ok := newElems[e.elemKey]; !ok || v != e.elemVal {
				w.write(s.fi, op{kind: opDelElem, elem: e})
			}
		}
	}
	for _, e := range s.goneShared {
		w.write(s.fi, op{kind: opDelElem, elem: e.elem()})
	}
}

// writeAllElems adds every service's elements (a full sync), grouped by
// map. Grouped through their positions (two passes, 8 bytes an element):
// a full sync at 5k × 50 holds 250k elements, and one pass over them per
// map (a handful) cost a tenth of its CPU, copies of them a third of its
// allocations before that.
func (s *famSync) writeAllElems(w objWriter) {
	type pos struct{ c, e uint32 }
	var names []string
	var counts []int
	index := func(m string) int {
		k := slices.Index(names, m)
		if k < 0 {
			names, counts, k = append(names, m), append(counts, 0), len(names)
		}
		return k
	}
	for _, c := range s.changes {
		for i := range c.new.elems {
			counts[index(c.new.elems[i].mapName)]++
		}
	}
	lists := make([][]pos, len(names))
	all := make([]pos, 0, s.elemCount())
	for k, n := range counts {
		lists[k], all = all[len(all):len(all):len(all)+n], all[:len(all)+n]
	}
	for ci, c := range s.changes {
		for ei := range c.new.elems {
			k := index(c.new.elems[ei].mapName)
			lists[k] = append(lists[k], pos{uint32(ci), uint32(ei)})
		}
	}
	order := make([]int, len(names))
	for k := range order {
		order[k] = k
	}
	slices.SortFunc(order, func(a, b int) int { return cmpString(names[a], names[b]) })
	for _, k := range order {
		for _, p := range lists[k] {
			w.write(s.fi, op{kind: opAddElem, elem: s.changes[p.c].new.elems[p.e]})
		}
	}
}

func (s *famSync) elemCount() int {
	n := 0
	for _, c := range s.changes {
		n += len(c.new.elems)
	}
	return n
}

// elemValues maps o's elements (none for nil) to their values.
func elemValues(o *svcObjects) map[elemKey]elemVal {
	m := map[elemKey]elemVal{}
	if o != nil {
		for _, e := range o.elems {
			m[e.elemKey] = e.elemVal
		}
	}
	return m
}

// writeElemAdditions adds the new shared elements, then the services'
// elements that are new or changed value: on a full sync all of them,
// grouped by map (readable, and nft takes one statement per map, see
// bulkElems).
func (s *famSync) writeElemAdditions(w objWriter) {
	fi := s.fi
	for _, e := range s.newShared {
		w.write(fi, op{kind: opAddElem, elem: e.elem()})
	}
	if s.full() {
		s.writeAllElems(w)
		return
	}
	for _, c := range s.changes {
		if c.new == nil {
			continue
		}
		oldElems := elemValues(c.old)
		for _, e := range c.new.elems {
			if v, ok := oldElems[e.elemKey]; ok && v == e.elemVal {
				continue
			}
			w.write(fi, op{kind: opAddElem, elem: e})
		}
	}
}

// deleteStale deletes, on a full sync, the chains and sets the kernel holds
// that no service wants. Stale chains may still jump to each other (a
// removed service's svc- chain to its ep- chains), and the kernel refuses to
// delete a chain that is still referenced at that point of the transaction
// (EBUSY): writeBase flushed them all first, which drops those references.
func (s *famSync) deleteStale(w objWriter, stale staleObjects) {
	wantChains, wantSets := map[string]bool{}, map[string]bool{}
	for c := range s.next.classes {
		wantChains[c.name()] = true
	}
	for _, c := range s.changes { // every service port, in a full sync
		for _, ch := range c.new.chains {
			wantChains[ch.name] = true
		}
		for _, set := range c.new.sets {
			wantSets[set.name] = true
		}
	}
	for _, n := range stale.chains {
		if !wantChains[n] && !isBase(n) {
			w.write(s.fi, op{kind: opDelChain, name: n})
		}
	}
	for _, n := range stale.sets {
		if !wantSets[n] && !isBase(n) {
			w.write(s.fi, op{kind: opDelSet, name: n})
		}
	}
}

// deleteGone deletes, on a partial sync, the chains and sets the changed
// services no longer have, then the pick chains nobody uses any more (after
// the elements that pointed at them are gone).
func (s *famSync) deleteGone(w objWriter) {
	for _, c := range s.changes {
		if c.old == nil {
			continue
		}
		wantChains, wantSets := map[string]bool{}, map[string]bool{}
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
				w.write(s.fi, op{kind: opDelChain, name: ch.name})
			}
		}
		for _, st := range c.old.sets {
			if !wantSets[st.name] {
				w.write(s.fi, op{kind: opDelSet, name: st.name})
			}
		}
	}
	for _, c := range s.goneClasses {
		w.write(s.fi, op{kind: opDelChain, name: c.name()})
	}
}

// countRules sets the number of rules and elements the family holds after
// the sync (SyncResult.Rules).
func (s *famSync) countRules() {
	nf := s.next
	if s.full() {
		nf.rules = nf.base.nRules
		for _, st := range nf.services {
			nf.rules += st.rules
		}
		for c := range nf.classes {
			nf.rules += len(classRules(s.rc, c))
		}
		nf.rules += len(nf.shared)
		return
	}
	nf.rules = s.prev.rules
	for _, c := range s.newClasses {
		nf.rules += len(classRules(s.rc, c))
	}
	for _, c := range s.goneClasses {
		nf.rules -= len(classRules(s.rc, c))
	}
	nf.rules += len(s.newShared) - len(s.goneShared)
	for _, c := range s.changes {
		if c.old != nil {
			nf.rules -= c.old.count()
		}
		if c.new != nil {
			nf.rules += c.new.count()
		}
	}
}
