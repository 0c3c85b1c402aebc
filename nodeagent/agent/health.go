package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"k8s.io/klog/v2"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
	"kpo.dev/kpo/nodeagent/health"
)

// ReadyPath is the agent's readiness endpoint (health.ReadyPath).
const ReadyPath = health.ReadyPath

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
	mux.Handle("/healthz", a.health.Healthz())
	mux.Handle("/livez", a.health.Livez())
	mux.Handle(ReadyPath, a.health.Readyz())
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
