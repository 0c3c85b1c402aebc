package testnet

import (
	"fmt"
	"strings"

	"kpo.dev/kpo/hack/netns"
)

// KpoObjects lists what of kpo's a namespace's kernel holds, each as "<kind>
// <name>": nftables tables ("nftables ip kpo"), iptables chains per flavour
// ("iptables-nft KPO-SERVICES", "ip6tables-legacy ..."), ipsets ("ipset
// KPO-..."), the IPVS interface ("link kpo-ipvs0"). Tools this machine lacks
// are skipped.
func KpoObjects(ns *netns.NS) ([]string, error) {
	var out []string
	tables, err := ns.Run("nft", "list", "tables")
	if err != nil {
		return nil, err
	}
	for _, line := range strings.Split(tables, "\n") {
		if f := strings.Fields(line); len(f) == 3 && f[2] == "kpo" {
			out = append(out, "nftables "+f[1]+" kpo")
		}
	}
	for _, save := range []string{"iptables-legacy-save", "iptables-nft-save", "ip6tables-legacy-save", "ip6tables-nft-save"} {
		dump, err := ns.Run(save)
		if err != nil {
			continue // not installed
		}
		for _, line := range strings.Split(dump, "\n") {
			if chain, ok := strings.CutPrefix(line, ":KPO-"); ok {
				out = append(out, fmt.Sprintf("%s KPO-%s", strings.TrimSuffix(save, "-save"), strings.Fields(chain)[0]))
			}
		}
	}
	if sets, err := ns.Run("ipset", "list", "-n"); err == nil {
		for _, name := range strings.Fields(sets) {
			if strings.HasPrefix(name, "KPO-") {
				out = append(out, "ipset "+name)
			}
		}
	}
	if _, err := ns.NL.LinkByName("kpo-ipvs0"); err == nil {
		out = append(out, "link kpo-ipvs0")
	}
	return out, nil
}

// OnlyMode says whether objects (KpoObjects) hold the given mode's objects and
// nothing of the other modes: the "no leftovers" of a mode switch.
func OnlyMode(objects []string, mode string) error {
	own := map[string][]string{
		"nftables": {"nftables "},
		"iptables": {"iptables-", "ip6tables-"},
		"ipvs":     {"ipset ", "link kpo-ipvs0", "iptables-", "ip6tables-"},
	}[mode]
	var mine, foreign []string
	for _, o := range objects {
		isOwn := false
		for _, p := range own {
			isOwn = isOwn || strings.HasPrefix(o, p)
		}
		if isOwn {
			mine = append(mine, o)
		} else {
			foreign = append(foreign, o)
		}
	}
	switch {
	case len(foreign) > 0:
		return fmt.Errorf("in %s mode, the kernel still holds %v", mode, foreign)
	case len(mine) == 0 && mode != "":
		return fmt.Errorf("in %s mode, the kernel holds none of its objects", mode)
	}
	return nil
}
