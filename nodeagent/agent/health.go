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
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"k8s.io/klog/v2"

	"kpo.dev/kpo/nodeagent/model"
)

// healthState answers /healthz and /livez like kube-proxy: healthy while the last
// successful sync is recent; /healthz also fails while the node is being deleted,
// so that load balancers drain it first.
type healthState struct {
	mu           sync.Mutex
	started      time.Time
	lastSync     time.Time
	timeout      time.Duration
	nodeDeleting bool
}

func newHealthState(syncPeriod time.Duration) *healthState {
	return &healthState{started: time.Now(), timeout: staleAfter(syncPeriod)}
}

// staleAfter is how long rules stay fresh without a successful sync: two sync
// periods, as kube-proxy's healthTimeout. Validation bounds syncPeriod to
// 1s–24h; the bound is held there anyway (a doubled syncPeriod of 1300000h
// overflowed into a negative bound, and /healthz answered 503 forever).
func staleAfter(syncPeriod time.Duration) time.Duration {
	return 2 * min(max(syncPeriod, time.Second), 24*time.Hour)
}

func (h *healthState) synced(t time.Time) {
	h.mu.Lock()
	h.lastSync = t
	h.mu.Unlock()
}

func (h *healthState) setNodeDeleting(v bool) {
	h.mu.Lock()
	h.nodeDeleting = v
	h.mu.Unlock()
}

// fresh reports whether rules are fresh, with the reason when not.
func (h *healthState) fresh(now time.Time) (bool, string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	ref := h.lastSync
	if ref.IsZero() {
		// Starting: not stale before the first sync had its chance.
		ref = h.started
	}
	if now.Sub(ref) > h.timeout {
		return false, fmt.Sprintf("last successful sync %s ago (bound %s)", now.Sub(ref).Round(time.Millisecond), h.timeout)
	}
	return true, ""
}

func (h *healthState) serveHTTP(checkNode bool) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		now := time.Now()
		ok, why := h.fresh(now)
		h.mu.Lock()
		deleting, last := h.nodeDeleting, h.lastSync
		h.mu.Unlock()
		if checkNode && deleting {
			ok, why = false, "node is being deleted"
		}
		w.Header().Set("Content-Type", "application/json")
		if !ok {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		_ = json.NewEncoder(w).Encode(map[string]any{
			"lastUpdated": last, "currentTime": now, "healthy": ok, "reason": why,
		})
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
		metricsAddr = "127.0.0.1:" + strconv.Itoa(int(a.opts.Config.MetricsPort))
	}
	mux := http.NewServeMux()
	mux.Handle("/healthz", a.health.serveHTTP(true))
	mux.Handle("/livez", a.health.serveHTTP(false))
	mux.Handle(ReadyPath, a.health.readyHandler(time.Now))
	if err := listenAndServe(ctx, healthz, mux); err != nil {
		return fmt.Errorf("healthz server: %w", err)
	}
	metricsMux := http.NewServeMux()
	metricsMux.Handle("/metrics", promhttp.HandlerFor(a.metrics.registry, promhttp.HandlerOpts{}))
	if err := listenAndServe(ctx, metricsAddr, metricsMux); err != nil {
		return fmt.Errorf("metrics server: %w", err)
	}
	return nil
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

// healthCheckServers serve the healthCheckNodePorts of Services with
// externalTrafficPolicy Local: 200 with the local endpoint count while this node
// has local endpoints, 503 without, so that load balancers send traffic only to
// nodes that can serve it without a second hop.
type healthCheckServers struct {
	mu      sync.Mutex
	servers map[int32]*hcServer
}

type hcServer struct {
	listener net.Listener
	mu       sync.Mutex
	service  model.ServicePortName
	local    int
}

func newHealthCheckServers() *healthCheckServers {
	return &healthCheckServers{servers: map[int32]*hcServer{}}
}

func (s *hcServer) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	s.mu.Lock()
	svc, local := s.service, s.local
	s.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	if local == 0 {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	_ = json.NewEncoder(w).Encode(map[string]any{
		"service":        map[string]string{"namespace": svc.Namespace, "name": svc.Name},
		"localEndpoints": local,
	})
}

// update opens, updates and closes servers to match the snapshot.
func (h *healthCheckServers) update(snap *model.Snapshot) {
	want := map[int32]*model.ServicePort{}
	for _, sp := range snap.Services {
		if sp.HealthCheckNodePort != 0 {
			// Both families share one port: count them once.
			if prev, ok := want[sp.HealthCheckNodePort]; !ok || sp.LocalEndpointCount > prev.LocalEndpointCount {
				want[sp.HealthCheckNodePort] = sp
			}
		}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for port, srv := range h.servers {
		if _, ok := want[port]; !ok {
			_ = srv.listener.Close()
			delete(h.servers, port)
		}
	}
	for port, sp := range want {
		srv := h.servers[port]
		if srv == nil {
			l, err := net.Listen("tcp", ":"+strconv.Itoa(int(port)))
			if err != nil {
				klog.Background().Error(err, "opening health check node port", "port", port, "service", sp.Key.ServicePortName)
				continue
			}
			srv = &hcServer{listener: l}
			h.servers[port] = srv
			go func() { _ = http.Serve(l, srv) }()
		}
		srv.mu.Lock()
		srv.service, srv.local = sp.Key.ServicePortName, sp.LocalEndpointCount
		srv.mu.Unlock()
	}
}

func (h *healthCheckServers) closeAll() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for port, srv := range h.servers {
		_ = srv.listener.Close()
		delete(h.servers, port)
	}
}
