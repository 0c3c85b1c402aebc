package nftables

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"syscall"
)

// strictNFT is the half of FakeKernel that knftables.Fake leaves out: the
// refusals of nft and nf_tables that the backend could run into. It reads
// the transaction's text, the very statements `nft -f` would get, and applies
// them one by one to a model of the ruleset, refusing, as nft 1.0.6 on a 6.x
// kernel does (each checked against the real one by TestFakeParity):
//
//   - `add element` of a map key that exists with other data, earlier in the
//     same transaction included (EEXIST; the same data is accepted); an
//     interval overlapping another one ("conflicting intervals");
//   - an element whose fields do not parse as the set's types: wrong field
//     count, an address of the other family, a port outside 0–65535, an
//     unknown protocol, an integer wider than 32 bits;
//   - `create` of anything that exists (EEXIST); `delete` or `flush` of a
//     missing table, chain, set, map or element (ENOENT);
//   - `add` of an existing chain, set or map that differs: a base chain over
//     a regular one or of another type (EEXIST), another hook or priority
//     (EOPNOTSUPP), a set of another type or flags (EEXIST);
//   - rules and verdict-map elements that jump to a missing chain (ENOENT) or
//     to a base chain (EOPNOTSUPP), rules using a missing set (ENOENT);
//   - deleting a chain still referenced by a rule or a map element, a set
//     still used by a rule (EBUSY);
//   - rule literals: addresses of the other family, "addr:port" out of
//     range, numgen modulus 0 (ERANGE);
//   - at commit, what the kernel validates from every base chain through
//     jumps, gotos and verdict maps: 16 levels at most, loops included
//     (EMLINK, "Too many links"); dnat/redirect only from nat prerouting or
//     output, masquerade/snat only from nat postrouting (snat: input too);
//     reject not from postrouting (EOPNOTSUPP).
//
// The whole transaction is refused on the first error and nothing changes,
// as with the kernel. What it does not model it refuses (errNotModelled),
// rather than accept what the kernel might refuse: rules addressed by handle
// or index, unknown data types.
type strictNFT struct {
	tables map[string]*sTable // "ip kpo"
}

type sTable struct {
	chains map[string]*sChain
	sets   map[string]*sSet // sets and maps share one namespace
	// chainRefs counts the jumps and gotos to each chain (rules and map
	// elements), setRefs the rules using each set: what EBUSY is about.
	chainRefs map[string]int
	setRefs   map[string]int
}

type sChain struct {
	hook  *chainHook // nil: a regular chain
	rules []*sRule
}

type chainHook struct {
	typ, hook string
	prio      string
}

type sRule struct {
	targets []string // jump/goto
	sets    []string // @set, @map
	vmaps   []string // maps whose verdicts the rule follows
	nat     string   // dnat, snat, masquerade or redirect
	reject  bool
}

type sSet struct {
	isMap    bool
	key      []dtype
	data     []dtype // nil for a set
	flags    string  // sorted, comma-separated
	interval bool
	elems    map[string]string // canonical key → canonical data
}

func newStrictNFT() *strictNFT { return &strictNFT{tables: map[string]*sTable{}} }

// nftError is a refusal: which statement and why. It unwraps to the errno
// the kernel answers, when the kernel is the one refusing.
type nftError struct {
	line int
	stmt string
	err  error
}

func (e *nftError) Error() string {
	return fmt.Sprintf("fake nft: line %d: %s: %v", e.line, e.stmt, e.err)
}
func (e *nftError) Unwrap() error { return e.err }

// strictTx applies one transaction to copies of what it touches.
type strictTx struct {
	s      *strictNFT
	owned  map[any]bool // tables, chains and sets copied in this transaction
	tables map[string]*sTable
}

// apply checks and applies the transaction text; on success it returns the
// new state (s is unchanged either way).
func (s *strictNFT) apply(text string) (*strictNFT, error) {
	x := &strictTx{s: s, owned: map[any]bool{}, tables: maps.Clone(s.tables)}
	for i, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if err := x.stmt(line); err != nil {
			return nil, &nftError{line: i + 1, stmt: line, err: err}
		}
	}
	for id, t := range x.tables {
		if err := validateTable(t); err != nil {
			return nil, &nftError{stmt: "commit of table " + id, err: err}
		}
	}
	return &strictNFT{tables: x.tables}, nil
}

// table returns a table this transaction may modify.
func (x *strictTx) table(id string) *sTable {
	t := x.tables[id]
	if t == nil || x.owned[t] {
		return t
	}
	c := &sTable{chains: maps.Clone(t.chains), sets: maps.Clone(t.sets),
		chainRefs: maps.Clone(t.chainRefs), setRefs: maps.Clone(t.setRefs)}
	x.tables[id] = c
	x.owned[c] = true
	return c
}

func (x *strictTx) chain(t *sTable, name string) *sChain {
	c := t.chains[name]
	if c == nil || x.owned[c] {
		return c
	}
	n := &sChain{hook: c.hook, rules: slices.Clone(c.rules)}
	t.chains[name] = n
	x.owned[n] = true
	return n
}

func (x *strictTx) set(t *sTable, name string) *sSet {
	s := t.sets[name]
	if s == nil || x.owned[s] {
		return s
	}
	n := *s
	n.elems = maps.Clone(s.elems)
	t.sets[name] = &n
	x.owned[&n] = true
	return &n
}

// stmt applies one statement: "<verb> <object> <family> <table> [<name> <rest>]".
func (x *strictTx) stmt(line string) error {
	w := strings.SplitN(line, " ", 6)
	if len(w) < 4 {
		return fmt.Errorf("statement: %w", errNotModelled)
	}
	verb, obj, id := w[0], w[1], w[2]+" "+w[3]
	if obj == "table" {
		return x.tableStmt(verb, id, w[2])
	}
	if len(w) < 5 {
		return fmt.Errorf("%s without a name: %w", obj, errNotModelled)
	}
	if x.tables[id] == nil {
		return fmt.Errorf("table %s: %w", id, syscall.ENOENT)
	}
	t := x.table(id)
	name, rest := w[4], ""
	if len(w) == 6 {
		rest = w[5]
	}
	switch obj {
	case "chain":
		return x.chainStmt(t, verb, name, rest)
	case "rule":
		return x.ruleStmt(t, w[2], verb, name, rest)
	case "set", "map":
		return x.setStmt(t, verb, obj == "map", name, rest)
	case "element":
		return x.elementStmt(t, verb, name, rest)
	}
	return fmt.Errorf("%s: %w", obj, errNotModelled)
}

func (x *strictTx) tableStmt(verb, id, family string) error {
	if family != "ip" && family != "ip6" && family != "inet" {
		return fmt.Errorf("family %s: %w", family, errNotModelled)
	}
	exists := x.tables[id] != nil
	switch verb {
	case "add", "create":
		if exists && verb == "create" {
			return syscall.EEXIST
		}
		if !exists {
			t := &sTable{chains: map[string]*sChain{}, sets: map[string]*sSet{}, chainRefs: map[string]int{}, setRefs: map[string]int{}}
			x.tables[id] = t
			x.owned[t] = true
		}
	case "delete", "destroy":
		if !exists && verb == "delete" {
			return syscall.ENOENT
		}
		delete(x.tables, id)
	case "flush":
		if !exists {
			return syscall.ENOENT
		}
		t := x.table(id)
		for name := range t.chains {
			x.flushRules(t, x.chain(t, name))
		}
		for name := range t.sets {
			x.flushElems(t, x.set(t, name))
		}
	default:
		return fmt.Errorf("%s table: %w", verb, errNotModelled)
	}
	return nil
}

// parseHook reads "{ type T hook H priority P ; [policy …;] [comment …;] }".
func parseHook(spec string) *chainHook {
	w := strings.Fields(spec)
	h := &chainHook{}
	for i := 0; i+1 < len(w); i++ {
		switch w[i] {
		case "type":
			h.typ = w[i+1]
		case "hook":
			h.hook = w[i+1]
		case "priority":
			h.prio = strings.TrimSuffix(w[i+1], ";")
		}
	}
	if h.hook == "" {
		return nil
	}
	return h
}

func (x *strictTx) chainStmt(t *sTable, verb, name, rest string) error {
	cur := t.chains[name]
	switch verb {
	case "add", "create":
		h := parseHook(rest)
		if cur == nil {
			c := &sChain{hook: h}
			t.chains[name] = c
			x.owned[c] = true
			return nil
		}
		switch {
		case verb == "create":
			return syscall.EEXIST
		case h == nil:
			// Re-adding any chain without a hook leaves it as it is.
		case cur.hook == nil || cur.hook.typ != h.typ:
			return syscall.EEXIST
		case cur.hook.hook != h.hook || cur.hook.prio != h.prio:
			return syscall.EOPNOTSUPP
		}
	case "flush":
		if cur == nil {
			return syscall.ENOENT
		}
		x.flushRules(t, x.chain(t, name))
	case "delete", "destroy":
		if cur == nil {
			if verb == "delete" {
				return syscall.ENOENT
			}
			return nil
		}
		// The kernel drops the chain's own rules with it; the references it
		// counts are the jumps to it (its own included) and map elements.
		if t.chainRefs[name] > 0 {
			return syscall.EBUSY
		}
		x.flushRules(t, x.chain(t, name))
		delete(t.chains, name)
	default:
		return fmt.Errorf("%s chain: %w", verb, errNotModelled)
	}
	return nil
}

func (x *strictTx) flushRules(t *sTable, c *sChain) {
	for _, r := range c.rules {
		countRule(t, r, -1)
	}
	c.rules = nil
}

func countRule(t *sTable, r *sRule, d int) {
	for _, c := range r.targets {
		addCount(t.chainRefs, c, d)
	}
	for _, s := range r.sets {
		addCount(t.setRefs, s, d)
	}
}

func addCount(m map[string]int, k string, d int) {
	if m[k]+d == 0 {
		delete(m, k)
	} else {
		m[k] += d
	}
}

// ruleStmt adds or inserts a rule: "<chain> <rule text> [comment "…"]".
func (x *strictTx) ruleStmt(t *sTable, family, verb, chain, rest string) error {
	if verb != "add" && verb != "insert" {
		return fmt.Errorf("%s rule: %w", verb, errNotModelled)
	}
	if strings.HasPrefix(rest, "index ") || strings.HasPrefix(rest, "handle ") {
		return fmt.Errorf("rules by index or handle: %w", errNotModelled)
	}
	c := x.chain(t, chain)
	if c == nil {
		return fmt.Errorf("chain %s: %w", chain, syscall.ENOENT)
	}
	if i := strings.Index(rest, ` comment "`); i >= 0 {
		rest = rest[:i]
	}
	if err := checkLiterals(family, rest); err != nil {
		return err
	}
	r, err := parseRule(t, rest)
	if err != nil {
		return err
	}
	countRule(t, r, 1)
	if verb == "insert" {
		c.rules = slices.Insert(c.rules, 0, r)
	} else {
		c.rules = append(c.rules, r)
	}
	return nil
}

// parseRule finds what a rule refers to and the statements whose hooks the
// kernel restricts.
func parseRule(t *sTable, text string) (*sRule, error) {
	r := &sRule{}
	w := strings.Fields(text)
	for i, tok := range w {
		switch {
		case (tok == "jump" || tok == "goto") && i+1 < len(w):
			if err := jumpTarget(t, w[i+1]); err != nil {
				return nil, err
			}
			r.targets = append(r.targets, w[i+1])
		case strings.HasPrefix(tok, "@"):
			name := tok[1:]
			s := t.sets[name]
			if s == nil {
				return nil, fmt.Errorf("set %s: %w", name, syscall.ENOENT)
			}
			r.sets = append(r.sets, name)
			if i > 0 && (w[i-1] == "vmap" || w[i-1] == "map") && !s.isMap {
				return nil, fmt.Errorf("%s is a set, not a map: %w", name, syscall.EINVAL)
			}
			if i > 0 && w[i-1] == "vmap" {
				r.vmaps = append(r.vmaps, name)
			}
		case tok == "dnat" || tok == "snat" || tok == "masquerade" || tok == "redirect":
			if r.nat == "" {
				r.nat = tok
			}
		case tok == "reject":
			r.reject = true
		}
	}
	return r, nil
}

// jumpTarget checks a jump or goto: to an existing, regular chain.
func jumpTarget(t *sTable, chain string) error {
	c := t.chains[chain]
	switch {
	case c == nil:
		return fmt.Errorf("chain %s: %w", chain, syscall.ENOENT)
	case c.hook != nil:
		return fmt.Errorf("jump to base chain %s: %w", chain, syscall.EOPNOTSUPP)
	}
	return nil
}

// parseSetSpec reads "{ type|typeof K [: D] ; [flags f,g ;] [timeout …;] … }".
func parseSetSpec(isMap bool, spec string) (*sSet, error) {
	spec = strings.TrimSpace(strings.TrimSuffix(strings.TrimPrefix(strings.TrimSpace(spec), "{"), "}"))
	s := &sSet{isMap: isMap, elems: map[string]string{}}
	var typeDecl string
	typeOf := false
	for _, part := range strings.Split(spec, ";") {
		part = strings.TrimSpace(part)
		switch {
		case strings.HasPrefix(part, "typeof "):
			typeDecl, typeOf = strings.TrimPrefix(part, "typeof "), true
		case strings.HasPrefix(part, "type "):
			typeDecl = strings.TrimPrefix(part, "type ")
		case strings.HasPrefix(part, "flags "):
			f := strings.Split(strings.TrimPrefix(part, "flags "), ",")
			slices.Sort(f)
			s.flags = strings.Join(f, ",")
			s.interval = slices.Contains(f, "interval")
		}
	}
	k, d, hasData := strings.Cut(typeDecl, " : ")
	if hasData != isMap {
		return nil, fmt.Errorf("set/map type %q: %w", typeDecl, syscall.EINVAL)
	}
	var err error
	if s.key, err = parseTypes(k, typeOf); err != nil {
		return nil, err
	}
	if isMap {
		if strings.TrimSpace(d) == "verdict" {
			s.data = []dtype{dtVerdict}
		} else if s.data, err = parseTypes(d, typeOf); err != nil {
			return nil, err
		}
	}
	if s.interval && len(s.key) != 1 {
		return nil, fmt.Errorf("interval concatenations: %w", errNotModelled)
	}
	return s, nil
}

func (x *strictTx) setStmt(t *sTable, verb string, isMap bool, name, rest string) error {
	cur := t.sets[name]
	switch verb {
	case "add", "create":
		s, err := parseSetSpec(isMap, rest)
		if err != nil {
			return err
		}
		if cur == nil {
			t.sets[name] = s
			x.owned[s] = true
			return nil
		}
		// nft_set_is_same: type, data type and flags must match; the
		// timeout may differ.
		if verb == "create" || cur.isMap != s.isMap || !slices.Equal(cur.key, s.key) ||
			!slices.Equal(cur.data, s.data) || cur.flags != s.flags {
			return syscall.EEXIST
		}
	case "flush":
		if cur == nil || cur.isMap != isMap {
			return syscall.ENOENT
		}
		x.flushElems(t, x.set(t, name))
	case "delete", "destroy":
		if cur == nil {
			if verb == "delete" {
				return syscall.ENOENT
			}
			return nil
		}
		if t.setRefs[name] > 0 {
			return syscall.EBUSY
		}
		x.flushElems(t, x.set(t, name))
		delete(t.sets, name)
	default:
		return fmt.Errorf("%s %s: %w", verb, map[bool]string{false: "set", true: "map"}[isMap], errNotModelled)
	}
	return nil
}

func (x *strictTx) flushElems(t *sTable, s *sSet) {
	for _, v := range s.elems {
		if c := verdictChain(v); c != "" {
			addCount(t.chainRefs, c, -1)
		}
	}
	s.elems = map[string]string{}
}

// elementStmt: "<set> { k [comment "…"] [: v] [, …] }".
func (x *strictTx) elementStmt(t *sTable, verb, name, rest string) error {
	s := x.set(t, name)
	if s == nil {
		return fmt.Errorf("set %s: %w", name, syscall.ENOENT)
	}
	body := strings.TrimSpace(rest)
	if !strings.HasPrefix(body, "{") || !strings.HasSuffix(body, "}") {
		return fmt.Errorf("element list: %w", errNotModelled)
	}
	for _, e := range strings.Split(strings.TrimSpace(body[1:len(body)-1]), ", ") {
		k, v, hasData := strings.Cut(e, " : ")
		if i := strings.Index(k, ` comment "`); i >= 0 {
			k = k[:i]
		}
		key, err := canonTuple(s.key, strings.TrimSpace(k), s.interval)
		if err != nil {
			return err
		}
		switch verb {
		case "add", "create":
			if hasData != s.isMap {
				return fmt.Errorf("element data: %w", syscall.EINVAL)
			}
			err = x.addElem(t, s, verb == "create", key, strings.TrimSpace(v))
		case "delete", "destroy":
			err = x.delElem(t, s, verb == "delete", key)
		default:
			err = fmt.Errorf("%s element: %w", verb, errNotModelled)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func (x *strictTx) addElem(t *sTable, s *sSet, create bool, key, value string) error {
	var data string
	if s.isMap {
		var err error
		if data, err = canonTuple(s.data, value, false); err != nil {
			return err
		}
		if c := verdictChain(data); c != "" {
			if err := jumpTarget(t, c); err != nil {
				return err
			}
		}
	}
	if old, ok := s.elems[key]; ok {
		// nft_add_set_elem: an existing key is fine for `add` only with the
		// same data.
		if create || old != data {
			return fmt.Errorf("element %s: %w", key, syscall.EEXIST)
		}
		return nil
	}
	if s.interval {
		if err := checkOverlap(s, key); err != nil {
			return err
		}
	}
	s.elems[key] = data
	if c := verdictChain(data); c != "" {
		addCount(t.chainRefs, c, 1)
	}
	return nil
}

// checkOverlap refuses an interval overlapping another (nft: "conflicting
// intervals specified"; an identical one was accepted above).
func checkOverlap(s *sSet, key string) error {
	p, err := netip.ParsePrefix(key)
	if err != nil {
		return err
	}
	for k := range s.elems {
		if q, err := netip.ParsePrefix(k); err == nil && q.Overlaps(p) {
			return fmt.Errorf("conflicting intervals specified: %s and %s: %w", q, p, syscall.EEXIST)
		}
	}
	return nil
}

func (x *strictTx) delElem(t *sTable, s *sSet, mustExist bool, key string) error {
	old, ok := s.elems[key]
	if !ok {
		if mustExist {
			return fmt.Errorf("element %s: %w", key, syscall.ENOENT)
		}
		return nil
	}
	delete(s.elems, key)
	if c := verdictChain(old); c != "" {
		addCount(t.chainRefs, c, -1)
	}
	return nil
}

// maxJumpLevel is NFT_JUMP_STACK_SIZE: the kernel refuses deeper chains of
// jumps and gotos (and so every loop) with EMLINK.
const maxJumpLevel = 16

// reach is what a chain and everything it jumps to hold.
type reach struct {
	height int // levels of jumps below the chain
	nat    map[string]bool
	reject bool
}

// validateTable is the kernel's commit-time check (nft_table_validate): from
// every base chain, through rules and verdict maps.
func validateTable(t *sTable) error {
	memo := map[string]*reach{}
	onPath := map[string]bool{}
	for _, name := range slices.Sorted(maps.Keys(t.chains)) {
		c := t.chains[name]
		if c.hook == nil {
			continue
		}
		r, err := chainReach(t, name, memo, onPath, 0)
		if err != nil {
			return err
		}
		if err := hookAllows(c.hook, r); err != nil {
			return fmt.Errorf("base chain %s: %w", name, err)
		}
	}
	return nil
}

func chainReach(t *sTable, name string, memo map[string]*reach, onPath map[string]bool, level int) (*reach, error) {
	if r := memo[name]; r != nil {
		if level+r.height >= maxJumpLevel {
			return nil, fmt.Errorf("chain %s: %d levels of jumps: %w", name, level+r.height, syscall.EMLINK)
		}
		return r, nil
	}
	if onPath[name] || level >= maxJumpLevel {
		return nil, fmt.Errorf("chain %s: jump loop or too deep: %w", name, syscall.EMLINK)
	}
	onPath[name] = true
	defer delete(onPath, name)
	r := &reach{nat: map[string]bool{}}
	for _, rule := range t.chains[name].rules {
		if rule.nat != "" {
			r.nat[rule.nat] = true
		}
		r.reject = r.reject || rule.reject
		next := slices.Clone(rule.targets)
		for _, m := range rule.vmaps {
			for _, v := range t.sets[m].elems {
				if c := verdictChain(v); c != "" {
					next = append(next, c)
				}
			}
		}
		for _, c := range next {
			sub, err := chainReach(t, c, memo, onPath, level+1)
			if err != nil {
				return nil, err
			}
			r.height = max(r.height, sub.height+1)
			for k := range sub.nat {
				r.nat[k] = true
			}
			r.reject = r.reject || sub.reject
		}
	}
	memo[name] = r
	return r, nil
}

// hookAllows mirrors the expressions' validate hooks: nft_nat_validate (nat
// chains; dnat/redirect in prerouting and output, masquerade and snat in
// postrouting, snat in input too) and nft_reject_validate (not postrouting).
func hookAllows(h *chainHook, r *reach) error {
	for _, n := range slices.Sorted(maps.Keys(r.nat)) {
		ok := h.typ == "nat"
		switch n {
		case "dnat", "redirect":
			ok = ok && (h.hook == "prerouting" || h.hook == "output")
		case "masquerade":
			ok = ok && h.hook == "postrouting"
		case "snat":
			ok = ok && (h.hook == "postrouting" || h.hook == "input")
		}
		if !ok {
			return fmt.Errorf("%s reachable from a %s %s chain: %w", n, h.typ, h.hook, syscall.EOPNOTSUPP)
		}
	}
	if r.reject && h.hook == "postrouting" {
		return fmt.Errorf("reject reachable from postrouting: %w", syscall.EOPNOTSUPP)
	}
	return nil
}
