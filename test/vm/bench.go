package vm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// BenchSizes are the sizes of the inside BenchmarkSync (test/vm/inside), as
// its sub-benchmark names: services × endpoints.
var BenchSizes = []string{"1000x2", "10000x2"}

// BenchFigures are the figures of one size of the inside BenchmarkSync: kpo's
// IPVS backend alone (one Backend.Sync of a prebuilt snapshot, no API server,
// no process start), inside the VM, so under TCG emulation.
type BenchFigures struct {
	Services  int `json:"services"`
	Endpoints int `json:"endpointsPerService"`
	// ColdSyncS is the first, full sync into an empty kernel.
	ColdSyncS      float64 `json:"coldSyncSeconds"`
	ColdNetlinkOps int     `json:"coldNetlinkOps"`
	// PartialSyncMS is the partial sync after one endpoint of one service
	// changed; PartialNetlinkOps the netlink requests it made.
	PartialSyncMS     float64 `json:"partialSyncMilliseconds"`
	PartialNetlinkOps int     `json:"partialNetlinkOps"`
}

// benchLine is a result line of go test -bench: name-GOMAXPROCS, iterations,
// ns/op, then "value unit" pairs.
var (
	benchLine   = regexp.MustCompile(`^BenchmarkSync/(\d+)x(\d+)(?:-\d+)?\s+\d+\s+[0-9.]+ ns/op\s+(.*)$`)
	benchMetric = regexp.MustCompile(`([0-9.eE+-]+) (\S+)`)
)

// ParseBench reads the inside BenchmarkSync's result lines from the console
// output, in the order they appear. Lines without all four metrics are left
// out.
func ParseBench(output string) []BenchFigures {
	var out []BenchFigures
	for _, line := range strings.Split(output, "\n") {
		m := benchLine.FindStringSubmatch(strings.TrimSpace(line))
		if m == nil {
			continue
		}
		f := BenchFigures{}
		f.Services, _ = strconv.Atoi(m[1])
		f.Endpoints, _ = strconv.Atoi(m[2])
		seen := 0
		for _, mm := range benchMetric.FindAllStringSubmatch(m[3], -1) {
			v, err := strconv.ParseFloat(mm[1], 64)
			if err != nil {
				continue
			}
			switch mm[2] {
			case "cold-s":
				f.ColdSyncS = v
			case "cold-netlink-ops":
				f.ColdNetlinkOps = int(v)
			case "partial-ms":
				f.PartialSyncMS = v
			case "partial-netlink-ops":
				f.PartialNetlinkOps = int(v)
			default:
				continue
			}
			seen++
		}
		if seen == 4 {
			out = append(out, f)
		}
	}
	return out
}

// BenchArgs are the inside test binary's arguments that run BenchmarkSync at
// sizes (names of BenchSizes; all of them when empty), once each, with the
// inside binary's own timeout.
func BenchArgs(sizes []string, timeout time.Duration) string {
	pattern := "."
	if len(sizes) > 0 {
		quoted := make([]string, len(sizes))
		for i, s := range sizes {
			quoted[i] = regexp.QuoteMeta(s)
		}
		// No spaces, globs or quotes: /init splits the arguments with the shell.
		pattern = "BenchmarkSync/^(" + strings.Join(quoted, "|") + ")$"
	}
	return fmt.Sprintf("-test.timeout=%s -test.run=XXX -test.bench=%s -test.benchtime=1x", timeout, pattern)
}

// KernelCached reports whether hack/vm/build.sh has already downloaded and
// unpacked a kernel into outDir/cache, so that EnsureImage needs no network.
func KernelCached(outDir string) bool {
	done, _ := filepath.Glob(filepath.Join(outDir, "cache", "*", ".done"))
	return len(done) > 0
}

// BenchRun is the outcome of RunBench.
type BenchRun struct {
	Figures []BenchFigures
	// Kernel is the VM's kernel release (from build.sh's kernel-version).
	Kernel string
	// Boot is qemu start to the inside binary starting; Total the whole run.
	Boot, Total time.Duration
}

// RunBench builds the image (EnsureImage: seconds with a cached kernel) and
// the inside test binary, boots the VM with BenchmarkSync at sizes, and
// returns the figures read from the console. timeout bounds the VM run (the
// inside binary gets a minute less, so that a slow run ends with its own
// report). The figures parsed before a failure or the timeout are returned
// with the error.
func RunBench(ctx context.Context, root string, sizes []string, timeout time.Duration, console func(string)) (BenchRun, error) {
	out := filepath.Join(root, "bin/vm")
	var run BenchRun
	var buildLog strings.Builder
	if err := EnsureImage(ctx, root, out, &buildLog); err != nil {
		return run, fmt.Errorf("%w\n%s", err, buildLog.String())
	}
	if v, err := os.ReadFile(filepath.Join(out, "kernel-version")); err == nil {
		run.Kernel = strings.TrimSpace(string(v))
	}
	tmp, err := os.MkdirTemp("", "kpo-vm-bench-*")
	if err != nil {
		return run, err
	}
	defer func() { _ = os.RemoveAll(tmp) }()
	bin := filepath.Join(tmp, "kpo-vm-test")
	if err := BuildTestBinary(ctx, root, "./test/vm/inside", bin, "vmtest"); err != nil {
		return run, err
	}
	data, err := os.ReadFile(bin)
	if err != nil {
		return run, err
	}
	inside := timeout - time.Minute
	if inside < time.Minute {
		inside = timeout / 2
	}
	overlay := filepath.Join(tmp, "test.cpio")
	f, err := os.Create(overlay)
	if err != nil {
		return run, err
	}
	err = WriteOverlay(f, []File{
		{Name: "kpo-vm-test", Mode: 0o755, Data: data},
		{Name: "kpo-vm-args", Mode: 0o644, Data: []byte(BenchArgs(sizes, inside))},
	})
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return run, err
	}
	res, err := Run(ctx, Options{
		Kernel:  filepath.Join(out, "vmlinuz"),
		Initrds: []string{filepath.Join(out, "base.cpio.gz"), overlay},
		Timeout: timeout,
		Console: console,
	})
	run.Figures, run.Boot, run.Total = ParseBench(res.Output), res.Boot, res.Total
	switch {
	case err != nil:
		return run, err
	case !res.Passed:
		return run, fmt.Errorf("inside benchmark failed: %s", res.Marker)
	case len(run.Figures) == 0:
		return run, errors.New("no BenchmarkSync result on the VM's console")
	}
	return run, nil
}
