package health

import (
	"encoding/json"
	"net/http"
	"time"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
)

// ReadyPath is the agent's readiness endpoint, which the DaemonSet's startup
// and readiness probes use. kube-proxy v1.37 serves only /healthz and /livez
// (pkg/proxy/healthcheck/proxy_health.go), both 200 while it starts, before
// any sync; /healthz keeps exactly that meaning here, since load balancers
// and comparisons with kube-proxy rely on it. A rolling update must instead
// wait for a node that works: /readyz is 503 until this agent has completed a
// successful sync (of the configuration it was started with: a new
// configuration is a new pod), so that a configuration that cannot sync stops
// the roll at the first maxUnavailable nodes instead of reaching every node.
const ReadyPath = kpov1.AgentReadyPath

// readiness is what /readyz answers.
type readiness struct {
	Ready       bool      `json:"ready"`
	Reason      string    `json:"reason,omitempty"`
	LastSynced  time.Time `json:"lastSynced"`
	CurrentTime time.Time `json:"currentTime"`
}

// Ready reports whether the agent is ready: it has synced once since it
// started, and its rules are fresh (the bound of /livez). A node being drained
// stays ready: readiness gates rollouts, /healthz gates load balancers.
func (h *State) Ready() (bool, string) { return h.ready(h.clock.Now()) }

func (h *State) ready(now time.Time) (bool, string) {
	h.mu.Lock()
	synced := !h.lastSync.IsZero()
	h.mu.Unlock()
	if !synced {
		return false, "no successful sync yet"
	}
	return h.fresh(now)
}

// Readyz serves /readyz.
func (h *State) Readyz() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		t := h.clock.Now()
		ok, why := h.ready(t)
		h.mu.Lock()
		last := h.lastSync
		h.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		if !ok {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		_ = json.NewEncoder(w).Encode(readiness{Ready: ok, Reason: why, LastSynced: last, CurrentTime: t})
	})
}
