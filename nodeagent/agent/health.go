package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"k8s.io/klog/v2"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
	"kpo.dev/kpo/nodeagent/model"
)

// healthState answers /healthz and /livez as kube-proxy v1.37 does
// (pkg/proxy/healthcheck/proxy_health.go), with the same JSON: the proxy is
// healthy unless an update has waited longer than the health timeout (two
// sync periods) without a successful sync, per IP family; /healthz also needs
// the node to be eligible (known, not being deleted, not tainted
// ToBeDeletedByClusterAutoscaler), so that load balancers drain it first.
//
// One tightening: a failed sync queues an update too, so an agent whose
// periodic syncs fail turns unhealthy after the timeout even when no Service
// changed (kube-proxy stays healthy then). docs/conformance.md lists it.
type healthState struct {
	mu      sync.Mutex
	started time.Time
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

func newHealthState(syncPeriod time.Duration) *healthState {
	return &healthState{started: time.Now(), timeout: staleAfter(syncPeriod),
		families: []model.Family{model.IPv4, model.IPv6}}
}

// staleAfter is how long an update may wait for a successful sync: two sync
// periods, as kube-proxy's healthTimeout. Validation bounds syncPeriod to
// 1s–24h; the bound is held there anyway (a doubled syncPeriod of 1300000h
// overflowed into a negative bound, and /healthz answered 503 forever).
func staleAfter(syncPeriod time.Duration) time.Duration {
	return 2 * min(max(syncPeriod, time.Second), 24*time.Hour)
}

// queued records an update waiting for a sync (a change, or a failed sync).
func (h *healthState) queued(t time.Time) {
	h.mu.Lock()
	if h.pendingSince.IsZero() {
		h.pendingSince = t
	}
	h.mu.Unlock()
}

func (h *healthState) synced(t time.Time) {
	h.mu.Lock()
	h.lastSync, h.pendingSince = t, time.Time{}
	h.mu.Unlock()
}

func (h *healthState) setNode(known, deleting bool) {
	h.mu.Lock()
	h.nodeKnown, h.nodeDeleting = known, deleting
	h.mu.Unlock()
}

// setNodeDeleting is setNode for a known node.
func (h *healthState) setNodeDeleting(v bool) { h.setNode(true, v) }

// fresh reports whether rules are fresh, with the reason when not.
func (h *healthState) fresh(now time.Time) (bool, string) {
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

func (h *healthState) health(now time.Time) proxyHealth {
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

func (h *healthState) nodeEligible() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.nodeKnown && !h.nodeDeleting
}

// serveHTTP serves /healthz (checkNode) or /livez.
func (h *healthState) serveHTTP(checkNode bool) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		now := time.Now()
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

// serve starts the healthz (with /livez and /readyz) and metrics servers.
func (a *Agent) serve(ctx context.Context) error {
	healthz := a.opts.HealthzBindAddress
	if healthz == "" {
		healthz = ":" + strconv.Itoa(int(a.opts.Config.HealthzPort))
	}
	metricsAddr := a.opts.MetricsBindAddress
	if metricsAddr == "" {
		metricsAddr = metricsAddress(&a.opts.Config.ProxySettings)
	}
	mux := http.NewServeMux()
	mux.Handle("/healthz", a.health.serveHTTP(true))
	mux.Handle("/livez", a.health.serveHTTP(false))
	mux.Handle(ReadyPath, a.health.readyHandler(time.Now))
	if err := listenAndServe(ctx, healthz, mux); err != nil {
		return fmt.Errorf("healthz server: %w%s", err, portHint(err))
	}
	metricsMux := http.NewServeMux()
	metricsMux.Handle("/metrics", promhttp.HandlerFor(a.metrics.registry, promhttp.HandlerOpts{}))
	if err := listenAndServe(ctx, metricsAddr, metricsMux); err != nil {
		return fmt.Errorf("metrics server: %w%s", err, portHint(err))
	}
	return nil
}

// portHint explains a port held by another process: kpo's ports are
// kube-proxy's (10256, 10249), so the usual holder is a kube-proxy still
// running on the node.
func portHint(err error) string {
	if errors.Is(err, syscall.EADDRINUSE) {
		return " (is kube-proxy still running on this node? remove its DaemonSet first, docs/install.md; " +
			"or give the ProxyConfiguration other healthzPort/metricsPort)"
	}
	return ""
}

// metricsAddress is where /metrics listens: spec.metricsBindAddress
// (127.0.0.1 unless set, as kube-proxy's metricsBindAddress) and metricsPort.
func metricsAddress(s *kpov1.ProxySettings) string {
	host := s.MetricsBindAddress
	if host == "" {
		host = kpov1.DefaultMetricsBindAddress
	}
	return net.JoinHostPort(host, strconv.Itoa(int(s.MetricsPort)))
}

func listenAndServe(ctx context.Context, addr string, h http.Handler) error {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	go func() {
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			klog.FromContext(ctx).Error(err, "HTTP server stopped", "address", addr)
		}
	}()
	return nil
}
