package iptables

import (
	"maps"
	"slices"
	"strings"
	"testing"

	"kpo.dev/kpo/hack/netns"
	"kpo.dev/kpo/nodeagent/backend"
	"kpo.dev/kpo/nodeagent/backend/backendfuzz"
	"kpo.dev/kpo/nodeagent/model"
)

var fuzzTables = []string{tableNAT, tableFilter}

// fakeTarget programs the Fake (backendfuzz.Target).
type fakeTarget struct{ f *Fake }

func (f *fakeTarget) Fresh(t *testing.T) backend.Backend {
	b, fake := newFakeBackend(t, testSettings)
	f.f = fake
	return b
}

func (f *fakeTarget) Do(fn func() error) error { return fn() }

func (f *fakeTarget) List(*testing.T) string {
	var b strings.Builder
	for _, fam := range []model.Family{model.IPv4, model.IPv6} {
		for _, table := range fuzzTables {
			b.WriteString(fam.String() + " " + table + "\n" + f.f.Dump(fam, table))
		}
	}
	return b.String()
}

// kernelTarget programs one iptables variant in a namespace.
type kernelTarget struct {
	ns      *netns.NS
	variant Variant
}

func (k *kernelTarget) Fresh(t *testing.T) backend.Backend {
	for _, fam := range []model.Family{model.IPv4, model.IPv6} {
		cmd, _ := k.variant.binaries(fam)
		for _, table := range fuzzTables {
			k.ns.MustRun(t, cmd, "-t", table, "-F")
			k.ns.MustRun(t, cmd, "-t", table, "-X")
		}
	}
	var b *Backend
	if err := k.ns.Do(func() error { var err error; b, err = New(testSettings, nil, WithVariant(k.variant)); return err }); err != nil {
		t.Fatal(err)
	}
	return b
}

func (k *kernelTarget) Do(fn func() error) error { return k.ns.Do(fn) }

// List is iptables-save of both families, chains sorted (a partial sync
// creates them in another order than a full one), rules in order.
func (k *kernelTarget) List(t *testing.T) string {
	var b strings.Builder
	for _, fam := range []model.Family{model.IPv4, model.IPv6} {
		cmd, _ := k.variant.binaries(fam)
		chains := map[string][]string{}
		table := ""
		for _, l := range strings.Split(k.ns.MustRun(t, cmd+"-save"), "\n") {
			switch {
			case strings.HasPrefix(l, "*"):
				table = l[1:]
			case strings.HasPrefix(l, ":"):
				f := strings.Fields(l[1:])
				chains[table+" "+f[0]+" "+f[1]] = nil
			case strings.HasPrefix(l, "-A "):
				name := table + " " + strings.Fields(l)[1]
				chains[name] = append(chains[name], l)
			}
		}
		for _, c := range slices.Sorted(maps.Keys(chains)) {
			b.WriteString(fam.String() + " " + c + "\n\t" + strings.Join(chains[c], "\n\t") + "\n")
		}
	}
	return b.String()
}

// FuzzSync: fuzzed pairs of snapshots through the backend into the Fake
// (backendfuzz.CheckSyncs). `make fuzz` runs it; its seeds and corpus
// (testdata/fuzz/FuzzSync) run in every `go test` and, as root, against
// iptables-nft and iptables-legacy (TestSyncCorpusOnKernel).
func FuzzSync(f *testing.F) {
	backendfuzz.Fuzz(f, func() backendfuzz.Target { return &fakeTarget{} })
}

// TestSyncCorpusOnKernel replays FuzzSync's seeds and committed corpus with
// each iptables variant in a network namespace: the same invariants, and the
// Fake must refuse what iptables-restore refuses (it may refuse more outside
// the contract: iptables-restore takes a UDP port 70000 as 4464).
func TestSyncCorpusOnKernel(t *testing.T) {
	netns.Skip(t)
	for _, v := range []Variant{VariantNFT, VariantLegacy} {
		t.Run(string(v), func(t *testing.T) {
			backendfuzz.Replay(t, "testdata/fuzz/FuzzSync", backendfuzz.RefusesWhatKernelRefuses, func() backendfuzz.Target { return &fakeTarget{} },
				&kernelTarget{ns: netns.New(t, "iptfuzz"), variant: v})
		})
	}
}
