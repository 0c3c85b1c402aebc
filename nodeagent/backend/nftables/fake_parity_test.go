package nftables

import (
	"context"
	"errors"
	"strings"
	"syscall"
	"testing"
	"time"

	"sigs.k8s.io/knftables"

	"kpo.dev/kpo/hack/netns"
)

// The fake's refusals next to the kernel's. Each case is a small transaction
// (after an optional first one, which both must accept) on top of a table
// shaped like the backend's: the fake and `nft -f` in a fresh network
// namespace must both accept it or both refuse it, as the case says.

const ptab = "p" // the parity table, in both families

var (
	pv4 = knftables.IPv4Family
	pv6 = knftables.IPv6Family
)

// parityMaps are the maps of the setup (the rest of the names are sets).
var parityMaps = map[string]bool{"vm": true, "dm": true}

func pchain(fam knftables.Family, name string) *knftables.Chain {
	return &knftables.Chain{Family: fam, Table: ptab, Name: name}
}

func pbase(name string, typ knftables.BaseChainType, hook knftables.BaseChainHook, prio knftables.BaseChainPriority) *knftables.Chain {
	return &knftables.Chain{Family: pv4, Table: ptab, Name: name, Type: &typ, Hook: &hook, Priority: &prio}
}

func prule(chain, rule string) *knftables.Rule {
	return &knftables.Rule{Family: pv4, Table: ptab, Chain: chain, Rule: rule}
}

// pelem is an element of set or map name ("a . b" keys; value only for maps).
func pelem(fam knftables.Family, name, key, value string) *knftables.Element {
	e := &knftables.Element{Family: fam, Table: ptab, Key: strings.Split(key, " . ")}
	if parityMaps[name] {
		e.Map, e.Value = name, []string{value}
	} else {
		e.Set = name
	}
	return e
}

func el(name, key, value string) *knftables.Element { return pelem(pv4, name, key, value) }

// paritySetup is the table every case starts from: regular chains c and d,
// base chains in nat prerouting and postrouting and filter input, a verdict
// map and a data map typed as the backend's service-ips and endpoints, a
// concatenated set (hairpin), an interval set (cluster-cidrs), a dynamic
// set with a timeout (affinity), and an IPv6 table with an address set.
func paritySetup(tx *knftables.Transaction) {
	tx.Add(&knftables.Table{Family: pv4, Name: ptab})
	tx.Add(pchain(pv4, "c"))
	tx.Add(pchain(pv4, "d"))
	tx.Add(pbase("nat-pre", knftables.NATType, knftables.PreroutingHook, knftables.DNATPriority))
	tx.Add(pbase("nat-post", knftables.NATType, knftables.PostroutingHook, knftables.SNATPriority))
	tx.Add(pbase("filter-in", knftables.FilterType, knftables.InputHook, knftables.FilterPriority))
	tx.Add(&knftables.Map{Family: pv4, Table: ptab, Name: "vm", Type: "ipv4_addr . inet_proto . inet_service : verdict"})
	tx.Add(&knftables.Map{Family: pv4, Table: ptab, Name: "dm",
		TypeOf: "ip daddr . meta l4proto . th dport . numgen random mod 1 : ip daddr . th dport"})
	tx.Add(&knftables.Set{Family: pv4, Table: ptab, Name: "s", Type: "ipv4_addr . ipv4_addr"})
	tx.Add(&knftables.Set{Family: pv4, Table: ptab, Name: "iv", Type: "ipv4_addr", Flags: []knftables.SetFlag{knftables.IntervalFlag}})
	tx.Add(&knftables.Set{Family: pv4, Table: ptab, Name: "aff", Type: "ipv4_addr",
		Flags: []knftables.SetFlag{knftables.DynamicFlag, knftables.TimeoutFlag}, Timeout: knftables.PtrTo(time.Hour)})
	tx.Add(&knftables.Table{Family: pv6, Name: ptab})
	tx.Add(&knftables.Set{Family: pv6, Table: ptab, Name: "s6", Type: "ipv6_addr"})
}

type parityCase struct {
	name   string
	pre    []knftables.Object // added in a first transaction (both must accept it)
	tx     func(tx *knftables.Transaction)
	refuse bool
}

// adds is a transaction of additions.
func adds(objs ...knftables.Object) func(*knftables.Transaction) {
	return func(tx *knftables.Transaction) {
		for _, o := range objs {
			tx.Add(o)
		}
	}
}

func elementCases() []parityCase {
	svcKey := "10.96.0.1 . tcp . 80"
	return []parityCase{
		{name: "map key twice, same data", tx: adds(el("vm", svcKey, "goto c"), el("vm", svcKey, "goto c"))},
		{name: "map key twice in one transaction, other data", tx: adds(el("vm", svcKey, "goto c"), el("vm", svcKey, "goto d")), refuse: true},
		{name: "map key existing, other data", pre: []knftables.Object{el("vm", svcKey, "goto c")}, tx: adds(el("vm", svcKey, "goto d")), refuse: true},
		{name: "map key existing, same data", pre: []knftables.Object{el("vm", svcKey, "goto c")}, tx: adds(el("vm", svcKey, "goto c"))},
		{name: "map key as protocol number and name, other data", tx: adds(el("vm", "10.96.0.1 . 6 . 80", "goto c"), el("vm", svcKey, "goto d")), refuse: true},
		{name: "data map key twice, other endpoint", tx: adds(el("dm", svcKey+" . 0", "10.244.0.1 . 8080"), el("dm", svcKey+" . 0", "10.244.0.2 . 8080")), refuse: true},
		{name: "data map key twice, same endpoint", tx: adds(el("dm", svcKey+" . 0", "10.244.0.1 . 8080"), el("dm", svcKey+" . 0", "10.244.0.1 . 8080"))},
		{name: "delete then re-add with other data", pre: []knftables.Object{el("vm", svcKey, "goto c")}, tx: func(tx *knftables.Transaction) {
			tx.Delete(el("vm", svcKey, ""))
			tx.Add(el("vm", svcKey, "goto d"))
		}},
		{name: "set element twice", tx: adds(el("s", "10.0.0.1 . 10.0.0.1", ""), el("s", "10.0.0.1 . 10.0.0.1", ""))},
		{name: "create existing element", pre: []knftables.Object{el("s", "10.0.0.1 . 10.0.0.1", "")},
			tx: func(tx *knftables.Transaction) { tx.Create(el("s", "10.0.0.1 . 10.0.0.1", "")) }, refuse: true},
		{name: "verdict to a missing chain", tx: adds(el("vm", svcKey, "goto nope")), refuse: true},
		{name: "verdict to a base chain", tx: adds(el("vm", svcKey, "goto nat-pre")), refuse: true},
		{name: "service port 70000", tx: adds(el("vm", "10.96.0.1 . tcp . 70000", "goto c")), refuse: true},
		{name: "service port 65535", tx: adds(el("vm", "10.96.0.1 . tcp . 65535", "goto c"))},
		{name: "service port 0", tx: adds(el("vm", "10.96.0.1 . tcp . 0", "goto c"))},
		{name: "endpoint port 70000", tx: adds(el("dm", svcKey+" . 0", "10.244.0.1 . 70000")), refuse: true},
		{name: "IPv6 key in an ip map", tx: adds(el("vm", "fd10:96::1 . tcp . 80", "goto c")), refuse: true},
		{name: "IPv6 endpoint in an ip map", tx: adds(el("dm", svcKey+" . 0", "fd10:244::1 . 80")), refuse: true},
		{name: "IPv4 address in an ip6 set", tx: adds(pelem(pv6, "s6", "10.0.0.1", "")), refuse: true},
		{name: "IPv4-mapped address in an ip6 set", tx: adds(pelem(pv6, "s6", "::ffff:10.0.0.1", ""))},
		{name: "key with a field missing", tx: adds(el("vm", "10.96.0.1 . tcp", "goto c")), refuse: true},
		{name: "set element with one address of two", tx: adds(el("s", "10.0.0.1", "")), refuse: true},
		{name: "unknown protocol", tx: adds(el("vm", "10.96.0.1 . foo . 80", "goto c")), refuse: true},
		{name: "slot beyond 32 bits", tx: adds(el("dm", svcKey+" . 4294967296", "10.244.0.1 . 80")), refuse: true},
		{name: "slot 2^32-1", tx: adds(el("dm", svcKey+" . 4294967295", "10.244.0.1 . 80"))},
		{name: "overlapping intervals", tx: adds(el("iv", "10.0.0.0/8", ""), el("iv", "10.1.0.0/16", "")), refuse: true},
		{name: "overlapping interval, existing", pre: []knftables.Object{el("iv", "10.0.0.0/8", "")}, tx: adds(el("iv", "10.1.0.0/16", "")), refuse: true},
		{name: "same interval twice", tx: adds(el("iv", "10.0.0.0/8", ""), el("iv", "10.0.0.0/8", ""))},
		{name: "interval with host bits", tx: adds(el("iv", "10.1.2.3/8", ""))},
		{name: "adjacent intervals", tx: adds(el("iv", "10.0.0.0/16", ""), el("iv", "10.1.0.0/16", ""))},
		{name: "delete a missing element", tx: func(tx *knftables.Transaction) { tx.Delete(el("vm", svcKey, "")) }, refuse: true},
		{name: "delete an element twice", pre: []knftables.Object{el("s", "10.0.0.1 . 10.0.0.1", "")}, tx: func(tx *knftables.Transaction) {
			tx.Delete(el("s", "10.0.0.1 . 10.0.0.1", ""))
			tx.Delete(el("s", "10.0.0.1 . 10.0.0.1", ""))
		}, refuse: true},
		{name: "delete an element after a flush", pre: []knftables.Object{el("s", "10.0.0.1 . 10.0.0.1", "")}, tx: func(tx *knftables.Transaction) {
			tx.Flush(&knftables.Set{Family: pv4, Table: ptab, Name: "s"})
			tx.Delete(el("s", "10.0.0.1 . 10.0.0.1", ""))
		}, refuse: true},
		{name: "element of a missing set", tx: adds(el("nope", "10.0.0.1", "")), refuse: true},
	}
}

func chainCases() []parityCase {
	del := func(name string) func(*knftables.Transaction) {
		return func(tx *knftables.Transaction) { tx.Delete(pchain(pv4, name)) }
	}
	return []parityCase{
		{name: "add an existing chain", tx: adds(pchain(pv4, "c"))},
		{name: "create an existing chain", tx: func(tx *knftables.Transaction) { tx.Create(pchain(pv4, "c")) }, refuse: true},
		{name: "jump to a missing chain", tx: adds(prule("c", "jump nope")), refuse: true},
		{name: "goto a base chain", tx: adds(prule("c", "goto nat-pre")), refuse: true},
		{name: "delete a chain a rule jumps to", pre: []knftables.Object{prule("c", "jump d")}, tx: del("d"), refuse: true},
		{name: "delete a chain after flushing its referrer", pre: []knftables.Object{prule("c", "jump d")}, tx: func(tx *knftables.Transaction) {
			tx.Flush(pchain(pv4, "c"))
			tx.Delete(pchain(pv4, "d"))
		}},
		{name: "delete a chain a map element points at", pre: []knftables.Object{el("vm", "10.96.0.1 . tcp . 80", "goto d")}, tx: del("d"), refuse: true},
		{name: "delete a chain after deleting the element", pre: []knftables.Object{el("vm", "10.96.0.1 . tcp . 80", "goto d")}, tx: func(tx *knftables.Transaction) {
			tx.Delete(el("vm", "10.96.0.1 . tcp . 80", ""))
			tx.Delete(pchain(pv4, "d"))
		}},
		{name: "delete a chain after flushing the map", pre: []knftables.Object{el("vm", "10.96.0.1 . tcp . 80", "goto d")}, tx: func(tx *knftables.Transaction) {
			tx.Flush(&knftables.Map{Family: pv4, Table: ptab, Name: "vm"})
			tx.Delete(pchain(pv4, "d"))
		}},
		{name: "delete a chain holding rules", pre: []knftables.Object{prule("c", "jump d")}, tx: del("c")},
		{name: "delete a chain that jumps to itself", pre: []knftables.Object{prule("c", "jump c")}, tx: del("c"), refuse: true},
		{name: "delete a missing chain", tx: del("nope"), refuse: true},
		{name: "flush a missing chain", tx: func(tx *knftables.Transaction) { tx.Flush(pchain(pv4, "nope")) }, refuse: true},
		{name: "delete, re-add and use a chain", pre: []knftables.Object{prule("c", "drop")}, tx: func(tx *knftables.Transaction) {
			tx.Delete(pchain(pv4, "c"))
			tx.Add(pchain(pv4, "c"))
			tx.Add(prule("d", "jump c"))
		}},
		{name: "base chain re-added unchanged", tx: adds(pbase("nat-pre", knftables.NATType, knftables.PreroutingHook, knftables.DNATPriority))},
		{name: "base chain re-added as a regular one", tx: adds(pchain(pv4, "nat-pre"))},
		{name: "base chain re-added with another priority", tx: adds(pbase("nat-pre", knftables.NATType, knftables.PreroutingHook, knftables.DNATPriority+"+10")), refuse: true},
		{name: "base chain re-added with another hook", tx: adds(pbase("nat-pre", knftables.NATType, knftables.OutputHook, knftables.DNATPriority)), refuse: true},
		{name: "base chain re-added with another type", tx: adds(pbase("nat-pre", knftables.FilterType, knftables.PreroutingHook, knftables.DNATPriority)), refuse: true},
		{name: "regular chain re-added as a base chain", tx: adds(pbase("c", knftables.NATType, knftables.PreroutingHook, knftables.DNATPriority)), refuse: true},
		{name: "loop reachable from a base chain", tx: adds(prule("nat-pre", "jump c"), prule("c", "jump d"), prule("d", "jump c")), refuse: true},
		{name: "loop no base chain reaches", tx: adds(prule("c", "jump d"), prule("d", "jump c"))},
		{name: "loop through a verdict map", tx: adds(el("vm", "10.96.0.1 . tcp . 80", "goto c"),
			prule("nat-pre", "ip daddr . meta l4proto . th dport vmap @vm"), prule("c", "ip daddr . meta l4proto . th dport vmap @vm")), refuse: true},
		{name: "16 levels of jumps", tx: deepJumps(15)},
		{name: "17 levels of jumps", tx: deepJumps(16), refuse: true},
	}
}

// deepJumps chains n regular chains below nat-pre (levels 1…n).
func deepJumps(n int) func(*knftables.Transaction) {
	return func(tx *knftables.Transaction) {
		prev := "nat-pre"
		for i := range n {
			name := "deep" + string(rune('a'+i))
			tx.Add(pchain(pv4, name))
			tx.Add(prule(prev, "jump "+name))
			prev = name
		}
	}
}

func statementCases() []parityCase {
	return []parityCase{
		{name: "dnat reachable from a filter chain", tx: adds(prule("c", "dnat to 10.0.0.1"), prule("filter-in", "jump c")), refuse: true},
		{name: "dnat reachable from nat postrouting", tx: adds(prule("c", "dnat to 10.0.0.1"), prule("nat-post", "jump c")), refuse: true},
		{name: "dnat reachable from nat prerouting", tx: adds(prule("c", "dnat to 10.0.0.1"), prule("nat-pre", "jump c"))},
		{name: "masquerade reachable from nat prerouting", tx: adds(prule("c", "masquerade"), prule("nat-pre", "jump c")), refuse: true},
		{name: "masquerade reachable from nat postrouting", tx: adds(prule("c", "masquerade"), prule("nat-post", "jump c"))},
		{name: "dnat reachable through a verdict map from filter", tx: adds(prule("c", "dnat to 10.0.0.1"), el("vm", "10.96.0.1 . tcp . 80", "goto c"),
			prule("filter-in", "ip daddr . meta l4proto . th dport vmap @vm")), refuse: true},
		{name: "reject reachable from nat postrouting", tx: adds(prule("c", "reject"), prule("nat-post", "jump c")), refuse: true},
		{name: "reject reachable from nat prerouting", tx: adds(prule("c", "reject"), prule("nat-pre", "jump c"))},
		{name: "reject reachable from filter input", tx: adds(prule("c", "reject"), prule("filter-in", "jump c"))},
		{name: "numgen modulus 0", tx: adds(prule("c", "numgen random mod 0 0 goto d")), refuse: true},
		{name: "IPv6 prefix in an ip rule", tx: adds(prule("c", "ip saddr fd10::/64 drop")), refuse: true},
		{name: "dnat to port 70000", tx: adds(prule("c", "meta l4proto tcp dnat to 10.0.0.1:70000")), refuse: true},
		{name: "dnat to port 65535", tx: adds(prule("c", "meta l4proto tcp dnat to 10.0.0.1:65535"))},
		{name: "rule using a missing set", tx: adds(prule("c", "ip saddr @nope drop")), refuse: true},
		{name: "affinity update and lookup", tx: adds(prule("c", "update @aff { ip saddr }"), prule("c", "ip saddr @aff goto d"))},
	}
}

func setCases() []parityCase {
	setOf := func(name, typ string, flags ...knftables.SetFlag) *knftables.Set {
		return &knftables.Set{Family: pv4, Table: ptab, Name: name, Type: typ, Flags: flags}
	}
	return []parityCase{
		{name: "delete a set a rule uses", pre: []knftables.Object{prule("c", "ip saddr . ip daddr @s drop")},
			tx: func(tx *knftables.Transaction) { tx.Delete(setOf("s", "")) }, refuse: true},
		{name: "delete a set after flushing its user", pre: []knftables.Object{prule("c", "ip saddr . ip daddr @s drop")}, tx: func(tx *knftables.Transaction) {
			tx.Flush(pchain(pv4, "c"))
			tx.Delete(setOf("s", ""))
		}},
		{name: "delete a map a rule uses", pre: []knftables.Object{prule("c", "ip daddr . meta l4proto . th dport vmap @vm")},
			tx: func(tx *knftables.Transaction) { tx.Delete(&knftables.Map{Family: pv4, Table: ptab, Name: "vm"}) }, refuse: true},
		{name: "delete an interval set a rule uses", pre: []knftables.Object{prule("c", "ip saddr @iv drop")},
			tx: func(tx *knftables.Transaction) { tx.Delete(setOf("iv", "")) }, refuse: true},
		{name: "add an existing set, same type", tx: adds(setOf("s", "ipv4_addr . ipv4_addr"))},
		{name: "add an existing set, other type", tx: adds(setOf("s", "ipv4_addr")), refuse: true},
		{name: "add an existing set, other flags", tx: adds(setOf("s", "ipv4_addr . ipv4_addr", knftables.IntervalFlag)), refuse: true},
		{name: "add an existing set, other timeout", tx: adds(&knftables.Set{Family: pv4, Table: ptab, Name: "aff", Type: "ipv4_addr",
			Flags: []knftables.SetFlag{knftables.DynamicFlag, knftables.TimeoutFlag}, Timeout: knftables.PtrTo(2 * time.Hour)})},
		{name: "add an existing map, other value type", tx: adds(&knftables.Map{Family: pv4, Table: ptab, Name: "vm", Type: "ipv4_addr . inet_proto . inet_service : ipv4_addr"}), refuse: true},
		{name: "create an existing set", tx: func(tx *knftables.Transaction) { tx.Create(setOf("s", "ipv4_addr . ipv4_addr")) }, refuse: true},
		{name: "flush a missing set", tx: func(tx *knftables.Transaction) { tx.Flush(setOf("nope", "")) }, refuse: true},
		{name: "delete a missing map", tx: func(tx *knftables.Transaction) { tx.Delete(&knftables.Map{Family: pv4, Table: ptab, Name: "nope"}) }, refuse: true},
		{name: "delete a missing table", tx: func(tx *knftables.Transaction) { tx.Delete(&knftables.Table{Family: pv4, Name: "nope"}) }, refuse: true},
		{name: "add and delete a table", tx: func(tx *knftables.Transaction) {
			tx.Add(&knftables.Table{Family: pv4, Name: "other"})
			tx.Delete(&knftables.Table{Family: pv4, Name: "other"})
		}},
		{name: "delete the table with everything in it", pre: []knftables.Object{prule("c", "jump d"), el("vm", "10.96.0.1 . tcp . 80", "goto d")},
			tx: func(tx *knftables.Transaction) { tx.Delete(&knftables.Table{Family: pv4, Name: ptab}) }},
		{name: "create an existing table", tx: func(tx *knftables.Transaction) { tx.Create(&knftables.Table{Family: pv4, Name: ptab}) }, refuse: true},
		{name: "chain in a missing table", tx: adds(&knftables.Chain{Family: pv4, Table: "nope", Name: "c"}), refuse: true},
	}
}

func parityCases() []parityCase {
	var all []parityCase
	for _, cs := range [][]parityCase{elementCases(), chainCases(), statementCases(), setCases()} {
		all = append(all, cs...)
	}
	return all
}

// runCase runs a case's transactions through run (a fresh kernel or fake).
func runCase(c parityCase, newTx func() *knftables.Transaction, run func(*knftables.Transaction) error) error {
	setup := newTx()
	paritySetup(setup)
	if len(c.pre) > 0 {
		// The setup and pre in one transaction: fewer nft runs.
		for _, o := range c.pre {
			setup.Add(o)
		}
	}
	if err := run(setup); err != nil {
		return errors.Join(errSetup, err)
	}
	tx := newTx()
	c.tx(tx)
	return run(tx)
}

var errSetup = errors.New("setup refused")

// TestFakeParity: the fake against the expectations, then (as root) the real
// kernel against the same expectations.
func TestFakeParity(t *testing.T) {
	cases := parityCases()
	t.Run("fake", func(t *testing.T) {
		for _, c := range cases {
			k := NewFakeKernel()
			before := ""
			err := runCase(c, k.NewTransaction, func(tx *knftables.Transaction) error {
				before = k.Dump()
				return k.Run(context.Background(), tx)
			})
			checkVerdict(t, "fake", c, err)
			if err != nil && k.Dump() != before {
				t.Errorf("%s: the fake changed although it refused", c.name)
			}
		}
	})
	t.Run("kernel", func(t *testing.T) {
		netns.Skip(t)
		ns := netns.New(t, "nftparity")
		var k *nftKernel
		if err := ns.Do(func() error { var err error; k, err = newNFTKernel(); return err }); err != nil {
			t.Fatal(err)
		}
		for _, c := range cases {
			ns.MustRun(t, "nft", "flush", "ruleset")
			err := runCase(c, k.tx.NewTransaction, func(tx *knftables.Transaction) error {
				return ns.Do(func() error { return k.run(context.Background(), tx, nil) })
			})
			checkVerdict(t, "kernel", c, err)
		}
	})
}

func checkVerdict(t *testing.T, who string, c parityCase, err error) {
	t.Helper()
	switch {
	case errors.Is(err, errSetup):
		t.Errorf("%s: %s: %v", who, c.name, err)
	case c.refuse && err == nil:
		t.Errorf("%s accepted %q, the kernel refuses it", who, c.name)
	case !c.refuse && err != nil:
		t.Errorf("%s refused %q, the kernel accepts it: %v", who, c.name, err)
	}
}

// TestFakeErrnos: the fake's refusals carry the kernel's errno.
func TestFakeErrnos(t *testing.T) {
	for name, want := range map[string]error{
		"map key existing, other data":     syscall.EEXIST,
		"delete a chain a rule jumps to":   syscall.EBUSY,
		"goto a base chain":                syscall.EOPNOTSUPP,
		"loop reachable from a base chain": syscall.EMLINK,
		"delete a missing chain":           syscall.ENOENT,
		"numgen modulus 0":                 syscall.ERANGE,
	} {
		var c parityCase
		for _, pc := range parityCases() {
			if pc.name == name {
				c = pc
			}
		}
		k := NewFakeKernel()
		err := runCase(c, k.NewTransaction, func(tx *knftables.Transaction) error { return k.Run(context.Background(), tx) })
		if !errors.Is(err, want) {
			t.Errorf("%s: got %v, want %v", name, err, want)
		}
	}
}
