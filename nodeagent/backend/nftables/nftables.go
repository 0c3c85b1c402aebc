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
	"fmt"
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
	fams map[model.Family]*famState
}

type famState struct {
	base *baseObjects
	// rc rendered the services (partial syncs render the old ones again).
	rc       *renderCtx
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

// svcState is what the backend keeps of a synced service port: the port
// (immutable) and how many rules and elements it holds. Not its rendered
// objects: a partial sync renders the old port again to diff it (the same
// renderCtx gives the same objects), and keeping every rendered element
// was a fifth of the agent's steady heap at 5k × 50 (31 MB).
type svcState struct {
	sp    *model.ServicePort
	rules int // svcObjects.count()
}

var _ backend.Backend = (*Backend)(nil)

// Option configures New.
type Option func(*Backend)

// WithKernel replaces the kernel (for instance with a FakeKernel in tests).
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
		k, err := newKernel()
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
	tx := b.kernel.Begin(true)
	for _, fam := range b.families {
		fi := fams[fam]
		base := renderBase(fi, fam, b.settings, &model.NodeInfo{})
		writeBase(tx.Fixed(), fi, base, true, nil)
		linkBase(tx.Fixed(), fi, base)
	}
	if err := tx.Check(ctx); err != nil {
		return fmt.Errorf("%w: nftables: %v", backend.ErrUnavailable, err)
	}
	return nil
}

// Cleanup deletes the kpo tables. "add" first makes the delete succeed when a
// table is absent (nft 1.0.6 has no "destroy"), all in one transaction.
func (b *Backend) Cleanup(ctx context.Context) error {
	tx := b.kernel.Begin(true)
	for _, fam := range []model.Family{model.IPv4, model.IPv6} {
		t := &knftables.Table{Family: fams[fam].family, Name: tableName}
		tx.Fixed().Add(t)
		tx.Fixed().Delete(&knftables.Table{Family: t.Family, Name: tableName})
	}
	b.synced = nil
	return tx.Commit(ctx)
}

// Sync implements backend.Backend: one transaction over both families. A
// full sync lists the tables (to delete what the backend does not know),
// rewrites the fixed objects and every service; a partial one rewrites the
// changed service ports against the state of the last sync.
func (b *Backend) Sync(ctx context.Context, snap *model.Snapshot, changes *backend.Changes) (backend.SyncResult, error) {
	full := changes == nil || b.synced == nil
	stale := map[model.Family]staleObjects{}
	if full {
		for _, fam := range b.families {
			chains, sets, err := b.kernel.Objects(ctx, fams[fam].family)
			if err != nil {
				return backend.SyncResult{}, fmt.Errorf("listing the %s kpo table: %w", fams[fam].family, err)
			}
			stale[fam] = staleObjects{chains: chains, sets: sets}
		}
	}
	tx := b.kernel.Begin(full)
	next := &syncedState{fams: map[model.Family]*famState{}}
	written := 0
	for _, fam := range b.families {
		var fs *famSync
		if full {
			fi := fams[fam]
			base := renderBase(fi, fam, b.settings, &snap.Node)
			st := stale[fam]
			if tx.FixedApart() {
				var inKernel *staleObjects
				if st.chains != nil || st.sets != nil {
					inKernel = &st
				}
				writeBaseApart(tx.Fixed(), fi, base, inKernel)
				flushServiceObjects(tx, fi, st)
			} else {
				writeBase(tx.Fixed(), fi, base, true, &st)
				linkBase(tx.Fixed(), fi, base)
			}
			fs = b.planFull(fam, snap, base)
		} else {
			fs = b.planPartial(fam, snap, changes, b.synced.fams[fam])
		}
		fs.write(tx, stale[fam])
		next.fams[fam] = fs.next
		written += fs.written()
	}
	if err := tx.Commit(ctx); err != nil {
		b.synced = nil
		return backend.SyncResult{}, fmt.Errorf("nftables transaction: %w", err)
	}
	res := backend.SyncResult{Full: full, ServicePortsWritten: written}
	for _, f := range next.fams {
		f.apply()
		res.Rules += f.rules
	}
	b.synced = next
	return res, nil
}

// staleObjects are names found in the kernel (full sync only).
type staleObjects struct {
	chains, sets []string
}
