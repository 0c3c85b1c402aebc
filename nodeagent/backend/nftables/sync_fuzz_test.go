package nftables

import (
	"maps"
	"slices"
	"strings"
	"testing"

	"kpo.dev/kpo/hack/netns"
	"kpo.dev/kpo/nodeagent/backend"
	"kpo.dev/kpo/nodeagent/backend/backendfuzz"
)

// fakeTarget programs the strict fake (backendfuzz.Target).
type fakeTarget struct{ k *FakeKernel }

func (f *fakeTarget) Fresh(t *testing.T) backend.Backend {
	b, k := newFake(t)
	f.k = k
	return b
}

func (f *fakeTarget) Do(fn func() error) error { return fn() }

// List is the fake's dump with the elements sorted (partial syncs append
// them in another order than a full sync).
func (f *fakeTarget) List(*testing.T) string {
	var objs, elems []string
	for _, l := range strings.Split(f.k.Dump(), "\n") {
		if strings.HasPrefix(l, "add element ") {
			elems = append(elems, l)
		} else {
			objs = append(objs, l)
		}
	}
	slices.Sort(elems)
	return strings.Join(append(objs, elems...), "\n")
}

// kernelTarget programs nft in a namespace; partial syncs go over netlink.
type kernelTarget struct{ ns *netns.NS }

func (k *kernelTarget) Fresh(t *testing.T) backend.Backend {
	k.ns.MustRun(t, "nft", "flush", "ruleset")
	var b *Backend
	if err := k.ns.Do(func() error { var err error; b, err = New(testSettings, nil); return err }); err != nil {
		t.Fatal(err)
	}
	return b
}

func (k *kernelTarget) Do(fn func() error) error { return k.ns.Do(fn) }

func (k *kernelTarget) List(t *testing.T) string {
	c := listKpo(t, k.ns)
	var b strings.Builder
	for _, block := range slices.Sorted(maps.Keys(c)) {
		b.WriteString(block + "\n\t" + strings.Join(c[block], "\n\t") + "\n")
	}
	return b.String()
}

// FuzzSync: fuzzed pairs of snapshots through the backend into the strict
// fake (backendfuzz.CheckSyncs). `make fuzz` runs it; its seeds and corpus
// (testdata/fuzz/FuzzSync) run in every `go test` and, as root, against the
// kernel (TestSyncCorpusOnKernel).
func FuzzSync(f *testing.F) {
	backendfuzz.Fuzz(f, func() backendfuzz.Target { return &fakeTarget{} })
}

// TestSyncCorpusOnKernel replays FuzzSync's seeds and committed corpus on the
// kernel of a network namespace: the same invariants, and the fake must
// accept and refuse exactly what the kernel does, also outside the contract.
func TestSyncCorpusOnKernel(t *testing.T) {
	netns.Skip(t)
	backendfuzz.Replay(t, "testdata/fuzz/FuzzSync", backendfuzz.FullParity, func() backendfuzz.Target { return &fakeTarget{} },
		&kernelTarget{ns: netns.New(t, "fuzzreplay")})
}
