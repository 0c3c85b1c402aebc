package iptables

import (
	"bufio"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"

	"kpo.dev/kpo/nodeagent/model"
)

// Fake is an in-memory Kernel that enforces what the kernel and
// iptables-restore enforce, so that unit tests catch rule sets the real thing
// would refuse (TestFakeParity runs the same inputs through both iptables
// flavours and the Fake and expects the same verdicts):
//
//   - a rule's jump target must be a known target or an existing user chain
//     (never a built-in chain), and its options must parse (see checkRule);
//   - a chain can only be deleted when it is empty and no rule jumps to it;
//   - chain names are at most 28 characters;
//   - at commit, no loop of jumps is reachable from a built-in chain, and
//     DNAT, SNAT and MASQUERADE are reached only from their hooks;
//   - each "*table ... COMMIT" section of a restore applies atomically: any
//     error leaves that table exactly as it was (sections committed before
//     stay committed, as with the real iptables-restore).
type Fake struct {
	mu     sync.Mutex
	tables map[model.Family]map[string]*fakeTable

	// FailRestore, when set, is consulted before each restore; an error fails
	// the restore before anything is applied.
	FailRestore func(f model.Family, data string) error
	// NoRandomFully makes RandomFully report false.
	NoRandomFully bool
	// Restores logs every restore input, successful or not.
	Restores []FakeRestore

	// SetExists says whether an ipset exists (iptables refuses a rule
	// matching a missing one); nil: none does. The ipvs mode's companion
	// rules match ipsets (package ipvs, FakeIPSet.Has).
	SetExists func(name string) bool

	sysctls FakeSysctls
}

// FakeRestore is one logged restore.
type FakeRestore struct {
	Family model.Family
	Data   string
	Err    error
}

type fakeRule struct {
	text   string // as written after "-A <chain> "
	args   []string
	target string
}

type fakeChain struct {
	builtin bool
	rules   []fakeRule
}

type fakeTable struct {
	name   string
	chains map[string]*fakeChain
	// hasSet is the Fake's SetExists, for a table being changed.
	hasSet func(name string) bool
}

var builtinChains = map[string][]string{
	tableNAT:    {"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"},
	tableFilter: {"INPUT", "FORWARD", "OUTPUT"},
}

// NewFake returns a Fake with empty nat and filter tables for both families.
func NewFake() *Fake {
	f := &Fake{tables: map[model.Family]map[string]*fakeTable{}, sysctls: FakeSysctls{}}
	for _, fam := range []model.Family{model.IPv4, model.IPv6} {
		f.tables[fam] = map[string]*fakeTable{}
		for name, chains := range builtinChains {
			t := &fakeTable{name: name, chains: map[string]*fakeChain{}}
			for _, c := range chains {
				t.chains[c] = &fakeChain{builtin: true}
			}
			f.tables[fam][name] = t
		}
	}
	return f
}

func (t *fakeTable) clone() *fakeTable {
	c := &fakeTable{name: t.name, chains: make(map[string]*fakeChain, len(t.chains))}
	for n, ch := range t.chains {
		c.chains[n] = &fakeChain{builtin: ch.builtin, rules: slices.Clone(ch.rules)}
	}
	return c
}

func (f *Fake) table(fam model.Family, table string) (*fakeTable, error) {
	t, ok := f.tables[fam][table]
	if !ok {
		return nil, fmt.Errorf("table %q does not exist", table)
	}
	return t, nil
}

// --- Kernel ---

func (f *Fake) ListChains(fam model.Family, table string) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	t, err := f.table(fam, table)
	if err != nil {
		return nil, err
	}
	return slices.Sorted(maps.Keys(t.chains)), nil
}

func (f *Fake) ListRules(fam model.Family, table string) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	t, err := f.table(fam, table)
	if err != nil {
		return nil, err
	}
	var out []string
	names := slices.Sorted(maps.Keys(t.chains))
	for _, n := range names {
		if t.chains[n].builtin {
			out = append(out, "-P "+n+" ACCEPT")
		}
	}
	for _, n := range names {
		if !t.chains[n].builtin {
			out = append(out, "-N "+n)
		}
	}
	for _, n := range names {
		for _, r := range t.chains[n].rules {
			out = append(out, "-A "+n+" "+r.text)
		}
	}
	return out, nil
}

func (f *Fake) RandomFully(model.Family) bool { return !f.NoRandomFully }

// Sysctls are the fake's own, empty at first (a missing one reads as an error).
func (f *Fake) Sysctls() Sysctls { return f.sysctls }

func (f *Fake) Check(model.Family) error { return nil }

func (f *Fake) Restore(fam model.Family, data []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	err := f.restore(fam, string(data))
	f.Restores = append(f.Restores, FakeRestore{Family: fam, Data: string(data), Err: err})
	return err
}

func (f *Fake) restore(fam model.Family, data string) error {
	if f.FailRestore != nil {
		if err := f.FailRestore(fam, data); err != nil {
			return err
		}
	}
	var tx *fakeTable // the table section being built, nil outside one
	sc := bufio.NewScanner(strings.NewReader(data))
	sc.Buffer(nil, 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		fail := func(err error) error { return fmt.Errorf("line %d %q: %w", n, line, err) }
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "*"):
			if tx != nil {
				return fail(fmt.Errorf("table %s not committed", tx.name))
			}
			t, err := f.table(fam, line[1:])
			if err != nil {
				return fail(err)
			}
			tx = t.clone()
			tx.hasSet = f.SetExists
		case tx == nil:
			return fail(fmt.Errorf("outside a table"))
		case line == "COMMIT":
			if err := tx.validate(); err != nil {
				return fail(err)
			}
			f.tables[fam][tx.name] = tx
			tx = nil
		case strings.HasPrefix(line, ":"):
			fields := strings.Fields(line[1:])
			if len(fields) != 3 {
				return fail(fmt.Errorf("bad chain declaration"))
			}
			if c, ok := tx.chains[fields[0]]; ok {
				if !c.builtin {
					c.rules = nil // --noflush still flushes declared chains
				}
				continue
			}
			if err := tx.newChain(fields[0]); err != nil {
				return fail(err)
			}
		default:
			args, err := splitArgs(line)
			if err != nil {
				return fail(err)
			}
			if err := tx.command(fam, args); err != nil {
				return fail(err)
			}
		}
	}
	if tx != nil {
		return fmt.Errorf("table %s: missing COMMIT", tx.name)
	}
	return nil
}

// Exec applies one iptables command ("-N C", "-A C ...", "-I C ...", "-F C",
// "-X C", "-D C ...") to a table, as another program would: tests use it to
// create drift.
func (f *Fake) Exec(fam model.Family, table, cmd string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	t, err := f.table(fam, table)
	if err != nil {
		return err
	}
	args, err := splitArgs(cmd)
	if err != nil {
		return err
	}
	tx := t.clone()
	tx.hasSet = f.SetExists
	if err := tx.command(fam, args); err != nil {
		return err
	}
	if err := tx.validate(); err != nil {
		return err
	}
	f.tables[fam][table] = tx
	return nil
}

func (t *fakeTable) newChain(name string) error {
	if len(name) > maxChainName {
		return fmt.Errorf("chain name %q longer than %d characters", name, maxChainName)
	}
	if name == "" || strings.HasPrefix(name, "-") || isTarget(name) {
		return fmt.Errorf("invalid chain name %q", name)
	}
	t.chains[name] = &fakeChain{}
	return nil
}

func (t *fakeTable) command(fam model.Family, args []string) error {
	if len(args) < 2 {
		return fmt.Errorf("bad command %q", args)
	}
	op, name, rest := args[0], args[1], args[2:]
	if op == "-N" {
		if _, ok := t.chains[name]; ok {
			return fmt.Errorf("chain %s already exists", name)
		}
		return t.newChain(name)
	}
	c, ok := t.chains[name]
	if !ok {
		return fmt.Errorf("chain %s does not exist", name)
	}
	switch op {
	case "-A", "-I":
		r, err := t.parseRule(fam, name, rest)
		if err != nil {
			return err
		}
		if op == "-A" {
			c.rules = append(c.rules, r)
		} else {
			c.rules = slices.Insert(c.rules, 0, r)
		}
	case "-D":
		text := strings.Join(quoteArgs(rest), " ")
		i := slices.IndexFunc(c.rules, func(x fakeRule) bool { return x.text == text })
		if i < 0 {
			return fmt.Errorf("no such rule in %s", name)
		}
		c.rules = slices.Delete(c.rules, i, i+1)
	case "-F":
		c.rules = nil
	case "-X":
		if c.builtin {
			return fmt.Errorf("cannot delete built-in chain %s", name)
		}
		if len(c.rules) > 0 {
			return fmt.Errorf("chain %s is not empty", name)
		}
		for other, oc := range t.chains {
			for _, r := range oc.rules {
				if r.target == name {
					return fmt.Errorf("chain %s is still referenced from %s", name, other)
				}
			}
		}
		delete(t.chains, name)
	default:
		return fmt.Errorf("unsupported command %s", op)
	}
	return nil
}

// --- inspection, for tests ---

// Chains lists a table's chains, sorted.
func (f *Fake) Chains(fam model.Family, table string) []string {
	l, _ := f.ListChains(fam, table)
	return l
}

// Rules returns a chain's rules as written after "-A <chain> "; ok is false
// when the chain does not exist.
func (f *Fake) Rules(fam model.Family, table, chain string) (rules []string, ok bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	c, ok := f.tables[fam][table].chains[chain]
	if !ok {
		return nil, false
	}
	for _, r := range c.rules {
		rules = append(rules, r.text)
	}
	return rules, true
}

// Dump is a table in iptables-save's layout, chains sorted, for test failures.
func (f *Fake) Dump(fam model.Family, table string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	t := f.tables[fam][table]
	var b strings.Builder
	names := slices.Sorted(maps.Keys(t.chains))
	for _, n := range names {
		fmt.Fprintf(&b, ":%s\n", n)
	}
	for _, n := range names {
		for _, r := range t.chains[n].rules {
			fmt.Fprintf(&b, "-A %s %s\n", n, r.text)
		}
	}
	return b.String()
}

// RuleCount counts the rules in user chains named with prefix.
func (f *Fake) RuleCount(fam model.Family, prefix string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, t := range f.tables[fam] {
		for name, c := range t.chains {
			if strings.HasPrefix(name, prefix) {
				n += len(c.rules)
			}
		}
	}
	return n
}
