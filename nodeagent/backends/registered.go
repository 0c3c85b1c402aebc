package backends

import (
	kpov1 "kpo.dev/kpo/api/v1alpha1"
	"kpo.dev/kpo/nodeagent/backend"
	"kpo.dev/kpo/nodeagent/backend/iptables"
	"kpo.dev/kpo/nodeagent/backend/ipvs"
	"kpo.dev/kpo/nodeagent/backend/nftables"
)

// registered lists the modes built into the agent.
func registered(cfg *kpov1.AgentConfiguration, s backend.Settings) map[kpov1.Mode]Factory {
	return map[kpov1.Mode]Factory{
		kpov1.ModeNFTables: func() (backend.Backend, error) { return nftables.New(s, Families) },
		kpov1.ModeIPTables: func() (backend.Backend, error) { return iptables.New(s, Families) },
		kpov1.ModeIPVS: func() (backend.Backend, error) {
			c, err := ipvs.ConfigFrom(cfg.IPVS)
			if err != nil {
				return nil, err
			}
			return ipvs.New(s, c, Families)
		},
	}
}
