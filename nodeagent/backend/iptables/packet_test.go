package iptables

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"kpo.dev/kpo/hack/netns"
)

// Hand-made packets for what a socket cannot send: a TCP segment that
// conntrack calls INVALID, a packet from the network to 127.0.0.1. They are
// written as Ethernet frames onto a link (AF_PACKET) and captured the same
// way, so that neither end's IP stack filters what the test looks at.

// TCP flags.
const (
	tcpFIN = 0x01
	tcpSYN = 0x02
	tcpRST = 0x04
	tcpACK = 0x10
)

// segment is one IPv4 TCP segment.
type segment struct {
	src, dst     netip.Addr
	sport, dport uint16
	seq          uint32
	flags        uint8
}

func (s segment) String() string {
	return fmt.Sprintf("%s:%d -> %s:%d flags %#x seq %d", s.src, s.sport, s.dst, s.dport, s.flags, s.seq)
}

func checksum(b []byte, sum uint32) uint16 {
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}

// ipv4 renders the segment as an IPv4 packet with correct checksums.
func (s segment) ipv4() []byte {
	tcp := make([]byte, 20)
	binary.BigEndian.PutUint16(tcp[0:], s.sport)
	binary.BigEndian.PutUint16(tcp[2:], s.dport)
	binary.BigEndian.PutUint32(tcp[4:], s.seq)
	tcp[12] = 5 << 4 // data offset: 5 words
	tcp[13] = s.flags
	binary.BigEndian.PutUint16(tcp[14:], 65535) // window
	src, dst := s.src.As4(), s.dst.As4()
	pseudo := append(append(append([]byte{}, src[:]...), dst[:]...), 0, unix.IPPROTO_TCP, 0, 20)
	var sum uint32
	for i := 0; i < len(pseudo); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(pseudo[i:]))
	}
	binary.BigEndian.PutUint16(tcp[16:], checksum(tcp, sum))

	ip := make([]byte, 20)
	ip[0] = 4<<4 | 5
	binary.BigEndian.PutUint16(ip[2:], uint16(20+len(tcp)))
	ip[8] = 64 // TTL
	ip[9] = unix.IPPROTO_TCP
	copy(ip[12:16], src[:])
	copy(ip[16:20], dst[:])
	binary.BigEndian.PutUint16(ip[10:], checksum(ip, 0))
	return append(ip, tcp...)
}

// parseSegment reads an IPv4 TCP segment out of an Ethernet frame.
func parseSegment(frame []byte) (segment, bool) {
	if len(frame) < 14+20 || binary.BigEndian.Uint16(frame[12:]) != unix.ETH_P_IP {
		return segment{}, false
	}
	ip := frame[14:]
	ihl := int(ip[0]&0x0f) * 4
	if ip[0]>>4 != 4 || ip[9] != unix.IPPROTO_TCP || len(ip) < ihl+20 {
		return segment{}, false
	}
	tcp := ip[ihl:]
	return segment{
		src: netip.AddrFrom4([4]byte(ip[12:16])), dst: netip.AddrFrom4([4]byte(ip[16:20])),
		sport: binary.BigEndian.Uint16(tcp[0:]), dport: binary.BigEndian.Uint16(tcp[2:]),
		seq: binary.BigEndian.Uint32(tcp[4:]), flags: tcp[13],
	}, true
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// packetSocket opens an AF_PACKET socket on link inside ns (the socket stays
// in that namespace whichever thread uses it later).
func packetSocket(t *testing.T, ns *netns.NS, link string) (fd int, ifindex int) {
	t.Helper()
	l, err := ns.NL.LinkByName(link)
	if err != nil {
		t.Fatalf("%s in %s: %v", link, ns.Name, err)
	}
	ifindex = l.Attrs().Index
	err = ns.Do(func() error {
		var err error
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, int(htons(unix.ETH_P_ALL)))
		if err != nil {
			return err
		}
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifindex})
	})
	if err != nil {
		t.Fatalf("packet socket on %s in %s: %v", link, ns.Name, err)
	}
	t.Cleanup(func() { _ = unix.Close(fd) })
	return fd, ifindex
}

func macOf(t *testing.T, ns *netns.NS, link string) net.HardwareAddr {
	t.Helper()
	l, err := ns.NL.LinkByName(link)
	if err != nil {
		t.Fatalf("%s in %s: %v", link, ns.Name, err)
	}
	return l.Attrs().HardwareAddr
}

// wire sends frames from one end of a veth to the other (the MAC addresses
// are the two ends').
type wire struct {
	fd      int
	ifindex int
	src     net.HardwareAddr
	dst     net.HardwareAddr
}

func newWire(t *testing.T, from *netns.NS, fromLink string, to *netns.NS, toLink string) wire {
	fd, ifindex := packetSocket(t, from, fromLink)
	return wire{fd: fd, ifindex: ifindex, src: macOf(t, from, fromLink), dst: macOf(t, to, toLink)}
}

func (w wire) send(t *testing.T, s segment) {
	t.Helper()
	frame := append(append(append([]byte{}, w.dst...), w.src...), byte(unix.ETH_P_IP>>8), byte(unix.ETH_P_IP&0xff))
	frame = append(frame, s.ipv4()...)
	if err := unix.Sendto(w.fd, frame, 0, &unix.SockaddrLinklayer{Ifindex: w.ifindex, Halen: 6}); err != nil {
		t.Fatalf("sending %v: %v", s, err)
	}
}

// capture listens on a link and reports the TCP segments it sees.
type capture struct{ fd int }

func newCapture(t *testing.T, ns *netns.NS, link string) capture {
	fd, _ := packetSocket(t, ns, link)
	return capture{fd: fd}
}

// wait returns the first segment matching match within d (false when none
// came): the bound of an expected absence, or of a packet that must arrive.
func (c capture) wait(t *testing.T, d time.Duration, match func(segment) bool) (segment, bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	buf := make([]byte, 65536)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return segment{}, false
		}
		tv := unix.NsecToTimeval(left.Nanoseconds())
		if err := unix.SetsockoptTimeval(c.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			t.Fatal(err)
		}
		n, _, err := unix.Recvfrom(c.fd, buf, 0)
		if err != nil {
			if err == unix.EAGAIN || err == unix.EINTR {
				continue
			}
			t.Fatalf("capture: %v", err)
		}
		if s, ok := parseSegment(buf[:n]); ok && match(s) {
			return s, true
		}
	}
}
