package nftables

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"
	"syscall"
	"time"

	gnft "github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// A full sync's netlink batch (netlinkFullTx), encoded into one buffer and
// sent with one sendmsg.
//
// Why not google/nftables' Conn, as partial syncs do: a full sync at 1k × 50
// adds 50k map elements, and the library builds every element as nested
// attribute slices (makeElemList: several allocations and copies per
// element), then copies every message twice more into the batch
// (mdlayher/netlink's SendMessages grows its buffer message by message).
// That was half of the backend's CPU and most of its garbage
// (docs/nftables-backend.md, "Typed elements and the full sync's batch").
//
// So the element additions, nearly all of the batch, are encoded here,
// straight from the typed elements into the batch buffer, in the exact
// bytes google/nftables writes (TestFullBatchEncodesAsLibrary compares
// them). Everything else (flushes, chains, rules, sets, deletions: a few
// hundred messages) is still encoded by google/nftables: a Conn whose dial
// hook (WithTestDial) receives the messages its Flush would send, so they
// are copied into the buffer in transaction order, never sent by it.

// errRecorded ends the recording Conn's Flush: the messages were taken.
var errRecorded = errors.New("recorded")

const (
	// nlmsgHdrLen is struct nlmsghdr; nfgenLen struct nfgenmsg.
	nlmsgHdrLen = 16
	nfgenLen    = 4
	// maxElemList bounds one message's element list: an attribute's length
	// is 16 bits. An element takes well under elemRoom bytes (a verdict's
	// chain name is at most 256).
	maxElemList = 0xffff
	elemRoom    = 512
	// A message takes at most msgRoom bytes (but a recorded one, which asks
	// for its size); chunks are at least minChunk, doubling to maxChunk.
	msgRoom  = maxElemList + 1024
	minChunk = 512 << 10
	maxChunk = 8 << 20
)

// fullBatch is one full sync's batch.
type fullBatch struct {
	conn *netlink.Conn // the lasting socket (nlConn)
	// buf is the chunk being written, chunks the ones before it: a batch
	// of whole messages in chunks sent as one sendmsg (an iovec each),
	// so that the batch is never copied to grow (a full sync at 5k × 50 is
	// 17 MB of messages).
	buf    []byte
	chunks [][]byte
	// ops says what each message is, by sequence number - 1, for errors.
	ops []batchOp
	// rec encodes the messages other than element additions; recorded
	// receives them at its Flush.
	rec      *nlBatch
	recOps   []batchOp
	recorded []netlink.Message
	// el is the open element message; el.start < 0 when none.
	el  elemMsg
	err error
}

type batchOp struct {
	fi famInfo
	o  op
}

type elemMsg struct {
	start, list int // offsets of the message and of its element list
	fi          famInfo
	set         string
	n           int
}

func newFullBatch(conn *netlink.Conn) (*fullBatch, error) {
	b := &fullBatch{conn: conn, el: elemMsg{start: -1}}
	c, err := gnft.New(gnft.WithTestDial(func(req []netlink.Message) ([]netlink.Message, error) {
		b.recorded = append(b.recorded, req...)
		return nil, errRecorded
	}))
	if err != nil {
		return nil, err
	}
	b.rec = &nlBatch{c: c}
	b.room(msgRoom)
	b.buf = b.header(b.buf, unix.NFNL_MSG_BATCH_BEGIN, netlink.Request, 0)
	b.buf = append(b.buf, unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, unix.NFNL_SUBSYS_NFTABLES)
	b.endMsg(0)
	return b, nil
}

func (b *fullBatch) fail(err error) {
	if b.err == nil {
		b.err = err
	}
}

// room starts a new chunk unless the current one has n bytes left; only
// between messages.
func (b *fullBatch) room(n int) {
	if cap(b.buf)-len(b.buf) >= n {
		return
	}
	size := minChunk
	if len(b.buf) > 0 {
		b.chunks = append(b.chunks, b.buf)
		size = min(2*cap(b.buf), maxChunk)
	}
	b.buf = make([]byte, 0, max(size, n))
}

// bytes is the whole batch (tests).
func (b *fullBatch) bytes() []byte {
	return slices.Concat(append(slices.Clone(b.chunks), b.buf)...)
}

// header appends a netlink header whose length is set by endMsg.
func (b *fullBatch) header(buf []byte, typ uint16, flags netlink.HeaderFlags, seq uint32) []byte {
	buf = binary.NativeEndian.AppendUint32(buf, 0)
	buf = binary.NativeEndian.AppendUint16(buf, typ)
	buf = binary.NativeEndian.AppendUint16(buf, uint16(flags))
	buf = binary.NativeEndian.AppendUint32(buf, seq)
	return binary.NativeEndian.AppendUint32(buf, 0) // port ID: the kernel's
}

func (b *fullBatch) endMsg(start int) {
	binary.NativeEndian.PutUint32(b.buf[start:], uint32(len(b.buf)-start))
}

// attrStart opens an attribute (nested, or one whose data follows);
// attrEnd sets its length and pads it.
func (b *fullBatch) attrStart(typ uint16) int {
	start := len(b.buf)
	b.buf = binary.NativeEndian.AppendUint16(b.buf, 0)
	b.buf = binary.NativeEndian.AppendUint16(b.buf, typ)
	return start
}

func (b *fullBatch) attrEnd(start int) {
	binary.NativeEndian.PutUint16(b.buf[start:], uint16(len(b.buf)-start))
	for len(b.buf)%4 != 0 {
		b.buf = append(b.buf, 0)
	}
}

func (b *fullBatch) attrStr(typ uint16, s string) {
	a := b.attrStart(typ)
	b.buf = append(append(b.buf, s...), 0)
	b.attrEnd(a)
}

func (b *fullBatch) write(fi famInfo, o op) {
	if b.err != nil {
		return
	}
	if o.kind == opAddElem {
		b.takeRecorded()
		b.addElem(fi, o.elem)
		return
	}
	b.closeElems()
	b.rec.write(fi, o)
	b.recOps = append(b.recOps, batchOp{fi, o})
}

// takeRecorded copies the messages google/nftables encoded since the last
// call into the buffer.
func (b *fullBatch) takeRecorded() {
	if len(b.recOps) == 0 {
		return
	}
	if err := b.rec.pendingErr(); err != nil {
		b.fail(err)
		return
	}
	err := b.rec.c.Flush()
	// The recorded batch is BEGIN, the messages, END.
	if !errors.Is(err, errRecorded) || len(b.recorded) != len(b.recOps)+2 {
		b.fail(fmt.Errorf("encoding %d netlink messages: got %d: %w", len(b.recOps), len(b.recorded), err))
		return
	}
	for _, m := range b.recorded[1 : len(b.recorded)-1] {
		b.ops = append(b.ops, b.recOps[0])
		b.recOps = b.recOps[1:]
		b.room(nlmsgHdrLen + len(m.Data))
		start := len(b.buf)
		// No echo of added rules: nothing reads them.
		b.buf = b.header(b.buf, uint16(m.Header.Type), m.Header.Flags&^unix.NLM_F_ECHO, uint32(len(b.ops)))
		b.buf = append(b.buf, m.Data...)
		b.endMsg(start)
	}
	b.recorded, b.recOps = b.recorded[:0], b.recOps[:0]
}

// addElem encodes one element addition into the open NEWSETELEM message of
// its set (opening one when needed), as google/nftables' makeElemList.
func (b *fullBatch) addElem(fi famInfo, e elemDef) {
	if b.el.start < 0 || b.el.set != e.mapName || b.el.fi != fi || len(b.buf)-b.el.list > maxElemList-elemRoom {
		b.closeElems()
		b.openElems(fi, e.mapName)
	}
	b.el.n++
	item := b.attrStart(uint16(b.el.n) | unix.NLA_F_NESTED)
	key := b.attrStart(unix.NFTA_SET_ELEM_KEY | unix.NLA_F_NESTED)
	val := b.attrStart(unix.NFTA_DATA_VALUE)
	buf, err := e.appendKey(b.buf, fi)
	if err != nil {
		b.fail(err)
		return
	}
	b.buf = buf
	b.attrEnd(val)
	b.attrEnd(key)
	switch {
	case isSet(e.mapName):
	case isDataMap(e.mapName):
		data := b.attrStart(unix.NFTA_SET_ELEM_DATA | unix.NLA_F_NESTED)
		val := b.attrStart(unix.NFTA_DATA_VALUE)
		if buf, err = e.appendData(b.buf, fi); err != nil {
			b.fail(err)
			return
		}
		b.buf = buf
		b.attrEnd(val)
		b.attrEnd(data)
	default:
		v, err := verdict(strings.Fields(e.verdict))
		if err != nil {
			b.fail(err)
			return
		}
		data := b.attrStart(unix.NFTA_SET_ELEM_DATA | unix.NLA_F_NESTED)
		vd := b.attrStart(unix.NFTA_DATA_VERDICT | unix.NLA_F_NESTED)
		code := b.attrStart(unix.NFTA_VERDICT_CODE)
		b.buf = binary.BigEndian.AppendUint32(b.buf, uint32(v.Kind))
		b.attrEnd(code)
		if v.Chain != "" {
			b.attrStr(unix.NFTA_VERDICT_CHAIN, v.Chain)
		}
		b.attrEnd(vd)
		b.attrEnd(data)
	}
	b.attrEnd(item)
}

func (b *fullBatch) openElems(fi famInfo, set string) {
	b.ops = append(b.ops, batchOp{fi, op{kind: opAddElem, name: set}})
	b.room(msgRoom)
	start := len(b.buf)
	b.buf = b.header(b.buf, unix.NFNL_SUBSYS_NFTABLES<<8|unix.NFT_MSG_NEWSETELEM,
		netlink.Request|netlink.Acknowledge|netlink.Create, uint32(len(b.ops)))
	b.buf = append(b.buf, byte(nlTable(fi).Family), unix.NFNETLINK_V0, 0, 0)
	b.attrStr(unix.NFTA_SET_ELEM_LIST_SET, set)
	id := b.attrStart(unix.NFTA_SET_ELEM_LIST_SET_ID)
	b.buf = binary.BigEndian.AppendUint32(b.buf, 0)
	b.attrEnd(id)
	b.attrStr(unix.NFTA_SET_ELEM_LIST_TABLE, tableName)
	b.el = elemMsg{start: start, list: b.attrStart(unix.NFTA_SET_ELEM_LIST_ELEMENTS | unix.NLA_F_NESTED), fi: fi, set: set}
}

func (b *fullBatch) closeElems() {
	if b.el.start < 0 {
		return
	}
	b.attrEnd(b.el.list)
	b.endMsg(b.el.start)
	b.el.start = -1
}

// finish closes the batch; its error is the first encoding error.
func (b *fullBatch) finish() error {
	b.takeRecorded()
	b.closeElems()
	if b.err != nil {
		return b.err
	}
	b.room(nlmsgHdrLen + nfgenLen)
	start := len(b.buf)
	b.buf = b.header(b.buf, unix.NFNL_MSG_BATCH_END, netlink.Request, uint32(len(b.ops)+1))
	b.buf = append(b.buf, unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, unix.NFNL_SUBSYS_NFTABLES)
	b.endMsg(start)
	return nil
}

// send sends the batch (finish first) and reads one acknowledgement per
// message; the kernel applies it all or nothing. On an error the socket may
// hold more replies: the caller closes it.
func (b *fullBatch) send() error {
	if len(b.ops) == 0 {
		return nil
	}
	rc, err := b.conn.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Write(func(fd uintptr) bool {
		_, serr = unix.SendmsgBuffers(int(fd), append(b.chunks, b.buf), nil, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}, 0)
		return serr != unix.EAGAIN
	}); err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("sendmsg: %w", serr)
	}
	b.buf, b.chunks = nil, nil // the garbage collector may have them now
	// The kernel processes the batch inside sendmsg: its replies are all
	// queued by now. The deadline only guards against a lost one.
	if err := b.conn.SetReadDeadline(time.Now().Add(time.Minute)); err != nil {
		return err
	}
	defer func() { _ = b.conn.SetReadDeadline(time.Time{}) }()
	return b.readAcks(rc)
}

// readAcks reads replies until every message is acknowledged, or returns
// the first error, naming the message that failed.
func (b *fullBatch) readAcks(rc syscall.RawConn) error {
	// A reply to a failed message quotes it (up to 64 KiB of elements).
	buf := make([]byte, 128<<10)
	for acked := 0; acked < len(b.ops); {
		var n int
		var rerr error
		if err := rc.Read(func(fd uintptr) bool {
			n, _, rerr = unix.Recvfrom(int(fd), buf, 0)
			return rerr != unix.EAGAIN
		}); err != nil {
			return err
		}
		if rerr != nil {
			return fmt.Errorf("recvmsg: %w", rerr)
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			return err
		}
		for _, m := range msgs {
			if m.Header.Type != unix.NLMSG_ERROR || len(m.Data) < 4 {
				continue
			}
			if code := int32(binary.NativeEndian.Uint32(m.Data)); code != 0 {
				return b.opError(m.Header.Seq, syscall.Errno(-code))
			}
			acked++
		}
	}
	return nil
}

func (b *fullBatch) opError(seq uint32, errno error) error {
	if seq == 0 || int(seq) > len(b.ops) {
		return fmt.Errorf("batch: %w", errno)
	}
	o := b.ops[seq-1]
	return fmt.Errorf("%s %s: %w", o.fi.ipKW, o.o, errno)
}

// String says what the op writes, for errors.
func (o op) String() string {
	switch o.kind {
	case opAddSet:
		return "add set " + o.set.name
	case opAddChain:
		return "add chain " + o.name
	case opFlushChain:
		return "flush chain " + o.name
	case opAddRule:
		return fmt.Sprintf("add rule to %s (%s)", o.name, o.rule)
	case opDelElem:
		return fmt.Sprintf("delete element %s from %s", o.elem, o.elem.mapName)
	case opAddElem:
		return "add elements to " + o.name
	case opDelChain:
		return "delete chain " + o.name
	case opDelSet:
		return "delete set " + o.name
	case opFlushSet:
		return "flush " + o.name
	}
	return "?"
}
