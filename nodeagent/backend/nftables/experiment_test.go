package nftables

// Experiments behind the flat layout (docs/nftables-backend.md, "Why flat"):
// which kinds of nf_tables transactions make the kernel validate the whole
// table at commit (nft_table_validate), and what they cost at 10k services.
// Run as root:
//
//	KPO_EXPERIMENT=1 go test ./nodeagent/backend/nftables/ -run TestExperiment -v -count=1

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	gnft "github.com/google/nftables"
	"github.com/google/nftables/expr"

	"kpo.dev/kpo/hack/netns"
	"kpo.dev/kpo/nodeagent/model"
)

func experimentOnly(t *testing.T) {
	if os.Getenv("KPO_EXPERIMENT") == "" {
		t.Skip("set KPO_EXPERIMENT=1")
	}
	netns.Skip(t)
}

// timeBatch runs build+flush n times in ns and returns the median duration.
// With lasting, one socket serves all batches: closing a netfilter netlink
// socket waits for the kernel's pending destroy work (nft_rcv_nl_event flushes
// it, and it runs synchronize_rcu), i.e. for an RCU grace period after any
// commit that deleted something.
func timeBatch(t *testing.T, ns *netns.NS, n int, lasting bool, build func(c *gnft.Conn, i int)) time.Duration {
	t.Helper()
	var ds []time.Duration
	var lc *gnft.Conn
	if lasting {
		if err := ns.Do(func() error {
			var err error
			lc, err = gnft.New(gnft.AsLasting(), gnft.WithSockOptions(bigBuffers))
			return err
		}); err != nil {
			t.Fatal(err)
		}
		defer func() { _ = lc.CloseLasting() }()
	}
	for i := range n {
		if err := ns.Do(func() error {
			c := lc
			if c == nil {
				var err error
				if c, err = gnft.New(gnft.WithSockOptions(bigBuffers)); err != nil {
					return err
				}
			}
			start := time.Now()
			build(c, i)
			err := c.Flush()
			ds = append(ds, time.Since(start))
			return err
		}); err != nil {
			t.Fatalf("batch %d: %v", i, err)
		}
	}
	slices.Sort(ds)
	return ds[len(ds)/2]
}

// timeBatchBoth measures with a socket per batch and with a lasting one.
func timeBatchBoth(t *testing.T, ns *netns.NS, build func(c *gnft.Conn, i int)) string {
	return fmt.Sprintf("socket per batch %v, lasting socket %v", timeBatch(t, ns, 20, false, build), timeBatch(t, ns, 20, true, build))
}

func v4(a string) []byte { return netip.MustParseAddr(a).AsSlice() }

func ne32(v uint32) []byte { return binary.NativeEndian.AppendUint32(nil, v) }

func port4(p uint16) []byte { return append(binary.BigEndian.AppendUint16(nil, p), 0, 0) }

// expHooks are the base chains and maps both layouts of the experiment share.
const expHooks = `
  chain nat-prerouting { type nat hook prerouting priority dstnat; jump services; }
  chain nat-output { type nat hook output priority -100; jump services; }
  chain nat-postrouting { type nat hook postrouting priority srcnat; jump masquerading; }
  chain mark-for-masquerade { meta mark set meta mark or 0x4000; }
  chain masquerading { meta mark & 0x4000 == 0 return; meta mark set meta mark xor 0x4000; masquerade fully-random; }
  map service-ips { type ipv4_addr . inet_proto . inet_service : verdict; }
  map data { type ipv4_addr . inet_service : ipv4_addr . inet_service; }
  chain services { ip daddr . meta l4proto . th dport vmap @service-ips; }
`

func expSvcIP(i int) string { return fmt.Sprintf("10.96.%d.%d", i>>8&255, i&255) }

func expEpIP(i, j int) string { x := i*2 + j; return fmt.Sprintf("10.244.%d.%d", x>>8&255, x&255) }

// expRun loads an nft file in ns and says how long it took.
func expRun(t *testing.T, ns *netns.NS, file string) time.Duration {
	start := time.Now()
	if out, err := ns.Command("nft", "-f", file).CombinedOutput(); err != nil {
		t.Fatalf("nft -f %s: %v\n%s", file, err, out)
	}
	return time.Since(start)
}

// expWrite writes text to a file of the test's and returns its path.
func expWrite(t *testing.T, name, text string) string {
	p := t.TempDir() + "/" + name
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func expMap(tbl *gnft.Table, name string) *gnft.Set {
	return &gnft.Set{Table: tbl, Name: name, IsMap: true}
}

// TestExperimentValidate measures, at 10k services × 2 endpoints, one-change
// transactions against the per-service-chain layout (the backend before the
// flat layout, written here as nft text) and the flat layout.
func TestExperimentValidate(t *testing.T) {
	experimentOnly(t)
	const n = 10000
	tbl := &gnft.Table{Family: gnft.TableFamilyIPv4, Name: "kpoexp"}
	expBaseline(t, tbl)
	nsOld := netns.New(t, "expold")
	t.Logf("old layout: cold nft -f %v", expRun(t, nsOld, expWrite(t, "old.nft", expOldLayout(n))))
	expMeasureOld(t, nsOld, tbl)
	flat := expFlatLayout(n)
	nsFlat := netns.New(t, "expflat")
	t.Logf("flat layout: cold nft -f (one element per line) %v", expRun(t, nsFlat, expWrite(t, "flat.nft", flat)))
	expMeasureFlat(t, nsFlat, tbl)
	nsBatched := netns.New(t, "expbatch")
	t.Logf("flat layout: cold nft -f (one statement per map) %v", expRun(t, nsBatched, expWrite(t, "batched.nft", expBatched(flat, n))))
}

// expOldLayout is the per-service-chain layout: svc-i, ep-i-j, goto elements.
func expOldLayout(n int) string {
	var old strings.Builder
	old.WriteString("table ip kpoexp {" + expHooks + "}\n")
	for i := range n {
		fmt.Fprintf(&old, "add chain ip kpoexp svc-%d\n", i)
		for j := range 2 {
			fmt.Fprintf(&old, "add chain ip kpoexp ep-%d-%d\n", i, j)
			fmt.Fprintf(&old, "add rule ip kpoexp ep-%d-%d ip saddr %s jump mark-for-masquerade\n", i, j, expEpIP(i, j))
			fmt.Fprintf(&old, "add rule ip kpoexp ep-%d-%d meta l4proto tcp dnat to %s:8080\n", i, j, expEpIP(i, j))
		}
		fmt.Fprintf(&old, "add rule ip kpoexp svc-%d numgen random mod 2 0 goto ep-%d-0\n", i, i)
		fmt.Fprintf(&old, "add rule ip kpoexp svc-%d goto ep-%d-1\n", i, i)
		fmt.Fprintf(&old, "add element ip kpoexp service-ips { %s . tcp . 80 : goto svc-%d }\n", expSvcIP(i), i)
	}
	return old.String()
}

// expBaseline: a data-map change in a table with nothing else.
func expBaseline(t *testing.T, tbl *gnft.Table) {
	nsEmpty := netns.New(t, "expempty")
	expRun(t, nsEmpty, expWrite(t, "empty.nft", "table ip kpoexp {"+expHooks+"}\n"))
	dk, dv := append(v4("10.96.200.1"), port4(80)...), append(v4("10.244.200.1"), port4(8080)...)
	t.Logf("empty table: data map element add/del: %v", timeBatchBoth(t, nsEmpty, func(c *gnft.Conn, i int) {
		s := &gnft.Set{Table: tbl, Name: "data", IsMap: true}
		if i%2 == 0 {
			_ = c.SetAddElements(s, []gnft.SetElement{{Key: dk, Val: dv}})
		} else {
			_ = c.SetDeleteElements(s, []gnft.SetElement{{Key: dk}})
		}
	}))
}

// expMeasureOld times one-change transactions against the old layout.
func expMeasureOld(t *testing.T, nsOld *netns.NS, tbl *gnft.Table) {
	// (a) add, then delete, one element of a plain data map.
	dataKey, dataVal := append(v4("10.96.200.1"), port4(80)...), append(v4("10.244.200.1"), port4(8080)...)
	d := timeBatchBoth(t, nsOld, func(c *gnft.Conn, i int) {
		s := expMap(tbl, "data")
		if i%2 == 0 {
			_ = c.SetAddElements(s, []gnft.SetElement{{Key: dataKey, Val: dataVal}})
		} else {
			_ = c.SetDeleteElements(s, []gnft.SetElement{{Key: dataKey}})
		}
	})
	t.Logf("old layout: data map element add/del: %v", d)
	// (b) add, then delete, one verdict-map element (goto an existing chain).
	vKey := append(append(v4("10.97.0.1"), 6, 0, 0, 0), port4(80)...)
	d = timeBatchBoth(t, nsOld, func(c *gnft.Conn, i int) {
		s := expMap(tbl, "service-ips")
		if i%2 == 0 {
			_ = c.SetAddElements(s, []gnft.SetElement{{Key: vKey, VerdictData: &expr.Verdict{Kind: expr.VerdictGoto, Chain: "svc-5"}}})
		} else {
			_ = c.SetDeleteElements(s, []gnft.SetElement{{Key: vKey}})
		}
	})
	t.Logf("old layout: verdict map element (goto) add/del: %v", d)
	// (c) rewrite one service chain (flush, two goto rules): the old partial sync.
	fi := fams[model.IPv4]
	d = timeBatchBoth(t, nsOld, func(c *gnft.Conn, _ int) {
		ch := &gnft.Chain{Table: tbl, Name: "svc-5"}
		c.FlushChain(ch)
		for _, r := range []string{"numgen random mod 2 0 goto ep-5-0", "goto ep-5-1"} {
			e, _ := ruleExprs(fi, r)
			c.AddRule(&gnft.Rule{Table: tbl, Chain: ch, Exprs: e})
		}
	})
	t.Logf("old layout: rewrite one svc chain (goto rules): %v", d)
	// (d) a rule without any expression that has a validate op (payload, cmp,
	// counter) in a chain nothing refers to.
	d = timeBatchBoth(t, nsOld, func(c *gnft.Conn, i int) {
		ch := &gnft.Chain{Table: tbl, Name: "scratch"}
		if i%2 == 0 {
			c.AddChain(ch)
			e, _ := ruleExprs(fi, "ip saddr 10.1.2.3 drop")
			// "drop" is an immediate verdict (validate op): use a counter instead.
			e = append(e[:len(e)-1], &expr.Counter{})
			c.AddRule(&gnft.Rule{Table: tbl, Chain: ch, Exprs: e})
		} else {
			c.DelChain(ch)
		}
	})
	t.Logf("old layout: rule without validate ops (unreferenced chain): %v", d)
	// (e) a dnat rule (nat has a validate op) in a chain nothing refers to.
	d = timeBatchBoth(t, nsOld, func(c *gnft.Conn, i int) {
		ch := &gnft.Chain{Table: tbl, Name: "scratch"}
		if i%2 == 0 {
			c.AddChain(ch)
			e, _ := ruleExprs(fi, "meta l4proto tcp dnat to 10.244.0.1:80")
			c.AddRule(&gnft.Rule{Table: tbl, Chain: ch, Exprs: e})
		} else {
			c.DelChain(ch)
		}
	})
	t.Logf("old layout: dnat rule in an unreferenced chain: %v", d)
}

// expFlatLayout is the flat layout: one vmap element per service to a
// shared chain, the endpoints in a data map keyed by VIP . proto . port . slot.
func expFlatLayout(n int) string {
	var flat strings.Builder
	flat.WriteString("table ip kpoexp {" + expHooks + `
  map eps { typeof ip daddr . meta l4proto . th dport . numgen random mod 2 : ip daddr . th dport; }
  set hairpin { type ipv4_addr . ipv4_addr; }
  chain c2 { ip saddr != 10.244.0.0/16 jump mark-for-masquerade; dnat ip to ip daddr . meta l4proto . th dport . numgen random mod 2 map @eps; }
  chain c3 { ip saddr != 10.244.0.0/16 jump mark-for-masquerade; dnat ip to ip daddr . meta l4proto . th dport . numgen random mod 3 map @eps; }
}
`)
	for i := range n {
		fmt.Fprintf(&flat, "add element ip kpoexp service-ips { %s . tcp . 80 : goto c2 }\n", expSvcIP(i))
		for j := range 2 {
			fmt.Fprintf(&flat, "add element ip kpoexp eps { %s . tcp . 80 . %d : %s . 8080 }\n", expSvcIP(i), j, expEpIP(i, j))
			fmt.Fprintf(&flat, "add element ip kpoexp hairpin { %s . %s }\n", expEpIP(i, j), expEpIP(i, j))
		}
	}
	return flat.String()
}

// expMeasureFlat times one-change transactions against the flat layout.
func expMeasureFlat(t *testing.T, nsFlat *netns.NS, tbl *gnft.Table) {
	epsKey := append(append(append(v4(expSvcIP(5)), 6, 0, 0, 0), port4(80)...), ne32(1)...)
	d := timeBatchBoth(t, nsFlat, func(c *gnft.Conn, i int) {
		s := expMap(tbl, "eps")
		h := &gnft.Set{Table: tbl, Name: "hairpin"}
		newEP, oldEP := "10.250.0.1", expEpIP(5, 1)
		if i%2 == 1 {
			newEP, oldEP = oldEP, newEP
		}
		_ = c.SetDeleteElements(s, []gnft.SetElement{{Key: epsKey}})
		_ = c.SetAddElements(s, []gnft.SetElement{{Key: epsKey, Val: append(v4(newEP), port4(8080)...)}})
		_ = c.SetDeleteElements(h, []gnft.SetElement{{Key: append(v4(oldEP), v4(oldEP)...)}})
		_ = c.SetAddElements(h, []gnft.SetElement{{Key: append(v4(newEP), v4(newEP)...)}})
	})
	t.Logf("flat layout: replace one endpoint (data map + hairpin set elements): %v", d)
	vKey5 := append(append(v4(expSvcIP(5)), 6, 0, 0, 0), port4(80)...)
	d = timeBatchBoth(t, nsFlat, func(c *gnft.Conn, i int) {
		s := expMap(tbl, "service-ips")
		to := []string{"c3", "c2"}[i%2]
		_ = c.SetDeleteElements(s, []gnft.SetElement{{Key: vKey5}})
		_ = c.SetAddElements(s, []gnft.SetElement{{Key: vKey5, VerdictData: &expr.Verdict{Kind: expr.VerdictGoto, Chain: to}}})
	})
	t.Logf("flat layout: change one service's vmap element (goto c2 <-> c3): %v", d)
}

// expBatched is the flat table with all elements of a map in one `add
// element` statement (nft parses and evaluates one command).
func expBatched(flat string, n int) string {
	var batched strings.Builder
	batched.WriteString(strings.SplitAfter(flat, "}\n}\n")[0])
	for _, m := range []string{"service-ips", "eps", "hairpin"} {
		fmt.Fprintf(&batched, "add element ip kpoexp %s {\n", m)
		for i := range n {
			switch m {
			case "service-ips":
				fmt.Fprintf(&batched, "%s . tcp . 80 : goto c2,\n", expSvcIP(i))
			case "eps":
				for j := range 2 {
					fmt.Fprintf(&batched, "%s . tcp . 80 . %d : %s . 8080,\n", expSvcIP(i), j, expEpIP(i, j))
				}
			case "hairpin":
				for j := range 2 {
					fmt.Fprintf(&batched, "%s . %s,\n", expEpIP(i, j), expEpIP(i, j))
				}
			}
		}
		batched.WriteString("}\n")
	}
	return batched.String()
}
