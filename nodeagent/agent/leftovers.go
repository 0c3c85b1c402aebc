package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"strings"
)

// KernelLeftovers lists what of kpo's this network namespace's kernel holds,
// each as "<kind> <name>": nftables tables ("nftables table ip kpo"),
// iptables chains per binary and table ("iptables-nft nat KPO-SERVICES"),
// ipsets ("ipset KPO-..."), the IPVS interface ("link kpo-ipvs0"). It names
// what a failed cleanup left (kpo-agent --cleanup, a deleted configuration).
// Tools the node lacks are skipped; a tool that fails is an error.
func KernelLeftovers(ctx context.Context) ([]string, error) {
	var out []string
	var errs []error
	run := func(name string, args ...string) (string, bool) {
		if _, err := exec.LookPath(name); err != nil {
			return "", false
		}
		b, err := exec.CommandContext(ctx, name, args...).Output()
		if err != nil {
			errs = append(errs, fmt.Errorf("%s %s: %w", name, strings.Join(args, " "), err))
			return "", false
		}
		return string(b), true
	}
	if tables, ok := run("nft", "list", "tables"); ok {
		for _, line := range strings.Split(tables, "\n") {
			if f := strings.Fields(line); len(f) == 3 && f[0] == "table" && f[2] == tableNameNFT {
				out = append(out, "nftables table "+f[1]+" "+f[2])
			}
		}
	}
	for _, bin := range []string{"iptables-nft", "iptables-legacy", "ip6tables-nft", "ip6tables-legacy"} {
		// Without -t: naming a table would create it (legacy) where it is not.
		rules, ok := run(bin + "-save")
		if !ok {
			continue
		}
		table := ""
		for _, line := range strings.Split(rules, "\n") {
			if t, ok := strings.CutPrefix(line, "*"); ok {
				table = t
			}
			if chain, ok := strings.CutPrefix(line, ":"+chainPrefix); ok {
				out = append(out, fmt.Sprintf("%s %s %s%s", bin, table, chainPrefix, strings.Fields(chain)[0]))
			}
		}
	}
	if sets, ok := run("ipset", "list", "-n"); ok {
		for _, name := range strings.Fields(sets) {
			if strings.HasPrefix(name, chainPrefix) {
				out = append(out, "ipset "+name)
			}
		}
	}
	if _, err := net.InterfaceByName(ipvsLink); err == nil {
		out = append(out, "link "+ipvsLink)
	}
	return out, errors.Join(errs...)
}

// kpo's names (docs/design.md): the nftables tables, the iptables chain and
// ipset prefix, the IPVS interface.
const (
	tableNameNFT = "kpo"
	chainPrefix  = "KPO-"
	ipvsLink     = "kpo-ipvs0"
)
