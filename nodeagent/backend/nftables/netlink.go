package nftables

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	gnft "github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Partial syncs over netlink (google/nftables).
//
// Why: every `nft` run first dumps the whole table into its cache, so a
// 20-line partial transaction cost ~0.2–0.6 s at 10k services. A partial sync
// only touches service objects (elements of the shared maps and sets, pick
// chains, the chains of services with affinity), so only those need a netlink
// encoding; the fixed objects are still written by knftables on full syncs.
//
// Rules stay nft syntax (render.go is the single source of truth, and the fake
// and `nft list` review keep working): ruleExprs translates the small grammar
// renderService emits into the expressions nft 1.0.6 generates for it (read
// back from the kernel; TestKernelNetlinkPartialMatchesFull checks that `nft
// list` prints the same table either way). A rule outside that grammar makes
// the sync fall back to knftables rather than guess.

// nlBatch collects a partial sync's netlink messages; Flush sends them as one
// NFNL batch, which the kernel applies atomically (all or nothing). A full
// sync's fullBatch uses one to encode its messages other than elements.
type nlBatch struct {
	c   *gnft.Conn
	err error // first translation error; the batch must not be sent
	// elems are consecutive element additions to one set or map, sent as
	// one message of at most maxElemsPerMsg elements (one message each
	// would mean as many ACKs to read). A full sync, which adds them by
	// the hundred thousand, encodes its elements itself (fullBatch).
	elems    []gnft.SetElement
	elemsSet *gnft.Set
	// broken is called when the batch failed: the socket may hold replies
	// the next batch must not read.
	broken func()
}

// nlConn is the lasting netlink socket partial syncs use.
//
// Lasting, because closing a NETLINK_NETFILTER socket is slow after a commit
// that deleted anything: the kernel's release notifier (nft_rcv_nl_event)
// flushes the pending destroy work, which waits for an RCU grace period
// (synchronize_rcu): 6–15 ms here, more than the whole commit of an endpoint
// change (measured, TestExperimentValidate). The socket belongs to the network
// namespace it was opened in; the backend runs nft (full syncs) in the calling
// thread's namespace, so the socket is reopened when that namespace changes.
type nlConn struct {
	c *gnft.Conn
	// raw is c's socket: full syncs send their own batch on it (nlfull.go).
	raw *netlink.Conn
	ns  uint64 // inode of the namespace the socket was opened in
}

func threadNetNS() (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}

func (n *nlConn) batch() (*nlBatch, error) {
	if err := n.open(); err != nil {
		return nil, err
	}
	return &nlBatch{c: n.c, broken: n.close}, nil
}

// fullBatch starts a full sync's batch on the socket.
func (n *nlConn) fullBatch() (*fullBatch, error) {
	if err := n.open(); err != nil {
		return nil, err
	}
	return newFullBatch(n.raw)
}

// open opens the socket in the calling thread's namespace, unless it is open
// there already.
func (n *nlConn) open() error {
	ns, err := threadNetNS()
	if err != nil {
		return err
	}
	if n.c != nil && n.ns != ns {
		n.close()
	}
	if n.c == nil {
		var raw *netlink.Conn
		keep := func(c *netlink.Conn) error { raw = c; return nil }
		c, err := gnft.New(gnft.AsLasting(), gnft.WithSockOptions(bigBuffers, keep))
		if err != nil {
			return err
		}
		n.c, n.raw, n.ns = c, raw, ns
	}
	return nil
}

func (n *nlConn) close() {
	if n.c != nil {
		_ = n.c.CloseLasting()
		n.c, n.raw = nil, nil
	}
}

func (w *nlBatch) fail(err error) {
	if w.err == nil {
		w.err = err
	}
}

func nlTable(fi famInfo) *gnft.Table {
	fam := gnft.TableFamilyIPv4
	if fi.ipKW == "ip6" {
		fam = gnft.TableFamilyIPv6
	}
	return &gnft.Table{Family: fam, Name: tableName}
}

func (w *nlBatch) chain(fi famInfo, name string) *gnft.Chain {
	return &gnft.Chain{Table: nlTable(fi), Name: name}
}

// maxElemsPerMsg bounds one NEWSETELEM message: its element list is one
// netlink attribute, whose length is 16 bits (64 KiB); an element of the
// largest map (IPv6 endpoints: 16+4+4+4 bytes of key, 16+4 of value, with
// attribute headers) takes under 120 bytes.
const maxElemsPerMsg = 512

func (w *nlBatch) write(fi famInfo, o op) {
	if o.kind != opAddElem {
		w.sendElems()
	}
	switch o.kind {
	case opFlushSet:
		w.c.FlushSet(&gnft.Set{Table: nlTable(fi), Name: o.name})
	case opAddSet:
		w.addSet(fi, o.set)
	case opAddChain:
		w.c.AddChain(w.chain(fi, o.name))
	case opFlushChain:
		w.c.FlushChain(w.chain(fi, o.name))
	case opAddRule:
		exprs, err := ruleExprs(fi, o.rule)
		if err != nil {
			w.fail(err)
			return
		}
		w.c.AddRule(&gnft.Rule{Table: nlTable(fi), Chain: w.chain(fi, o.name), Exprs: exprs})
	case opDelElem:
		key, err := o.elem.appendKey(nil, fi)
		if err != nil {
			w.fail(err)
			return
		}
		if err := w.c.SetDeleteElements(&gnft.Set{Table: nlTable(fi), Name: o.elem.mapName}, []gnft.SetElement{{Key: key}}); err != nil {
			w.fail(err)
		}
	case opAddElem:
		w.addElem(fi, o.elem)
	case opDelChain:
		w.c.DelChain(w.chain(fi, o.name))
	case opDelSet:
		w.c.DelSet(&gnft.Set{Table: nlTable(fi), Name: o.name})
	}
}

func (w *nlBatch) addSet(fi famInfo, s setDef) {
	kt := gnft.TypeIPAddr
	if fi.ipKW == "ip6" {
		kt = gnft.TypeIP6Addr
	}
	// Size 65535: what `nft list` shows for a set an `update` statement
	// binds (the kernel's default then); explicit, so that the set is the
	// same as nft's from the start.
	set := &gnft.Set{Table: nlTable(fi), Name: s.name, KeyType: kt, Dynamic: true,
		HasTimeout: true, Timeout: secs(s.timeout), Size: 65535}
	if err := w.c.AddSet(set, nil); err != nil {
		w.fail(err)
	}
}

func (w *nlBatch) addElem(fi famInfo, e elemDef) {
	key, err := e.appendKey(nil, fi)
	if err != nil {
		w.fail(err)
		return
	}
	el := gnft.SetElement{Key: key}
	switch {
	case isSet(e.mapName):
	case isDataMap(e.mapName):
		el.Val, err = e.appendData(nil, fi)
	default:
		el.VerdictData, err = verdict(strings.Fields(e.verdict))
	}
	if err != nil {
		w.fail(err)
		return
	}
	if s := w.elemsSet; s == nil || s.Name != e.mapName || s.Table.Family != nlTable(fi).Family || len(w.elems) == maxElemsPerMsg {
		w.sendElems()
		w.elemsSet = &gnft.Set{Table: nlTable(fi), Name: e.mapName, IsMap: !isSet(e.mapName)}
	}
	w.elems = append(w.elems, el)
}

// sendElems queues the collected element additions as one message.
func (w *nlBatch) sendElems() {
	if len(w.elems) == 0 {
		return
	}
	if err := w.c.SetAddElements(w.elemsSet, w.elems); err != nil {
		w.fail(err)
	}
	w.elems, w.elemsSet = w.elems[:0], nil
}

// pendingErr queues what is still collected and returns the first
// translation error.
func (w *nlBatch) pendingErr() error {
	w.sendElems()
	return w.err
}

// flush sends the batch. google/nftables asks for an ACK per message; that is
// cheap for the few dozen messages of a partial sync.
func (w *nlBatch) flush() error {
	if err := w.pendingErr(); err != nil {
		return err
	}
	err := w.c.Flush()
	if err != nil && w.broken != nil {
		w.broken()
	}
	return err
}

// errGrammar marks a rule or element that ruleExprs/elemKey do not know.
var errGrammar = errors.New("not in the netlink grammar")

func grammarErr(what string) error { return fmt.Errorf("%w: %q", errGrammar, what) }

var protoNums = map[string]byte{"tcp": unix.IPPROTO_TCP, "udp": unix.IPPROTO_UDP, "sctp": unix.IPPROTO_SCTP}

// saddr returns the payload load of the family's source address.
func saddr(fi famInfo, length uint32) *expr.Payload { return addrField(fi, "saddr", length) }

// addrField loads the family's source ("saddr") or destination address.
func addrField(fi famInfo, field string, length uint32) *expr.Payload {
	off := map[string]uint32{"ip saddr": 12, "ip daddr": 16, "ip6 saddr": 8, "ip6 daddr": 24}[fi.ipKW+" "+field]
	return &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: length}
}

func addrLen(fi famInfo) uint32 {
	if fi.ipKW == "ip6" {
		return 16
	}
	return 4
}

// ruleExprs translates one rule of renderService's grammar:
//
//	ip saddr [!=] (@set | addr | prefix) ; fib saddr type local ;
//	numgen random mod N K ; meta l4proto P ; update @set { ip saddr } ;
//	dnat to addr:port ; dnat ip to <concatenation> map @M (dnatMap) ;
//	jump|goto CHAIN ; drop ; return ; accept
//
// into the expressions nft emits (register 1 for every match; dnat loads the
// address into register 1 and the port into register 2).
func ruleExprs(fi famInfo, rule string) ([]expr.Any, error) {
	t := strings.Fields(rule)
	var out []expr.Any
	for i := 0; i < len(t); {
		switch {
		case t[i] == fi.ipKW && i+2 < len(t) && (t[i+1] == "saddr" || t[i+1] == "daddr"):
			e, n, err := addrMatch(fi, t[i:])
			if err != nil {
				return nil, grammarErr(rule)
			}
			out = append(out, e...)
			i += n
		case t[i] == "iifname" && i+1 < len(t):
			e, n, err := iifnameMatch(t[i:])
			if err != nil {
				return nil, grammarErr(rule)
			}
			out = append(out, e...)
			i += n
		case t[i] == "fib" && i+3 < len(t) && t[i+1] == "saddr" && t[i+2] == "type" && t[i+3] == "local":
			out = append(out, &expr.Fib{Register: 1, ResultADDRTYPE: true, FlagSADDR: true},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binary.NativeEndian.AppendUint32(nil, unix.RTN_LOCAL)})
			i += 4
		case t[i] == "numgen" && i+4 < len(t) && t[i+1] == "random" && t[i+2] == "mod":
			n, err1 := strconv.ParseUint(t[i+3], 10, 32)
			k, err2 := strconv.ParseUint(t[i+4], 10, 32)
			if err1 != nil || err2 != nil {
				return nil, grammarErr(rule)
			}
			out = append(out, &expr.Numgen{Register: 1, Modulus: uint32(n), Type: unix.NFT_NG_RANDOM},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binary.NativeEndian.AppendUint32(nil, uint32(k))})
			i += 5
		case t[i] == "meta" && i+2 < len(t) && t[i+1] == "l4proto":
			p, ok := protoNums[t[i+2]]
			if !ok {
				return nil, grammarErr(rule)
			}
			out = append(out, &expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1}, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{p}})
			i += 3
		case t[i] == "update" && i+5 < len(t) && strings.HasPrefix(t[i+1], "@") &&
			t[i+2] == "{" && t[i+3] == fi.ipKW && t[i+4] == "saddr" && t[i+5] == "}":
			out = append(out, saddr(fi, addrLen(fi)), &expr.Dynset{SrcRegKey: 1, SetName: t[i+1][1:], Operation: unix.NFT_DYNSET_OP_UPDATE})
			i += 6
		case t[i] == "dnat" && i+3 < len(t) && t[i+1] == fi.ipKW && t[i+2] == "to":
			// dnat ip to <key> map @m: the pick chains' endpoint choice.
			e, n, err := dnatMap(fi, t[i+3:])
			if err != nil {
				return nil, grammarErr(rule)
			}
			out = append(out, e...)
			i += 3 + n
		case t[i] == "dnat" && i+2 < len(t) && t[i+1] == "to":
			ap, err := netip.ParseAddrPort(t[i+2])
			if err != nil {
				return nil, grammarErr(rule)
			}
			nfproto := uint32(unix.NFPROTO_IPV4)
			if fi.ipKW == "ip6" {
				nfproto = unix.NFPROTO_IPV6
			}
			out = append(out, &expr.Immediate{Register: 1, Data: ap.Addr().AsSlice()},
				&expr.Immediate{Register: 2, Data: binary.BigEndian.AppendUint16(nil, ap.Port())},
				&expr.NAT{Type: expr.NATTypeDestNAT, Family: nfproto, RegAddrMin: 1, RegAddrMax: 1, RegProtoMin: 2, RegProtoMax: 2, Specified: true})
			i += 3
		default:
			// Only a verdict may end the rule.
			v, err := verdict(t[i:])
			if err != nil {
				return nil, grammarErr(rule)
			}
			return append(out, v), nil
		}
	}
	return out, nil
}

// addrMatch translates "ip saddr|daddr [!=] @set|addr|prefix"; it returns
// the number of tokens used.
func addrMatch(fi famInfo, t []string) ([]expr.Any, int, error) {
	field, i := t[1], 2
	op := expr.CmpOpEq
	if t[i] == "!=" {
		op, i = expr.CmpOpNeq, i+1
		if i >= len(t) {
			return nil, 0, grammarErr(strings.Join(t, " "))
		}
	}
	v := t[i]
	if set, ok := strings.CutPrefix(v, "@"); ok {
		return []expr.Any{addrField(fi, field, addrLen(fi)), &expr.Lookup{SourceRegister: 1, SetName: set, Invert: op == expr.CmpOpNeq}}, i + 1, nil
	}
	m, err := prefixMatch(fi, field, v, op)
	return m, i + 1, err
}

// iifnameMatch translates iifname "name" (exact: the name and its NUL, as
// nft encodes it) or "prefix*" (the prefix only), optionally negated; it
// returns the number of tokens used.
func iifnameMatch(t []string) ([]expr.Any, int, error) {
	op, i := expr.CmpOpEq, 1
	if t[i] == "!=" {
		op, i = expr.CmpOpNeq, i+1
	}
	if i >= len(t) || len(t[i]) < 3 || t[i][0] != '"' || t[i][len(t[i])-1] != '"' {
		return nil, 0, grammarErr(strings.Join(t, " "))
	}
	name := t[i][1 : len(t[i])-1]
	data := append([]byte(name), 0)
	if p, ok := strings.CutSuffix(name, "*"); ok {
		data = []byte(p)
	}
	return []expr.Any{&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1}, &expr.Cmp{Op: op, Register: 1, Data: data}}, i + 1, nil
}

// reg is the register nft 1.0.6 uses for the concatenation field at byte
// offset off: a 16-byte register (NFT_REG_1…4) when off is 16-aligned, a
// 4-byte one (NFT_REG32_00…) otherwise. Both name the same storage; this only
// keeps `nft --debug=netlink list` identical to what nft writes.
func reg(off uint32) uint32 {
	if off%16 == 0 {
		return 1 + off/16
	}
	return 8 + off/4
}

// dnatMap translates "<field> . … . numgen random mod N [offset K] map @M"
// (fields: ip daddr, meta l4proto, th dport) into the key's loads, the lookup
// and the nat expression; it returns the number of tokens used.
func dnatMap(fi famInfo, t []string) ([]expr.Any, int, error) {
	var out []expr.Any
	off := uint32(0)
	i := 0
	for {
		switch {
		case i+1 < len(t) && t[i] == fi.ipKW && t[i+1] == "daddr":
			o := uint32(16)
			if fi.ipKW == "ip6" {
				o = 24
			}
			out = append(out, &expr.Payload{DestRegister: reg(off), Base: expr.PayloadBaseNetworkHeader, Offset: o, Len: addrLen(fi)})
			off += addrLen(fi)
			i += 2
		case i+1 < len(t) && t[i] == "meta" && t[i+1] == "l4proto":
			out = append(out, &expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg(off)})
			off += 4
			i += 2
		case i+1 < len(t) && t[i] == "th" && t[i+1] == "dport":
			out = append(out, &expr.Payload{DestRegister: reg(off), Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2})
			off += 4
			i += 2
		case i+3 < len(t) && t[i] == "numgen" && t[i+1] == "random" && t[i+2] == "mod":
			n, err := strconv.ParseUint(t[i+3], 10, 32)
			if err != nil {
				return nil, 0, err
			}
			ng := &expr.Numgen{Register: reg(off), Modulus: uint32(n), Type: unix.NFT_NG_RANDOM}
			i += 4
			if i+1 < len(t) && t[i] == "offset" {
				k, err := strconv.ParseUint(t[i+1], 10, 32)
				if err != nil {
					return nil, 0, err
				}
				ng.Offset = uint32(k)
				i += 2
			}
			out = append(out, ng)
			off += 4
		default:
			return nil, 0, grammarErr(strings.Join(t, " "))
		}
		if i < len(t) && t[i] == "." {
			i++
			continue
		}
		break
	}
	if i+1 >= len(t) || t[i] != "map" || !strings.HasPrefix(t[i+1], "@") {
		return nil, 0, grammarErr(strings.Join(t, " "))
	}
	nfproto := uint32(unix.NFPROTO_IPV4)
	if fi.ipKW == "ip6" {
		nfproto = unix.NFPROTO_IPV6
	}
	// The map's value is "address . port": the address at register 1, the
	// port right after it.
	portReg := reg(addrLen(fi))
	out = append(out, &expr.Lookup{SourceRegister: 1, DestRegister: 1, IsDestRegSet: true, SetName: t[i+1][1:]},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: nfproto, RegAddrMin: 1, RegAddrMax: 1, RegProtoMin: portReg, RegProtoMax: portReg, Specified: true})
	return out, i + 2, nil
}

// prefixMatch matches the source address against addr or prefix the way nft
// does: a byte-aligned prefix loads only its bytes; any other (and /0) loads
// the whole address and masks it.
func prefixMatch(fi famInfo, field, v string, op expr.CmpOp) ([]expr.Any, error) {
	var p netip.Prefix
	var err error
	if strings.Contains(v, "/") {
		p, err = netip.ParsePrefix(v)
	} else {
		var a netip.Addr
		if a, err = netip.ParseAddr(v); err == nil {
			p = netip.PrefixFrom(a, a.BitLen())
		}
	}
	if err != nil || int(addrLen(fi))*8 != p.Addr().BitLen() {
		return nil, grammarErr(v)
	}
	p = p.Masked()
	bits := p.Bits()
	full := p.Addr().AsSlice()
	if bits > 0 && bits%8 == 0 {
		return []expr.Any{addrField(fi, field, uint32(bits/8)), &expr.Cmp{Op: op, Register: 1, Data: full[:bits/8]}}, nil
	}
	mask := make([]byte, len(full))
	for b := 0; b < bits; b++ {
		mask[b/8] |= 0x80 >> (b % 8)
	}
	return []expr.Any{addrField(fi, field, uint32(len(full))),
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: uint32(len(full)), Mask: mask, Xor: make([]byte, len(full))},
		&expr.Cmp{Op: op, Register: 1, Data: full}}, nil
}

// verdict parses exactly one verdict ("goto X", "jump X", "drop", …).
func verdict(t []string) (*expr.Verdict, error) {
	switch {
	case len(t) == 2 && t[0] == "goto":
		return &expr.Verdict{Kind: expr.VerdictGoto, Chain: t[1]}, nil
	case len(t) == 2 && t[0] == "jump":
		return &expr.Verdict{Kind: expr.VerdictJump, Chain: t[1]}, nil
	case len(t) == 1 && t[0] == "drop":
		return &expr.Verdict{Kind: expr.VerdictDrop}, nil
	case len(t) == 1 && t[0] == "return":
		return &expr.Verdict{Kind: expr.VerdictReturn}, nil
	case len(t) == 1 && t[0] == "accept":
		return &expr.Verdict{Kind: expr.VerdictAccept}, nil
	}
	return nil, grammarErr(strings.Join(t, " "))
}

// bigBuffers lets one sendmsg carry a whole batch, as nft does (it raises
// SO_SNDBUF to the batch size with SO_SNDBUFFORCE); google/nftables sends the
// batch in one message and fails with EMSGSIZE otherwise.
func bigBuffers(c *netlink.Conn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	err = rc.Control(func(fd uintptr) {
		if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, 1<<30); serr == nil {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 1<<26)
		}
	})
	if err != nil {
		return err
	}
	return serr
}
