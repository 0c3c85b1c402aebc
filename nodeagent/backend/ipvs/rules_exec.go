package ipvs

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"kpo.dev/kpo/nodeagent/backend"
	"kpo.dev/kpo/nodeagent/backend/iptables"
	"kpo.dev/kpo/nodeagent/model"
)

// companionRules is the real Rules: the sets through IPSet ("ipset
// restore"), the chains through the iptables mode's Kernel (iptables -S,
// iptables-restore --noflush). Tests run it over iptables.Fake and
// FakeIPSet (WithCompanion).
type companionRules struct {
	settings backend.Settings
	ipt      iptables.Kernel // nil: the host's, made on first use
	iptErr   error
	ipset    IPSet
	// applied is what the last successful Apply wrote; nil forces a rebuild.
	applied map[string]map[string]bool
	cidrs   map[model.Family]string
}

func newCompanionRules(s backend.Settings, ipt iptables.Kernel, ipset IPSet) *companionRules {
	if ipset == nil {
		ipset = execIPSet{}
	}
	return &companionRules{settings: s, ipt: ipt, ipset: ipset}
}

func (r *companionRules) kernel(fams []model.Family) (iptables.Kernel, error) {
	if r.ipt == nil && r.iptErr == nil {
		r.ipt, r.iptErr = iptables.NewExecKernel(iptables.VariantAuto, fams...)
	}
	return r.ipt, r.iptErr
}

// Apply implements Rules. Sets come first: the chains reference them.
func (r *companionRules) Apply(rs *RuleSet, full bool) error {
	ipt, err := r.kernel(rs.Families)
	if err != nil {
		return err
	}
	cur := r.applied
	if full {
		cur = nil
	}
	r.applied = nil
	if err := r.ipset.Restore(ipsetRestore(rs, cur)); err != nil {
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
func (r *companionRules) writeChains(ipt iptables.Kernel, f model.Family, rs *RuleSet) error {
	chains := renderChains(f, r.settings, rs.ClusterMasquerade[f], rs.localMatches(f), ipt.RandomFully(f))
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
			if j.Table == table && !j.In(lines) {
				data.WriteString(j.Insert() + "\n")
			}
		}
		data.WriteString("COMMIT\n")
	}
	return ipt.Restore(f, data.Bytes())
}

// Owned implements Rules: the members of each family's VIP-PORTS set. No
// ipset binary, no ip_set support or no such set means nothing recorded (a
// node that never ran the ipvs mode, whose cleanup must not fail).
func (r *companionRules) Owned(fams []model.Family) (map[VSKey]bool, error) {
	out := map[VSKey]bool{}
	names, err := r.ipset.Names()
	if err != nil {
		return out, nil
	}
	for _, f := range fams {
		name := SetName(f, setVIPPorts)
		if !slices.Contains(names, name) {
			continue
		}
		members, err := r.ipset.Members(name)
		if err != nil {
			return nil, err
		}
		for _, e := range members {
			if k, ok := parseVSEntry(e); ok {
				out[k] = true
			}
		}
	}
	return out, nil
}

// Cleanup implements Rules: jumps and chains first (iptables.RemoveOwn),
// then the sets they used.
func (r *companionRules) Cleanup(fams []model.Family) error {
	r.applied, r.cidrs = nil, nil
	var errs []error
	if ipt, err := r.kernel(fams); err == nil {
		own := func(c string) bool { return strings.HasPrefix(c, companionChainPfx) }
		errs = append(errs, iptables.RemoveOwn(ipt, fams, own, companionJumps))
	}
	names, err := r.ipset.Names()
	if err != nil {
		// No ipset binary or no ip_set module: nothing of ours can exist.
		return errors.Join(errs...)
	}
	var script strings.Builder
	for _, n := range names {
		if strings.HasPrefix(n, "KPO-") || strings.HasPrefix(n, "KPO6-") {
			fmt.Fprintf(&script, "destroy %s\n", n)
		}
	}
	if err := r.ipset.Restore(script.String()); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
