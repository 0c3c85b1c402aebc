package netns

import (
	"errors"
	"os"
	"testing"
	"time"
)

func TestEchoAcrossVeth(t *testing.T) {
	Skip(t)
	a, b := New(t, "a"), New(t, "b")
	Veth(t, a, "eth0", b, "eth0")
	a.AddAddr(t, "eth0", "198.51.100.1/24")
	b.AddAddr(t, "eth0", "198.51.100.2/24")
	a.AddAddr(t, "eth0", "2001:db8:1::1/64")
	b.AddAddr(t, "eth0", "2001:db8:1::2/64")
	b.ServeEcho(t, "tcp", ":8080", "b")
	b.ServeEcho(t, "udp", ":8080", "b")

	for _, tc := range []struct{ network, addr string }{
		{"tcp", "198.51.100.2:8080"}, {"udp", "198.51.100.2:8080"}, {"tcp", "[2001:db8:1::2]:8080"},
	} {
		r, err := a.Dial(tc.network, tc.addr, 2*time.Second)
		if err != nil {
			t.Fatalf("%s %s: %v", tc.network, tc.addr, err)
		}
		if r.Server != "b" || (r.ClientIP() != "198.51.100.1" && r.ClientIP() != "2001:db8:1::1") {
			t.Errorf("reply %+v", r)
		}
	}
	if _, err := a.Dial("tcp", "198.51.100.2:9999", 2*time.Second); !errors.Is(err, ErrRefused) {
		t.Errorf("closed port: %v, want refused", err)
	}
	if v, err := a.ReadSysctl("net/ipv4/icmp_ratelimit"); err != nil || v != "0" {
		t.Errorf("icmp_ratelimit in namespace = %q, %v", v, err)
	}
	// The root namespace's own value is untouched.
	if v, _ := os.ReadFile("/proc/sys/net/ipv4/icmp_ratelimit"); string(v) == "0\n" {
		t.Logf("note: root namespace icmp_ratelimit is 0 (set by someone else)")
	}
	if out := a.MustRun(t, "ip", "-br", "link"); len(out) == 0 {
		t.Error("no links listed")
	}
}

func TestNamespacesAreRemoved(t *testing.T) {
	Skip(t)
	var path string
	t.Run("inner", func(t *testing.T) {
		path = New(t, "gone").Path()
		if _, err := os.Stat(path); err != nil {
			t.Fatal(err)
		}
	})
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("%s still exists after the test: %v", path, err)
	}
}

// TestOneNodeRouting checks the topology before any proxy rule exists: pods and
// the client reach each other through the node, and a ClusterIP goes nowhere.
func TestOneNodeRouting(t *testing.T) {
	Skip(t)
	top := NewOneNode(t, 2)
	top.Pods[0].ServeEcho(t, "tcp", ":8080", "pod0")
	for _, tc := range []struct {
		from *NS
		addr string
	}{
		{top.Client, "10.244.1.10:8080"},
		{top.Pods[1].NS, "10.244.1.10:8080"},
		{top.Node, "10.244.1.10:8080"},
		{top.Pods[1].NS, "[fd10:244:0:1::a]:8080"},
		{top.Client, "[fd10:244:0:1::a]:8080"},
	} {
		if r, err := tc.from.Dial("tcp", tc.addr, 2*time.Second); err != nil || r.Server != "pod0" {
			t.Errorf("%s -> %s: %+v %v", tc.from.Name, tc.addr, r, err)
		}
	}
	if _, err := top.Pods[1].Dial("tcp", "10.96.0.10:80", 300*time.Millisecond); !errors.Is(err, ErrTimeout) {
		t.Errorf("an untranslated ClusterIP: %v, want a timeout (the sink)", err)
	}
}
