package backends

import (
	kpov1 "kpo.dev/kpo/api/v1alpha1"
	"kpo.dev/kpo/nodeagent/backend"
)

// registered lists the modes built into the agent.
func registered(_ backend.Settings) map[kpov1.Mode]Factory {
	return map[kpov1.Mode]Factory{}
}
