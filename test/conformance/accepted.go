package conformance

import (
	"net"
	"slices"
	"strings"
)

// Acceptance is a difference from kube-proxy that kpo makes on purpose. Each
// is listed, with the same ID and its reason, in docs/conformance.md; the
// default is to match kube-proxy, and a difference not listed fails the run.
type Acceptance struct {
	ID  string
	Why string
	// Match says whether a confirmed difference is this one.
	Match func(d Diff) bool
}

// acceptances is the list docs/conformance.md explains.
var acceptances = []Acceptance{
	{
		ID: "ipv6-localhost-nodeport",
		Why: "iptables mode: kpo does not capture NodePorts on ::1 (IPv6 has no route_localnet, so a " +
			"translated packet is dropped as a martian); a connection to [::1]:<nodePort> is refused at " +
			"once instead of timing out",
		Match: func(d Diff) bool {
			return d.Mode == "iptables" && d.Probe.Target == "nodePort@localhost" && isIPv6(d.Probe.Addr) &&
				slices.Equal(d.Ref.Outcomes, []string{"timeout"}) && slices.Equal(d.Kpo.Outcomes, []string{"refused"})
		},
	},
}

func isIPv6(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	return err == nil && strings.Contains(host, ":")
}

func accepted(d Diff) *Acceptance {
	for i := range acceptances {
		if acceptances[i].Match(d) {
			return &acceptances[i]
		}
	}
	return nil
}
