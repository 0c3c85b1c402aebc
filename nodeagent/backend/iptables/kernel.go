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
// iptables binaries (go-iptables for single rules, iptables-restore for bulk);
// Fake enforces the same rules in memory for unit tests.
//
// Implementations run commands on the calling goroutine's OS thread: callers
// inside a network namespace (tests use netns.NS.Do) rely on exec'd children
// inheriting the thread's namespace, so no goroutines are spawned.
type Kernel interface {
	// EnsureChain creates a user chain unless it exists.
	EnsureChain(f model.Family, table, chain string) error
	// EnsureRule inserts rule at the top of chain unless an identical rule is
	// already in the chain.
	EnsureRule(f model.Family, table, chain string, rule ...string) error
	// DeleteRule deletes rule from chain if it is there; a missing chain is no error.
	DeleteRule(f model.Family, table, chain string, rule ...string) error
	// ListChains lists the chains (built-in and user) of a table.
	ListChains(f model.Family, table string) ([]string, error)
	// Restore feeds data to iptables-restore --noflush: each table section is
	// committed atomically; a failing section leaves its table unchanged.
	Restore(f model.Family, data []byte) error
	// RandomFully reports whether MASQUERADE supports --random-fully.
	RandomFully(f model.Family) bool
	// Check runs a harmless command to prove iptables works for the family.
	Check(f model.Family) error
}

// Variant selects the iptables flavour.
type Variant string

const (
	// VariantDefault runs "iptables"/"ip6tables", whatever the system's
	// alternatives point to.
	VariantDefault Variant = ""
	// VariantNFT runs iptables-nft (the nf_tables compatibility layer).
	VariantNFT Variant = "nft"
	// VariantLegacy runs iptables-legacy (x_tables blobs).
	VariantLegacy Variant = "legacy"
)

// binaries returns the iptables and iptables-restore commands of a family.
func (v Variant) binaries(f model.Family) (cmd, restore string) {
	base := "iptables"
	if f == model.IPv6 {
		base = "ip6tables"
	}
	if v != VariantDefault {
		base += "-" + string(v)
	}
	return base, base + "-restore"
}

// lockWaitSeconds bounds the wait for the xtables lock (iptables-legacy; nft
// ignores it). Another agent holding the lock for longer is a bug worth an error.
const lockWaitSeconds = 5

type execFamily struct {
	ipt     *goipt.IPTables
	restore string
}

type execKernel struct {
	fams map[model.Family]*execFamily
}

// NewExecKernel returns the Kernel that runs the iptables binaries of variant.
// go-iptables detects the version and with it the -w and --random-fully support.
func NewExecKernel(v Variant, families ...model.Family) (Kernel, error) {
	k := &execKernel{fams: map[model.Family]*execFamily{}}
	for _, f := range families {
		cmd, restore := v.binaries(f)
		proto := goipt.ProtocolIPv4
		if f == model.IPv6 {
			proto = goipt.ProtocolIPv6
		}
		ipt, err := goipt.New(goipt.IPFamily(proto), goipt.Path(cmd), goipt.Timeout(lockWaitSeconds))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", cmd, err)
		}
		path, err := exec.LookPath(restore)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", restore, err)
		}
		k.fams[f] = &execFamily{ipt: ipt, restore: path}
	}
	return k, nil
}

func (k *execKernel) fam(f model.Family) (*execFamily, error) {
	e, ok := k.fams[f]
	if !ok {
		return nil, fmt.Errorf("family %s not configured", f)
	}
	return e, nil
}

func (k *execKernel) EnsureChain(f model.Family, table, chain string) error {
	e, err := k.fam(f)
	if err != nil {
		return err
	}
	ok, err := e.ipt.ChainExists(table, chain)
	if err != nil || ok {
		return err
	}
	return e.ipt.NewChain(table, chain)
}

func (k *execKernel) EnsureRule(f model.Family, table, chain string, rule ...string) error {
	e, err := k.fam(f)
	if err != nil {
		return err
	}
	return e.ipt.InsertUnique(table, chain, 1, rule...)
}

func (k *execKernel) DeleteRule(f model.Family, table, chain string, rule ...string) error {
	e, err := k.fam(f)
	if err != nil {
		return err
	}
	err = e.ipt.DeleteIfExists(table, chain, rule...)
	if ee, ok := err.(*goipt.Error); ok && ee.IsNotExist() {
		return nil
	}
	return err
}

func (k *execKernel) ListChains(f model.Family, table string) ([]string, error) {
	e, err := k.fam(f)
	if err != nil {
		return nil, err
	}
	return e.ipt.ListChains(table)
}

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
