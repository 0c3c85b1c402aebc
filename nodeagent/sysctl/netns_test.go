package sysctl

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/utils/ptr"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
	"kpo.dev/kpo/hack/netns"
)

// perNamespace are the conntrack sysctls each network namespace has its own
// of (checked on Linux 6.18), with the values the test applies.
var perNamespace = map[string]string{
	"net/netfilter/nf_conntrack_tcp_timeout_established": "7200",
	"net/netfilter/nf_conntrack_tcp_timeout_close_wait":  "120",
	"net/netfilter/nf_conntrack_tcp_be_liberal":          "1",
	"net/netfilter/nf_conntrack_udp_timeout":             "45",
	"net/netfilter/nf_conntrack_udp_timeout_stream":      "150",
}

// TestApplyConntrackInANetworkNamespace applies spec.conntrack inside a
// network namespace of its own, on the real kernel, and reads the sysctls
// back: the per-namespace ones hold the settings, nf_conntrack_max (global,
// read-only outside the host's namespace) is reported as not applied, and
// the machine's own values do not move. The hash size is a module parameter
// (global too): the test gives it a file in a temporary directory, never
// /sys.
func TestApplyConntrackInANetworkNamespace(t *testing.T) {
	netns.Skip(t)
	ns := netns.New(t, "sysctl")

	// nf_conntrack_max is global. A kernel that let a namespace write it would
	// let this test change the machine's value: stop before anything is written.
	var perm os.FileMode
	if err := ns.Do(func() error {
		fi, err := os.Stat(filepath.Join("/proc/sys", nfConntrackMax))
		if err == nil {
			perm = fi.Mode().Perm()
		}
		return err
	}); err != nil {
		t.Skipf("no nf_conntrack_max in a namespace: %v", err)
	}
	if perm&0o222 != 0 {
		t.Skipf("nf_conntrack_max is writable (%v) in a network namespace on this kernel: not risking a global write", perm)
	}

	host := map[string]string{}
	for path := range perNamespace {
		host[path] = read(t, filepath.Join("/proc/sys", path))
	}
	host[nfConntrackMax] = read(t, filepath.Join("/proc/sys", nfConntrackMax))

	sys := t.TempDir()
	hashsize := filepath.Join(sys, hashsizeFile)
	if err := os.MkdirAll(filepath.Dir(hashsize), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(hashsize, []byte("16384"), 0o644); err != nil {
		t.Fatal(err)
	}

	s := &kpov1.ConntrackSettings{MaxPerCore: ptr.To[int32](32768), Min: ptr.To[int32](131072),
		TCPEstablishedTimeout: "2h", TCPCloseWaitTimeout: "2m", TCPBeLiberal: true, UDPTimeout: "45s", UDPStreamTimeout: "150s"}
	var report kpov1.ConntrackSysctls
	must(t, ns.Do(func() error {
		report = ApplyConntrack(context.Background(), s, 2, Roots{Proc: "/proc/sys", Sys: sys})
		return nil
	}))
	t.Logf("applied %q; failed %q", report.Applied, report.Failed)

	for path, want := range perNamespace {
		got, err := ns.ReadSysctl(path)
		must(t, err)
		if got != want {
			t.Errorf("%s = %s in the namespace, want %s", path, got, want)
		}
	}
	if len(report.Applied) != len(perNamespace) {
		t.Errorf("applied %q, want the %d per-namespace settings", report.Applied, len(perNamespace))
	}
	if len(report.Failed) != 1 || !strings.HasPrefix(report.Failed[0], "net.netfilter.nf_conntrack_max=131072: ") ||
		!strings.Contains(report.Failed[0], "permission denied") || !strings.Contains(report.Failed[0], "only the host's network namespace") {
		t.Errorf("failed %q, want nf_conntrack_max refused, with why", report.Failed)
	}
	if got := read(t, hashsize); got != "16384" {
		t.Errorf("hash size written (%s) although nf_conntrack_max was not", got)
	}
	for path, before := range host {
		if got := read(t, filepath.Join("/proc/sys", path)); got != before {
			t.Errorf("the machine's %s moved from %s to %s", path, before, got)
		}
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
