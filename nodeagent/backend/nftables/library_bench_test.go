package nftables

// Library comparison (the measurement behind the choice of knftables, see
// docs/nftables-backend.md). Both benchmarks program the same representative
// table into a throw-away network namespace:
//
//	per service i: chain svc-i   { numgen random mod 2 0 goto ep-i-0 ; goto ep-i-1 }
//	               chain ep-i-j  { ip saddr E mark set mark or 0x4000 ; meta l4proto tcp dnat to E:8080 }
//	               element in map service-ips: 10.96.x.y . tcp . 80 : goto svc-i
//
// and then a one-service partial update (flush svc-5's chains, rewrite them,
// one endpoint replaced by a new one).

import (
	"context"
	"encoding/binary"
	"fmt"
	"net/netip"
	"testing"

	gnft "github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
	"sigs.k8s.io/knftables"

	"kpo.dev/kpo/hack/netns"
)

const libBenchTable = "kpobench"

func benchSvcIP(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)})
}

func benchEpIP(i, j int) netip.Addr {
	n := i*4 + j
	return netip.AddrFrom4([4]byte{10, 244, byte(n >> 8), byte(n)})
}

// knftables version.

// knftLibTx writes the whole table (only < 0) or rewrites service only with
// endpoints 0 and newJ, deleting endpoint chain oldJ.
func knftLibTx(tx *knftables.Transaction, services, only, newJ, oldJ int) {
	if only < 0 {
		tx.Add(&knftables.Table{})
		tx.Add(&knftables.Map{Name: "service-ips", Type: "ipv4_addr . inet_proto . inet_service : verdict"})
	}
	for i := 0; i < services; i++ {
		if only >= 0 && i != only {
			continue
		}
		eps := []int{0, 1}
		if only >= 0 {
			eps = []int{0, newJ}
		}
		svc := fmt.Sprintf("svc-%d", i)
		tx.Add(&knftables.Chain{Name: svc})
		tx.Flush(&knftables.Chain{Name: svc})
		for _, j := range eps {
			ep := fmt.Sprintf("ep-%d-%d", i, j)
			tx.Add(&knftables.Chain{Name: ep})
			tx.Flush(&knftables.Chain{Name: ep})
			ip := benchEpIP(i, j)
			tx.Add(&knftables.Rule{Chain: ep, Rule: knftables.Concat("ip saddr", ip, "meta mark set meta mark or 0x4000")})
			tx.Add(&knftables.Rule{Chain: ep, Rule: knftables.Concat("meta l4proto tcp dnat to", ip, ":8080")})
		}
		tx.Add(&knftables.Rule{Chain: svc, Rule: fmt.Sprintf("numgen random mod 2 0 goto ep-%d-%d", i, eps[0])})
		tx.Add(&knftables.Rule{Chain: svc, Rule: fmt.Sprintf("goto ep-%d-%d", i, eps[1])})
		if only < 0 {
			tx.Add(&knftables.Element{Map: "service-ips", Key: []string{benchSvcIP(i).String(), "tcp", "80"}, Value: []string{"goto " + svc}})
		} else {
			// Only after svc's rule no longer jumps to it (the kernel says EBUSY otherwise).
			tx.Delete(&knftables.Chain{Name: fmt.Sprintf("ep-%d-%d", i, oldJ)})
		}
	}
}

// google/nftables version: the same objects as raw netlink expressions.

type gnftLib struct {
	c     *gnft.Conn
	table *gnft.Table
	svcs  *gnft.Set
}

func (g *gnftLib) chain(name string) *gnft.Chain {
	return &gnft.Chain{Table: g.table, Name: name}
}

func (g *gnftLib) epRules(ch *gnft.Chain, ip netip.Addr) {
	a := ip.As4()
	g.c.AddRule(&gnft.Rule{Table: g.table, Chain: ch, Exprs: []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: a[:]},
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: []byte{0xff, 0xbf, 0xff, 0xff}, Xor: binary.NativeEndian.AppendUint32(nil, 0x4000)},
		&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1},
	}})
	port := binary.BigEndian.AppendUint16(nil, 8080)
	g.c.AddRule(&gnft.Rule{Table: g.table, Chain: ch, Exprs: []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
		&expr.Immediate{Register: 1, Data: a[:]},
		&expr.Immediate{Register: 2, Data: port},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1, RegProtoMin: 2, Specified: true},
	}})
}

func (g *gnftLib) program(services, only, newJ, oldJ int) error {
	if only < 0 {
		g.c.AddTable(g.table)
		g.svcs = &gnft.Set{Table: g.table, Name: "service-ips", IsMap: true, Concatenation: true,
			KeyType:  gnft.MustConcatSetType(gnft.TypeIPAddr, gnft.TypeInetProto, gnft.TypeInetService),
			DataType: gnft.TypeVerdict}
		if err := g.c.AddSet(g.svcs, nil); err != nil {
			return err
		}
	}
	var elems []gnft.SetElement
	for i := 0; i < services; i++ {
		if only >= 0 && i != only {
			continue
		}
		eps := []int{0, 1}
		if only >= 0 {
			eps = []int{0, newJ}
		}
		svc := g.chain(fmt.Sprintf("svc-%d", i))
		g.c.AddChain(svc)
		g.c.FlushChain(svc)
		// Endpoint chains first: the service chain's gotos need them.
		for k, j := range eps {
			ep := g.chain(fmt.Sprintf("ep-%d-%d", i, j))
			g.c.AddChain(ep)
			g.c.FlushChain(ep)
			g.epRules(ep, benchEpIP(i, j))
			if k == 0 {
				g.c.AddRule(&gnft.Rule{Table: g.table, Chain: svc, Exprs: []expr.Any{
					&expr.Numgen{Register: 1, Modulus: 2, Type: unix.NFT_NG_RANDOM},
					&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binary.NativeEndian.AppendUint32(nil, 0)},
					&expr.Verdict{Kind: expr.VerdictGoto, Chain: ep.Name},
				}})
			} else {
				g.c.AddRule(&gnft.Rule{Table: g.table, Chain: svc, Exprs: []expr.Any{
					&expr.Verdict{Kind: expr.VerdictGoto, Chain: ep.Name},
				}})
			}
		}
		if only < 0 {
			a := benchSvcIP(i).As4()
			key := append(a[:], unix.IPPROTO_TCP, 0, 0, 0)
			key = append(key, 0, 80, 0, 0)
			elems = append(elems, gnft.SetElement{Key: key, VerdictData: &expr.Verdict{Kind: expr.VerdictGoto, Chain: svc.Name}})
		} else {
			g.c.DelChain(g.chain(fmt.Sprintf("ep-%d-%d", i, oldJ)))
		}
	}
	if len(elems) > 0 {
		if err := g.c.SetAddElements(g.svcs, elems); err != nil {
			return err
		}
	}
	return g.c.Flush()
}

func benchNS(b *testing.B) *netns.NS {
	netns.Skip(b)
	return netns.New(b, "libbench")
}

func BenchmarkLibraryKnftablesFull10k(b *testing.B) {
	ns := benchNS(b)
	for b.Loop() {
		err := ns.Do(func() error {
			nft, err := knftables.New(knftables.IPv4Family, libBenchTable, knftables.NoObjectCommentEmulation)
			if err != nil {
				return err
			}
			tx := nft.NewTransaction()
			knftLibTx(tx, 10000, -1, 0, 0)
			if err := nft.Run(context.Background(), tx); err != nil {
				return err
			}
			b.StopTimer()
			_, err = ns.Run("nft", "delete", "table", "ip", libBenchTable)
			b.StartTimer()
			return err
		})
		if err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkLibraryKnftablesPartial10k(b *testing.B) {
	ns := benchNS(b)
	var nft knftables.Interface
	err := ns.Do(func() error {
		var err error
		nft, err = knftables.New(knftables.IPv4Family, libBenchTable, knftables.NoObjectCommentEmulation)
		if err != nil {
			return err
		}
		tx := nft.NewTransaction()
		knftLibTx(tx, 10000, -1, 0, 0)
		return nft.Run(context.Background(), tx)
	})
	if err != nil {
		b.Fatal(err)
	}
	flip := false
	for b.Loop() {
		err := ns.Do(func() error {
			tx := nft.NewTransaction()
			// Alternate between two states so that every iteration changes something.
			flip = !flip
			if flip {
				knftLibTx(tx, 10000, 5, 2, 1)
			} else {
				knftLibTx(tx, 10000, 5, 1, 2)
			}
			return nft.Run(context.Background(), tx)
		})
		if err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkLibraryGoogleNftablesFull10k(b *testing.B) {
	ns := benchNS(b)
	for b.Loop() {
		err := ns.Do(func() error {
			c, err := gnft.New(gnft.AsLasting(), gnft.WithSockOptions(bigBuffers))
			if err != nil {
				return err
			}
			defer func() { _ = c.CloseLasting() }()
			g := &gnftLib{c: c, table: &gnft.Table{Family: gnft.TableFamilyIPv4, Name: libBenchTable}}
			if err := g.program(10000, -1, 0, 0); err != nil {
				return err
			}
			b.StopTimer()
			_, err = ns.Run("nft", "delete", "table", "ip", libBenchTable)
			b.StartTimer()
			return err
		})
		if err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkLibraryGoogleNftablesPartial10k(b *testing.B) {
	ns := benchNS(b)
	var g *gnftLib
	err := ns.Do(func() error {
		c, err := gnft.New(gnft.AsLasting(), gnft.WithSockOptions(bigBuffers))
		if err != nil {
			return err
		}
		g = &gnftLib{c: c, table: &gnft.Table{Family: gnft.TableFamilyIPv4, Name: libBenchTable}}
		return g.program(10000, -1, 0, 0)
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = g.c.CloseLasting() })
	flip := false
	for b.Loop() {
		err := ns.Do(func() error {
			flip = !flip
			if flip {
				return g.program(10000, 5, 2, 1)
			}
			return g.program(10000, 5, 1, 2)
		})
		if err != nil {
			b.Fatal(err)
		}
	}
}
