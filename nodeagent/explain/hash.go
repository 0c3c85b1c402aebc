package explain

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"maps"
	"net/netip"
	"slices"
	"weak"

	"kpo.dev/kpo/nodeagent/model"
)

// ModelHash identifies a node's model: a digest of what its service ports
// ask the kernel for (addresses, policies, resolved endpoint sets) and one
// of the node's settings (NodePort addresses, detect-local, service
// ranges). Equal digests, equal model. Agents report the ModelHash of their
// last successful sync (ProxyNodeStatus status.programmedModel); kubectl kpo
// compares it with the ModelHash of the model it builds from the objects it
// reads. Both come from Hasher, so they cannot drift apart.
type ModelHash struct {
	Services string `json:"services"`
	Node     string `json:"node"`
}

func (h ModelHash) String() string { return h.Services + "/" + h.Node }

// Hash is the ModelHash of snap, by a fresh Hasher.
func Hash(snap *model.Snapshot) ModelHash {
	return NewHasher().Sum(snap)
}

// Hasher computes ModelHashes of successive snapshots, re-hashing only the
// service ports that changed: a ServicePort in a Snapshot is immutable and
// its pointer is reused while it does not change (model.ServicePort), so a
// port's digest is cached with its pointer, and the ports' digests are combined
// in an order-independent sum (keys are unique in a Snapshot, so nothing
// cancels out). After a one-port change at 10k Services, a Sum costs a map
// lookup per port and one port's JSON (BenchmarkHasherOneChange).
//
// The cache holds, per key, a weak pointer to the port its digest was made
// of: it keeps no replaced port (and its endpoints) alive between two Sums,
// which may be minutes apart. A weak pointer yields only the object it was
// made from, never another one allocated at the same address once the
// first is reclaimed, so a stale digest cannot be reused.
//
// A Hasher is not safe for concurrent use.
type Hasher struct {
	ports map[model.ServicePortKey]*portDigest
	// generation marks the entries used by the current Sum; the others are
	// dropped at its end.
	generation uint64
}

type portDigest struct {
	of         weak.Pointer[model.ServicePort]
	sum        [sha256.Size]byte
	generation uint64
}

// NewHasher returns a Hasher with an empty cache.
func NewHasher() *Hasher {
	return &Hasher{ports: map[model.ServicePortKey]*portDigest{}}
}

// Sum returns snap's ModelHash.
func (h *Hasher) Sum(snap *model.Snapshot) ModelHash {
	h.generation++
	var acc [4]uint64
	for key, sp := range snap.Services {
		d := h.ports[key]
		switch {
		case d == nil:
			d = &portDigest{of: weak.Make(sp), sum: portSum(sp)}
			h.ports[key] = d
		case d.of.Value() != sp:
			d.of, d.sum = weak.Make(sp), portSum(sp)
		}
		d.generation = h.generation
		for i := range acc {
			acc[i] += binary.LittleEndian.Uint64(d.sum[8*i:])
		}
	}
	if len(h.ports) > len(snap.Services) {
		maps.DeleteFunc(h.ports, func(_ model.ServicePortKey, d *portDigest) bool { return d.generation != h.generation })
	}
	services := sha256.New()
	services.Write([]byte("kpo-services-v1"))
	for _, a := range acc {
		services.Write(binary.LittleEndian.AppendUint64(nil, a))
	}
	services.Write(binary.LittleEndian.AppendUint64(nil, uint64(len(snap.Services))))
	return ModelHash{Services: short(services.Sum(nil)), Node: nodeHash(snap.Node)}
}

// portSum is one service port's digest: its JSON (which names its key).
func portSum(sp *model.ServicePort) [sha256.Size]byte {
	b, _ := json.Marshal(sp)
	return sha256.Sum256(b)
}

// nodeHash is the digest of the node's settings in a canonical form: the
// agent collects some lists from maps (ServiceCIDRs by object name) and
// kubectl kpo from API lists, so lists are sorted and deduplicated, and an
// empty CIDR list is no list. For NodePortIPs a present empty list (no
// address) and an absent one (every address) differ and stay apart.
func nodeHash(n model.NodeInfo) string {
	canonical := struct {
		Name                 string
		NodePortIPs          map[model.Family][]netip.Addr
		ServiceCIDRs         map[model.Family][]netip.Prefix
		ClusterCIDRs         map[model.Family][]netip.Prefix
		LocalInterface       string
		LocalInterfacePrefix bool
	}{Name: n.Name, LocalInterface: n.LocalInterface, LocalInterfacePrefix: n.LocalInterfacePrefix,
		NodePortIPs: map[model.Family][]netip.Addr{}, ServiceCIDRs: prefixSets(n.ServiceCIDRs), ClusterCIDRs: prefixSets(n.ClusterCIDRs)}
	for f, ips := range n.NodePortIPs {
		if ips != nil {
			canonical.NodePortIPs[f] = slices.Compact(slices.SortedFunc(slices.Values(ips), netip.Addr.Compare))
			if canonical.NodePortIPs[f] == nil {
				canonical.NodePortIPs[f] = []netip.Addr{}
			}
		}
	}
	b, _ := json.Marshal(canonical)
	sum := sha256.Sum256(append([]byte("kpo-node-v1"), b...))
	return short(sum[:])
}

func prefixSets(m map[model.Family][]netip.Prefix) map[model.Family][]netip.Prefix {
	out := map[model.Family][]netip.Prefix{}
	for f, ps := range m {
		if len(ps) == 0 {
			continue
		}
		sorted := slices.Clone(ps)
		for i := range sorted {
			sorted[i] = sorted[i].Masked()
		}
		slices.SortFunc(sorted, func(a, b netip.Prefix) int {
			if c := a.Addr().Compare(b.Addr()); c != 0 {
				return c
			}
			return a.Bits() - b.Bits()
		})
		out[f] = slices.Compact(sorted)
	}
	return out
}

// short is a digest's first 64 bits in hex: enough to tell models apart,
// short enough to read in a status.
func short(sum []byte) string { return hex.EncodeToString(sum[:8]) }

// ServiceHash is the digest of one Service's ports in the model ("" when
// the model has none).
func ServiceHash(snap *model.Snapshot, namespace, name string) string {
	h := sha256.New()
	n := 0
	for _, k := range sortedKeys(snap.Services) {
		if k.Namespace == namespace && k.Name == name {
			sum := portSum(snap.Services[k])
			h.Write(sum[:])
			n++
		}
	}
	if n == 0 {
		return ""
	}
	return short(h.Sum(nil))
}

func sortedKeys(m map[model.ServicePortKey]*model.ServicePort) []model.ServicePortKey {
	return slices.SortedFunc(maps.Keys(m), func(a, b model.ServicePortKey) int {
		switch {
		case a.String() < b.String():
			return -1
		case a.String() > b.String():
			return 1
		}
		return 0
	})
}
