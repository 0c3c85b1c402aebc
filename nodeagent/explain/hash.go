package explain

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"maps"
	"slices"

	"kpo.dev/kpo/nodeagent/model"
)

// Hash is a digest of what a node's model asks the kernel for: every
// service port (its resolved sets, VIPs and policies) and the node's
// settings. An agent that reports the hash of its last successful sync has
// programmed exactly the model that gives the same hash; kubectl kpo
// compares it with the model it builds from the objects it reads.
func Hash(snap *model.Snapshot) string {
	h := sha256.New()
	for _, k := range sortedKeys(snap.Services) {
		b, _ := json.Marshal(snap.Services[k])
		h.Write(b)
		h.Write([]byte{0})
	}
	b, _ := json.Marshal(snap.Node)
	h.Write(b)
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// ServiceHash is the digest of one Service's ports in the model ("" when
// the model has none).
func ServiceHash(snap *model.Snapshot, namespace, name string) string {
	h := sha256.New()
	n := 0
	for _, k := range sortedKeys(snap.Services) {
		if k.Namespace == namespace && k.Name == name {
			b, _ := json.Marshal(snap.Services[k])
			h.Write(b)
			h.Write([]byte{0})
			n++
		}
	}
	if n == 0 {
		return ""
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
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
