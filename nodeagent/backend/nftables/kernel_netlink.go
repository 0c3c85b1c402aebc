package nftables

import (
	"context"
	"errors"
	"fmt"

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

func (k *netlinkKernel) Objects(ctx context.Context, family knftables.Family) ([]string, []string, error) {
	return k.nft.Objects(ctx, family)
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
