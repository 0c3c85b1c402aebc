package nftables

import (
	"fmt"
	"net/netip"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"kpo.dev/kpo/hack/netns"
	"kpo.dev/kpo/nodeagent/backend/backendtest"
	"kpo.dev/kpo/nodeagent/model"
	"kpo.dev/kpo/nodeagent/model/modeltest"
)

var testSettings = backendtest.Settings

func key(ns, name string, fam model.Family) model.ServicePortKey {
	return model.ServicePortKey{ServicePortName: model.ServicePortName{Namespace: ns, Name: name, Protocol: corev1.ProtocolTCP}, Family: fam}
}

func ep(ip string, port int32, local bool) model.Endpoint {
	return model.Endpoint{IP: netip.MustParseAddr(ip), Port: port, Local: local, Ready: true}
}

// svc builds a TCP ServicePort; mutate the result for the other fields.
func svc(name, clusterIP string, port int32, eps ...model.Endpoint) *model.ServicePort {
	return modeltest.ServicePort("default", name, clusterIP, port, eps...)
}

func snapshot(node model.NodeInfo, sps ...*model.ServicePort) *model.Snapshot {
	return modeltest.Snapshot(node, sps...)
}

func withSnap(s *model.Snapshot, sps ...*model.ServicePort) *model.Snapshot {
	return modeltest.With(s, sps...)
}

var testNode = model.NodeInfo{Name: "node", ClusterCIDRs: modeltest.PodNetworks(), ServiceCIDRs: modeltest.ServiceNetworks()}

// bigSnapshot has n services with eps endpoints each (IPv4).
func bigSnapshot(n, eps int) *model.Snapshot {
	s := snapshot(testNode)
	for i := range n {
		var e []model.Endpoint
		for j := range eps {
			x := i*eps + j
			e = append(e, ep(fmt.Sprintf("10.244.%d.%d", (x>>8)&255, x&255), 8080, j == 0))
		}
		sp := svc(fmt.Sprintf("svc%d", i), fmt.Sprintf("10.96.%d.%d", (i>>8)&255, i&255), 80, e...)
		sp.NodePort = int32(30000 + i%2000)
		if i >= 2000 {
			sp.NodePort = 0
		}
		s.Services[sp.Key] = sp
	}
	return s
}

// spyNFT counts the transactions the production kernel hands to nft: a
// partial sync must go over netlink.
type spyNFT struct {
	Kernel
	full, partial int
}

func (s *spyNFT) Begin(full bool) Tx {
	if full {
		s.full++
	} else {
		s.partial++
	}
	return s.Kernel.Begin(full)
}

// newSpiedBackend is a backend on the production kernel of ns, with a spy
// on its nft half.
func newSpiedBackend(t testing.TB, ns *netns.NS) (*Backend, *spyNFT) {
	t.Helper()
	var b *Backend
	var spy *spyNFT
	if err := ns.Do(func() error {
		nft, err := newNFTKernel()
		if err != nil {
			return err
		}
		spy = &spyNFT{Kernel: nft}
		b, err = New(testSettings, nil, WithKernel(&netlinkKernel{nft: spy}))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return b, spy
}
