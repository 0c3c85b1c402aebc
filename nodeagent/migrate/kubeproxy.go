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

// RemoveKubeProxyLeftovers removes kube-proxy's nftables tables, iptables
// chains (IPv4 and IPv6) and kube-ipvs0 interface from the current network
// namespace. Missing tools or objects are not errors.
func RemoveKubeProxyLeftovers(ctx context.Context) error {
	var errs []error
	for _, family := range []string{"ip", "ip6"} {
		if err := run(ctx, nil, "nft", "list", "table", family, "kube-proxy"); err == nil {
			errs = append(errs, run(ctx, nil, "nft", "delete", "table", family, "kube-proxy"))
		}
	}
	for _, tool := range []string{"iptables", "ip6tables"} {
		errs = append(errs, removeChains(ctx, tool))
	}
	if link, err := netlink.LinkByName("kube-ipvs0"); err == nil {
		errs = append(errs, netlink.LinkDel(link))
	}
	return errors.Join(errs...)
}

// removeChains deletes kube-proxy's chains in one restore per table: first the
// jumps into them from other chains, then their rules, then the chains.
func removeChains(ctx context.Context, tool string) error {
	if _, err := exec.LookPath(tool + "-save"); err != nil {
		return nil
	}
	var errs []error
	for _, table := range []string{"nat", "filter", "mangle"} {
		out, err := exec.CommandContext(ctx, tool+"-save", "-t", table).Output()
		if err != nil {
			continue // table absent
		}
		script := restoreScript(table, string(out))
		if script == "" {
			continue
		}
		errs = append(errs, run(ctx, []byte(script), tool+"-restore", "--noflush", "--wait=5"))
	}
	return errors.Join(errs...)
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
