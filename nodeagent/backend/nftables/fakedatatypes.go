package nftables

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"syscall"
)

// Data types of set and map keys and values, as far as the strict fake
// (fakestrict.go) checks elements: nft refuses an element whose fields do not
// parse as the set's types, before anything reaches the kernel. Messages are
// nft 1.0.6's, lower-cased (TestFakeParity compares accept/refuse with the
// real nft).

type dtype int

const (
	dtIPv4    dtype = iota + 1 // ipv4_addr, typeof ip saddr/daddr
	dtIPv6                     // ipv6_addr, typeof ip6 saddr/daddr
	dtProto                    // inet_proto, typeof meta l4proto
	dtService                  // inet_service, typeof th/tcp/udp/sctp dport/sport
	dtVerdict                  // verdict
	dtInt32                    // typeof numgen … (a 32-bit integer), mark
)

// namedTypes are the `type` keywords the fake knows.
var namedTypes = map[string]dtype{
	"ipv4_addr": dtIPv4, "ipv6_addr": dtIPv6, "inet_proto": dtProto, "inet_service": dtService,
	"verdict": dtVerdict, "mark": dtInt32,
}

// errNotModelled marks input the strict fake does not understand: it refuses
// it rather than accept what the kernel might not.
var errNotModelled = errors.New("not modelled by the fake")

// parseTypes parses "A . B . C" of a `type` or a `typeof` declaration.
func parseTypes(s string, typeOf bool) ([]dtype, error) {
	var out []dtype
	for _, f := range strings.Split(s, " . ") {
		f = strings.TrimSpace(f)
		var t dtype
		if typeOf {
			t = typeOfExpr(f)
		} else {
			t = namedTypes[f]
		}
		if t == 0 {
			return nil, fmt.Errorf("data type %q: %w", f, errNotModelled)
		}
		out = append(out, t)
	}
	return out, nil
}

// typeOfExpr is the type of a `typeof` expression.
func typeOfExpr(e string) dtype {
	w := strings.Fields(e)
	switch {
	case len(w) == 2 && w[0] == "ip" && (w[1] == "saddr" || w[1] == "daddr"):
		return dtIPv4
	case len(w) == 2 && w[0] == "ip6" && (w[1] == "saddr" || w[1] == "daddr"):
		return dtIPv6
	case len(w) == 2 && w[0] == "meta" && w[1] == "l4proto":
		return dtProto
	case len(w) == 2 && (w[1] == "dport" || w[1] == "sport") && (w[0] == "th" || w[0] == "tcp" || w[0] == "udp" || w[0] == "sctp"):
		return dtService
	case len(w) == 2 && w[0] == "meta" && w[1] == "mark":
		return dtInt32
	case len(w) >= 4 && w[0] == "numgen" && w[2] == "mod":
		return dtInt32
	}
	return 0
}

var protoNames = map[string]int{"icmp": 1, "tcp": 6, "udp": 17, "icmpv6": 58, "sctp": 132}

// errFamily is nft's message for an address of the other family.
var errFamily = errors.New("could not resolve hostname: address family for hostname not supported")

// canonValue parses one field of an element as t and returns its canonical
// text (equal values, equal text: "tcp" and "6" are one protocol).
func canonValue(t dtype, s string, interval bool) (string, error) {
	switch t {
	case dtIPv4, dtIPv6:
		return canonAddr(t, s, interval)
	case dtProto:
		if n, ok := protoNames[s]; ok {
			return strconv.Itoa(n), nil
		}
		n, err := strconv.ParseUint(s, 10, 8)
		if err != nil {
			return "", errors.New("could not resolve protocol name")
		}
		return strconv.FormatUint(n, 10), nil
	case dtService:
		return canonPort(s)
	case dtInt32:
		n, err := strconv.ParseUint(s, 0, 64)
		if err != nil {
			return "", fmt.Errorf("integer %q: %w", s, syscall.EINVAL)
		}
		if n > 1<<32-1 {
			return "", fmt.Errorf("value %s exceeds valid range 0-4294967295", s)
		}
		return strconv.FormatUint(n, 10), nil
	case dtVerdict:
		return canonVerdict(s)
	}
	return "", errNotModelled
}

// canonPort accepts what nft accepts for inet_service: 0–65535 or a name of
// /etc/services (nft asks getservbyname, Go's resolver reads the same file).
func canonPort(s string) (string, error) {
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		if n < 0 || n > 65535 {
			return "", errors.New("service out of range")
		}
		return strconv.FormatInt(n, 10), nil
	}
	n, err := net.LookupPort("tcp", s)
	if err != nil {
		return "", fmt.Errorf("could not resolve service: %v", err)
	}
	return strconv.Itoa(n), nil
}

func canonAddr(t dtype, s string, interval bool) (string, error) {
	if interval && strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return "", fmt.Errorf("prefix %q: %w", s, syscall.EINVAL)
		}
		if (t == dtIPv4) != p.Addr().Is4() {
			return "", errFamily
		}
		return p.Masked().String(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return "", fmt.Errorf("could not resolve hostname: %q", s)
	}
	// An IPv4-mapped IPv6 address is an IPv6 address to nft.
	if (t == dtIPv4) != a.Is4() {
		return "", errFamily
	}
	if interval {
		return netip.PrefixFrom(a, a.BitLen()).String(), nil
	}
	return a.String(), nil
}

func canonVerdict(s string) (string, error) {
	w := strings.Fields(s)
	switch {
	case len(w) == 1 && (w[0] == "accept" || w[0] == "drop" || w[0] == "return" || w[0] == "continue"):
		return w[0], nil
	case len(w) == 2 && (w[0] == "jump" || w[0] == "goto"):
		return w[0] + " " + w[1], nil
	}
	return "", fmt.Errorf("verdict %q: %w", s, errNotModelled)
}

// verdictChain is the chain a canonical verdict jumps to, if any.
func verdictChain(v string) string {
	if c, ok := strings.CutPrefix(v, "goto "); ok {
		return c
	}
	if c, ok := strings.CutPrefix(v, "jump "); ok {
		return c
	}
	return ""
}

// canonTuple parses "a . b . c" as types ts.
func canonTuple(ts []dtype, s string, interval bool) (string, error) {
	fields := strings.Split(s, " . ")
	if len(fields) != len(ts) {
		return "", fmt.Errorf("datatype mismatch: %d fields for a concatenation of %d", len(fields), len(ts))
	}
	out := make([]string, len(fields))
	for i, f := range fields {
		v, err := canonValue(ts[i], strings.TrimSpace(f), interval)
		if err != nil {
			return "", err
		}
		out[i] = v
	}
	return strings.Join(out, " . "), nil
}

// checkLiterals refuses what nft refuses in a rule's literals: an address of
// the other family in an ip or ip6 table, an "addr:port" whose port is out of
// range, and numgen's modulus 0 (the kernel's ERANGE).
func checkLiterals(family, rule string) error {
	w := strings.Fields(rule)
	for i, tok := range w {
		if tok == "numgen" && i+3 < len(w) && w[i+2] == "mod" && w[i+3] == "0" {
			return fmt.Errorf("numgen mod 0: %w", syscall.ERANGE)
		}
		a, ok := literalAddr(tok)
		if !ok {
			continue
		}
		if (family == "ip" && !a.Is4()) || (family == "ip6" && a.Is4()) {
			return errFamily
		}
		if host, port, err := net.SplitHostPort(tok); err == nil && host != "" {
			if _, err := canonPort(port); err != nil {
				return err
			}
		}
	}
	return nil
}

// literalAddr recognises an address, a prefix or "addr:port" / "[addr]:port".
func literalAddr(tok string) (netip.Addr, bool) {
	if a, err := netip.ParseAddr(tok); err == nil {
		return a, true
	}
	if p, err := netip.ParsePrefix(tok); err == nil {
		return p.Addr(), true
	}
	if host, _, err := net.SplitHostPort(tok); err == nil {
		if a, err := netip.ParseAddr(host); err == nil {
			return a, true
		}
	}
	return netip.Addr{}, false
}
