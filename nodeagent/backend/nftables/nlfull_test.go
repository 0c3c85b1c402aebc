package nftables

import (
	"bytes"
	"errors"
	"net/netip"
	"strings"
	"syscall"
	"testing"

	gnft "github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"kpo.dev/kpo/nodeagent/model"
)

// TestFullBatchEncodesAsLibrary: the element messages fullBatch encodes
// itself are byte for byte the ones google/nftables' SetAddElements encodes
// for the same elements (verdict maps, data maps, sets; both families), and
// the messages it takes from google/nftables (chains, rules, flushes) keep
// their bytes, in transaction order, without the echo flag of added rules.
func TestFullBatchEncodesAsLibrary(t *testing.T) {
	for _, fam := range []model.Family{model.IPv4, model.IPv6} {
		fi := fams[fam]
		rc := newRenderCtx(fam, &testNode, false)
		byMap := map[string][]elemDef{}
		for _, sp := range variety(fam) {
			o := renderService(rc, sp)
			for _, e := range o.elems {
				byMap[e.mapName] = append(byMap[e.mapName], e)
			}
			for _, e := range o.shared {
				byMap[e.set] = append(byMap[e.set], e.elem())
			}
		}
		for _, m := range []string{mapServiceIPs, mapEndpoints, mapServiceNodePorts, mapNodePortEndpoints, setHairpin, setClusterIPs, mapNoEndpointServices} {
			es := byMap[m]
			if len(es) == 0 {
				t.Fatalf("%s: variety renders no element of %s", fi.ipKW, m)
			}
			ours := fullBatchMessages(t, func(b *fullBatch) {
				for _, e := range es {
					b.write(fi, op{kind: opAddElem, elem: e})
				}
			})
			lib := libraryMessages(t, func(c *gnft.Conn) {
				set := &gnft.Set{Table: nlTable(fi), Name: m, IsMap: !isSet(m)}
				if err := c.SetAddElements(set, libraryElems(t, fi, es)); err != nil {
					t.Fatal(err)
				}
			})
			sameMessages(t, fi.ipKW+" "+m, ours, lib)
		}
		// Messages google/nftables encodes, around elements.
		chain := "pick-cluster-2"
		rule := classRules(rc, class{kind: clusterK, n: 2})[0]
		e := byMap[mapServiceIPs][0]
		ours := fullBatchMessages(t, func(b *fullBatch) {
			b.write(fi, op{kind: opFlushSet, name: mapServiceIPs})
			b.write(fi, op{kind: opAddChain, name: chain})
			b.write(fi, op{kind: opAddRule, name: chain, rule: rule})
			b.write(fi, op{kind: opAddElem, elem: e})
			b.write(fi, op{kind: opDelChain, name: "pick-cluster-3"})
		})
		lib := libraryMessages(t, func(c *gnft.Conn) {
			w := &nlBatch{c: c}
			w.write(fi, op{kind: opFlushSet, name: mapServiceIPs})
			w.write(fi, op{kind: opAddChain, name: chain})
			w.write(fi, op{kind: opAddRule, name: chain, rule: rule})
			w.write(fi, op{kind: opAddElem, elem: e})
			w.write(fi, op{kind: opDelChain, name: "pick-cluster-3"})
			if err := w.pendingErr(); err != nil {
				t.Fatal(err)
			}
		})
		for i := range lib {
			lib[i].Header.Flags &^= unix.NLM_F_ECHO
		}
		sameMessages(t, fi.ipKW+" mixed", ours, lib)
	}
}

// TestFullBatchRefusesWhatNFTRefuses: an address of the other family or a
// port out of range fails the batch before anything is sent, as nft refuses
// their text (TestFakeParitySync checks the fake and nft).
func TestFullBatchRefusesWhatNFTRefuses(t *testing.T) {
	v4 := fams[model.IPv4]
	for name, e := range map[string]elemDef{
		"IPv6 VIP in ip":   {elemKey: elemKey{mapName: mapServiceIPs, addr: netip.MustParseAddr("fd10:96::1"), proto: unix.IPPROTO_TCP, port: 80}, elemVal: elemVal{verdict: "drop"}},
		"port 70000":       {elemKey: elemKey{mapName: mapServiceNodePorts, proto: unix.IPPROTO_TCP, port: 70000}, elemVal: elemVal{verdict: "drop"}},
		"no protocol":      {elemKey: elemKey{mapName: mapServiceNodePorts, port: 80}, elemVal: elemVal{verdict: "drop"}},
		"endpoint port -1": {elemKey: elemKey{mapName: mapEndpoints, addr: netip.MustParseAddr("10.96.0.1"), proto: unix.IPPROTO_TCP, port: 80}, elemVal: elemVal{dst: netip.MustParseAddr("10.244.0.1"), dstPort: -1}},
	} {
		b, err := newFullBatch(nil)
		if err != nil {
			t.Fatal(err)
		}
		b.write(v4, op{kind: opAddElem, elem: e})
		if err := b.finish(); !errors.Is(err, errGrammar) {
			t.Errorf("%s: finish = %v, want errGrammar", name, err)
		}
	}
}

func fullBatchMessages(t *testing.T, fill func(*fullBatch)) []syscall.NetlinkMessage {
	t.Helper()
	b, err := newFullBatch(nil)
	if err != nil {
		t.Fatal(err)
	}
	fill(b)
	if err := b.finish(); err != nil {
		t.Fatal(err)
	}
	msgs, err := syscall.ParseNetlinkMessage(b.bytes())
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) < 2 || msgs[0].Header.Type != unix.NFNL_MSG_BATCH_BEGIN || msgs[len(msgs)-1].Header.Type != unix.NFNL_MSG_BATCH_END {
		t.Fatalf("not one batch: %d messages", len(msgs))
	}
	for i, m := range msgs[1 : len(msgs)-1] {
		if m.Header.Seq != uint32(i+1) || m.Header.Flags&unix.NLM_F_ACK == 0 {
			t.Errorf("message %d: sequence %d, flags %#x: want %d and an ack", i, m.Header.Seq, m.Header.Flags, i+1)
		}
	}
	return msgs[1 : len(msgs)-1]
}

// libraryMessages records what google/nftables' Flush would send.
func libraryMessages(t *testing.T, fill func(*gnft.Conn)) []netlink.Message {
	t.Helper()
	var got []netlink.Message
	c, err := gnft.New(gnft.WithTestDial(func(req []netlink.Message) ([]netlink.Message, error) {
		got = append(got, req...)
		return nil, errRecorded
	}))
	if err != nil {
		t.Fatal(err)
	}
	fill(c)
	if err := c.Flush(); !errors.Is(err, errRecorded) {
		t.Fatal(err)
	}
	return got[1 : len(got)-1]
}

func libraryElems(t *testing.T, fi famInfo, es []elemDef) []gnft.SetElement {
	var out []gnft.SetElement
	for _, e := range es {
		k, err := e.appendKey(nil, fi)
		if err != nil {
			t.Fatal(err)
		}
		el := gnft.SetElement{Key: k}
		switch {
		case isSet(e.mapName):
		case isDataMap(e.mapName):
			if el.Val, err = e.appendData(nil, fi); err != nil {
				t.Fatal(err)
			}
		default:
			if el.VerdictData, err = verdict(strings.Fields(e.verdict)); err != nil {
				t.Fatal(err)
			}
		}
		out = append(out, el)
	}
	return out
}

func sameMessages(t *testing.T, what string, ours []syscall.NetlinkMessage, lib []netlink.Message) {
	t.Helper()
	if len(ours) != len(lib) {
		t.Fatalf("%s: %d messages, google/nftables %d", what, len(ours), len(lib))
	}
	for i := range ours {
		o, l := ours[i], lib[i]
		if o.Header.Type != uint16(l.Header.Type) || o.Header.Flags != uint16(l.Header.Flags) {
			t.Errorf("%s: message %d: type/flags %#x/%#x, google/nftables %#x/%#x", what, i, o.Header.Type, o.Header.Flags, l.Header.Type, l.Header.Flags)
		}
		if !bytes.Equal(o.Data, l.Data) {
			t.Errorf("%s: message %d differs from google/nftables':\n ours %x\n lib  %x", what, i, o.Data, l.Data)
		}
		if int(o.Header.Len) != nlmsgHdrLen+len(o.Data) {
			t.Errorf("%s: message %d: length %d for %d bytes", what, i, o.Header.Len, len(o.Data))
		}
	}
}

// TestFullBatchSplits: many elements go into messages whose element list
// fits its 16-bit length, across chunks, every element once.
func TestFullBatchSplits(t *testing.T) {
	fi := fams[model.IPv6]
	const n = 30000
	msgs := fullBatchMessages(t, func(b *fullBatch) {
		for i := range n {
			a := netip.AddrFrom16([16]byte{0xfd, 0x10, 15: byte(i)})
			b.write(fi, op{kind: opAddElem, elem: elemDef{
				elemKey{mapName: mapEndpoints, addr: a, proto: unix.IPPROTO_TCP, port: 80, slot: uint32(i)},
				elemVal{dst: a, dstPort: 8080}}})
		}
		if len(b.chunks) == 0 {
			t.Error("one chunk: the test does not cross chunks")
		}
	})
	total := 0
	for i, m := range msgs {
		attrs, err := netlink.UnmarshalAttributes(m.Data[nfgenLen:])
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		for _, a := range attrs {
			if a.Type&^unix.NLA_F_NESTED != unix.NFTA_SET_ELEM_LIST_ELEMENTS {
				continue
			}
			items, err := netlink.UnmarshalAttributes(a.Data)
			if err != nil {
				t.Fatalf("message %d: %v", i, err)
			}
			total += len(items)
		}
	}
	if total != n || len(msgs) < 2 {
		t.Errorf("%d elements in %d messages, want %d in several", total, len(msgs), n)
	}
}
