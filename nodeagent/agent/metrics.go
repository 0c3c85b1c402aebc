package agent

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"kpo.dev/kpo/nodeagent/model"
	"kpo.dev/kpo/nodeagent/tracker"
)

// metrics carry kube-proxy's names (pkg/proxy/metrics/metrics.go, subsystem
// kubeproxy) where the meaning is the same, so that kube-proxy's dashboards
// and alerts work unchanged, and kpo_* names for what kube-proxy has no
// counterpart of. docs/metrics.md lists them. kube-proxy labels most of its
// series by ip_family (one proxier per family); a kpo sync programs both
// families in one transaction, so kpo's carry no ip_family label: queries
// that sum or do not select by it read the same.
type metrics struct {
	registry *prometheus.Registry

	syncDuration, syncFull, syncPartial prometheus.Histogram
	programming                         prometheus.Histogram
	lastSync, lastQueued                prometheus.Gauge
	endpointChangesPending              prometheus.Gauge
	endpointChangesTotal                prometheus.Gauge
	serviceChangesPending               prometheus.Gauge
	serviceChangesTotal                 prometheus.Gauge

	// kpo's own.
	rules        prometheus.Gauge
	syncFailures prometheus.Counter
	rejected     *prometheus.GaugeVec
	info         *prometheus.GaugeVec
}

// kube-proxy's buckets (pkg/proxy/metrics/metrics.go).
var (
	syncBuckets        = prometheus.ExponentialBuckets(0.001, 2, 15)
	programmingBuckets = mergeBuckets(
		prometheus.LinearBuckets(0.25, 0.25, 2), // 0.25s, 0.50s
		prometheus.LinearBuckets(1, 1, 59),      // 1s, 2s, 3s, ... 59s
		prometheus.LinearBuckets(60, 5, 12),     // 60s, 65s, 70s, ... 115s
		prometheus.LinearBuckets(120, 30, 7),    // 2min, 2.5min, 3min, ..., 5min
	)
)

func mergeBuckets(lists ...[]float64) []float64 {
	var out []float64
	for _, l := range lists {
		out = append(out, l...)
	}
	return out
}

func newMetrics() *metrics {
	histogram := func(name, help string, buckets []float64) prometheus.Histogram {
		return prometheus.NewHistogram(prometheus.HistogramOpts{Subsystem: "kubeproxy", Name: name, Help: help, Buckets: buckets})
	}
	gauge := func(name, help string) prometheus.Gauge {
		return prometheus.NewGauge(prometheus.GaugeOpts{Subsystem: "kubeproxy", Name: name, Help: help})
	}
	m := &metrics{
		registry:               prometheus.NewRegistry(),
		syncDuration:           histogram("sync_proxy_rules_duration_seconds", "SyncProxyRules latency in seconds", syncBuckets),
		syncFull:               histogram("sync_full_proxy_rules_duration_seconds", "SyncProxyRules latency in seconds for full resyncs", syncBuckets),
		syncPartial:            histogram("sync_partial_proxy_rules_duration_seconds", "SyncProxyRules latency in seconds for partial resyncs", syncBuckets),
		programming:            histogram("network_programming_duration_seconds", "In Cluster Network Programming Latency in seconds", programmingBuckets),
		lastSync:               gauge("sync_proxy_rules_last_timestamp_seconds", "The last time proxy rules were successfully synced"),
		lastQueued:             gauge("sync_proxy_rules_last_queued_timestamp_seconds", "The last time a sync of proxy rules was queued"),
		endpointChangesPending: gauge("sync_proxy_rules_endpoint_changes_pending", "Pending proxy rules Endpoint changes"),
		// kube-proxy's *_total changes are gauges too (set from its trackers).
		endpointChangesTotal:  gauge("sync_proxy_rules_endpoint_changes_total", "Cumulative proxy rules Endpoint changes"),
		serviceChangesPending: gauge("sync_proxy_rules_service_changes_pending", "Pending proxy rules Service changes"),
		serviceChangesTotal:   gauge("sync_proxy_rules_service_changes_total", "Cumulative proxy rules Service changes"),
		rules: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kpo_sync_proxy_rules_total", Help: "Rules, map and set elements (or virtual servers) the active mode holds.",
		}),
		syncFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kpo_sync_proxy_rules_failures_total", Help: "Syncs the kernel refused (every mode).",
		}),
		rejected: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kpo_rejected_objects",
			Help: "API objects (or parts of them) not programmed because they are invalid or lose a conflict " +
				"with another Service, by kind and reason; the ProxyNodeStatus names the first ten.",
		}, []string{"kind", "reason"}),
		info: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kpo_agent_info",
			Help: "Always 1: the agent's version, its configuration, the mode configured and the mode it runs " +
				"(they differ while it falls back to the previous mode).",
		}, []string{"version", "configuration", "configured_mode", "active_mode"}),
	}
	m.registry.MustRegister(m.syncDuration, m.syncFull, m.syncPartial, m.programming, m.lastSync, m.lastQueued,
		m.endpointChangesPending, m.endpointChangesTotal, m.serviceChangesPending, m.serviceChangesTotal,
		m.rules, m.syncFailures, m.rejected, m.info,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// setInfo sets kpo_agent_info to the one current series.
func (m *metrics) setInfo(version, configuration, configured, active string) {
	m.info.Reset()
	m.info.WithLabelValues(version, configuration, configured, active).Set(1)
}

// setRejected sets the rejected-objects gauge from the grouped rejections
// (one per object and reason).
func (m *metrics) setRejected(grouped []model.Rejection) {
	m.rejected.Reset()
	for _, r := range grouped {
		m.rejected.WithLabelValues(r.Kind, r.Reason).Inc()
	}
}

// queued records a change waiting for a sync.
func (m *metrics) queued(now time.Time, st tracker.Stats) {
	m.lastQueued.Set(float64(now.UnixNano()) / 1e9)
	m.setChanges(st)
}

// setChanges sets the change gauges from the tracker's counts.
func (m *metrics) setChanges(st tracker.Stats) {
	m.endpointChangesPending.Set(float64(st.EndpointChangesPending))
	m.endpointChangesTotal.Set(float64(st.EndpointChangesTotal))
	m.serviceChangesPending.Set(float64(st.ServiceChangesPending))
	m.serviceChangesTotal.Set(float64(st.ServiceChangesTotal))
}

// observeSync records a successful sync. triggers are the EndpointSlice
// change times it programmed (the tracker keeps only those after the agent
// started, as kube-proxy's EndpointsChangeTracker): each is observed as
// network programming latency, as kube-proxy does after a successful sync
// (pkg/proxy/nftables/proxier.go, syncProxyRules).
func (m *metrics) observeSync(full bool, d time.Duration, rules int, triggers []time.Time) {
	m.syncDuration.Observe(d.Seconds())
	if full {
		m.syncFull.Observe(d.Seconds())
	} else {
		m.syncPartial.Observe(d.Seconds())
	}
	m.rules.Set(float64(rules))
	now := time.Now()
	m.lastSync.Set(float64(now.UnixNano()) / 1e9)
	for _, t := range triggers {
		m.programming.Observe(now.Sub(t).Seconds())
	}
}
