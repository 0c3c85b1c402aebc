package explain

import (
	"fmt"
	"net/netip"
	"runtime"
	"testing"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
	"kpo.dev/kpo/nodeagent/model"
	"kpo.dev/kpo/nodeagent/model/modeltest"
)

// bigSnapshot is n service ports of two endpoints each, as the agent holds
// them at n Services.
func bigSnapshot(n int) *model.Snapshot {
	sps := make([]*model.ServicePort, 0, n)
	for i := range n {
		sps = append(sps, modeltest.ServicePort("ns", fmt.Sprintf("svc-%d", i), fmt.Sprintf("10.96.%d.%d", i/250, i%250+1), 80,
			model.Endpoint{IP: netip.AddrFrom4([4]byte{10, 244, byte(i / 250), byte(i%250 + 1)}), Port: 8080, Ready: true},
			model.Endpoint{IP: netip.AddrFrom4([4]byte{10, 245, byte(i / 250), byte(i%250 + 1)}), Port: 8080, Ready: true}))
	}
	return modeltest.Snapshot(model.NodeInfo{Name: "node-1", ClusterCIDRs: modeltest.PodNetworks(),
		ServiceCIDRs: modeltest.ServiceNetworks(), NodePortIPs: map[model.Family][]netip.Addr{}}, sps...)
}

// withEndpoint is a copy of s whose port key gained an endpoint: a new
// ServicePort, as the model builder makes one when anything changes.
func withEndpoint(s *model.Snapshot, key model.ServicePortKey, ip string) *model.Snapshot {
	c := *s.Services[key]
	c.ClusterEndpoints = append(append([]model.Endpoint(nil), c.ClusterEndpoints...),
		model.Endpoint{IP: netip.MustParseAddr(ip), Port: 8080, Ready: true})
	return modeltest.With(s, &c)
}

func anyKey(s *model.Snapshot) model.ServicePortKey {
	for k := range s.Services {
		return k
	}
	panic("empty snapshot")
}

// TestHasherSameModelSameHash: equal models hash alike whatever the
// hasher's cache holds, however the maps were filled, and whether the
// ports are shared or equal copies.
func TestHasherSameModelSameHash(t *testing.T) {
	a := bigSnapshot(300)
	fresh := Hash(a)

	// Equal copies of every port, inserted in another order.
	b := &model.Snapshot{Node: a.Node, Services: map[model.ServicePortKey]*model.ServicePort{}}
	keys := sortedKeys(a.Services)
	for i := len(keys) - 1; i >= 0; i-- {
		c := *a.Services[keys[i]]
		b.Services[keys[i]] = &c
	}
	// The node's lists in another order, with a duplicate, and an empty family.
	b.Node.ServiceCIDRs = map[model.Family][]netip.Prefix{
		model.IPv6: a.Node.ServiceCIDRs[model.IPv6],
		model.IPv4: append(append([]netip.Prefix{}, a.Node.ServiceCIDRs[model.IPv4]...), a.Node.ServiceCIDRs[model.IPv4]...),
	}
	b.Node.ClusterCIDRs = map[model.Family][]netip.Prefix{model.IPv4: a.Node.ClusterCIDRs[model.IPv4], model.IPv6: a.Node.ClusterCIDRs[model.IPv6]}
	if got := Hash(b); got != fresh {
		t.Fatalf("equal models: %v and %v", got, fresh)
	}

	// A hasher that has seen other models (its cache full of their ports).
	h := NewHasher()
	other := bigSnapshot(500)
	h.Sum(other)
	h.Sum(withEndpoint(other, anyKey(other), "10.246.0.1"))
	if got := h.Sum(a); got != fresh {
		t.Fatalf("a hasher with a warm cache: %v, a fresh one %v", got, fresh)
	}
	if got := h.Sum(b); got != fresh {
		t.Fatalf("the same model again: %v, want %v", got, fresh)
	}
}

// TestHasherOneEndpointChangesIt: one endpoint more in one port, one port
// less, or another node setting changes the hash; changing back restores
// it (through the cache too).
func TestHasherOneEndpointChangesIt(t *testing.T) {
	h := NewHasher()
	a := bigSnapshot(300)
	before := h.Sum(a)
	key := anyKey(a)
	b := withEndpoint(a, key, "10.246.0.1")
	after := h.Sum(b)
	if after.Services == before.Services {
		t.Fatal("a new endpoint does not change the services hash")
	}
	if after.Node != before.Node {
		t.Fatal("a new endpoint changes the node hash")
	}
	if after != Hash(b) {
		t.Fatalf("incremental %v, fresh %v", after, Hash(b))
	}
	if got := h.Sum(a); got != before {
		t.Fatalf("back to the first model: %v, want %v", got, before)
	}
	if got := h.Sum(modeltest.Without(a, a.Services[key])); got.Services == before.Services {
		t.Fatal("a removed port does not change the hash")
	}

	// Swapping two ports' endpoint sets changes it: digests are per key.
	c := modeltest.With(a)
	keys := sortedKeys(a.Services)
	p, q := *a.Services[keys[0]], *a.Services[keys[1]]
	p.ClusterEndpoints, q.ClusterEndpoints = q.ClusterEndpoints, p.ClusterEndpoints
	c.Services[keys[0]], c.Services[keys[1]] = &p, &q
	if h.Sum(c).Services == before.Services {
		t.Fatal("two ports that swapped their endpoints hash as before")
	}

	// Node settings: a NodePort address list that is present but empty
	// (none) differs from an absent one (every address).
	d := modeltest.With(a)
	d.Node.NodePortIPs = map[model.Family][]netip.Addr{model.IPv4: {}}
	if got := h.Sum(d); got.Node == before.Node || got.Services != before.Services {
		t.Fatalf("NodePort addresses none vs every: %v, before %v", got, before)
	}
	d.Node.NodePortIPs = nil
	if got := h.Sum(d); got.Node != before.Node {
		t.Fatalf("no NodePort address map and an empty one: %v, want %v", got, before)
	}
}

// TestHasherReusesDigests: after a one-port change only that port is
// hashed again; a port that left is dropped from the cache.
func TestHasherReusesDigests(t *testing.T) {
	h := NewHasher()
	a := bigSnapshot(200)
	h.Sum(a)
	if len(h.ports) != 200 {
		t.Fatalf("%d cached digests, want 200", len(h.ports))
	}
	key := anyKey(a)
	b := withEndpoint(a, key, "10.246.0.1")
	allocs := testing.AllocsPerRun(5, func() { h.Sum(b) })
	h.Sum(b)
	if len(h.ports) != 200 {
		t.Fatalf("%d cached digests after a one-port change, want 200 (the replaced port dropped)", len(h.ports))
	}
	// Re-hashing every port would allocate (JSON) hundreds of times.
	if allocs > 50 {
		t.Fatalf("a Sum after a one-port change allocates %.0f times: the cache is not used", allocs)
	}
	// A cached digest is never reused for another port, also once the port
	// it was made for is gone (weak pointers).
	runtime.GC()
	c := withEndpoint(b, key, "10.246.0.2")
	if h.Sum(c) != Hash(c) {
		t.Fatal("after a GC the cached hasher and a fresh one disagree")
	}
}

// BenchmarkHasherOneChange is the agent's cost of the model hash in a
// report written after a one-port change, at 10k Services (two endpoints
// each): a map lookup per port and one port's JSON.
func BenchmarkHasherOneChange(b *testing.B) {
	snaps := [2]*model.Snapshot{bigSnapshot(10000)}
	key := anyKey(snaps[0])
	snaps[1] = withEndpoint(snaps[0], key, "10.246.0.1")
	h := NewHasher()
	h.Sum(snaps[0])
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		h.Sum(snaps[(i+1)%2])
	}
}

// BenchmarkHasherCold is the first Sum at 10k Services (an agent's first
// report after its first sync, and what kubectl kpo pays per node).
func BenchmarkHasherCold(b *testing.B) {
	snap := bigSnapshot(10000)
	b.ReportAllocs()
	for b.Loop() {
		NewHasher().Sum(snap)
	}
}

// TestCheckProgrammed: the node's report against the model explained.
func TestCheckProgrammed(t *testing.T) {
	m := ModelHash{Services: "s1", Node: "n1"}
	for _, tc := range []struct {
		reported *kpov1.ProgrammedModel
		want     ProgrammedState
	}{
		{nil, NotReported},
		{&kpov1.ProgrammedModel{}, NotReported},
		{&kpov1.ProgrammedModel{Services: "s1", Node: "n1"}, ModelProgrammed},
		{&kpov1.ProgrammedModel{Services: "s1", Node: "n2"}, NodeSettingsDiffer},
		{&kpov1.ProgrammedModel{Services: "s2", Node: "n1"}, OtherModel},
	} {
		if got := CheckProgrammed(&kpov1.ProxyNodeReport{ProgrammedModel: tc.reported}, m); got.State != tc.want || got.Model != m {
			t.Errorf("reported %+v: %+v, want %s", tc.reported, got, tc.want)
		}
	}
}
