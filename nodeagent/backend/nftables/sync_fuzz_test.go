package nftables

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"kpo.dev/kpo/nodeagent/backend"
	"kpo.dev/kpo/nodeagent/model"
	"kpo.dev/kpo/nodeagent/model/modeltest"
	"kpo.dev/kpo/test/fuzzcorpus"
	"kpo.dev/kpo/test/netns"
)

// syncTarget is where checkSyncs programs: the strict fake (fuzzing) or the
// kernel of a network namespace (the corpus replay).
type syncTarget interface {
	// fresh returns a new backend over an empty ruleset.
	fresh(t *testing.T) *Backend
	sync(b *Backend, s *model.Snapshot, full bool) (backend.SyncResult, error)
	// list is the kpo tables, comparable with ==.
	list(t *testing.T) string
}

type fakeTarget struct{ k *FakeKernel }

func (f *fakeTarget) fresh(t *testing.T) *Backend {
	f.k = NewFakeKernel()
	b, err := New(testSettings, nil, WithKernel(f.k))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func (f *fakeTarget) sync(b *Backend, s *model.Snapshot, full bool) (backend.SyncResult, error) {
	return b.Sync(context.Background(), s, full)
}

// list is the fake's dump with the elements sorted (partial syncs append
// them in another order than a full sync).
func (f *fakeTarget) list(*testing.T) string {
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

type kernelTarget struct{ ns *netns.NS }

func (k *kernelTarget) fresh(t *testing.T) *Backend {
	k.ns.MustRun(t, "nft", "flush", "ruleset")
	var b *Backend
	if err := k.ns.Do(func() error { var err error; b, err = New(testSettings, nil); return err }); err != nil {
		t.Fatal(err)
	}
	return b
}

func (k *kernelTarget) sync(b *Backend, s *model.Snapshot, full bool) (res backend.SyncResult, err error) {
	err = k.ns.Do(func() error { res, err = b.Sync(context.Background(), s, full); return err })
	return res, err
}

func (k *kernelTarget) list(t *testing.T) string {
	c := listKpo(t, k.ns)
	var b strings.Builder
	for _, block := range slices.Sorted(maps.Keys(c)) {
		b.WriteString(block + "\n\t" + strings.Join(c[block], "\n\t") + "\n")
	}
	return b.String()
}

// verdicts are whether the first (full) and the second (partial) sync of a
// checkSyncs run were accepted.
type verdicts [2]bool

// checkSyncs decodes two snapshots from data and syncs the first fully and
// the second partially. What must hold:
//   - a snapshot within modeltest.CheckContract is never refused, unless the
//     sync before it programmed one outside the contract (the kernel accepts
//     some conflicts, such as two service ports writing the same element,
//     which leave the backend's record of what it owns wrong); then the sync
//     that follows the refusal (full, since the backend forgot its state)
//     succeeds: the backend repairs itself;
//   - when both are within the contract: syncing the second again
//     partially writes nothing and changes nothing, and fully changes
//     nothing, and the partial result is what a full sync of the second
//     snapshot on an empty ruleset programs (and counts). Outside the
//     contract the backend may hold a wrong record (two service ports
//     writing one element: the first to go deletes it from under the other)
//     until its next full sync, and a partial sync may pass what a full one
//     refuses (one service port writing a key twice with different data).
func checkSyncs(t *testing.T, data []byte, tg syncTarget) verdicts {
	first, second := modeltest.DecodeSyncs(data)
	b := tg.fresh(t)
	var v verdicts
	inContract := true
	for i, step := range []struct {
		s    *model.Snapshot
		full bool
	}{{first, true}, {second, false}} {
		_, err := tg.sync(b, step.s, step.full)
		v[i] = err == nil
		prevInContract := inContract
		inContract = modeltest.CheckContract(step.s) == nil
		switch {
		case err == nil || !inContract:
		case prevInContract:
			t.Fatalf("sync %d refused a snapshot within the contract: %v\nfirst:\n%s\nsecond:\n%s", i+1, err, describe(first), describe(second))
		default:
			if _, err2 := tg.sync(b, step.s, false); err2 != nil {
				t.Fatalf("sync %d refused a snapshot within the contract after one outside it (%v), and so did the next sync: %v\n%s",
					i+1, err, err2, describe(step.s))
			}
			v[i] = true
		}
	}
	if !v[1] || modeltest.CheckContract(first) != nil || modeltest.CheckContract(second) != nil {
		return v
	}
	programmed := tg.list(t)
	res, err := tg.sync(b, second, false)
	if err != nil || res.ServicePortsWritten != 0 {
		t.Fatalf("second partial sync of the same snapshot: %+v, %v", res, err)
	}
	if got := tg.list(t); got != programmed {
		t.Fatalf("second partial sync of the same snapshot changed the ruleset:\n%s", lineDiff(got, programmed))
	}
	if _, err := tg.sync(b, second, true); err != nil {
		t.Fatalf("full resync: %v", err)
	}
	if got := tg.list(t); got != programmed {
		t.Fatalf("full resync of the same snapshot changed the ruleset:\n%s\n%s", lineDiff(got, programmed), describe(second))
	}
	fresh := tg.fresh(t)
	full, err := tg.sync(fresh, second, true)
	if err != nil {
		t.Fatalf("full sync on an empty ruleset refused what the partial sync programmed: %v\n%s", err, describe(second))
	}
	if got := tg.list(t); got != programmed || full.Rules != res.Rules {
		t.Fatalf("partial sync (%d rules) differs from a full sync (%d rules):\n%s\nfirst:\n%s\nsecond:\n%s",
			res.Rules, full.Rules, lineDiff(programmed, got), describe(first), describe(second))
	}
	return v
}

// lineDiff lists the lines only in got (+) and only in want (-).
func lineDiff(got, want string) string {
	g, w := strings.Split(got, "\n"), strings.Split(want, "\n")
	var out []string
	for _, l := range g {
		if !slices.Contains(w, l) {
			out = append(out, "+ "+l)
		}
	}
	for _, l := range w {
		if !slices.Contains(g, l) {
			out = append(out, "- "+l)
		}
	}
	if len(out) == 0 {
		return "(the same lines, in another order)"
	}
	return strings.Join(out, "\n")
}

// describe prints a snapshot for a failure message.
func describe(s *model.Snapshot) string {
	var b strings.Builder
	b.WriteString("node: " + strings.TrimSpace(strings.ReplaceAll(fmt.Sprintf("%+v", s.Node), "\n", " ")) + "\n")
	for _, sp := range s.Services {
		b.WriteString(fmt.Sprintf("%+v", *sp) + "\n")
	}
	return b.String()
}

// FuzzSync: fuzzed pairs of snapshots through the backend into the strict
// fake (checkSyncs). `make fuzz` runs it; its corpus (testdata/fuzz/FuzzSync)
// runs in every `go test` and, as root, against the kernel
// (TestSyncCorpusOnKernel).
func FuzzSync(f *testing.F) {
	for _, seed := range syncSeeds() {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		checkSyncs(t, data, &fakeTarget{})
	})
}

// syncSeeds start the fuzzer off: empty, one ordinary service, and
// pseudo-random inputs long enough to decode several service ports each
// (the fuzzer's mutations grow short inputs slowly).
func syncSeeds() [][]byte {
	seeds := [][]byte{nil, {0, 0, 0, 1}}
	r := rand.New(rand.NewPCG(11, 11))
	for range 24 {
		b := make([]byte, 120)
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		seeds = append(seeds, b)
	}
	return seeds
}

// TestSyncCorpusOnKernel replays FuzzSync's seeds and committed corpus on the kernel of
// a network namespace: the same invariants (checkSyncs), and the fake must
// accept and refuse exactly what the kernel does, also outside the contract.
func TestSyncCorpusOnKernel(t *testing.T) {
	netns.Skip(t)
	entries, err := fuzzcorpus.Read("testdata/fuzz/FuzzSync")
	if err != nil {
		t.Fatal(err)
	}
	for i, s := range syncSeeds() {
		entries = append(entries, fuzzcorpus.Entry{Name: fmt.Sprintf("seed%d", i), Data: s})
	}
	kt := &kernelTarget{ns: netns.New(t, "fuzzreplay")}
	for _, e := range entries {
		t.Run(e.Name, func(t *testing.T) {
			want := checkSyncs(t, e.Data, &fakeTarget{})
			got := checkSyncs(t, e.Data, kt)
			t.Logf("accepted by the kernel: first sync %v, second %v", got[0], got[1])
			if got != want {
				first, second := modeltest.DecodeSyncs(e.Data)
				t.Fatalf("the kernel accepted the syncs %v, the fake %v\nfirst:\n%s\nsecond:\n%s", got, want, describe(first), describe(second))
			}
		})
	}
}
