// Package backendfuzz is the harness the backends' fuzz targets share: two
// consecutive snapshots decoded from fuzzed bytes (modeltest.DecodeSyncs)
// are synced into a Target, the backend's strict fake while fuzzing or the
// kernel of a network namespace when the committed corpus is replayed, and
// CheckSyncs asserts what must hold whatever the input.
package backendfuzz

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"kpo.dev/kpo/nodeagent/backend"
	"kpo.dev/kpo/nodeagent/backend/backendtest"
	"kpo.dev/kpo/nodeagent/model"
	"kpo.dev/kpo/nodeagent/model/modeltest"
	"kpo.dev/kpo/test/fuzzcorpus"
)

// Target is where a backend programs.
type Target interface {
	// Fresh returns a new backend over an empty ruleset.
	Fresh(t *testing.T) backend.Backend
	// Do runs fn where the target's kernel is (a namespace: netns.NS.Do).
	Do(fn func() error) error
	// List is the backend's rules, comparable with ==: equal rules, equal text.
	List(t *testing.T) string
}

// syncIn syncs s into b where tg's kernel is, as the agent would
// (backendtest.Sync: the change set since b's last successful sync).
func syncIn(tg Target, b backend.Backend, s *model.Snapshot, full bool) (res backend.SyncResult, err error) {
	err = tg.Do(func() error {
		res, err = backendtest.Sync(context.Background(), b, s, full)
		return err
	})
	return res, err
}

// Fuzz is a backend's FuzzSync: the seeds, then fuzzed pairs of snapshots
// through CheckSyncs into the target newTarget makes (the strict fake).
func Fuzz(f *testing.F, newTarget func() Target) {
	for _, seed := range Seeds() {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		CheckSyncs(t, data, newTarget())
	})
}

// Verdicts are whether the first (full) and the second (partial) sync of a
// CheckSyncs run were accepted.
type Verdicts [2]bool

// CheckSyncs decodes two snapshots from data and syncs the first fully and
// the second partially. What must hold:
//   - a snapshot within modeltest.CheckContract is never refused, unless the
//     sync before it programmed one outside the contract (the kernel accepts
//     some conflicts, which can leave the backend's record of what it owns
//     wrong); then the sync that follows the refusal (full, since the
//     backend forgot its state) succeeds: the backend repairs itself;
//   - when both are within the contract: syncing the second again
//     partially writes nothing and changes nothing, and fully changes
//     nothing, and the partial result is what a full sync of the second
//     snapshot on an empty ruleset programs (and counts). Outside the
//     contract a backend may hold a wrong record (two service ports writing
//     one element: the first to go deletes it from under the other) until
//     its next full sync, and a partial sync may pass what a full one
//     refuses (one service port writing a key twice with different data).
func CheckSyncs(t *testing.T, data []byte, tg Target) Verdicts {
	t.Helper()
	first, second := modeltest.DecodeSyncs(data)
	b := tg.Fresh(t)
	var v Verdicts
	inContract := true
	for i, step := range []struct {
		s    *model.Snapshot
		full bool
	}{{first, true}, {second, false}} {
		_, err := syncIn(tg, b, step.s, step.full)
		v[i] = err == nil
		prevInContract := inContract
		inContract = modeltest.CheckContract(step.s) == nil
		switch {
		case err == nil || !inContract:
		case prevInContract:
			t.Fatalf("sync %d refused a snapshot within the contract: %v\n%s", i+1, err, describePair(first, second))
		default:
			if _, err2 := syncIn(tg, b, step.s, false); err2 != nil {
				t.Fatalf("sync %d refused a snapshot within the contract after one outside it (%v), and so did the next sync: %v\n%s",
					i+1, err, err2, describePair(first, second))
			}
			v[i] = true
		}
	}
	if !v[1] || modeltest.CheckContract(first) != nil || modeltest.CheckContract(second) != nil {
		return v
	}
	checkIdempotent(t, tg, b, first, second)
	return v
}

// checkIdempotent: second is programmed (partially, after first); syncing
// it again changes nothing, and a full sync on an empty ruleset agrees.
func checkIdempotent(t *testing.T, tg Target, b backend.Backend, first, second *model.Snapshot) {
	t.Helper()
	programmed := tg.List(t)
	res, err := syncIn(tg, b, second, false)
	if err != nil || res.ServicePortsWritten != 0 {
		t.Fatalf("second partial sync of the same snapshot: %+v, %v\n%s", res, err, Describe(second))
	}
	if got := tg.List(t); got != programmed {
		t.Fatalf("second partial sync of the same snapshot changed the rules:\n%s\n%s", LineDiff(got, programmed), Describe(second))
	}
	if _, err := syncIn(tg, b, second, true); err != nil {
		t.Fatalf("full resync: %v\n%s", err, Describe(second))
	}
	if got := tg.List(t); got != programmed {
		t.Fatalf("full resync of the same snapshot changed the rules:\n%s\n%s", LineDiff(got, programmed), Describe(second))
	}
	full, err := syncIn(tg, tg.Fresh(t), second, true)
	if err != nil {
		t.Fatalf("a full sync on an empty ruleset refused what the partial sync programmed: %v\n%s", err, Describe(second))
	}
	if got := tg.List(t); got != programmed || full.Rules != res.Rules {
		t.Fatalf("partial sync (%d rules) differs from a full sync (%d rules):\n%s\n%s",
			res.Rules, full.Rules, LineDiff(programmed, got), describePair(first, second))
	}
}

// LineDiff lists the lines only in got (+) and only in want (-).
func LineDiff(got, want string) string {
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

// Describe prints a snapshot for a failure message.
func Describe(s *model.Snapshot) string {
	var b strings.Builder
	fmt.Fprintf(&b, "node: %+v\n", s.Node)
	for _, sp := range s.Services {
		fmt.Fprintf(&b, "%+v\n", *sp)
	}
	return b.String()
}

func describePair(first, second *model.Snapshot) string {
	return "first:\n" + Describe(first) + "second:\n" + Describe(second)
}

// Seeds start a fuzzer off: empty, one ordinary service, and pseudo-random
// inputs long enough to decode several service ports each (the fuzzer's
// mutations grow short inputs slowly, and the pseudo-random ones found both
// bugs FuzzSync found in the nftables backend within seconds).
func Seeds() [][]byte {
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

// Parity is how closely Replay holds a fake to the kernel.
type Parity int

const (
	// FullParity: the fake accepts and refuses exactly what the kernel does.
	FullParity Parity = iota
	// RefusesWhatKernelRefuses: the fake refuses at least what the kernel
	// refuses; it may refuse more outside the contract, where the kernel
	// accepts garbage (iptables-restore 1.8.9 takes `-p udp --dport 70000`
	// as port 4464; a fake must not program that).
	RefusesWhatKernelRefuses
)

// Replay runs the seeds and the committed corpus of dir (testdata/fuzz/<Fuzz>)
// through CheckSyncs on kernel, and through a fresh fake for each entry: the
// same invariants, and the fake's verdicts held to the kernel's by parity.
func Replay(t *testing.T, dir string, parity Parity, fake func() Target, kernel Target) {
	entries, err := fuzzcorpus.Read(dir)
	if err != nil {
		t.Fatal(err)
	}
	for i, s := range Seeds() {
		entries = append(entries, fuzzcorpus.Entry{Name: fmt.Sprintf("seed%d", i), Data: s})
	}
	for _, e := range entries {
		t.Run(e.Name, func(t *testing.T) {
			want := CheckSyncs(t, e.Data, fake())
			got := CheckSyncs(t, e.Data, kernel)
			t.Logf("accepted by the kernel: first sync %v, second %v; by the fake: %v, %v", got[0], got[1], want[0], want[1])
			if got == want {
				return
			}
			first, second := modeltest.DecodeSyncs(e.Data)
			refusedMore := (!want[0] || got[0]) && (!want[1] || got[1])
			if parity == RefusesWhatKernelRefuses && refusedMore {
				t.Logf("the fake refused more than the kernel, outside the contract:\n%s", describePair(first, second))
				return
			}
			t.Fatalf("the kernel accepted the syncs %v, the fake %v\n%s", got, want, describePair(first, second))
		})
	}
}
