package bench

import (
	"encoding/json"
	"strings"

	"kpo.dev/kpo/hack/netns"
)

// ruleset counts the rules in ns the way an operator would see them: rules in
// `nft -j list ruleset` (nftables) or -A lines of iptables-save and ip6tables-save
// (iptables), and the size of that dump, which also covers set and map
// elements that nft prints many to a line.
func ruleset(ns *netns.NS, mode string) (rules, bytes int, err error) {
	var dumps []string
	if mode == "nftables" {
		out, err := ns.Run("nft", "list", "ruleset")
		if err != nil {
			return 0, 0, err
		}
		dumps = append(dumps, out)
		// Rules and set/map elements both: a layout that keeps endpoints in
		// maps (kpo's) and one that keeps them in rules (kube-proxy's) are then
		// counted alike. The JSON form tells them apart; the text form cannot.
		js, err := ns.Run("nft", "-j", "list", "ruleset")
		if err != nil {
			return 0, 0, err
		}
		if rules, err = nftObjects(js); err != nil {
			return 0, 0, err
		}
	} else {
		for _, tool := range []string{"iptables-save", "ip6tables-save"} {
			out, err := ns.Run(tool)
			if err != nil {
				return 0, 0, err
			}
			dumps = append(dumps, out)
			for _, line := range strings.Split(out, "\n") {
				if strings.HasPrefix(line, "-A ") {
					rules++
				}
			}
		}
	}
	for _, d := range dumps {
		bytes += len(d)
	}
	return rules, bytes, nil
}

// nftObjects counts the rules and the set and map elements of `nft -j list
// ruleset` output.
func nftObjects(js string) (int, error) {
	var doc struct {
		Nftables []map[string]json.RawMessage `json:"nftables"`
	}
	if err := json.Unmarshal([]byte(js), &doc); err != nil {
		return 0, err
	}
	n := 0
	for _, obj := range doc.Nftables {
		if _, ok := obj["rule"]; ok {
			n++
		}
		for _, kind := range []string{"set", "map"} {
			if raw, ok := obj[kind]; ok {
				var set struct {
					Elem []json.RawMessage `json:"elem"`
				}
				if err := json.Unmarshal(raw, &set); err != nil {
					return 0, err
				}
				n += len(set.Elem)
			}
		}
	}
	return n, nil
}
