// Package health answers whether the node agent's rules are current:
// kube-proxy's /healthz and /livez (State.Healthz, State.Livez), the
// agent's /readyz that gates rollouts (State.Readyz), and the servers of the
// healthCheckNodePorts of Services with externalTrafficPolicy Local
// (CheckServers). Time comes from an injected clock, so that tests move it
// instead of waiting.
package health

import (
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"time"

	"k8s.io/utils/clock"

	"kpo.dev/kpo/nodeagent/model"
)

// State answers /healthz and /livez as kube-proxy v1.37 does
// (pkg/proxy/healthcheck/proxy_health.go), with the same JSON: the proxy is
// healthy unless an update has waited longer than the health timeout (two
// sync periods) without a successful sync, per IP family; /healthz also needs
// the node to be eligible (known, not being deleted, not tainted
// ToBeDeletedByClusterAutoscaler), so that load balancers drain it first.
//
// One tightening: a failed sync queues an update too, so an agent whose
// periodic syncs fail turns unhealthy after the timeout even when no Service
// changed (kube-proxy stays healthy then). docs/conformance.md lists it.
type State struct {
	clock   clock.PassiveClock
	mu      sync.Mutex
	timeout time.Duration
	// lastSync is the last successful sync (zero before the first).
	lastSync time.Time
	// pendingSince is when the oldest unsynced update was queued (zero: none).
	pendingSince time.Time
	// nodeKnown and nodeDeleting: the agent's view of its Node.
	nodeKnown, nodeDeleting bool
	// families are the IP families the backend programs.
	families []model.Family
}

// New is the state of an agent that syncs every syncPeriod, on clk.
func New(syncPeriod time.Duration, clk clock.PassiveClock) *State {
	return &State{clock: clk, timeout: StaleAfter(syncPeriod), families: []model.Family{model.IPv4, model.IPv6}}
}

// StaleAfter is how long an update may wait for a successful sync: two
// sync periods, as kube-proxy's healthTimeout. Validation bounds syncPeriod
// to 1s–24h; the bound is held here anyway (a doubled syncPeriod of
// 1300000h overflowed into a negative bound, and /healthz answered 503
// forever).
func StaleAfter(syncPeriod time.Duration) time.Duration {
	return 2 * min(max(syncPeriod, time.Second), 24*time.Hour)
}

// Queued records an update waiting for a sync (a change, or a failed sync).
func (h *State) Queued() {
	now := h.clock.Now()
	h.mu.Lock()
	if h.pendingSince.IsZero() {
		h.pendingSince = now
	}
	h.mu.Unlock()
}

// Synced records a successful sync: nothing waits any more.
func (h *State) Synced() {
	now := h.clock.Now()
	h.mu.Lock()
	h.lastSync, h.pendingSince = now, time.Time{}
	h.mu.Unlock()
}

// SetNode records the agent's view of its Node.
func (h *State) SetNode(known, deleting bool) {
	h.mu.Lock()
	h.nodeKnown, h.nodeDeleting = known, deleting
	h.mu.Unlock()
}

// SetNodeDeleting is SetNode for a known node.
func (h *State) SetNodeDeleting(v bool) { h.SetNode(true, v) }

// Fresh reports whether the rules are fresh, with the reason when not.
func (h *State) Fresh() (bool, string) { return h.fresh(h.clock.Now()) }

func (h *State) fresh(now time.Time) (bool, string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.pendingSince.IsZero() && now.Sub(h.pendingSince) >= h.timeout {
		return false, fmt.Sprintf("an update has waited %s for a successful sync (bound %s)",
			now.Sub(h.pendingSince).Round(time.Millisecond), h.timeout)
	}
	return true, ""
}

// proxierHealth and proxyHealth are kube-proxy's JSON (ProxierHealth, ProxyHealth).
type proxierHealth struct {
	LastUpdated time.Time `json:"lastUpdated"`
	Healthy     bool      `json:"healthy"`
}

type proxyHealth struct {
	LastUpdated  time.Time                `json:"lastUpdated"`
	CurrentTime  time.Time                `json:"currentTime"`
	NodeEligible *bool                    `json:"nodeEligible,omitempty"`
	Healthy      bool                     `json:"healthy"`
	Status       map[string]proxierHealth `json:"status,omitempty"`
}

func (h *State) health(now time.Time) proxyHealth {
	healthy, _ := h.fresh(now)
	h.mu.Lock()
	defer h.mu.Unlock()
	out := proxyHealth{LastUpdated: h.lastSync, CurrentTime: now, Healthy: healthy, Status: map[string]proxierHealth{}}
	if !h.lastSync.IsZero() {
		for _, f := range h.families {
			out.Status[f.String()] = proxierHealth{LastUpdated: h.lastSync, Healthy: healthy}
		}
	}
	return out
}

func (h *State) nodeEligible() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.nodeKnown && !h.nodeDeleting
}

// Healthz serves /healthz: fresh rules on an eligible node.
func (h *State) Healthz() http.Handler { return h.serve(true) }

// Livez serves /livez: fresh rules.
func (h *State) Livez() http.Handler { return h.serve(false) }

func (h *State) serve(checkNode bool) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		now := h.clock.Now()
		health := h.health(now)
		healthy := health.Healthy
		if checkNode {
			eligible := h.nodeEligible()
			health.NodeEligible = &eligible
			healthy = healthy && eligible
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		if !healthy {
			w.WriteHeader(http.StatusServiceUnavailable)
		} else {
			health.LastUpdated = now // as kube-proxy: a healthy proxy is current
		}
		out, _ := json.Marshal(health)
		_, _ = w.Write(out)
	}
}
