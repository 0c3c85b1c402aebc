//go:build vmtest

package inside

import (
	"errors"
	"fmt"
	"net/netip"
	"syscall"
	"testing"

	"kpo.dev/kpo/hack/netns"
	"kpo.dev/kpo/nodeagent/backend/ipvs"
)

// IPVS's answers next to FakeHandle's: each case runs its operations on a
// fresh fake and on the kernel (a namespace of its own, emptied between
// cases). Every operation but the last must be accepted by both; the last
// must get the errno the case expects from the kernel, and the same from the
// fake, unless the case records a gap: what the fake answers instead, and
// why. A gap that closes or changes fails the test, so that the record goes.

const (
	ipTCP  = 6
	ipUDP  = 17
	ipSCTP = 132
)

func vsKey(addr string, proto, port uint16) ipvs.VSKey {
	return ipvs.VSKey{Addr: netip.MustParseAddr(addr), Protocol: proto, Port: port}
}

var (
	pvs   = ipvs.Service{VSKey: vsKey("10.96.0.10", ipTCP, 80), Scheduler: "rr"}
	pvs6  = ipvs.Service{VSKey: vsKey("fd10:96::10", ipTCP, 80), Scheduler: "rr"}
	pdst  = ipvs.Destination{Addr: netip.MustParseAddrPort("10.244.1.5:8080"), Weight: 1}
	pdst6 = ipvs.Destination{Addr: netip.MustParseAddrPort("[fd10:244:0:1::5]:8080"), Weight: 1}
)

type ipvsOp func(h ipvs.Handle) error

func newSvc(s ipvs.Service) ipvsOp { return func(h ipvs.Handle) error { return h.NewService(s) } }
func updSvc(s ipvs.Service) ipvsOp { return func(h ipvs.Handle) error { return h.UpdateService(s) } }
func delSvc(k ipvs.VSKey) ipvsOp   { return func(h ipvs.Handle) error { return h.DelService(k) } }
func newDst(k ipvs.VSKey, d ipvs.Destination) ipvsOp {
	return func(h ipvs.Handle) error { return h.NewDestination(k, d) }
}
func updDst(k ipvs.VSKey, d ipvs.Destination) ipvsOp {
	return func(h ipvs.Handle) error { return h.UpdateDestination(k, d) }
}
func delDst(k ipvs.VSKey, d netip.AddrPort) ipvsOp {
	return func(h ipvs.Handle) error { return h.DelDestination(k, d) }
}

// noDests fails unless k has no destinations.
func noDests(k ipvs.VSKey) ipvsOp {
	return func(h ipvs.Handle) error {
		ds, err := h.GetDestinations(k)
		if err == nil && len(ds) != 0 {
			return syscall.ENOTEMPTY
		}
		return err
	}
}

type ipvsParityCase struct {
	name string
	ops  []ipvsOp
	want syscall.Errno // the kernel's answer to the last operation (0: accepted)
	gap  *fakeGap
}

// fakeGap is a known difference: the fake's answer and why.
type fakeGap struct {
	fake syscall.Errno
	why  string
}

func with(s ipvs.Service, f func(*ipvs.Service)) ipvs.Service { f(&s); return s }

func ipvsParityCases() []ipvsParityCase {
	cs := []ipvsParityCase{
		{"new service", []ipvsOp{newSvc(pvs)}, 0, nil},
		{"duplicate service", []ipvsOp{newSvc(pvs), newSvc(pvs)}, syscall.EEXIST, nil},
		{"duplicate service, other scheduler", []ipvsOp{newSvc(pvs), newSvc(with(pvs, func(s *ipvs.Service) { s.Scheduler = "wrr" }))}, syscall.EEXIST, nil},
		{"same address, other protocol", []ipvsOp{newSvc(pvs), newSvc(with(pvs, func(s *ipvs.Service) { s.Protocol = ipUDP }))}, 0, nil},
		{"sctp service", []ipvsOp{newSvc(with(pvs, func(s *ipvs.Service) { s.Protocol = ipSCTP }))}, 0, nil},
		{"update a service's scheduler", []ipvsOp{newSvc(pvs), updSvc(with(pvs, func(s *ipvs.Service) { s.Scheduler = "wrr" }))}, 0, nil},
		{"update a missing service", []ipvsOp{updSvc(pvs)}, syscall.ESRCH, nil},
		{"delete a missing service", []ipvsOp{delSvc(pvs.VSKey)}, syscall.ESRCH, nil},
		{"delete a service twice", []ipvsOp{newSvc(pvs), delSvc(pvs.VSKey), delSvc(pvs.VSKey)}, syscall.ESRCH, nil},
		{"unknown scheduler", []ipvsOp{newSvc(with(pvs, func(s *ipvs.Service) { s.Scheduler = "nope" }))}, syscall.ENOENT, nil},
		{"update to an unknown scheduler", []ipvsOp{newSvc(pvs), updSvc(with(pvs, func(s *ipvs.Service) { s.Scheduler = "nope" }))}, syscall.ENOENT, nil},
		{"port 0", []ipvsOp{newSvc(with(pvs, func(s *ipvs.Service) { s.Port = 0 }))}, 0, gapPort0},
		{"port 65535", []ipvsOp{newSvc(with(pvs, func(s *ipvs.Service) { s.Port = 65535 }))}, 0, nil},
		{"persistent, port 0", []ipvsOp{newSvc(with(pvs, func(s *ipvs.Service) { s.Port, s.Persistent, s.Timeout = 0, true, 10 }))}, 0, gapPort0},
		{"persistent, timeout 10800", []ipvsOp{newSvc(with(pvs, func(s *ipvs.Service) { s.Persistent, s.Timeout = true, 10800 }))}, 0, nil},
		{"IPv6 service and destination", []ipvsOp{newSvc(pvs6), newDst(pvs6.VSKey, pdst6)}, 0, nil},
		{"destination without its service", []ipvsOp{newDst(pvs.VSKey, pdst)}, syscall.ESRCH, nil},
		{"duplicate destination", []ipvsOp{newSvc(pvs), newDst(pvs.VSKey, pdst), newDst(pvs.VSKey, pdst)}, syscall.EEXIST, nil},
		{"same address, other port", []ipvsOp{newSvc(pvs), newDst(pvs.VSKey, pdst),
			newDst(pvs.VSKey, ipvs.Destination{Addr: netip.MustParseAddrPort("10.244.1.5:9090"), Weight: 1})}, 0, nil},
		{"destination port 0", []ipvsOp{newSvc(pvs), newDst(pvs.VSKey, ipvs.Destination{Addr: netip.MustParseAddrPort("10.244.1.5:0"), Weight: 1})}, 0, nil},
		{"destination weight 0", []ipvsOp{newSvc(pvs), newDst(pvs.VSKey, ipvs.Destination{Addr: pdst.Addr, Weight: 0})}, 0, nil},
		{"destination weight -1", []ipvsOp{newSvc(pvs), newDst(pvs.VSKey, ipvs.Destination{Addr: pdst.Addr, Weight: -1})}, syscall.ERANGE,
			&fakeGap{0, "the fake takes any weight; the kernel refuses one below zero (ip_vs_add_dest). The backend only writes 0 and 1."}},
		// moby/ipvs sends no address family with a destination: the kernel
		// reads the address in the service's family, so fd10:244:0:1::5
		// becomes 253.16.2.68 and 10.244.1.5 [af4:105::] (seen in
		// /proc/net/ip_vs). The fake's refusal is what kpo should do.
		{"destination of the other family", []ipvsOp{newSvc(pvs), newDst(pvs.VSKey, pdst6)}, 0,
			&fakeGap{syscall.EINVAL, "through moby/ipvs the kernel programs a garbage destination (the address read in the service's family); the fake refuses. mobyHandle should refuse too."}},
		{"destination of the other family, IPv6 service", []ipvsOp{newSvc(pvs6), newDst(pvs6.VSKey, pdst)}, 0,
			&fakeGap{syscall.EINVAL, "as above: 10.244.1.5 becomes [af4:105::]"}},
		{"update a destination's weight", []ipvsOp{newSvc(pvs), newDst(pvs.VSKey, pdst), updDst(pvs.VSKey, ipvs.Destination{Addr: pdst.Addr, Weight: 0})}, 0, nil},
		{"update a missing destination", []ipvsOp{newSvc(pvs), updDst(pvs.VSKey, pdst)}, syscall.ENOENT, nil},
		{"delete a missing destination", []ipvsOp{newSvc(pvs), delDst(pvs.VSKey, pdst.Addr)}, syscall.ENOENT, nil},
		{"delete a destination of a missing service", []ipvsOp{delDst(pvs.VSKey, pdst.Addr)}, syscall.ESRCH, nil},
		{"a deleted service takes its destinations", []ipvsOp{newSvc(pvs), newDst(pvs.VSKey, pdst), delSvc(pvs.VSKey), newSvc(pvs), noDests(pvs.VSKey)}, 0, nil},
	}
	for _, s := range []string{"rr", "wrr", "lc", "wlc", "lblc", "lblcr", "sh", "dh", "sed", "nq", "mh", "fo", "ovf", "twos"} {
		c := ipvsParityCase{"scheduler " + s, []ipvsOp{newSvc(with(pvs, func(v *ipvs.Service) { v.Scheduler = s }))}, 0, nil}
		if s == "twos" && !kernelAtLeast(6, 2) {
			c.want, c.gap = syscall.ENOENT, &fakeGap{0, "twos came with Linux 6.2; the fake knows every scheduler of the CR"}
		}
		cs = append(cs, c)
	}
	return cs
}

// gapPort0: the kernel accepts a virtual server on port 0.
var gapPort0 = &fakeGap{syscall.EINVAL, "the kernel accepts port 0; the fake refuses it. The backend never asks (it skips ports outside 1-65535)."}

// kernelAtLeast reports whether the running kernel is major.minor or newer.
func kernelAtLeast(major, minor int) bool {
	var u syscall.Utsname
	if syscall.Uname(&u) != nil {
		return false
	}
	var rel []byte
	for _, c := range u.Release {
		if c == 0 {
			break
		}
		rel = append(rel, byte(c))
	}
	var ma, mi int
	if _, err := fmt.Sscanf(string(rel), "%d.%d", &ma, &mi); err != nil {
		return false
	}
	return ma > major || (ma == major && mi >= minor)
}

func errnoOf(err error) syscall.Errno {
	if err == nil {
		return 0
	}
	var e syscall.Errno
	if errors.As(err, &e) {
		return e
	}
	return syscall.Errno(1<<16 - 1) // not an errno: never equal to the kernel's
}

func errnoName(e syscall.Errno) string {
	if e == 0 {
		return "accepted"
	}
	return fmt.Sprintf("%v (%d)", e, int(e))
}

// TestIPVSFakeParity: FakeHandle answers as the kernel's IPVS does.
func TestIPVSFakeParity(t *testing.T) {
	netns.Skip(t)
	ns := netns.New(t, "ipvsparity")
	var k ipvs.Handle
	if err := ns.Do(func() error { var err error; k, err = ipvs.NewKernelHandle(); return err }); err != nil {
		t.Fatal(err)
	}
	for _, c := range ipvsParityCases() {
		empty(t, k)
		f := ipvs.NewFakeHandle()
		for i, op := range c.ops {
			fe, ke := errnoOf(op(f)), errnoOf(op(k))
			if i < len(c.ops)-1 {
				if fe != 0 || ke != 0 {
					t.Errorf("%s, operation %d: the fake says %s, the kernel %s; the case needs it accepted", c.name, i+1, errnoName(fe), errnoName(ke))
				}
				continue
			}
			wantFake := c.want
			if c.gap != nil {
				wantFake = c.gap.fake
			}
			if ke != c.want {
				t.Errorf("%s: the kernel says %s, the case expects %s", c.name, errnoName(ke), errnoName(c.want))
			}
			switch {
			case fe == wantFake && c.gap != nil:
				t.Logf("%s: known gap: the kernel says %s, the fake %s: %s", c.name, errnoName(ke), errnoName(fe), c.gap.why)
			case fe != wantFake && c.gap != nil:
				t.Errorf("%s: the fake says %s, the recorded gap %s (%s): update the record", c.name, errnoName(fe), errnoName(wantFake), c.gap.why)
			case fe != wantFake:
				t.Errorf("%s: the fake says %s, the kernel %s", c.name, errnoName(fe), errnoName(ke))
			}
		}
	}
}

// empty deletes every virtual server of the handle's namespace.
func empty(t *testing.T, h ipvs.Handle) {
	t.Helper()
	svcs, err := h.GetServices()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range svcs {
		if err := h.DelService(s.VSKey); err != nil {
			t.Fatal(err)
		}
	}
}
