package iptables

import (
	"bufio"
	"bytes"
	"fmt"
	"os/exec"
	"strconv"
	"strings"

	goipt "github.com/coreos/go-iptables/iptables"

	"kpo.dev/kpo/nodeagent/model"
)

// Kernel is what the backend needs from iptables. The real one runs the
// iptables binaries (go-iptables for version detection, iptables -S for
// listings, iptables-restore for every change);
// Fake enforces the same rules in memory for unit tests.
//
// Implementations run commands on the calling goroutine's OS thread: callers
// inside a network namespace (tests use netns.NS.Do) rely on exec'd children
// inheriting the thread's namespace, so no goroutines are spawned.
type Kernel interface {
	// ListRules lists a table as "iptables -t table -S" does: "-P" lines for
	// built-in chains, "-N" for user chains, "-A" for rules.
	ListRules(f model.Family, table string) ([]string, error)
	// Restore feeds data to iptables-restore --noflush: each table section is
	// committed atomically; a failing section leaves its table unchanged.
	Restore(f model.Family, data []byte) error
	// RandomFully reports whether MASQUERADE supports --random-fully.
	RandomFully(f model.Family) bool
	// Check runs a harmless command to prove iptables works for the family.
	Check(f model.Family) error
	// Sysctls are the network namespace's settings the mode reads and
	// writes along with its rules (route_localnet, tcp_be_liberal).
	Sysctls() Sysctls
}

// lockWaitSeconds bounds the wait for the xtables lock (iptables-legacy; nft
// ignores it). Another agent holding the lock for longer is a bug worth an error.
const lockWaitSeconds = 5

type execFamily struct {
	ipt     *goipt.IPTables
	cmd     string
	restore string
}

type execKernel struct {
	variant  Variant // as asked; VariantAuto is resolved on first use
	families []model.Family
	fams     map[model.Family]*execFamily // nil until resolved
}

// NewExecKernel returns the Kernel that runs the iptables binaries of variant.
// go-iptables detects the version and with it the -w and --random-fully
// support. VariantAuto detects the host's flavour on the first call that
// needs iptables, so that it runs in the caller's network namespace.
func NewExecKernel(v Variant, families ...model.Family) (Kernel, error) {
	k := &execKernel{variant: v, families: families}
	if v != VariantAuto {
		return k, k.resolve(v)
	}
	if !installed(VariantNFT) && !installed(VariantLegacy) && !installed(VariantAuto) {
		return nil, errNoIPTables
	}
	return k, nil
}

// resolve finds the binaries of variant v for every family.
func (k *execKernel) resolve(v Variant) error {
	fams := map[model.Family]*execFamily{}
	for _, f := range k.families {
		cmd, restore := v.binaries(f)
		proto := goipt.ProtocolIPv4
		if f == model.IPv6 {
			proto = goipt.ProtocolIPv6
		}
		ipt, err := goipt.New(goipt.IPFamily(proto), goipt.Path(cmd), goipt.Timeout(lockWaitSeconds))
		if err != nil {
			return fmt.Errorf("%s: %w", cmd, err)
		}
		path, err := exec.LookPath(restore)
		if err != nil {
			return fmt.Errorf("%s: %w", restore, err)
		}
		cmdPath, err := exec.LookPath(cmd)
		if err != nil {
			return fmt.Errorf("%s: %w", cmd, err)
		}
		fams[f] = &execFamily{ipt: ipt, cmd: cmdPath, restore: path}
	}
	k.fams, k.variant = fams, v
	return nil
}

func (k *execKernel) fam(f model.Family) (*execFamily, error) {
	if k.fams == nil {
		if err := k.resolve(k.variant.resolve()); err != nil {
			return nil, err
		}
	}
	e, ok := k.fams[f]
	if !ok {
		return nil, fmt.Errorf("family %s not configured", f)
	}
	return e, nil
}

// Variant is the flavour the kernel runs: VariantAuto until the first call
// resolved it (or when the host has only the plain "iptables").
func (k *execKernel) Variant() Variant { return k.variant }

func (k *execKernel) ListRules(f model.Family, table string) ([]string, error) {
	e, err := k.fam(f)
	if err != nil {
		return nil, err
	}
	// go-iptables lists a whole table only to keep the chain names; the full
	// sync needs the built-in chains' rules too (to find its jumps).
	cmd := exec.Command(e.cmd, "-t", table, "-S", "--wait", strconv.Itoa(lockWaitSeconds))
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("%s -t %s -S: %w: %s", e.cmd, table, err, strings.TrimSpace(stderr.String()))
	}
	return strings.Split(strings.TrimSuffix(stdout.String(), "\n"), "\n"), nil
}

// Sysctls are /proc/sys of the calling thread's network namespace.
func (k *execKernel) Sysctls() Sysctls { return procSysctls{} }

func (k *execKernel) RandomFully(f model.Family) bool {
	e, err := k.fam(f)
	return err == nil && e.ipt.HasRandomFully()
}

func (k *execKernel) Check(f model.Family) error {
	e, err := k.fam(f)
	if err != nil {
		return err
	}
	for _, tc := range [][2]string{{tableNAT, "PREROUTING"}, {tableFilter, "FORWARD"}} {
		ok, err := e.ipt.ChainExists(tc[0], tc[1])
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("%s table has no %s chain", tc[0], tc[1])
		}
	}
	return nil
}

func (k *execKernel) Restore(f model.Family, data []byte) error {
	e, err := k.fam(f)
	if err != nil {
		return err
	}
	// --noflush: only the chains declared in data are flushed; everything else
	// (other software's rules, our untouched chains) stays as it is.
	cmd := exec.Command(e.restore, "--noflush", "--wait="+strconv.Itoa(lockWaitSeconds))
	cmd.Stdin = bytes.NewReader(data)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		return fmt.Errorf("%s: %w: %s%s", e.restore, err, msg, failedLine(msg, data))
	}
	return nil
}

// failedLine quotes the input line iptables-restore complains about, which its
// own message ("Error occurred at line: N") does not show.
func failedLine(msg string, data []byte) string {
	_, after, ok := strings.Cut(msg, "line: ")
	if !ok {
		return ""
	}
	n, err := strconv.Atoi(strings.Fields(after + " ")[0])
	if err != nil {
		return ""
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(nil, 1<<20)
	for i := 1; sc.Scan(); i++ {
		if i == n {
			return fmt.Sprintf(" (line %d: %q)", n, sc.Text())
		}
	}
	return ""
}
