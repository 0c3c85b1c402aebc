// Package netns builds throw-away network namespaces for real-kernel tests:
// namespaces, veth links, addresses, routes, sysctls, and echo servers and
// clients that run inside a namespace.
//
// Every namespace is named "kpot<pid>-<name>" and is removed when the test ends,
// also when it fails; New removes the leftovers of test processes that died. All
// links are created inside the test's namespaces, never in the root namespace,
// so that tests never touch this machine's own network and never collide with
// each other.
package netns

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

const (
	namePrefix = "kpot"
	netnsDir   = "/var/run/netns"
)

// Skip skips the test unless it runs as root (needed for namespaces).
func Skip(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("real-kernel test: needs root (network namespaces); run as root or with sudo")
	}
	if testing.Short() {
		t.Skip("real-kernel test: not run with -short")
	}
}

// T is the part of testing.TB that the builders here use. Tests pass their
// *testing.T; programs that build the same networks (the local cluster under
// hack/) pass a scope whose Fatalf aborts the build and whose Cleanup runs at
// teardown.
type T interface {
	Helper()
	Fatalf(format string, args ...any)
	Cleanup(func())
}

// NS is one network namespace.
type NS struct {
	// Name is the namespace's name under /var/run/netns, usable with `ip netns exec`.
	Name   string
	handle netns.NsHandle
	// NL is a netlink handle that works inside the namespace.
	NL *netlink.Handle
	// path is the file of a namespace this package did not create (Open).
	path string
}

// New creates a namespace with lo up; it is deleted when the test ends.
func New(t T, name string) *NS {
	t.Helper()
	RemoveStale()
	full := fmt.Sprintf("%s%d-%s", namePrefix, os.Getpid(), name)
	ns, err := create(full)
	if err != nil {
		t.Fatalf("creating namespace %s: %v", full, err)
	}
	t.Cleanup(ns.Close)
	if err := ns.NL.LinkSetUp(mustLink(ns.NL, "lo")); err != nil {
		t.Fatalf("lo up in %s: %v", full, err)
	}
	// Otherwise REJECTs (ICMP errors) turn into timeouts under the rate limit.
	ns.MustSysctl(t, "net/ipv4/icmp_ratelimit", "0")
	ns.MustSysctl(t, "net/ipv6/icmp/ratelimit", "0")
	// And the namespace-wide ICMP budget (1000/s, burst 50, both families):
	// a test that probes in parallel would see some rejects time out.
	ns.MustSysctl(t, "net/ipv4/icmp_msgs_per_sec", "1000000")
	ns.MustSysctl(t, "net/ipv4/icmp_msgs_burst", "1000000")
	// No duplicate address detection: addresses (link-local ones too) are usable at
	// once instead of "tentative" for a second or two.
	ns.MustSysctl(t, "net/ipv6/conf/default/accept_dad", "0")
	ns.MustSysctl(t, "net/ipv6/conf/all/accept_dad", "0")
	return ns
}

func create(name string) (*NS, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return nil, err
	}
	defer func() { _ = orig.Close() }()
	// NewNamed switches this thread into the new namespace; switch back.
	h, err := netns.NewNamed(name)
	if err != nil {
		return nil, err
	}
	if err := netns.Set(orig); err != nil {
		return nil, err
	}
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		_ = netns.DeleteNamed(name)
		return nil, err
	}
	return &NS{Name: name, handle: h, NL: nl}, nil
}

// Open wraps a namespace that something else created (a pod's, made by a
// container runtime) from its file; Close then only releases the handle.
func Open(name, path string) (*NS, error) {
	h, err := netns.GetFromPath(path)
	if err != nil {
		return nil, fmt.Errorf("opening namespace %s (%s): %w", name, path, err)
	}
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		_ = h.Close()
		return nil, err
	}
	return &NS{Name: name, handle: h, NL: nl, path: path}, nil
}

// Close deletes the namespace (and with it every link inside); a namespace
// from Open is only released.
func (n *NS) Close() {
	n.NL.Close()
	_ = n.handle.Close()
	if n.path == "" {
		_ = netns.DeleteNamed(n.Name)
	}
}

// Path is the namespace's file, for setns(2) and nsenter.
func (n *NS) Path() string {
	if n.path != "" {
		return n.path
	}
	return filepath.Join(netnsDir, n.Name)
}

// RemoveStale deletes namespaces of test processes that no longer run (New
// calls it; the local cluster's crash test too).
func RemoveStale() {
	entries, _ := os.ReadDir(netnsDir)
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), namePrefix)
		if !ok {
			continue
		}
		pidStr, _, ok := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidStr)
		if !ok || err != nil || pid == os.Getpid() {
			continue
		}
		if syscall.Kill(pid, 0) == syscall.ESRCH {
			_ = netns.DeleteNamed(e.Name())
		}
	}
}

// Do runs fn on an OS thread that is inside the namespace. Sockets opened by fn
// stay in the namespace after Do returns.
func (n *NS) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		// This thread is never unlocked: it ends with the goroutine, so that a
		// thread in a foreign namespace is never reused by other goroutines.
		runtime.LockOSThread()
		if err := netns.Set(n.handle); err != nil {
			errc <- fmt.Errorf("entering %s: %w", n.Name, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// Sysctl writes a sysctl of the namespace (path relative to /proc/sys).
func (n *NS) Sysctl(key, value string) error {
	return n.Do(func() error {
		return os.WriteFile(filepath.Join("/proc/sys", key), []byte(value), 0o644)
	})
}

// ReadSysctl reads a sysctl of the namespace.
func (n *NS) ReadSysctl(key string) (string, error) {
	var v []byte
	err := n.Do(func() error {
		var err error
		v, err = os.ReadFile(filepath.Join("/proc/sys", key))
		return err
	})
	return strings.TrimSpace(string(v)), err
}

// MustSysctl is Sysctl that fails the test.
func (n *NS) MustSysctl(t T, key, value string) {
	t.Helper()
	if err := n.Sysctl(key, value); err != nil {
		t.Fatalf("sysctl %s=%s in %s: %v", key, value, n.Name, err)
	}
}

// Command prepares a command that runs inside the namespace (through nsenter, so
// that any binary works, including iptables and nft).
func (n *NS) Command(name string, args ...string) *exec.Cmd {
	return exec.Command("nsenter", append([]string{"--net=" + n.Path(), "--", name}, args...)...)
}

// Run runs a command inside the namespace and returns its combined output.
func (n *NS) Run(name string, args ...string) (string, error) {
	out, err := n.Command(name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s in %s: %w: %s", name, strings.Join(args, " "), n.Name, err, out)
	}
	return string(out), nil
}

// MustRun is Run that fails the test.
func (n *NS) MustRun(t T, name string, args ...string) string {
	t.Helper()
	out, err := n.Run(name, args...)
	if err != nil {
		t.Fatalf("%v", err)
	}
	return out
}

// Veth links two namespaces with a veth pair (aName in a, bName in b), both up.
func Veth(t T, a *NS, aName string, b *NS, bName string) {
	t.Helper()
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: aName},
		PeerName:      bName,
		PeerNamespace: netlink.NsFd(int(b.handle)),
	}
	if err := a.NL.LinkAdd(veth); err != nil {
		t.Fatalf("veth %s/%s <-> %s/%s: %v", a.Name, aName, b.Name, bName, err)
	}
	if err := a.NL.LinkSetUp(mustLink(a.NL, aName)); err != nil {
		t.Fatalf("%v", err)
	}
	if err := b.NL.LinkSetUp(mustLink(b.NL, bName)); err != nil {
		t.Fatalf("%v", err)
	}
}

// AddAddr adds an address (CIDR notation) to a link. IPv6 addresses skip
// duplicate address detection, so that they are usable at once.
func (n *NS) AddAddr(t T, link, cidr string) {
	t.Helper()
	addr, err := netlink.ParseAddr(cidr)
	if err != nil {
		t.Fatalf("%v", err)
	}
	if addr.IP.To4() == nil {
		addr.Flags |= syscall.IFA_F_NODAD
	}
	if err := n.NL.AddrAdd(mustLink(n.NL, link), addr); err != nil {
		t.Fatalf("address %s on %s/%s: %v", cidr, n.Name, link, err)
	}
}

// Route adds a route: `ip route add <dst> [via <via>] dev <dev>` inside the namespace.
func (n *NS) Route(t T, dst, via, dev string) {
	t.Helper()
	args := []string{"route", "add", dst}
	if via != "" {
		args = append(args, "via", via)
	}
	args = append(args, "dev", dev)
	if strings.Contains(dst, ":") || strings.Contains(via, ":") {
		args = append([]string{"-6"}, args...)
	}
	n.MustRun(t, "ip", args...)
}

func mustLink(h *netlink.Handle, name string) netlink.Link {
	l, err := h.LinkByName(name)
	if err != nil {
		panic(fmt.Sprintf("link %s: %v", name, err))
	}
	return l
}

// KernelHasIPVS reports whether this kernel offers IPVS (/proc/net/ip_vs exists).
func KernelHasIPVS() (bool, error) {
	_, err := os.Stat("/proc/net/ip_vs")
	if os.IsNotExist(err) {
		return false, nil
	}
	return err == nil, err
}
