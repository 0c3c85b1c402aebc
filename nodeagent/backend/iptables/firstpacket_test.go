package iptables

import (
	"context"
	"fmt"
	"testing"
	"time"

	"kpo.dev/kpo/hack/netns"
	"kpo.dev/kpo/nodeagent/backend/backendtest"
	"kpo.dev/kpo/nodeagent/model"
)

// BenchmarkFirstPacket10k is the cost of a new connection (the only packet
// that traverses the rules; the rest follow conntrack) to the first and the
// last of 10k services: with the destination buckets both traverse at most
// 256 bucket jumps + ~40 services' inlined rules instead of up to 10k.
func BenchmarkFirstPacket10k(b *testing.B) {
	netns.Skip(b)
	top := netns.NewOneNode(b, 2)
	top.Pods[0].ServeEcho(b, "tcp", ":8080", "pod0")
	s := snapOf()
	for i := range 10000 {
		sp := svc(fmt.Sprintf("svc%d", i), fmt.Sprintf("10.96.%d.%d", i/250, i%250+1), 80, podEP(top.Pods[0], false))
		s.Services[sp.Key] = sp
	}
	for _, v := range []Variant{VariantNFT, VariantLegacy} {
		be, err := New(testSettings, []model.Family{model.IPv4}, WithVariant(v))
		if err != nil {
			b.Fatal(err)
		}
		if err := top.Node.Do(func() error { _, err := backendtest.Sync(context.Background(), be, s, true); return err }); err != nil {
			b.Fatal(err)
		}
		for _, target := range []string{"10.96.0.1:80", "10.96.39.250:80"} {
			b.Run(fmt.Sprintf("%s/%s", v, target), func(b *testing.B) {
				for b.Loop() {
					if _, err := top.Pods[1].Dial("tcp", target, 2*time.Second); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
		if err := top.Node.Do(func() error { return be.Cleanup(context.Background()) }); err != nil {
			b.Fatal(err)
		}
	}
}
