package nftables

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"kpo.dev/kpo/hack/netns"
)

// TestKernelHairpinPerEndpointPort, on the real kernel: a pod reaching itself
// through a Service is masqueraded when that Service lists it as a local
// endpoint, and only then, whatever other Services list it — kube-proxy's
// hairpin-connections set is keyed by endpoint address, protocol and port.
// Here one Service lists pod0 (TCP 8080) with its node, another (UDP 8082)
// without nodeName, so not as local: kube-proxy does not masquerade that
// hairpin, the pod answers itself directly and drops its own reply (timeout).
// The agent before keyed the set by address only and answered (conformance
// batch 251–275, seed 257). The table starts as that agent left it, with its
// "hairpin" set: the first full sync replaces it.
func TestKernelHairpinPerEndpointPort(t *testing.T) {
	netns.Skip(t)
	top := netns.NewOneNode(t, 1)
	node, pod0 := top.Node, top.Pods[0]
	pod0.ServeEcho(t, "tcp", ":8080", "pod0")
	pod0.ServeEcho(t, "udp", ":8082", "pod0")

	old := filepath.Join(t.TempDir(), "old.nft")
	table := `table ip kpo {
	set hairpin { type ipv4_addr . ipv4_addr; elements = { ` + pod0.IP4 + ` . ` + pod0.IP4 + ` } }
	chain mark-for-masquerade { meta mark set meta mark or 0x4000; }
	chain masquerading { ip saddr . ip daddr @hairpin jump mark-for-masquerade; }
}
`
	if err := os.WriteFile(old, []byte(table), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := node.Run("nft", "-f", old); err != nil {
		t.Fatalf("old table: %v: %s", err, out)
	}

	web := svc("web", "10.96.0.1", 80, ep(pod0.IP4, 8080, true))
	dns := svc("dns", "10.96.0.2", 53, ep(pod0.IP4, 8082, false))
	dns.Protocol, dns.Key.Protocol = corev1.ProtocolUDP, corev1.ProtocolUDP
	b, _ := newSpiedBackend(t, node)
	kernelSync(t, node, b, snapshot(testNode, web, dns), true)

	out, err := node.Run("nft", "list", "table", "ip", "kpo")
	if err != nil || strings.Contains(out, "set hairpin {") || !strings.Contains(out, "set hairpin-connections {") {
		t.Fatalf("the old hairpin set is not replaced (%v):\n%s", err, out)
	}
	if r, err := pod0.Dial("tcp", "10.96.0.1:80", dialTimeout); err != nil || r.Server != "pod0" || r.ClientIP() == pod0.IP4 {
		t.Errorf("hairpin through the Service listing pod0 as local: want pod0 masqueraded, got %+v %v", r, err)
	}
	if r, err := pod0.Dial("udp", "10.96.0.2:53", dialTimeout); !errors.Is(err, netns.ErrTimeout) {
		t.Errorf("hairpin through the Service listing pod0 without its node: want a timeout (as kube-proxy), got %+v %v", r, err)
	}
}
