package noderuntime

import (
	"fmt"
	"sync"

	"kpo.dev/kpo/test/netns"
)

// ipPool hands out pod addresses from the node's podCIDRs: host part 10…250
// (.1 is the node's gateway address on every pod link), the same number in
// both families.
type ipPool struct {
	index int
	mu    sync.Mutex
	used  map[int]string // host part → pod UID
}

func newIPPool(index int) *ipPool { return &ipPool{index: index, used: map[int]string{}} }

func (p *ipPool) allocate(uid string) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for n := 10; n <= 250; n++ {
		if _, taken := p.used[n]; !taken {
			p.used[n] = uid
			return n, nil
		}
	}
	return 0, fmt.Errorf("node's pod range 10.244.%d.0/24 is full", p.index)
}

func (p *ipPool) release(n int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.used, n)
}

// sandbox is a pod's network: the node's own namespace for hostNetwork pods,
// otherwise a namespace of its own plugged into the node as a routed CNI
// plugin does (netns.PlugPod).
type sandbox struct {
	ns    *netns.NS
	ips   []string
	scope *netns.Scope
	close func()
}

func (r *Runtime) newSandbox(uid, podName string, hostNetwork bool) (*sandbox, error) {
	if hostNetwork {
		return &sandbox{ns: r.cfg.NS, ips: r.nodeIPs(), close: func() {}}, nil
	}
	n, err := r.ips.allocate(uid)
	if err != nil {
		return nil, err
	}
	ip4 := fmt.Sprintf("10.244.%d.%d", r.cfg.Index, n)
	ip6 := fmt.Sprintf("fd10:244:0:%d::%x", r.cfg.Index, n)
	gw4, gw6 := netns.PodGateways(r.cfg.Index)
	s := &sandbox{ips: []string{ip4, ip6}, scope: &netns.Scope{}}
	name := fmt.Sprintf("n%d-%s", r.cfg.Index, podName)
	if len(name) > 40 {
		name = name[:40]
	}
	err = netns.Build(s.scope, func(sc *netns.Scope) {
		s.ns = netns.New(sc, name)
		// The node side of the link is named after the address, so it is unique on the node.
		netns.PlugPod(sc, r.cfg.NS, fmt.Sprintf("vp%d", n), s.ns, ip4, ip6, gw4, gw6)
	})
	s.close = func() {
		s.scope.Close() // deletes the namespace, and with it the veth pair
		r.ips.release(n)
	}
	if err != nil {
		s.close()
		return nil, fmt.Errorf("pod network: %w", err)
	}
	return s, nil
}
