package nftables

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"strconv"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
)

// Typed map and set elements. A full sync at 1k × 50 holds 50k of them; they
// used to be nft text (key parts and value as strings), which the netlink
// path parsed back into bytes: rendering and parsing were most of a full
// sync's allocations and a third of its CPU. Now an element is its parts
// (addresses, protocol and port numbers, slot), encoded straight into
// netlink bytes (appendKey, appendData); the text the nft paths and the fake
// need is made from the same parts (keyParts, dataString), so there is one
// source of truth.

// elemKey is the key of an element of one of the table's shared maps or
// sets. Which parts the key has is the map's (keyShape): the VIP or
// endpoint address, the protocol, the port (service port or NodePort; the
// endpoint's in the hairpin set) and, in the endpoint maps, the slot.
type elemKey struct {
	mapName string
	addr    netip.Addr
	proto   uint8 // IPPROTO_*
	// port is as the model has it: one out of range is refused by the
	// encoders (appendKey), by nft and by the fake, as its text was.
	port int32
	slot uint32
}

// elemVal is an element's value: a verdict ("goto X", "drop") in the
// verdict maps, the endpoint in the data maps, nothing in a set.
type elemVal struct {
	verdict string
	dst     netip.Addr
	dstPort int32
}

// elemDef is an element: comparable, so that diffs and duplicate checks key
// maps by it without building strings.
type elemDef struct {
	elemKey
	elemVal
}

// keyShape says which parts the keys of a map have.
type keyShape uint8

const (
	shapeAddrProtoPort     keyShape = iota // VIP . proto . port (verdict maps of addresses)
	shapeProtoPort                         // proto . nodePort
	shapeAddrProtoPortSlot                 // VIP . proto . port . slot (endpoints)
	shapeProtoPortSlot                     // proto . nodePort . slot (nodeport-endpoints)
	shapeHairpin                           // endpoint . endpoint . proto . port
	shapeAddr                              // address (cluster-ips)
)

func shapeOf(mapName string) keyShape {
	switch mapName {
	case mapServiceNodePorts, mapNoEndpointNodePorts:
		return shapeProtoPort
	case mapEndpoints:
		return shapeAddrProtoPortSlot
	case mapNodePortEndpoints:
		return shapeProtoPortSlot
	case setHairpin:
		return shapeHairpin
	case setClusterIPs:
		return shapeAddr
	}
	return shapeAddrProtoPort
}

// protoNum is the IP protocol number of a Service protocol; 0 for one the
// model does not give (it validates them), which both encoders refuse.
func protoNum(p corev1.Protocol) uint8 {
	switch p {
	case corev1.ProtocolTCP:
		return unix.IPPROTO_TCP
	case corev1.ProtocolUDP:
		return unix.IPPROTO_UDP
	case corev1.ProtocolSCTP:
		return unix.IPPROTO_SCTP
	}
	return 0
}

// protoName is the nft keyword of a protocol number; "?" (which nft and the
// fake refuse) for 0.
func protoName(n uint8) string {
	switch n {
	case unix.IPPROTO_UDP:
		return "udp"
	case unix.IPPROTO_SCTP:
		return "sctp"
	case unix.IPPROTO_TCP:
		return "tcp"
	case 0:
		return "?"
	}
	return strconv.Itoa(int(n))
}

// keyParts renders the key as nft text, one string per part (knftables'
// Element.Key).
func (k elemKey) keyParts() []string {
	proto, port := protoName(k.proto), strconv.Itoa(int(k.port))
	switch shapeOf(k.mapName) {
	case shapeProtoPort:
		return []string{proto, port}
	case shapeAddrProtoPortSlot:
		return []string{k.addr.String(), proto, port, strconv.FormatUint(uint64(k.slot), 10)}
	case shapeProtoPortSlot:
		return []string{proto, port, strconv.FormatUint(uint64(k.slot), 10)}
	case shapeHairpin:
		a := k.addr.String()
		return []string{a, a, proto, port}
	case shapeAddr:
		return []string{k.addr.String()}
	}
	return []string{k.addr.String(), proto, port}
}

// appendText appends the element as nft text ("k1 . k2 : value") to b.
func (e elemDef) appendText(b []byte) []byte {
	for i, p := range e.keyParts() {
		if i > 0 {
			b = append(b, " . "...)
		}
		b = append(b, p...)
	}
	if v := e.dataString(); v != "" {
		b = append(append(b, " : "...), v...)
	}
	return b
}

func (e elemDef) String() string { return string(e.appendText(nil)) }

// dataString renders the value as nft text: the verdict, "addr . port" of a
// data map, "" in a set.
func (e elemDef) dataString() string {
	if isDataMap(e.mapName) {
		return e.dst.String() + " . " + strconv.Itoa(int(e.dstPort))
	}
	return e.verdict
}

// appendKey appends the key's netlink bytes: each field of a concatenation
// takes a multiple of 4 bytes, in network order but for the slot, which
// numgen writes in host order (nft 1.0.6's encoding, read back from the
// kernel). An address of the other family or a port out of range is refused
// (errGrammar), as nft refuses their text.
func (k elemKey) appendKey(b []byte, fi famInfo) ([]byte, error) {
	var err error
	shape := shapeOf(k.mapName)
	switch shape {
	case shapeAddr:
		return appendAddr(b, fi, k.addr)
	case shapeAddrProtoPort, shapeAddrProtoPortSlot, shapeHairpin:
		if b, err = appendAddr(b, fi, k.addr); err != nil {
			return nil, err
		}
	}
	if shape == shapeHairpin {
		if b, err = appendAddr(b, fi, k.addr); err != nil {
			return nil, err
		}
	}
	if k.proto == 0 {
		return nil, fmt.Errorf("%w: no protocol", errGrammar)
	}
	b = append(b, k.proto, 0, 0, 0)
	if b, err = appendPort(b, k.port); err != nil {
		return nil, err
	}
	if shape == shapeAddrProtoPortSlot || shape == shapeProtoPortSlot {
		b = binary.NativeEndian.AppendUint32(b, k.slot)
	}
	return b, nil
}

// appendData appends a data map value "addr . port" as netlink bytes.
func (v elemVal) appendData(b []byte, fi famInfo) ([]byte, error) {
	b, err := appendAddr(b, fi, v.dst)
	if err != nil {
		return nil, err
	}
	return appendPort(b, v.dstPort)
}

func appendAddr(b []byte, fi famInfo, a netip.Addr) ([]byte, error) {
	switch {
	case a.Is4() && fi.ipKW == "ip":
		v4 := a.As4()
		return append(b, v4[:]...), nil
	case a.Is6() && fi.ipKW == "ip6":
		v6 := a.As16()
		return append(b, v6[:]...), nil
	}
	return nil, fmt.Errorf("%w: address %v in the %s table", errGrammar, a, fi.ipKW)
}

// appendPort appends a port as a 4-byte concatenation field.
func appendPort(b []byte, port int32) ([]byte, error) {
	if port < 0 || port > 0xffff {
		return nil, fmt.Errorf("%w: port %d", errGrammar, port)
	}
	return append(binary.BigEndian.AppendUint16(b, uint16(port)), 0, 0), nil
}

// uniqueElems drops repeated elements: a VIP listed twice (externalIPs
// [X, X], or X as an external and a load-balancer IP) renders the same
// elements twice. Adding them twice is fine, but a partial sync then deleted
// them twice, and the kernel refuses the second deletion (ENOENT), failing
// every partial sync of the service (found by FuzzSync).
func uniqueElems(es []elemDef) []elemDef {
	seen := make(map[elemDef]bool, len(es))
	out := es[:0]
	for _, e := range es {
		if !seen[e] {
			seen[e] = true
			out = append(out, e)
		}
	}
	return out
}
