package nftables

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"syscall"

	gnft "github.com/google/nftables"

	"sigs.k8s.io/knftables"
)

// netlinkKernel is the production Kernel: full transactions through nft
// (nftKernel), partial ones as one netlink batch (netlink.go), which skips
// nft's exec and its listing of the whole table into its cache. A partial
// transaction with a rule outside the netlink grammar goes through nft
// instead, rather than guess.
type netlinkKernel struct {
	nft Kernel // nftKernel; tests put a spy around it
	nl  nlConn
	// fullByNFT makes the next full sync one nft transaction (writeBase):
	// set after a full sync over netlink failed, in case the kernel holds
	// what only that repairs (see base_apart.go).
	fullByNFT bool
}

// newKernel returns the production Kernel of the calling thread's namespace.
func newKernel() (*netlinkKernel, error) {
	nft, err := newNFTKernel()
	if err != nil {
		return nil, err
	}
	return &netlinkKernel{nft: nft}, nil
}

func (k *netlinkKernel) Begin(full bool) Tx {
	if full {
		if k.fullByNFT {
			k.fullByNFT = false
			return k.nft.Begin(true)
		}
		return newNetlinkFullTx(k)
	}
	return &netlinkTx{k: k}
}

func (t *netlinkTx) FixedApart() bool { return false }

// netlinkFullTx is a full sync in two transactions (base_apart.go): Fixed
// through nft, then the service objects, encoded as they are written (a full
// sync holds every element: no log), as one netlink batch.
type netlinkFullTx struct {
	k     *netlinkKernel
	fixed Tx // an nft transaction; only its Fixed part is written
	b     *fullBatch
	err   error
}

func newNetlinkFullTx(k *netlinkKernel) *netlinkFullTx {
	// Begin(true): the nft half sees the fixed part of a full sync.
	t := &netlinkFullTx{k: k, fixed: k.nft.Begin(true)}
	t.b, t.err = k.nl.fullBatch()
	return t
}

func (t *netlinkFullTx) Fixed() *knftables.Transaction { return t.fixed.Fixed() }
func (t *netlinkFullTx) FixedApart() bool              { return true }

func (t *netlinkFullTx) write(fi famInfo, o op) {
	if t.b != nil {
		t.b.write(fi, o)
	}
}

// Commit applies the fixed part, then the batch. A failure of either makes
// the next full sync one nft transaction.
func (t *netlinkFullTx) Commit(ctx context.Context) error {
	err := t.err
	if err == nil {
		err = t.b.finish()
	}
	if err == nil {
		if err = t.fixed.Commit(ctx); err != nil {
			t.k.fullByNFT = true
			return err
		}
		if err = t.b.send(); err != nil {
			// The socket may hold replies the next batch must not read.
			t.k.nl.close()
		}
	}
	if err != nil {
		t.k.fullByNFT = true
		return fmt.Errorf("nftables netlink batch: %w", err)
	}
	return nil
}

// Check asks nft about the fixed part (Backend.Check writes nothing else).
func (t *netlinkFullTx) Check(ctx context.Context) error {
	return t.fixed.Check(ctx)
}

// Objects lists the table over the lasting netlink socket. (knftables'
// netlink lister would do the same, but every knftables.New runs
// `nft --version` and `nft --check` first: four processes per full sync,
// about 35 ms of a cold start at 1k × 50; docs/nftables-backend.md, "The
// cold path".)
func (k *netlinkKernel) Objects(_ context.Context, family knftables.Family) ([]string, []string, error) {
	fam := map[knftables.Family]gnft.TableFamily{knftables.IPv4Family: gnft.TableFamilyIPv4,
		knftables.IPv6Family: gnft.TableFamilyIPv6}[family]
	if fam == gnft.TableFamilyUnspecified {
		return nil, nil, fmt.Errorf("listing the kpo table: family %q is not ip or ip6", family)
	}
	if err := k.nl.open(); err != nil {
		return nil, nil, err
	}
	return listObjects(k.nl.c, &gnft.Table{Family: fam, Name: tableName})
}

// missingTable reports whether err is the kernel's ENOENT for a table that
// does not exist (google/nftables formats it into the error's text).
func missingTable(err error) bool {
	return err != nil && (errors.Is(err, syscall.ENOENT) || strings.Contains(err.Error(), "no such file or directory"))
}

// listObjects lists the chain and set/map names of table t; a missing table
// is no error (nil, nil).
func listObjects(c *gnft.Conn, t *gnft.Table) ([]string, []string, error) {
	all, err := c.ListChainsOfTableFamily(t.Family)
	if err != nil {
		return nil, nil, err
	}
	var chains, sets []string
	for _, ch := range all {
		if ch.Table.Name == t.Name {
			chains = append(chains, ch.Name)
		}
	}
	list, err := c.GetSets(t)
	if missingTable(err) {
		return chains, nil, nil
	}
	if err != nil {
		return nil, nil, err
	}
	for _, st := range list {
		sets = append(sets, st.Name)
	}
	return chains, sets, nil
}

// netlinkTx is a partial transaction: it logs the writes, and Commit
// encodes them into one netlink batch, or, when one is outside the netlink
// grammar, replays them into an nft transaction. Partial syncs are small,
// so the log costs little.
type netlinkTx struct {
	opLog
	k *netlinkKernel
}

func (t *netlinkTx) Fixed() *knftables.Transaction { return nil }

func (t *netlinkTx) Commit(ctx context.Context) error {
	b, err := t.k.nl.batch()
	if err != nil {
		return fmt.Errorf("nftables netlink batch: %w", err)
	}
	t.replay(b)
	if errors.Is(b.err, errGrammar) {
		// The connection holds the messages queued so far: drop it.
		b.broken()
		tx := t.k.nft.Begin(false)
		t.replay(tx)
		return tx.Commit(ctx)
	}
	if err := b.flush(); err != nil {
		return fmt.Errorf("nftables netlink batch: %w", err)
	}
	return nil
}

// Check asks nft: a netlink batch cannot be checked without applying it.
func (t *netlinkTx) Check(ctx context.Context) error {
	tx := t.k.nft.Begin(false)
	t.replay(tx)
	return tx.Check(ctx)
}

// opLog records writes to replay them into another objWriter.
type opLog struct {
	fis []famInfo
	ops []op
}

func (l *opLog) write(fi famInfo, o op) {
	l.fis = append(l.fis, fi)
	l.ops = append(l.ops, o)
}

func (l *opLog) replay(w objWriter) {
	for i, o := range l.ops {
		w.write(l.fis[i], o)
	}
}
