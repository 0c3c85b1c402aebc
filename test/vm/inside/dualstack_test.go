//go:build vmtest

package inside

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"kpo.dev/kpo/nodeagent/backend/ipvs"
	"kpo.dev/kpo/nodeagent/model"
	"kpo.dev/kpo/test/netns"
)

// IPv6 addresses of the address plan: ClusterIPs in fd10:96::/112, external
// IPs in 2001:db8:2::/64.
const (
	clusterIP6      = "fd10:96::10"
	emptyClusterIP6 = "fd10:96::11"
	externalIP6     = "2001:db8:2::10"
)

// TestDualStack: one backend programs both families. A dual-stack Service's
// IPv6 service port works like the IPv4 one at the same time: ClusterIP from a
// pod (its address kept: the pod CIDR fd10:244::/48 is not masqueraded),
// NodePort on the node's IPv6 address and an IPv6 external IP from the client
// (masqueraded), both bound as needed (IPv6 VIPs on kpo-ipvs0), and an IPv6
// service port without endpoints refused by ip6tables' REJECT (KPO6- sets).
func TestDualStack(t *testing.T) {
	e := newEnvFamilies(t, 3, ipvs.Config{}, model.IPv4, model.IPv6)
	h := e.ipvsHandle()
	v4 := svc("web", clusterIP, 80, e.ep(1), e.ep(2))
	v4.NodePort = 30080
	v6 := svc("web", clusterIP6, 80, e.ep6(1), e.ep6(2))
	v6.NodePort = 30080
	v6.ExternalIPs = []netip.Addr{mustAddr(externalIP6)}
	e.sync(snapOf(v4, v6, svc("empty", emptyClusterIP6, 80)), true)

	dummy := e.dummyAddrs()
	for _, a := range []string{clusterIP, clusterIP6, externalIP6, emptyClusterIP6} {
		if !slices.Contains(dummy, a) {
			t.Errorf("kpo-ipvs0 holds %v, want %s among them", dummy, a)
		}
	}
	if ds := e.dests(h, clusterIP6, 80); len(ds) != 2 {
		t.Fatalf("IPv6 ClusterIP virtual server: destinations %v, want 2", ds)
	}
	if ds := e.dests(h, netns.NodeIP6, 30080); len(ds) != 2 {
		t.Fatalf("IPv6 NodePort virtual server: destinations %v, want 2", ds)
	}

	pod := e.top.Pods[0]
	if seen := dialFrom(t, pod.NS, "tcp6", "", "["+clusterIP6+"]:80", 6); len(seen) != 2 {
		t.Fatalf("IPv6 ClusterIP: want both endpoints, got %v", seen)
	}
	r, err := pod.Dial("tcp6", "["+clusterIP6+"]:80", dialTimeout)
	if err != nil {
		t.Fatal(err)
	}
	if r.ClientIP() != pod.IP6 {
		t.Errorf("IPv6 ClusterIP: endpoint saw %s, want the pod's own %s", r.ClientIP(), pod.IP6)
	}
	// The IPv4 half of the same Service, at the same time.
	if seen := dialN(t, pod.NS, clusterIP+":80", 4); len(seen) != 2 {
		t.Fatalf("IPv4 ClusterIP of the dual-stack service: want both endpoints, got %v", seen)
	}

	client := e.top.Client
	for _, addr := range []string{"[" + netns.NodeIP6 + "]:30080", "[" + externalIP6 + "]:80"} {
		if seen := dialFrom(t, client, "tcp6", "", addr, 4); len(seen) != 2 {
			t.Fatalf("%s: want both endpoints, got %v", addr, seen)
		}
		r, err := client.Dial("tcp6", addr, dialTimeout)
		if err != nil {
			t.Fatal(err)
		}
		if r.ClientIP() == netns.ClientIP6 {
			t.Errorf("%s, policy Cluster: endpoint saw the client's own %s, want masquerade", addr, r.ClientIP())
		}
	}
	mustFail(t, pod.NS, "tcp6", "", "["+emptyClusterIP6+"]:80", netns.ErrRefused)

	// No kubelet hint in the VM: the flavour kube-proxy's image would pick, nft.
	nat := e.top.Node.MustRun(t, "ip6tables-nft", "-t", "nat", "-S")
	if !strings.Contains(nat, "KPO6-CLUSTER-IP") || !strings.Contains(nat, "KPO-IPVS-SERVICES") {
		t.Errorf("ip6tables nat table without kpo's chains:\n%s", nat)
	}
}
