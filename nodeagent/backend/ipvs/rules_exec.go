package ipvs

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"os/exec"
	"slices"
	"strings"

	"kpo.dev/kpo/nodeagent/backend"
	"kpo.dev/kpo/nodeagent/backend/iptables"
	"kpo.dev/kpo/nodeagent/model"
)

// execRules is the real Rules: "ipset restore" for the sets, and the iptables
// mode's exec kernel (iptables -S, iptables-restore --noflush) for the chains.
type execRules struct {
	settings backend.Settings
	ipt      iptables.Kernel
	iptErr   error
	// applied is what the last successful Apply wrote; nil forces a rebuild.
	applied map[string]map[string]bool
	cidrs   map[model.Family]string
}

func newExecRules(s backend.Settings) *execRules { return &execRules{settings: s} }

func (r *execRules) kernel(fams []model.Family) (iptables.Kernel, error) {
	if r.ipt == nil && r.iptErr == nil {
		r.ipt, r.iptErr = iptables.NewExecKernel(iptables.VariantAuto, fams...)
	}
	return r.ipt, r.iptErr
}

func runIPSet(script string) error {
	if script == "" {
		return nil
	}
	cmd := exec.Command("ipset", "restore")
	cmd.Stdin = strings.NewReader(script)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("ipset restore: %v: %s", err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

// Apply implements Rules. Sets come first: the chains reference them.
func (r *execRules) Apply(rs *RuleSet, full bool) error {
	ipt, err := r.kernel(rs.Families)
	if err != nil {
		return err
	}
	cur := r.applied
	if full {
		cur = nil
	}
	r.applied = nil
	if err := runIPSet(ipsetRestore(rs, cur)); err != nil {
		return err
	}
	for _, f := range rs.Families {
		key := fmt.Sprint(rs.localMatches(f), rs.ClusterMasquerade[f])
		if !full && r.cidrs != nil && r.cidrs[f] == key {
			continue
		}
		if err := r.writeChains(ipt, f, rs); err != nil {
			return fmt.Errorf("%s: %w", f, err)
		}
	}
	r.cidrs = map[model.Family]string{}
	for _, f := range rs.Families {
		r.cidrs[f] = fmt.Sprint(rs.localMatches(f), rs.ClusterMasquerade[f])
	}
	r.applied = map[string]map[string]bool{}
	for n, s := range rs.Sets {
		r.applied[n] = maps.Clone(s)
	}
	return nil
}

// writeChains rewrites a family's chains and inserts the missing jumps, in one
// restore (each table section commits atomically).
func (r *execRules) writeChains(ipt iptables.Kernel, f model.Family, rs *RuleSet) error {
	chains := renderChains(f, r.settings, rs.ClusterMasquerade[f], rs.localMatches(f))
	var data bytes.Buffer
	for _, table := range []string{"filter", "nat"} {
		lines, err := ipt.ListRules(f, table)
		if err != nil {
			return err
		}
		fmt.Fprintf(&data, "*%s\n", table)
		for _, l := range chains[table] {
			data.WriteString(l + "\n")
		}
		for _, j := range companionJumps {
			if j.table == table && !hasCompanionJump(lines, j) {
				fmt.Fprintf(&data, "-I %s %s\n", j.chain, j.rule)
			}
		}
		data.WriteString("COMMIT\n")
	}
	return ipt.Restore(f, data.Bytes())
}

// hasCompanionJump recognises a jump by chain, comment and target, since
// iptables -S normalises matches differently across versions.
func hasCompanionJump(lines []string, j companionJump) bool {
	for _, l := range lines {
		if isCompanionJump(l, j) {
			return true
		}
	}
	return false
}

func isCompanionJump(l string, j companionJump) bool {
	l = strings.TrimSpace(l)
	target := j.rule[strings.LastIndex(j.rule, "-j "):]
	return strings.HasPrefix(l, "-A "+j.chain+" ") && strings.Contains(l, companionComment) && strings.HasSuffix(l, target)
}

// Owned implements Rules: "ipset save" of each family's VIP-PORTS set. No
// ipset binary, no ip_set support or no such set means nothing recorded (a
// node that never ran the ipvs mode, whose cleanup must not fail).
func (r *execRules) Owned(fams []model.Family) (map[VSKey]bool, error) {
	out := map[VSKey]bool{}
	names, err := exec.Command("ipset", "list", "-n").Output()
	if err != nil {
		return out, nil
	}
	for _, f := range fams {
		name := SetName(f, setVIPPorts)
		if !slices.Contains(strings.Fields(string(names)), name) {
			continue
		}
		var stdout, stderr bytes.Buffer
		cmd := exec.Command("ipset", "save", name)
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil {
			return nil, fmt.Errorf("ipset save %s: %v: %s", name, err, strings.TrimSpace(stderr.String()))
		}
		for _, line := range strings.Split(stdout.String(), "\n") {
			if e, ok := strings.CutPrefix(line, "add "+name+" "); ok {
				if k, ok := parseVSEntry(strings.TrimSpace(e)); ok {
					out[k] = true
				}
			}
		}
	}
	return out, nil
}

// Cleanup implements Rules: jumps and chains first, then the sets they used.
func (r *execRules) Cleanup(fams []model.Family) error {
	r.applied, r.cidrs = nil, nil
	var errs []error
	ipt, err := r.kernel(fams)
	if err == nil {
		for _, f := range fams {
			var data bytes.Buffer
			for _, table := range []string{"filter", "nat"} {
				lines, err := ipt.ListRules(f, table)
				if err != nil {
					errs = append(errs, err)
					continue
				}
				fmt.Fprintf(&data, "*%s\n", table)
				var del []string
				for _, l := range lines {
					if name, ok := strings.CutPrefix(strings.TrimSpace(l), "-N "); ok && strings.HasPrefix(name, companionChainPfx) {
						fmt.Fprintf(&data, ":%s - [0:0]\n", name)
						del = append(del, name)
					}
					for _, j := range companionJumps {
						if j.table == table && isCompanionJump(l, j) {
							data.WriteString("-D" + strings.TrimPrefix(strings.TrimSpace(l), "-A") + "\n")
						}
					}
				}
				for _, c := range del {
					fmt.Fprintf(&data, "-X %s\n", c)
				}
				data.WriteString("COMMIT\n")
			}
			if err := ipt.Restore(f, data.Bytes()); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", f, err))
			}
		}
	}
	out, err := exec.Command("ipset", "list", "-n").Output()
	if err != nil {
		// No ipset binary or no ip_set module: nothing of ours can exist.
		return errors.Join(errs...)
	}
	var script strings.Builder
	for _, n := range strings.Fields(string(out)) {
		if strings.HasPrefix(n, "KPO-") || strings.HasPrefix(n, "KPO6-") {
			fmt.Fprintf(&script, "destroy %s\n", n)
		}
	}
	if err := runIPSet(script.String()); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
