package behaviour

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
	"kpo.dev/kpo/hack/netns"
	"kpo.dev/kpo/nodeagent/backend"
)

// KernelTiming is the timing of the kernel levels: a sync has taken effect
// when Sync returns, so Settle only covers a slow machine (the VM's
// emulated CPU is slow: its dials get longer).
var KernelTiming = Timing{Settle: 5 * time.Second, Dial: 2 * time.Second}

// OneNode is the one-node world in network namespaces: hack/netns.OneNode
// with a pod per role of Pods, each serving TCP and UDP echo on EchoPort
// under its role's name, and the other client's addresses on the client.
type OneNode struct {
	*netns.OneNode
	pods map[Role]*netns.Pod
}

// NewOneNode builds the world; it is removed when the test ends.
func NewOneNode(t *testing.T) *OneNode {
	t.Helper()
	w := &OneNode{OneNode: netns.NewOneNode(t, len(Pods)), pods: map[Role]*netns.Pod{}}
	for i, r := range Pods {
		p := w.Pods[i]
		if p.IP4 != oneNodeHosts[r].IP4 {
			t.Fatalf("pod %d has %s, the table's %s has %s", i, p.IP4, r, oneNodeHosts[r].IP4)
		}
		for _, network := range []string{"tcp", "udp"} {
			p.ServeEcho(t, network, fmt.Sprintf(":%d", EchoPort), string(r))
		}
		w.pods[r] = p
	}
	w.Client.AddAddr(t, "eth0", oneNodeHosts[OtherClient].IP4+"/24")
	w.Client.AddAddr(t, "eth0", oneNodeHosts[OtherClient].IP6+"/64")
	return w
}

// Dial is the world's Dialer.
func (w *OneNode) Dial(from Role, network, addr string, timeout time.Duration) (Reply, error) {
	byRole := map[Role]*netns.NS{Node: w.Node, Client: w.Client, OtherClient: w.Client}
	for r, p := range w.pods {
		byRole[r] = p.NS
	}
	return NamespaceDialer(oneNodeHosts, byRole)(from, network, addr, timeout)
}

// NamespaceDialer dials from each role's namespace (byRole). The clients
// dial from their own address: they share a namespace with two addresses.
func NamespaceDialer(h Hosts, byRole map[Role]*netns.NS) Dialer {
	return func(from Role, network, addr string, timeout time.Duration) (Reply, error) {
		ns, local := byRole[from], ""
		if ns == nil {
			return Reply{}, fmt.Errorf("no namespace for %s", from)
		}
		if from == Client || from == OtherClient {
			local = net.JoinHostPort(h.Addr(from, netip.MustParseAddrPort(addr).Addr()).String(), "0")
		}
		r, err := ns.DialFrom(network, local, addr, timeout)
		if err != nil {
			return Reply{}, err
		}
		client, err := netip.ParseAddr(r.ClientIP())
		if err != nil {
			return Reply{}, fmt.Errorf("reply %+v: %w", r, err)
		}
		return Reply{Server: Role(strings.TrimSpace(r.Server)), Client: client}, nil
	}
}

// RunKernel runs the table against a backend on the real kernel of the
// one-node world: newBackend makes it inside the node's namespace (where
// its netlink sockets and commands act); it is checked, synced as the agent
// does and probed with real connections. The world and the backend, still
// holding the table's last step, are the caller's to go on with (drift,
// cleanup: what is particular to a backend).
func RunKernel(t *testing.T, mode kpov1.Mode, timing Timing, newBackend func() (backend.Backend, error)) (*OneNode, backend.Backend) {
	t.Helper()
	w := NewOneNode(t)
	var b backend.Backend
	if err := w.Node.Do(func() error {
		var err error
		if b, err = newBackend(); err != nil {
			return err
		}
		return b.Check(context.Background())
	}); err != nil {
		t.Fatal(err)
	}
	RunBackend(t, mode, b, w.Node.Do, DialCheck(oneNodeHosts, w.Dial, timing))
	return w, b
}

// Pod is the world's pod of role r.
func (w *OneNode) Pod(r Role) *netns.Pod { return w.pods[r] }
