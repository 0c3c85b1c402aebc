//go:build vmtest

package inside

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	mobyipvs "github.com/moby/ipvs"
	"github.com/vishvananda/netlink"

	"kpo.dev/kpo/hack/netns"
	"kpo.dev/kpo/nodeagent/backend"
	"kpo.dev/kpo/nodeagent/backend/backendtest"
	"kpo.dev/kpo/nodeagent/backend/ipvs"
	"kpo.dev/kpo/nodeagent/model"
	"kpo.dev/kpo/nodeagent/model/modeltest"
)

const echoPort = 8080

// dialTimeout bounds a dial that must succeed: generous, since TCG is slow.
const dialTimeout = 3 * time.Second

var settings = backend.Settings{MasqueradeBit: 14}

// env is a one-node topology with echo servers in its pods and a backend
// programming the node namespace.
type env struct {
	t    *testing.T
	top  *netns.OneNode
	cfg  ipvs.Config
	fams []model.Family
	b    *ipvs.Backend
}

// newEnv builds the topology with pods pods, each serving TCP echo on :8080
// under its pod name, and an IPv4-only backend.
func newEnv(t *testing.T, pods int, cfg ipvs.Config) *env {
	return newEnvFamilies(t, pods, cfg, model.IPv4)
}

// newEnvFamilies is newEnv with a backend for fams; with IPv6 among them the
// pods also serve TCP echo on [::]:8080 ("tcp6" listens IPv6-only, so both
// servers share the port).
func newEnvFamilies(t *testing.T, pods int, cfg ipvs.Config, fams ...model.Family) *env {
	t.Helper()
	netns.Skip(t)
	e := &env{t: t, top: netns.NewOneNode(t, pods), cfg: cfg, fams: fams}
	for _, p := range e.top.Pods {
		p.ServeEcho(t, "tcp4", fmt.Sprintf(":%d", echoPort), p.PodName)
		if slices.Contains(fams, model.IPv6) {
			p.ServeEcho(t, "tcp6", fmt.Sprintf(":%d", echoPort), p.PodName)
		}
	}
	e.b = e.newBackend()
	return e
}

// newBackend makes a backend over the node's kernel state: a second call is
// an agent restart.
func (e *env) newBackend() *ipvs.Backend {
	e.t.Helper()
	b, err := ipvs.New(settings, e.cfg, e.fams)
	if err != nil {
		e.t.Fatal(err)
	}
	return b
}

// node runs fn in the node namespace: the backend talks to the kernel of the
// calling thread (netlink sockets, /proc/sys, the iptables and ipset it runs).
func (e *env) node(fn func() error) error { return e.top.Node.Do(fn) }

func (e *env) sync(snap *model.Snapshot, full bool) backend.SyncResult {
	e.t.Helper()
	var res backend.SyncResult
	err := e.node(func() error {
		var err error
		res, err = backendtest.Sync(context.Background(), e.b, snap, full)
		return err
	})
	if err != nil {
		e.t.Fatalf("sync: %v", err)
	}
	e.t.Logf("sync: %+v, %v", res, e.b.Stats())
	return res
}

// ep is the endpoint of pod i's echo server.
func (e *env) ep(i int) model.Endpoint {
	return model.Endpoint{IP: netip.MustParseAddr(e.top.Pods[i].IP4), Port: echoPort, Ready: true, Local: true}
}

// svc is a TCP service port whose cluster and external endpoints are eps.
func svc(name, clusterIP string, port int32, eps ...model.Endpoint) *model.ServicePort {
	return modeltest.ServicePort("ns", name, clusterIP, port, eps...)
}

func snapOf(sps ...*model.ServicePort) *model.Snapshot {
	return modeltest.Snapshot(model.NodeInfo{
		Name: "node",
		// Both families: a backend ignores the ones it does not program.
		NodePortIPs: map[model.Family][]netip.Addr{
			model.IPv4: {netip.MustParseAddr(netns.NodeIP4)},
			model.IPv6: {netip.MustParseAddr(netns.NodeIP6)},
		},
		ClusterCIDRs: modeltest.PodNetworks(),
	}, sps...)
}

// dialN dials addr over TCP/IPv4 n times from ns and counts the answering
// servers.
func dialN(t *testing.T, from *netns.NS, addr string, n int) map[string]int {
	t.Helper()
	return dialFrom(t, from, "tcp4", "", addr, n)
}

// dialFrom is dialN over network from a local address ("" for any). Each
// exchange uses a new socket (a new source port), so a new IPVS connection
// that the scheduler places, for UDP too.
func dialFrom(t *testing.T, from *netns.NS, network, local, addr string, n int) map[string]int {
	t.Helper()
	seen := map[string]int{}
	for range n {
		r, err := from.DialFrom(network, local, addr, 3*time.Second)
		if err != nil {
			t.Fatalf("%s %s from %s %s: %v", network, addr, from.Name, local, err)
		}
		seen[r.Server]++
	}
	t.Logf("%s %s from %s %s: %v", network, addr, from.Name, local, seen)
	return seen
}

// mustFail dials once and fails the test unless the error is want
// (netns.ErrRefused for REJECT, netns.ErrTimeout for DROP). Expected drops
// wait only a short while: a connection that works answers well within it.
func mustFail(t *testing.T, from *netns.NS, network, local, addr string, want error) {
	t.Helper()
	timeout := 3 * time.Second
	if want == netns.ErrTimeout {
		timeout = 1500 * time.Millisecond
	}
	r, err := from.DialFrom(network, local, addr, timeout)
	if !errors.Is(err, want) {
		t.Fatalf("%s %s from %s %s: reply %+v, error %v; want %v", network, addr, from.Name, local, r, err, want)
	}
}

// ipvsHandle opens an IPVS handle in the node namespace, to look at what the
// backend programmed independently of it.
func (e *env) ipvsHandle() *mobyipvs.Handle {
	e.t.Helper()
	h, err := mobyipvs.New(e.top.Node.Path())
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(h.Close)
	return h
}

// vs returns the kernel's virtual server on vip:port (any protocol), or nil.
func (e *env) vs(h *mobyipvs.Handle, vip string, port uint16) *mobyipvs.Service {
	e.t.Helper()
	svcs, err := h.GetServices()
	if err != nil {
		e.t.Fatal(err)
	}
	for _, s := range svcs {
		if s.Address.Equal(net.ParseIP(vip)) && s.Port == port {
			return s
		}
	}
	return nil
}

// dests returns the weights of a virtual server's destinations ("ip:port"),
// nil when there is no such virtual server.
func (e *env) dests(h *mobyipvs.Handle, vip string, port uint16) map[string]int {
	e.t.Helper()
	s := e.vs(h, vip, port)
	if s == nil {
		return nil
	}
	ds, err := h.GetDestinations(s)
	if err != nil {
		e.t.Fatal(err)
	}
	out := map[string]int{}
	for _, d := range ds {
		out[net.JoinHostPort(d.Address.String(), fmt.Sprint(d.Port))] = d.Weight
	}
	return out
}

// dummyAddrs lists the addresses on kpo-ipvs0.
func (e *env) dummyAddrs() []string {
	e.t.Helper()
	addrs, err := e.top.Node.NL.AddrList(mustLink(e.t, e, "kpo-ipvs0"), netlink.FAMILY_ALL)
	if err != nil {
		e.t.Fatal(err)
	}
	var out []string
	for _, a := range addrs {
		out = append(out, a.IP.String())
	}
	return out
}

// vsCount is how many virtual servers the node's kernel holds.
func (e *env) vsCount(h *mobyipvs.Handle) int {
	e.t.Helper()
	svcs, err := h.GetServices()
	if err != nil {
		e.t.Fatal(err)
	}
	return len(svcs)
}

// lineConn is a long-lived connection to a line echo server.
type lineConn struct {
	c net.Conn
	r *bufio.Reader
}

// serveLines runs, in ns, a TCP server on addr that answers each line with
// "<name> <line>" for as long as the client keeps the connection: the echo
// servers of hack/netns close after one reply.
func serveLines(t *testing.T, ns *netns.NS, addr, name string) {
	t.Helper()
	var l net.Listener
	if err := ns.Do(func() error {
		var err error
		l, err = net.Listen("tcp4", addr)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer func() { _ = c.Close() }()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					if _, err := fmt.Fprintf(c, "%s %s", name, line); err != nil {
						return
					}
				}
			}()
		}
	}()
}

func dialLines(t *testing.T, from *netns.NS, addr string) *lineConn {
	t.Helper()
	var c net.Conn
	if err := from.Do(func() error {
		var err error
		c, err = net.DialTimeout("tcp4", addr, 3*time.Second)
		return err
	}); err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return &lineConn{c: c, r: bufio.NewReader(c)}
}

// roundTrip sends a line and returns the name of the server that answered.
func (l *lineConn) roundTrip(msg string) (string, error) {
	_ = l.c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := fmt.Fprintf(l.c, "%s\n", msg); err != nil {
		return "", err
	}
	line, err := l.r.ReadString('\n')
	if err != nil {
		return "", err
	}
	name, rest, _ := strings.Cut(strings.TrimSpace(line), " ")
	if rest != msg {
		return name, fmt.Errorf("echo %q, want %q", rest, msg)
	}
	return name, nil
}

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }

func mustLink(t *testing.T, e *env, name string) netlink.Link {
	t.Helper()
	l, err := e.top.Node.NL.LinkByName(name)
	if err != nil {
		t.Fatalf("link %s: %v", name, err)
	}
	return l
}

// addForeignVS creates a virtual server kpo does not own (not on kpo-ipvs0,
// not created by the backend), as another tool would.
func addForeignVS(t *testing.T, h *mobyipvs.Handle, vip string, port uint16) *mobyipvs.Service {
	t.Helper()
	s := &mobyipvs.Service{
		Address: net.ParseIP(vip).To4(), Protocol: syscall.IPPROTO_TCP, Port: port,
		SchedName: "rr", AddressFamily: syscall.AF_INET, Netmask: 0xffffffff,
	}
	if err := h.NewService(s); err != nil {
		t.Fatalf("foreign virtual server: %v", err)
	}
	return s
}
