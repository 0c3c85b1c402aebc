// Package migrate removes upstream kube-proxy's leftovers from a node, for the
// opt-in migration to kpo (spec.migrateFromKubeProxy). It runs only after kpo's
// own rules are in place, so that the node never lacks service rules.
package migrate

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"

	"github.com/vishvananda/netlink"
)

// kubeProxyChains are kube-proxy's iptables chains (pkg/proxy/iptables). The
// other KUBE-* chains (KUBE-FIREWALL, KUBE-KUBELET-CANARY, KUBE-IPTABLES-HINT)
// belong to kubelet and stay.
var kubeProxyChains = []string{
	"KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING",
	"KUBE-FORWARD", "KUBE-MARK-MASQ", "KUBE-MARK-DROP", "KUBE-PROXY-FIREWALL", "KUBE-PROXY-CANARY",
	"KUBE-LOAD-BALANCER", "KUBE-LOOP-BACK", "KUBE-NODE-PORT", "KUBE-IPVS-FILTER", "KUBE-IPVS-OUT-FILTER",
}

// kubeProxyPrefixes are kube-proxy's per-service chains.
var kubeProxyPrefixes = []string{"KUBE-SVC-", "KUBE-SEP-", "KUBE-FW-", "KUBE-XLB-", "KUBE-EXT-", "KUBE-SVL-"}

// IsKubeProxyChain reports whether an iptables chain is kube-proxy's.
func IsKubeProxyChain(name string) bool {
	for _, c := range kubeProxyChains {
		if name == c {
			return true
		}
	}
	for _, p := range kubeProxyPrefixes {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

// Host is what removing kube-proxy's leftovers needs of the node: its nft
// tables, the iptables tools installed and their dumps and restores, and
// its links. The real one (HostOf) runs the tools in the calling thread's
// network namespace.
type Host interface {
	// HasTable reports whether nft holds table name of family ("ip", "ip6").
	HasTable(ctx context.Context, family, name string) bool
	DeleteTable(ctx context.Context, family, name string) error
	// IPTablesTools are the iptables commands whose tables may hold
	// kube-proxy's chains ("iptables-nft", "ip6tables-legacy", or the
	// plain names on hosts that have only those).
	IPTablesTools() []string
	// Save dumps every table of tool that exists (tool-save without -t:
	// naming a table would make iptables-legacy create it).
	Save(ctx context.Context, tool string) (string, error)
	// Restore feeds a script to tool-restore --noflush.
	Restore(ctx context.Context, tool, script string) error
	// DeleteLink deletes a link; a missing one is no error.
	DeleteLink(name string) error
}

// RemoveKubeProxyLeftovers removes kube-proxy's leftovers from the calling
// thread's network namespace (Remove on the real host).
func RemoveKubeProxyLeftovers(ctx context.Context) error { return Remove(ctx, execHost{}) }

// Remove removes kube-proxy's nftables tables, iptables chains (IPv4 and
// IPv6, in iptables-nft and iptables-legacy) and kube-ipvs0 interface.
// Missing tools or objects are not errors.
func Remove(ctx context.Context, h Host) error {
	var errs []error
	for _, family := range []string{"ip", "ip6"} {
		if h.HasTable(ctx, family, "kube-proxy") {
			errs = append(errs, h.DeleteTable(ctx, family, "kube-proxy"))
		}
	}
	for _, tool := range h.IPTablesTools() {
		errs = append(errs, removeChains(ctx, h, tool))
	}
	errs = append(errs, h.DeleteLink("kube-ipvs0"))
	return errors.Join(errs...)
}

// execHost is the real Host.
type execHost struct{}

func (execHost) HasTable(ctx context.Context, family, name string) bool {
	return run(ctx, nil, "nft", "list", "table", family, name) == nil
}

func (execHost) DeleteTable(ctx context.Context, family, name string) error {
	return run(ctx, nil, "nft", "delete", "table", family, name)
}

// IPTablesTools: both flavours of both families where they are installed,
// since kube-proxy ran whichever its image's wrapper picked (nft unless
// kubelet's hint said legacy, in today's wrapper; older wrappers counted
// rules), and a flavour kpo does not use must not keep translating with
// stale rules.
func (execHost) IPTablesTools() []string {
	var out []string
	for _, base := range []string{"iptables", "ip6tables"} {
		found := false
		for _, flavour := range []string{"-nft", "-legacy"} {
			if _, err := exec.LookPath(base + flavour + "-save"); err == nil {
				out, found = append(out, base+flavour), true
			}
		}
		if !found {
			out = append(out, base)
		}
	}
	return out
}

func (execHost) Save(ctx context.Context, tool string) (string, error) {
	if _, err := exec.LookPath(tool + "-save"); err != nil {
		return "", nil
	}
	out, err := exec.CommandContext(ctx, tool+"-save").Output()
	if err != nil {
		return "", fmt.Errorf("%s-save: %w", tool, err)
	}
	return string(out), nil
}

func (execHost) Restore(ctx context.Context, tool, script string) error {
	return run(ctx, []byte(script), tool+"-restore", "--noflush", "--wait=5")
}

func (execHost) DeleteLink(name string) error {
	link, err := netlink.LinkByName(name)
	if err != nil {
		return nil // none, or nothing this agent could delete either
	}
	return netlink.LinkDel(link)
}

// removeChains deletes kube-proxy's chains of one iptables command, in one
// restore whose table sections each commit atomically: first the jumps into
// them from other chains, then their rules, then the chains.
func removeChains(ctx context.Context, h Host, tool string) error {
	dump, err := h.Save(ctx, tool)
	if err != nil {
		return err
	}
	var script strings.Builder
	for table, section := range tables(dump) {
		script.WriteString(restoreScript(table, section))
	}
	if script.Len() == 0 {
		return nil
	}
	return h.Restore(ctx, tool, script.String())
}

// tables splits an iptables-save dump into its tables' sections.
func tables(dump string) map[string]string {
	out := map[string]string{}
	var name string
	var cur strings.Builder
	for _, line := range strings.Split(dump, "\n") {
		switch {
		case strings.HasPrefix(line, "*"):
			name = strings.TrimSpace(line[1:])
			cur.Reset()
		case line == "COMMIT" && name != "":
			out[name] = cur.String()
			name = ""
		case name != "":
			cur.WriteString(line + "\n")
		}
	}
	return out
}

// restoreScript turns an iptables-save dump of one table into the restore input
// that removes kube-proxy's chains, or "" when there are none.
func restoreScript(table, dump string) string {
	var chains []string
	var jumps []string
	for _, line := range strings.Split(dump, "\n") {
		switch {
		case strings.HasPrefix(line, ":"):
			name := strings.Fields(line[1:])[0]
			if IsKubeProxyChain(name) {
				chains = append(chains, name)
			}
		case strings.HasPrefix(line, "-A "):
			f := strings.Fields(line)
			if len(f) < 2 || IsKubeProxyChain(f[1]) {
				continue // rules inside kube-proxy's chains go with the flush
			}
			for i := 2; i+1 < len(f); i++ {
				if (f[i] == "-j" || f[i] == "-g") && IsKubeProxyChain(f[i+1]) {
					jumps = append(jumps, "-D"+line[2:])
					break
				}
			}
		}
	}
	if len(chains) == 0 && len(jumps) == 0 {
		return ""
	}
	var b strings.Builder
	fmt.Fprintf(&b, "*%s\n", table)
	for _, j := range jumps {
		b.WriteString(j + "\n")
	}
	for _, c := range chains {
		fmt.Fprintf(&b, "-F %s\n", c)
	}
	for _, c := range chains {
		fmt.Fprintf(&b, "-X %s\n", c)
	}
	b.WriteString("COMMIT\n")
	return b.String()
}

func run(ctx context.Context, stdin []byte, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, out)
	}
	return nil
}
