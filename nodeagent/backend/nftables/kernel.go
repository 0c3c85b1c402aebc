package nftables

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os/exec"
	"slices"
	"strings"
	"syscall"

	"sigs.k8s.io/knftables"
)

// Kernel is what the backend needs from nf_tables: transactions that may
// span both families' kpo tables, and (on full syncs only) a listing of the
// chains and sets of one family's table.
//
// Two implementations run the same transactions: the real one (netlinkKernel
// over nftKernel) and FakeKernel, which refuses what the kernel refuses.
type Kernel interface {
	// Begin starts a transaction. A full one (full true) may carry the
	// table's fixed objects (Tx.Fixed); a partial one only service objects,
	// which lets the kernel take a faster path (netlink, see netlink.go).
	Begin(full bool) Tx
	// Objects lists the chain and set/map names of the family's kpo table; a
	// missing table is no error (nil, nil).
	Objects(ctx context.Context, family knftables.Family) (chains, sets []string, err error)
}

// Tx is one transaction, applied all or nothing by Commit. Service objects
// are written through the objWriter methods, in transaction order (see
// Backend.Sync for why the order matters); a full transaction's fixed
// objects go into Fixed first.
type Tx interface {
	objWriter
	// Fixed is the knftables transaction for the table's fixed objects
	// (tables, typed maps, hooked chains); nil in a partial transaction.
	Fixed() *knftables.Transaction
	// FixedApart reports whether Fixed is committed as a transaction of its
	// own, before the service objects (see base_apart.go): the fixed part
	// must then never empty what the services use.
	FixedApart() bool
	// Commit applies the transaction.
	Commit(ctx context.Context) error
	// Check asks whether the kernel would accept the transaction, without
	// applying anything (nft --check).
	Check(ctx context.Context) error
}

// knftTx is a transaction written into a knftables transaction: nft's text
// (nftKernel) or knftables' Fake (FakeKernel).
type knftTx struct {
	knftWriter
	commit func(ctx context.Context, tx *knftables.Transaction, bulk *bulkElems) error
	check  func(ctx context.Context, tx *knftables.Transaction) error
}

func (t *knftTx) Fixed() *knftables.Transaction    { return t.tx }
func (t *knftTx) FixedApart() bool                 { return false }
func (t *knftTx) Commit(ctx context.Context) error { return t.commit(ctx, t.tx, t.bulk) }
func (t *knftTx) Check(ctx context.Context) error  { return t.check(ctx, t.tx) }

// nftKernel execs nft. Transactions are built on a familyless knftables
// Fake (so that a dual-stack sync is one `nft -f`), used for its text only:
// kpo runs nft itself (run, check). knftables.New would do the same but
// first exec `nft --version` and `nft --check` at every New, two processes
// on the path of every cold start (docs/nftables-backend.md, "The cold
// path"); Check asks the version instead (checkVersion), once. Per-family
// knftables interfaces are only for listing.
type nftKernel struct {
	tx   knftables.Interface
	list map[knftables.Family]knftables.Interface
	// versionOK is set once nft's version passed checkVersion.
	versionOK bool
}

// newNFTKernel fails when nft is missing; whether it can talk to the kernel
// is Backend.Check's question.
func newNFTKernel() (*nftKernel, error) {
	if _, err := exec.LookPath("nft"); err != nil {
		return nil, err
	}
	return &nftKernel{tx: knftables.NewFake("", ""), list: map[knftables.Family]knftables.Interface{}}, nil
}

// Begin starts a transaction for one `nft -f`; a full one collects its
// element additions in bulk (see run).
func (k *nftKernel) Begin(full bool) Tx {
	t := &knftTx{knftWriter: knftWriter{tx: k.tx.NewTransaction()}, commit: k.run, check: k.check}
	if full {
		t.bulk = &bulkElems{}
	}
	return t
}

// run feeds tx and then the bulk element additions to one `nft -f -`
// (one transaction). The bulk elements bypass knftables' objects: a cold sync
// is mostly elements (the flat layout), and nft parses and evaluates every
// statement on its own, so one statement per map instead of one per element
// halves nft's time (10k services: 0.67 s → 0.36 s, TestExperimentValidate);
// knftables' per-element validation and formatting were half of the Go side.
func (k *nftKernel) run(ctx context.Context, tx *knftables.Transaction, bulk *bulkElems) error {
	return runNFT(ctx, tx, bulk, "-f", "-")
}

// check asks nft whether the kernel would take tx (nft --check), after
// nft's version (once).
func (k *nftKernel) check(ctx context.Context, tx *knftables.Transaction) error {
	if !k.versionOK {
		if err := checkVersion(ctx); err != nil {
			return err
		}
		k.versionOK = true
	}
	return runNFT(ctx, tx, nil, "--check", "-f", "-")
}

// checkVersion refuses nft before 1.0.1, as knftables.New does (older
// versions mis-handle parts of the syntax knftables writes).
func checkVersion(ctx context.Context) error {
	out, err := exec.CommandContext(ctx, "nft", "--version").CombinedOutput()
	if err != nil {
		return fmt.Errorf("could not run nftables command: %w: %s", err, strings.TrimSpace(string(out)))
	}
	if v := string(out); strings.HasPrefix(v, "nftables v0.") || strings.HasPrefix(v, "nftables v1.0.0 ") {
		return fmt.Errorf("nft version must be v1.0.1 or later (got %s)", strings.TrimSpace(v))
	}
	return nil
}

// runNFT runs nft with args on tx's text followed by the bulk additions.
func runNFT(ctx context.Context, tx *knftables.Transaction, bulk *bulkElems, args ...string) error {
	text := tx.String()
	if i := strings.Index(text, "# ERROR: "); i >= 0 {
		return errors.New(strings.TrimSpace(text[i+len("# ERROR: "):]))
	}
	in := io.Reader(strings.NewReader(text))
	if bulk != nil {
		in = io.MultiReader(in, bulk.reader())
	}
	cmd := exec.CommandContext(ctx, "nft", args...)
	cmd.Stdin = in
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%w: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

// bulkElems collects element additions as nft text, one statement per set or
// map. Additions only refer to chains that exist by the end of the
// transaction's other commands, so they can go last.
type bulkElems struct {
	stmts map[string][]byte // "ip kpo endpoints" → "e1,\n\te2…"
}

func (b *bulkElems) add(fi famInfo, e elemDef) {
	name := string(fi.family) + " " + tableName + " " + e.mapName
	if b.stmts == nil {
		b.stmts = map[string][]byte{}
	}
	sb, ok := b.stmts[name]
	if ok {
		sb = append(sb, ",\n\t"...)
	}
	b.stmts[name] = e.appendText(sb)
}

func (b *bulkElems) reader() io.Reader {
	var rs []io.Reader
	for _, name := range slices.Sorted(maps.Keys(b.stmts)) {
		rs = append(rs, strings.NewReader("add element "+name+" { "), bytes.NewReader(b.stmts[name]), strings.NewReader(" }\n"))
	}
	return io.MultiReader(rs...)
}

func (k *nftKernel) Objects(ctx context.Context, family knftables.Family) ([]string, []string, error) {
	l := k.list[family]
	if l == nil {
		var err error
		// UseNetlink: listing 30k chains through `nft -j list` costs seconds of
		// JSON; netlink is cheap.
		l, err = knftables.New(family, tableName, knftables.NoObjectCommentEmulation, knftables.UseNetlink)
		if err != nil {
			return nil, nil, err
		}
		k.list[family] = l
	}
	all, err := l.ListAll(ctx)
	// The netlink lister does not wrap ENOENT for a missing table.
	if knftables.IsNotFound(err) || errors.Is(err, syscall.ENOENT) || (err != nil && strings.Contains(err.Error(), "no such file or directory")) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, err
	}
	return all["chain"], append(all["set"], all["map"]...), nil
}

// FakeKernel is a Kernel on knftables' Fake, which applies transactions
// atomically and refuses missing objects and jumps to missing chains, made
// strict (strictNFT, fakestrict.go) by the refusals of nft and nf_tables that
// knftables' Fake leaves out: a map key added twice with different data,
// elements of the wrong type, deleting what is still referenced, jumps to base
// chains, loops, nat statements in the wrong hook… TestFakeParity runs the
// same transactions against the real kernel and requires the same verdicts.
//
// Change it only through Run: the strict half keeps its own model of the
// ruleset, which a direct Fake.Run or ParseDump would leave behind.
type FakeKernel struct {
	*knftables.Fake
	strict *strictNFT
	// Runs counts transactions that Run applied.
	Runs int
	// FailNext makes the next Run fail without applying anything.
	FailNext error
}

// NewFakeKernel returns an empty fake kernel.
func NewFakeKernel() *FakeKernel {
	return &FakeKernel{Fake: knftables.NewFake("", ""), strict: newStrictNFT()}
}

// Begin starts a transaction into the fake, full or partial alike.
func (f *FakeKernel) Begin(bool) Tx {
	return &knftTx{knftWriter: knftWriter{tx: f.NewTransaction()},
		commit: func(ctx context.Context, tx *knftables.Transaction, _ *bulkElems) error { return f.Run(ctx, tx) },
		check:  f.Check}
}

// Run applies tx unless FailNext is set or the kernel would refuse it.
func (f *FakeKernel) Run(ctx context.Context, tx *knftables.Transaction) error {
	if err := f.FailNext; err != nil {
		f.FailNext = nil
		return err
	}
	next, err := f.strict.apply(tx.String())
	if err != nil {
		return err
	}
	if err := f.Fake.Run(ctx, tx); err != nil {
		return err
	}
	f.strict = next
	f.Runs++
	return nil
}

// Check is Run without applying anything (nft --check).
func (f *FakeKernel) Check(ctx context.Context, tx *knftables.Transaction) error {
	if _, err := f.strict.apply(tx.String()); err != nil {
		return err
	}
	return f.Fake.Check(ctx, tx)
}

// Objects lists the fake's table.
func (f *FakeKernel) Objects(_ context.Context, family knftables.Family) ([]string, []string, error) {
	f.RLock()
	defer f.RUnlock()
	t := f.Tables[family][tableName]
	if t == nil {
		return nil, nil, nil
	}
	var chains, sets []string
	for n := range t.Chains {
		chains = append(chains, n)
	}
	for n := range t.Sets {
		sets = append(sets, n)
	}
	for n := range t.Maps {
		sets = append(sets, n)
	}
	return chains, sets, nil
}

// objWriter receives a sync's service objects, in transaction order: a
// knftables transaction (full syncs, the fake), a netlink batch, or the log
// of a partial transaction (netlinkTx).
type objWriter interface {
	write(fi famInfo, o op)
}

// op is one write of a service object.
type op struct {
	kind opKind
	name string // the chain (of a rule) or set
	rule string
	set  setDef
	elem elemDef
}

type opKind uint8

const (
	opAddSet     opKind = iota // set: a named set (affinity), never flushed
	opAddChain                 // name
	opFlushChain               // name
	opAddRule                  // rule in chain name
	opDelElem                  // elem
	opAddElem                  // elem
	opDelChain                 // name
	opDelSet                   // name
	opFlushSet                 // name: a set or map (full syncs whose fixed part goes apart)
)

// knftWriter writes to a knftables transaction; with bulk set (full syncs
// through nft), element additions go there instead.
type knftWriter struct {
	tx   *knftables.Transaction
	bulk *bulkElems
}

func (w *knftWriter) write(fi famInfo, o op) {
	fam, tbl := fi.family, tableName
	switch o.kind {
	case opAddSet:
		w.tx.Add(&knftables.Set{Family: fam, Table: tbl, Name: o.set.name, Type: fi.addrT,
			Flags: []knftables.SetFlag{knftables.DynamicFlag, knftables.TimeoutFlag}, Timeout: knftables.PtrTo(secs(o.set.timeout))})
	case opAddChain:
		w.tx.Add(&knftables.Chain{Family: fam, Table: tbl, Name: o.name})
	case opFlushChain:
		w.tx.Flush(&knftables.Chain{Family: fam, Table: tbl, Name: o.name})
	case opAddRule:
		w.tx.Add(&knftables.Rule{Family: fam, Table: tbl, Chain: o.name, Rule: o.rule})
	case opDelElem:
		w.tx.Delete(knftElement(fi, o.elem, false))
	case opAddElem:
		if w.bulk != nil {
			w.bulk.add(fi, o.elem)
		} else {
			w.tx.Add(knftElement(fi, o.elem, true))
		}
	case opDelChain:
		w.tx.Delete(&knftables.Chain{Family: fam, Table: tbl, Name: o.name})
	case opDelSet:
		w.tx.Delete(&knftables.Set{Family: fam, Table: tbl, Name: o.name})
	case opFlushSet:
		if isSet(o.name) {
			w.tx.Flush(&knftables.Set{Family: fam, Table: tbl, Name: o.name})
		} else {
			w.tx.Flush(&knftables.Map{Family: fam, Table: tbl, Name: o.name})
		}
	}
}

// knftElement is e as a knftables element of a map (with its value when
// withValue) or of a set.
func knftElement(fi famInfo, e elemDef, withValue bool) *knftables.Element {
	el := &knftables.Element{Family: fi.family, Table: tableName, Map: e.mapName, Key: e.keyParts()}
	if withValue {
		el.Value = []string{e.dataString()}
	}
	if isSet(e.mapName) {
		el.Map, el.Set, el.Value = "", e.mapName, nil
	}
	return el
}
