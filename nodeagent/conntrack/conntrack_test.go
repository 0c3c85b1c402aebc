package conntrack

import (
	"net/netip"
	"testing"
)

// TestStale: kube-proxy's rule (pkg/proxy/conntrack/cleanup.go): a flow to a
// service address whose reply is not from a serving endpoint is stale; a
// service address without endpoints makes every flow stale; a NodePort flow
// only when the port has endpoints.
func TestStale(t *testing.T) {
	ap := netip.MustParseAddrPort
	set := func(s ...string) map[netip.AddrPort]bool {
		m := map[netip.AddrPort]bool{}
		for _, x := range s {
			m[ap(x)] = true
		}
		return m
	}
	w := Wanted{
		ByAddress: map[netip.AddrPort]map[netip.AddrPort]bool{
			ap("10.96.0.10:53"): set("10.244.1.5:8053"),
			ap("10.96.0.11:53"): set(),
		},
		ByNodePort: map[uint16]map[netip.AddrPort]bool{30053: set("10.244.1.5:8053")},
	}
	for _, tc := range []struct {
		name       string
		dst, reply string
		stale      bool
	}{
		{"to a serving endpoint", "10.96.0.10:53", "10.244.1.5:8053", false},
		{"to an endpoint that went", "10.96.0.10:53", "10.244.2.5:8053", true},
		{"to the endpoint's old port", "10.96.0.10:53", "10.244.1.5:9053", true},
		{"cached while the service had no endpoint", "10.96.0.10:53", "10.96.0.10:53", true},
		{"service without endpoints", "10.96.0.11:53", "10.244.1.5:8053", true},
		{"NodePort to a gone endpoint", "198.51.100.1:30053", "10.244.9.9:8053", true},
		{"NodePort to a serving endpoint", "198.51.100.1:30053", "10.244.1.5:8053", false},
		{"not a service", "10.244.1.5:53", "10.244.1.5:53", false},
	} {
		if got := w.Stale(Entry{OrigDst: ap(tc.dst), ReplySrc: ap(tc.reply)}); got != tc.stale {
			t.Errorf("%s: stale = %v, want %v", tc.name, got, tc.stale)
		}
	}
}
