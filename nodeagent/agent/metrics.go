package agent

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"kpo.dev/kpo/nodeagent/model"
)

// metrics uses kube-proxy's vocabulary (kubeproxy_sync_proxy_rules_*) under the
// kpo_ prefix, so that existing dashboards translate by a rename.
type metrics struct {
	registry        *prometheus.Registry
	syncDuration    *prometheus.HistogramVec
	programming     prometheus.Histogram
	pending         prometheus.Gauge
	rules           prometheus.Gauge
	syncFailures    prometheus.Counter
	lastSyncSeconds prometheus.Gauge
	rejected        *prometheus.GaugeVec
}

func newMetrics() *metrics {
	buckets := prometheus.ExponentialBuckets(0.0005, 2, 16) // 0.5ms .. 16s
	m := &metrics{
		registry: prometheus.NewRegistry(),
		syncDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "kpo_sync_proxy_rules_duration_seconds", Help: "Duration of rule syncs, by type (full or partial).",
			Buckets: buckets,
		}, []string{"type"}),
		programming: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "kpo_network_programming_duration_seconds",
			Help:    "Time from an EndpointSlice change (its last-change-trigger-time) to its rules being in the kernel.",
			Buckets: buckets,
		}),
		pending: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kpo_sync_proxy_rules_service_changes_pending", Help: "Services with changes not yet synced.",
		}),
		rules: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kpo_sync_proxy_rules_total", Help: "Rules, map and set elements (or virtual servers) the active mode holds.",
		}),
		syncFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kpo_sync_proxy_rules_failures_total", Help: "Syncs the kernel refused.",
		}),
		lastSyncSeconds: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kpo_sync_proxy_rules_last_timestamp_seconds", Help: "Time of the last successful sync.",
		}),
		rejected: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kpo_rejected_objects",
			Help: "API objects (or parts of them) not programmed because they are invalid or lose a conflict " +
				"with another Service, by kind and reason; the ProxyNodeStatus names the first ten.",
		}, []string{"kind", "reason"}),
	}
	m.registry.MustRegister(m.syncDuration, m.programming, m.pending, m.rules, m.syncFailures, m.lastSyncSeconds, m.rejected,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// setRejected sets the rejected-objects gauge from the grouped rejections
// (one per object and reason).
func (m *metrics) setRejected(grouped []model.Rejection) {
	m.rejected.Reset()
	for _, r := range grouped {
		m.rejected.WithLabelValues(r.Kind, r.Reason).Inc()
	}
}

func (m *metrics) observeSync(full bool, d time.Duration, rules int, triggers []time.Time) {
	typ := "partial"
	if full {
		typ = "full"
	}
	m.syncDuration.WithLabelValues(typ).Observe(d.Seconds())
	m.rules.Set(float64(rules))
	now := time.Now()
	m.lastSyncSeconds.Set(float64(now.Unix()))
	for _, t := range triggers {
		m.programming.Observe(now.Sub(t).Seconds())
	}
}
