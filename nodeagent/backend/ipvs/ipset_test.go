package ipvs

import (
	"slices"
	"strings"
	"testing"

	"kpo.dev/kpo/hack/netns"
)

// ipsetCase is a script run after setup (accepted everywhere); accept is
// what ipset 7.17 does with it.
type ipsetCase struct {
	name, setup, script string
	accept              bool
}

var ipsetCases = []ipsetCase{
	{"the companion sets", "", "create T1 hash:ip,port family inet\nadd T1 10.96.0.10,tcp:80\nadd T1 10.96.0.11,udp:0\n" +
		"create T2 hash:ip,port,net family inet\nadd T2 10.96.0.10,tcp:80,10.1.2.3/32\nadd T2 10.96.0.10,tcp:80,10.1.2.3/16\n" +
		"create T3 bitmap:port range 0-65535\nadd T3 30080\n" +
		"create T4 hash:ip,port,ip family inet6\nadd T4 fd10:96::a,sctp:80,fd10:244::1\n" +
		"create T5 hash:ip family inet6\nadd T5 fd10:96::a\n", true},
	{"adding twice", "create T1 hash:ip family inet\nadd T1 10.0.0.1\n", "add T1 10.0.0.1\n", false},
	{"adding twice with -exist", "create T1 hash:ip family inet\nadd T1 10.0.0.1\n", "add T1 10.0.0.1 -exist\n", true},
	{"port 70000", "create T1 hash:ip,port family inet\n", "add T1 10.0.0.1,tcp:70000\n", false},
	{"an IPv6 address in an inet set", "create T1 hash:ip,port family inet\n", "add T1 fd10::1,tcp:80\n", false},
	{"an ICMP protocol", "create T1 hash:ip,port family inet\n", "add T1 10.0.0.1,icmp:80\n", false},
	{"prefix /33", "create T2 hash:ip,port,net family inet\n", "add T2 10.0.0.1,tcp:80,10.1.2.3/33\n", false},
	{"prefix /0", "create T2 hash:ip,port,net family inet\n", "add T2 10.0.0.1,tcp:80,10.0.0.0/0\n", false},
	{"create again with -exist", "create T1 hash:ip,port family inet\n", "create T1 hash:ip,port family inet -exist\n", true},
	{"create again without -exist", "create T1 hash:ip,port family inet\n", "create T1 hash:ip,port family inet\n", false},
	{"create again as another type", "create T1 hash:ip,port family inet\n", "create T1 hash:ip family inet -exist\n", false},
	{"swap of equal types", "create T1 hash:ip family inet\ncreate T2 hash:ip family inet\nadd T2 10.0.0.2\n", "swap T1 T2\ndestroy T2\n", true},
	{"swap of different types", "create T1 hash:ip,port family inet\ncreate T5 hash:ip family inet\n", "swap T1 T5\n", false},
	{"swap of different families", "create T1 hash:ip family inet\ncreate T5 hash:ip family inet6\n", "swap T1 T5\n", false},
	{"deleting a missing element", "create T1 hash:ip family inet\n", "del T1 10.9.9.9\n", false},
	{"deleting a missing element with -exist", "create T1 hash:ip family inet\n", "del T1 10.9.9.9 -exist\n", true},
	{"a missing set", "", "add T9 1.2.3.4\n", false},
	{"flushing a missing set", "", "flush T9\n", false},
	{"destroying a missing set", "", "destroy T9\n", false},
	{"a port outside the bitmap", "create T3 bitmap:port range 0-1000\n", "add T3 30080\n", false},
	{"a name of 31 characters", "", "create ABCDEFGHIJKLMNOPQRSTUVWXYZ12345 hash:ip\n", true},
	{"a name of 32 characters", "", "create ABCDEFGHIJKLMNOPQRSTUVWXYZ123456 hash:ip\n", false},
}

// state is every set with its elements, sorted.
func ipsetState(t *testing.T, s IPSet) string {
	t.Helper()
	names, err := s.Names()
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(names)
	var b strings.Builder
	for _, n := range names {
		ms, err := s.Members(n)
		if err != nil {
			t.Fatal(err)
		}
		slices.Sort(ms)
		b.WriteString(n + ": " + strings.Join(ms, " ") + "\n")
	}
	return b.String()
}

// TestIPSetFakeParity: FakeIPSet accepts and refuses what ipset does, and
// holds the same sets after an accepted script.
func TestIPSetFakeParity(t *testing.T) {
	for _, c := range ipsetCases {
		f := NewFakeIPSet()
		if err := f.Restore(c.setup); err != nil {
			t.Fatalf("%s: setup: %v", c.name, err)
		}
		if err := f.Restore(c.script); (err == nil) != c.accept {
			t.Errorf("%s: the fake says %v, ipset accept=%v", c.name, err, c.accept)
		}
	}
	netns.Skip(t)
	ns := netns.New(t, "ipset")
	for _, c := range ipsetCases {
		var got, want string
		var err error
		if e := ns.Do(func() error {
			real := execIPSet{}
			names, _ := real.Names()
			for _, n := range names {
				if err := real.Restore("destroy " + n + "\n"); err != nil {
					return err
				}
			}
			if err := real.Restore(c.setup); err != nil {
				return err
			}
			err = real.Restore(c.script)
			want = ipsetState(t, real)
			return nil
		}); e != nil {
			t.Fatalf("%s: %v", c.name, e)
		}
		if (err == nil) != c.accept {
			t.Errorf("%s: ipset says %v, the case says accept=%v", c.name, err, c.accept)
		}
		f := NewFakeIPSet()
		_ = f.Restore(c.setup)
		if f.Restore(c.script) == nil && err == nil {
			if got = ipsetState(t, f); got != want {
				t.Errorf("%s: the fake holds\n%s\nipset\n%s", c.name, got, want)
			}
		}
	}
}
