// Package sysctl applies spec.conntrack to the node's kernel when the agent
// starts, as kube-proxy v1.37 does in platformSetup
// (pkg/proxy/conntrack/sysctls.go): nf_conntrack_max from maxPerCore × CPUs
// (at least min, capped at 1048576), the conntrack hash size when it is too
// small for that maximum, the TCP established and close-wait timeouts,
// tcp_be_liberal, and the UDP timeouts; a zero leaves the kernel's value alone.
//
// One difference: kube-proxy exits at the first setting it cannot write. The
// agent applies the others and reports each failure in its ProxyNodeStatus
// (status.conntrack), since its rules are worth more to the node than one
// sysctl. nf_conntrack_max and the hash size are global: the kernel lets only
// the host's network namespace set them (nf_conntrack_max is read-only
// elsewhere, checked on Linux 6.18); the timeouts and tcp_be_liberal belong to
// each network namespace.
package sysctl

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"k8s.io/klog/v2"
	"k8s.io/utils/cpuset"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
)

// Roots are where the kernel's settings are: /proc/sys and /sys on a node;
// temporary directories in unit tests.
type Roots struct {
	Proc string
	Sys  string
}

// Host are the node's own roots.
var Host = Roots{Proc: "/proc/sys", Sys: "/sys"}

const (
	// maxConntrackLimit caps maxPerCore × CPUs, as kube-proxy does, so that a
	// many-core node does not reserve memory for millions of entries.
	maxConntrackLimit = 1048576
	nfConntrackMax    = "net/netfilter/nf_conntrack_max"
	// hashsizeFile is nf_conntrack's hash-table size (a module parameter, under Sys).
	hashsizeFile = "module/nf_conntrack/parameters/hashsize"
)

// NumCPU is the node's CPU count, which sizes nf_conntrack_max: the online
// CPUs (runtime.NumCPU counts only this process's cpuset), as kube-proxy's
// detectNumCPU.
func NumCPU() int {
	if n, err := cpuset.NumCPU(); err == nil && n > 0 {
		return n
	}
	return runtime.NumCPU()
}

// ConntrackMax is the nf_conntrack_max for the settings (kube-proxy's
// getConntrackMax): 0 (leave it alone) unless maxPerCore > 0; else
// maxPerCore × numCPU capped at 1048576, or min when that is larger than an
// uncapped product.
func ConntrackMax(s *kpov1.ConntrackSettings, numCPU int) int {
	if s.MaxPerCore == nil || *s.MaxPerCore <= 0 {
		return 0
	}
	floor := 0
	if s.Min != nil {
		floor = int(*s.Min)
	}
	scaled := int(*s.MaxPerCore) * numCPU
	if scaled > maxConntrackLimit {
		return maxConntrackLimit
	}
	return max(scaled, floor)
}

// ApplyConntrack applies the settings and reports, as "name=value", what the
// kernel now holds and what could not be set (with why). It never stops at a
// failure.
func ApplyConntrack(ctx context.Context, s *kpov1.ConntrackSettings, numCPU int, roots Roots) kpov1.ConntrackSysctls {
	a := applier{ctx: ctx, roots: roots}
	if limit := ConntrackMax(s, numCPU); limit > 0 {
		if a.set(nfConntrackMax, limit) {
			// The hash size only matters once the limit is set: a quarter of it.
			a.growHashsize(limit / 4)
		}
	}
	for _, t := range []struct {
		name string
		d    kpov1.Duration
	}{
		{"net/netfilter/nf_conntrack_tcp_timeout_established", s.TCPEstablishedTimeout},
		{"net/netfilter/nf_conntrack_tcp_timeout_close_wait", s.TCPCloseWaitTimeout},
		{"net/netfilter/nf_conntrack_udp_timeout", s.UDPTimeout},
		{"net/netfilter/nf_conntrack_udp_timeout_stream", s.UDPStreamTimeout},
	} {
		d, err := t.d.Parse(t.name)
		switch {
		case err != nil:
			a.fail(sysctlName(t.name), string(t.d), err) // Validate refuses this; the file was not validated
		case d > 0:
			a.set(t.name, int(d/time.Second))
		}
	}
	if s.TCPBeLiberal {
		a.set("net/netfilter/nf_conntrack_tcp_be_liberal", 1)
	}
	return a.report
}

type applier struct {
	ctx    context.Context
	roots  Roots
	report kpov1.ConntrackSysctls
}

// set writes a sysctl (path under /proc/sys) unless it already holds value,
// then reads it back; it reports either way and says whether value holds.
func (a *applier) set(path string, value int) bool {
	name := sysctlName(path)
	if err := writeInt(filepath.Join(a.roots.Proc, path), value); err != nil {
		if errors.Is(err, fs.ErrPermission) && path == nfConntrackMax {
			err = fmt.Errorf("%w (the kernel keeps it global: only the host's network namespace may set it)", err)
		}
		a.fail(name, strconv.Itoa(value), err)
		return false
	}
	a.report.Applied = append(a.report.Applied, fmt.Sprintf("%s=%d", name, value))
	klog.FromContext(a.ctx).Info("Set sysctl", "name", name, "value", value)
	return true
}

// growHashsize raises the conntrack hash size to want if it is smaller.
func (a *applier) growHashsize(want int) {
	path := filepath.Join(a.roots.Sys, hashsizeFile)
	const name = "nf_conntrack.hashsize"
	have, err := readInt(path)
	if err != nil {
		a.fail(name, strconv.Itoa(want), err)
		return
	}
	if have >= want {
		return
	}
	if err := writeInt(path, want); err != nil {
		a.fail(name, strconv.Itoa(want), err)
		return
	}
	a.report.Applied = append(a.report.Applied, fmt.Sprintf("%s=%d", name, want))
	klog.FromContext(a.ctx).Info("Set conntrack hashsize", "value", want)
}

func (a *applier) fail(name, value string, err error) {
	entry := fmt.Sprintf("%s=%s: %v", name, value, err)
	if len(entry) > 500 {
		entry = entry[:497] + "..."
	}
	a.report.Failed = append(a.report.Failed, entry)
	klog.FromContext(a.ctx).Error(err, "Could not set a conntrack setting", "name", name, "value", value)
}

// writeInt writes value unless the file holds it already, and reads it back.
// The file must exist (O_CREATE is not used): a sysctl the kernel lacks is an
// error, never a new file.
func writeInt(path string, value int) error {
	if have, err := readInt(path); err == nil && have == value {
		return nil
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(strconv.Itoa(value))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	have, err := readInt(path)
	if err != nil {
		return err
	}
	if have != value {
		return fmt.Errorf("the kernel holds %d after writing %d", have, value)
	}
	return nil
}

func readInt(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// sysctlName turns a /proc/sys path into sysctl(8)'s dotted name.
func sysctlName(path string) string {
	return strings.ReplaceAll(path, "/", ".")
}
