package sysctl

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"k8s.io/utils/ptr"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
)

// fakeKernel is a /proc/sys and /sys in a temporary directory, holding a
// kernel's defaults (those of Linux 6.18: 432000 s established, 60 s
// close-wait, 30 s and 120 s UDP).
func fakeKernel(t *testing.T) Roots {
	t.Helper()
	dir := t.TempDir()
	r := Roots{Proc: filepath.Join(dir, "proc"), Sys: filepath.Join(dir, "sys")}
	for path, v := range map[string]string{
		filepath.Join(r.Proc, nfConntrackMax):                                       "65536",
		filepath.Join(r.Proc, "net/netfilter/nf_conntrack_tcp_timeout_established"): "432000",
		filepath.Join(r.Proc, "net/netfilter/nf_conntrack_tcp_timeout_close_wait"):  "60",
		filepath.Join(r.Proc, "net/netfilter/nf_conntrack_tcp_be_liberal"):          "0",
		filepath.Join(r.Proc, "net/netfilter/nf_conntrack_udp_timeout"):             "30",
		filepath.Join(r.Proc, "net/netfilter/nf_conntrack_udp_timeout_stream"):      "120",
		filepath.Join(r.Sys, hashsizeFile):                                          "16384",
	} {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(v+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return r
}

func read(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// defaults are spec.conntrack as the API server defaults it.
func defaults() *kpov1.ConntrackSettings {
	s := &kpov1.ProxySettings{}
	s.Default()
	return &s.Conntrack
}

// TestConntrackMax mirrors kube-proxy's getConntrackMax cases.
func TestConntrackMax(t *testing.T) {
	for _, tc := range []struct {
		maxPerCore, min *int32
		cpus, want      int
	}{
		{ptr.To[int32](32768), ptr.To[int32](131072), 2, 131072},    // min wins
		{ptr.To[int32](32768), ptr.To[int32](131072), 8, 262144},    // the product wins
		{ptr.To[int32](32768), ptr.To[int32](131072), 64, 1048576},  // capped
		{ptr.To[int32](32768), ptr.To[int32](2000000), 64, 1048576}, // capped, even below min (as kube-proxy)
		{ptr.To[int32](32768), nil, 1, 32768},
		{ptr.To[int32](0), ptr.To[int32](131072), 8, 0}, // 0: leave it alone, min ignored
		{nil, ptr.To[int32](131072), 8, 0},
		{ptr.To[int32](2147483647), nil, 4096, 1048576}, // no overflow
	} {
		s := &kpov1.ConntrackSettings{MaxPerCore: tc.maxPerCore, Min: tc.min}
		if got := ConntrackMax(s, tc.cpus); got != tc.want {
			t.Errorf("maxPerCore %v min %v on %d CPUs: %d, want %d", ptr.Deref(tc.maxPerCore, -1), ptr.Deref(tc.min, -1), tc.cpus, got, tc.want)
		}
	}
}

// TestApplyConntrackDefaults: spec.conntrack's defaults act, as kube-proxy's
// do: the table size, its hash, and the two TCP timeouts; the UDP timeouts
// (0) and tcp_be_liberal (false) stay the kernel's. This is the review's
// finding: the settings were accepted, defaulted and documented, and nothing
// applied them.
func TestApplyConntrackDefaults(t *testing.T) {
	r := fakeKernel(t)
	report := ApplyConntrack(context.Background(), defaults(), 2, r)
	want := []string{
		"net.netfilter.nf_conntrack_max=131072",
		"nf_conntrack.hashsize=32768",
		"net.netfilter.nf_conntrack_tcp_timeout_established=86400",
		"net.netfilter.nf_conntrack_tcp_timeout_close_wait=3600",
	}
	if !slices.Equal(report.Applied, want) || len(report.Failed) > 0 {
		t.Errorf("report %+v, want applied %v", report, want)
	}
	for path, v := range map[string]string{
		filepath.Join(r.Proc, nfConntrackMax):                                       "131072",
		filepath.Join(r.Sys, hashsizeFile):                                          "32768",
		filepath.Join(r.Proc, "net/netfilter/nf_conntrack_tcp_timeout_established"): "86400",
		filepath.Join(r.Proc, "net/netfilter/nf_conntrack_tcp_timeout_close_wait"):  "3600",
		filepath.Join(r.Proc, "net/netfilter/nf_conntrack_udp_timeout"):             "30",
		filepath.Join(r.Proc, "net/netfilter/nf_conntrack_udp_timeout_stream"):      "120",
		filepath.Join(r.Proc, "net/netfilter/nf_conntrack_tcp_be_liberal"):          "0",
	} {
		if got := read(t, path); got != v {
			t.Errorf("%s = %s, want %s", path, got, v)
		}
	}
}

// TestApplyConntrackEverySetting: each setting writes its sysctl, in whole
// seconds; a big enough hash is left alone.
func TestApplyConntrackEverySetting(t *testing.T) {
	r := fakeKernel(t)
	if err := os.WriteFile(filepath.Join(r.Sys, hashsizeFile), []byte("262144"), 0o644); err != nil {
		t.Fatal(err)
	}
	s := &kpov1.ConntrackSettings{MaxPerCore: ptr.To[int32](65536), Min: ptr.To[int32](0),
		TCPEstablishedTimeout: "2h", TCPCloseWaitTimeout: "90s", TCPBeLiberal: true, UDPTimeout: "45s", UDPStreamTimeout: "5m"}
	report := ApplyConntrack(context.Background(), s, 4, r)
	if len(report.Failed) > 0 || len(report.Applied) != 6 {
		t.Errorf("report %+v, want 6 applied (no hashsize change)", report)
	}
	for file, v := range map[string]string{
		nfConntrackMax: "262144",
		"net/netfilter/nf_conntrack_tcp_timeout_established": "7200",
		"net/netfilter/nf_conntrack_tcp_timeout_close_wait":  "90",
		"net/netfilter/nf_conntrack_tcp_be_liberal":          "1",
		"net/netfilter/nf_conntrack_udp_timeout":             "45",
		"net/netfilter/nf_conntrack_udp_timeout_stream":      "300",
	} {
		if got := read(t, filepath.Join(r.Proc, file)); got != v {
			t.Errorf("%s = %s, want %s", file, got, v)
		}
	}
	if got := read(t, filepath.Join(r.Sys, hashsizeFile)); got != "262144" {
		t.Errorf("hashsize %s, want it left at 262144", got)
	}
}

// TestApplyConntrackZerosLeaveTheKernelAlone: maxPerCore 0 and zero timeouts
// write nothing, as in kube-proxy.
func TestApplyConntrackZerosLeaveTheKernelAlone(t *testing.T) {
	r := fakeKernel(t)
	s := &kpov1.ConntrackSettings{MaxPerCore: ptr.To[int32](0), Min: ptr.To[int32](131072),
		TCPEstablishedTimeout: "0", TCPCloseWaitTimeout: "0s"}
	report := ApplyConntrack(context.Background(), s, 8, r)
	if len(report.Applied)+len(report.Failed) > 0 {
		t.Errorf("report %+v, want nothing done", report)
	}
	if got := read(t, filepath.Join(r.Proc, nfConntrackMax)); got != "65536" {
		t.Errorf("nf_conntrack_max = %s, want the kernel's 65536", got)
	}
}

// TestApplyConntrackGoesOnAfterAFailure: what cannot be set is reported with
// why, the hash size is not touched without the limit, and the other settings
// still act (kube-proxy would exit at the first failure).
func TestApplyConntrackGoesOnAfterAFailure(t *testing.T) {
	r := fakeKernel(t)
	if err := os.Remove(filepath.Join(r.Proc, nfConntrackMax)); err != nil { // a kernel without it
		t.Fatal(err)
	}
	report := ApplyConntrack(context.Background(), defaults(), 2, r)
	if len(report.Failed) != 1 || !strings.HasPrefix(report.Failed[0], "net.netfilter.nf_conntrack_max=131072: ") ||
		!strings.Contains(report.Failed[0], "no such file") {
		t.Errorf("failed %q, want nf_conntrack_max with the reason", report.Failed)
	}
	if _, err := os.Stat(filepath.Join(r.Proc, nfConntrackMax)); err == nil {
		t.Error("a missing sysctl was created")
	}
	if got := read(t, filepath.Join(r.Sys, hashsizeFile)); got != "16384" {
		t.Errorf("hashsize changed to %s without nf_conntrack_max", got)
	}
	if len(report.Applied) != 2 {
		t.Errorf("applied %q, want the two TCP timeouts", report.Applied)
	}
}
