// Package backends knows every dataplane mode built into the agent and how to
// make its backend from the agent configuration.
package backends

import (
	kpov1 "kpo.dev/kpo/api/v1alpha1"
	"kpo.dev/kpo/nodeagent/backend"
	"kpo.dev/kpo/nodeagent/model"
)

// Factory makes a backend.
type Factory func() (backend.Backend, error)

// Settings derives the backends' settings from the agent configuration.
func Settings(cfg *kpov1.AgentConfiguration) backend.Settings {
	s := backend.Settings{MasqueradeBit: 14, MasqueradeAll: cfg.MasqueradeAll, LocalhostNodePorts: true}
	switch cfg.Mode {
	case kpov1.ModeNFTables:
		if cfg.NFTables.MasqueradeBit != nil {
			s.MasqueradeBit = int(*cfg.NFTables.MasqueradeBit)
		}
	default:
		if cfg.IPTables.MasqueradeBit != nil {
			s.MasqueradeBit = int(*cfg.IPTables.MasqueradeBit)
		}
	}
	if cfg.IPTables.LocalhostNodePorts != nil {
		s.LocalhostNodePorts = *cfg.IPTables.LocalhostNodePorts
	}
	return s
}

// Families are the IP families the agent programs: both, so that dual-stack
// Services work; a family without Services costs a few empty base chains.
var Families = []model.Family{model.IPv4, model.IPv6}

// All returns a factory per mode built into this agent.
func All(cfg *kpov1.AgentConfiguration) map[kpov1.Mode]Factory {
	return registered(cfg, Settings(cfg))
}
