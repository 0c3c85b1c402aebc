// Package vm runs test binaries inside a qemu virtual machine booted from
// Debian's stock kernel, for the kernel features this machine's kernel lacks
// (IPVS). hack/vm/build.sh makes the kernel and a base initramfs (busybox,
// modules, the networking tools, an /init that runs /kpo-vm-test); this
// package builds a Go test binary, appends it to that initramfs as a second
// cpio archive, boots qemu (TCG: there is no usable KVM) and reads the verdict
// from the serial console. See docs/ipvs-vm-tests.md.
package vm

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// Console markers printed by hack/vm/init.
const (
	MarkerPass    = "KPO-VM-RESULT: PASS"
	MarkerFail    = "KPO-VM-RESULT: FAIL"
	markerRunning = "KPO-VM: running tests"
)

// RepoRoot returns the module root (the directory holding go.mod) above dir.
func RepoRoot(dir string) (string, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory")
		}
		dir = parent
	}
}

// EnsureImage runs hack/vm/build.sh into outDir unless its kernel and base
// initramfs are newer than the script and the init: the kernel download is
// cached there, so a rebuild costs seconds.
func EnsureImage(ctx context.Context, root, outDir string, log io.Writer) error {
	script := filepath.Join(root, "hack/vm/build.sh")
	if fresh(filepath.Join(outDir, "base.cpio.gz"), script, filepath.Join(root, "hack/vm/init")) &&
		exists(filepath.Join(outDir, "vmlinuz")) {
		return nil
	}
	cmd := exec.CommandContext(ctx, script, outDir)
	cmd.Dir = root
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("hack/vm/build.sh: %w", err)
	}
	return nil
}

func exists(p string) bool { _, err := os.Stat(p); return err == nil }

// fresh reports whether target exists and is newer than every source.
func fresh(target string, sources ...string) bool {
	t, err := os.Stat(target)
	if err != nil {
		return false
	}
	for _, s := range sources {
		if st, err := os.Stat(s); err != nil || st.ModTime().After(t.ModTime()) {
			return false
		}
	}
	return true
}

// BuildTestBinary compiles the tests of pkg (a package path relative to root,
// such as ./test/vm/inside) into out, statically (CGO off): the VM has no Go
// toolchain and only the libraries of the copied tools.
func BuildTestBinary(ctx context.Context, root, pkg, out string, tags ...string) error {
	args := []string{"test", "-c", "-o", out}
	if len(tags) > 0 {
		args = append(args, "-tags", strings.Join(tags, ","))
	}
	cmd := exec.CommandContext(ctx, "go", append(args, pkg)...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go test -c %s: %w\n%s", pkg, err, out)
	}
	return nil
}

// BuildAgent compiles kpo-agent into out, statically, for the mode-switch
// tests that run it inside the VM.
func BuildAgent(ctx context.Context, root, out string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "./cmd/kpo-agent")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build ./cmd/kpo-agent: %w\n%s", err, b)
	}
	return nil
}

// Where the in-VM tests find the API server and the agent (test/vm/inside).
const (
	// GuestAPIAddr is the address inside the VM that qemu forwards to the
	// host's API server (see APIForward).
	GuestAPIAddr = "10.0.2.100:6443"
	// KubeconfigFile and AgentFile are the overlay's files.
	KubeconfigFile = "kpo-vm-kubeconfig"
	AgentFile      = "kpo-agent"
)

// APIForward is the Options.Forwards entry that connects GuestAPIAddr to
// hostAddr (the API server on the host's loopback). qemu runs "busybox nc"
// for each connection the guest opens (guestfwd's cmd form; its chardev form
// carries a single connection), so the guest reaches that one port and
// nothing else of the host.
func APIForward(hostAddr string) (string, error) {
	bb, err := exec.LookPath("busybox")
	if err != nil {
		return "", fmt.Errorf("busybox (busybox-static) runs the VM's API forward: %w", err)
	}
	host, port, err := net.SplitHostPort(hostAddr)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("tcp:%s-cmd:%s nc %s %s", GuestAPIAddr, bb, host, port), nil
}

// File is one file of an initramfs overlay.
type File struct {
	Name string // path inside the VM, without the leading slash
	Mode uint32 // permission bits
	Data []byte
}

// WriteOverlay writes files as an uncompressed newc cpio archive. The
// kernel unpacks concatenated archives in order, so appending it to the base
// initramfs adds (or replaces) these files. Uncompressed: gunzipping the test
// binary and kpo-agent (~100 MB) under TCG took half a minute of every boot.
func WriteOverlay(w io.Writer, files []File) error {
	zw := w
	ino := 1
	writeEntry := func(name string, mode uint32, data []byte) error {
		// newc: magic, then 13 8-digit hex fields; name and data 4-aligned.
		hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
			ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name)+1, 0)
		ino++
		var b bytes.Buffer
		b.WriteString(hdr)
		b.WriteString(name)
		b.WriteByte(0)
		for b.Len()%4 != 0 {
			b.WriteByte(0)
		}
		b.Write(data)
		for b.Len()%4 != 0 {
			b.WriteByte(0)
		}
		_, err := zw.Write(b.Bytes())
		return err
	}
	for _, f := range files {
		if err := writeEntry(f.Name, 0o100000|f.Mode, f.Data); err != nil {
			return err
		}
	}
	return writeEntry("TRAILER!!!", 0, nil)
}

// Options of one VM run.
type Options struct {
	Kernel string // vmlinuz
	// Initrds are concatenated into the initramfs, in order.
	Initrds []string
	// Timeout bounds the whole run, boot included (qemu is killed after it).
	Timeout time.Duration
	// MemoryMB is the VM's memory; the initramfs lives in it.
	MemoryMB int
	// Console gets every console line as it arrives.
	Console func(line string)
	// Forwards gives the VM a network card (eth0, e1000) on qemu's user
	// network, restricted: the guest reaches nothing but these forwards,
	// each "tcp:GUESTADDR:GUESTPORT-tcp:HOSTADDR:HOSTPORT" (qemu's guestfwd),
	// connected from the host side by qemu itself. Nothing on the host's
	// network changes. The guest's address is GuestIP (set it up in the VM).
	Forwards []string
}

// GuestIP is the VM's address on qemu's user network (its default).
const GuestIP = "10.0.2.15/24"

// Result of one VM run.
type Result struct {
	Passed bool
	// Marker is the verdict line seen ("" when none: a crash or timeout).
	Marker string
	// Boot is the time until /init started the tests; Total the whole run.
	Boot, Total time.Duration
	// Output is the whole console.
	Output string
}

// Run boots the VM and waits for it to power off (or for the timeout).
func Run(ctx context.Context, o Options) (Result, error) {
	if o.MemoryMB == 0 {
		o.MemoryMB = 768
	}
	if o.Timeout == 0 {
		o.Timeout = 5 * time.Minute
	}
	initrd, err := concat(o.Initrds)
	if err != nil {
		return Result{}, err
	}
	defer func() { _ = os.Remove(initrd) }()

	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	// KVM is unusable here: TCG with one thread per vCPU. -no-reboot makes a
	// kernel panic (init died) end qemu instead of looping.
	args := []string{
		"-accel", "tcg,thread=multi", "-cpu", "max", "-smp", "2", "-m", fmt.Sprint(o.MemoryMB),
		"-nographic", "-nodefaults", "-serial", "stdio", "-no-reboot",
		"-kernel", o.Kernel, "-initrd", initrd,
		"-append", "console=ttyS0 panic=-1 quiet loglevel=4",
	}
	if len(o.Forwards) > 0 {
		netdev := "user,id=n0,restrict=on"
		for _, f := range o.Forwards {
			netdev += ",guestfwd=" + f
		}
		args = append(args, "-netdev", netdev, "-device", "e1000,netdev=n0")
	}
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64", args...)
	// exec.CommandContext kills only this qemu process, by its PID.
	cmd.WaitDelay = 5 * time.Second
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return Result{}, err
	}
	cmd.Stderr = cmd.Stdout
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return Result{}, fmt.Errorf("starting qemu: %w", err)
	}
	var res Result
	var all strings.Builder
	sc := bufio.NewScanner(stdout)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		all.WriteString(line + "\n")
		if o.Console != nil {
			o.Console(line)
		}
		switch {
		case strings.HasPrefix(line, markerRunning) && res.Boot == 0:
			res.Boot = time.Since(start)
		case strings.HasPrefix(line, MarkerPass):
			res.Marker, res.Passed = line, true
		case strings.HasPrefix(line, MarkerFail):
			res.Marker, res.Passed = line, false
		}
	}
	waitErr := cmd.Wait()
	res.Total, res.Output = time.Since(start), all.String()
	if ctx.Err() != nil {
		return res, fmt.Errorf("VM did not finish within %v", o.Timeout)
	}
	if res.Marker == "" {
		return res, fmt.Errorf("no %q line on the console (qemu: %v)", "KPO-VM-RESULT", waitErr)
	}
	return res, nil
}

// concat writes the initramfs parts into one temporary file, since qemu takes
// one -initrd.
func concat(parts []string) (string, error) {
	f, err := os.CreateTemp("", "kpo-vm-initrd-*.cpio")
	if err != nil {
		return "", err
	}
	var size int64
	for _, p := range parts {
		in, err := os.Open(p)
		if err != nil {
			_ = f.Close()
			return "", err
		}
		n, err := io.Copy(f, in)
		_ = in.Close()
		size += n
		if err == nil && size%4 != 0 {
			// An uncompressed archive must start 4-byte aligned; the
			// kernel skips the zeros between archives.
			var pad int
			pad, err = f.Write(make([]byte, 4-size%4))
			size += int64(pad)
		}
		if err != nil {
			_ = f.Close()
			return "", err
		}
	}
	return f.Name(), f.Close()
}
