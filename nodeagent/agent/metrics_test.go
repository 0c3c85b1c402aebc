package agent

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
	"kpo.dev/kpo/hack/apiserver"
	"kpo.dev/kpo/nodeagent/tracker"
)

func TestMetricsAddress(t *testing.T) {
	for _, tc := range []struct {
		bind string
		want string
	}{
		{"", "127.0.0.1:10249"}, // kube-proxy's default
		{"0.0.0.0", "0.0.0.0:10249"},
		{"::", "[::]:10249"},
	} {
		s := kpov1.ProxySettings{MetricsBindAddress: tc.bind, MetricsPort: 10249}
		if got := metricsAddress(&s); got != tc.want {
			t.Errorf("metricsBindAddress %q: listens on %s, want %s", tc.bind, got, tc.want)
		}
	}
}

// scrape reads the agent's /metrics.
func scrape(addr string) (map[string]*dto.MetricFamily, error) {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return nil, err
	}
	defer func() { _ = resp.Body.Close() }()
	p := expfmt.NewTextParser(model.UTF8Validation)
	return p.TextToMetricFamilies(resp.Body)
}

func histogramCount(f map[string]*dto.MetricFamily, name string) uint64 {
	var n uint64
	if mf, ok := f[name]; ok {
		for _, m := range mf.GetMetric() {
			n += m.GetHistogram().GetSampleCount()
		}
	}
	return n
}

// TestMetricsAsKubeProxy: the agent serves kube-proxy's metric names (so
// kube-proxy's dashboards and alerts work), and its network programming
// latency leaves out the trigger times of objects changed before it
// started, as kube-proxy does: the old agent recorded the initial list's
// slices, days old on a real cluster, on every start.
func TestMetricsAsKubeProxy(t *testing.T) {
	if env == nil {
		t.Skip("needs kube-apiserver; not run with -short")
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c := env.Client
	kube := kubernetes.NewForConfigOrDie(env.Config)
	must(t, c.Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "metrics-node"}}))
	must(t, c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "metrics-test"}}))
	must(t, c.Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "metrics-test", Name: "web"},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 80}}},
	}))
	stale := time.Now().Add(-72 * time.Hour)
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: "metrics-test", Name: "web-1",
			Labels:      map[string]string{discoveryv1.LabelServiceName: "web"},
			Annotations: map[string]string{tracker.AnnotationLastChangeTriggerTime: stale.Format(time.RFC3339Nano)}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Port: ptr.To[int32](8080), Protocol: ptr.To(corev1.ProtocolTCP)}},
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"10.244.1.5"}}},
	}
	must(t, c.Create(ctx, slice))

	cfg := &kpov1.AgentConfiguration{ConfigurationName: "metrics", ConfigurationGeneration: 1, Mode: kpov1.ModeNFTables}
	cfg.MinSyncPeriod = "50ms"
	cfg.Default()
	metricsAddr := freePort(t)
	runAgent(t, ctx, cancel, &recordingBackend{}, Options{
		Config: cfg, NodeName: "metrics-node", Kube: kube, Client: c,
		HealthzBindAddress: freePort(t), MetricsBindAddress: metricsAddr,
	})
	const (
		syncs       = "kubeproxy_sync_proxy_rules_duration_seconds"
		programming = "kubeproxy_network_programming_duration_seconds"
	)
	var f map[string]*dto.MetricFamily
	apiserver.Eventually(t, 20*time.Second, func() error {
		var err error
		if f, err = scrape(metricsAddr); err != nil {
			return err
		}
		if histogramCount(f, syncs) == 0 {
			return fmt.Errorf("no sync recorded in %s", syncs)
		}
		return nil
	})
	for _, name := range []string{syncs, "kubeproxy_sync_full_proxy_rules_duration_seconds",
		"kubeproxy_sync_proxy_rules_last_timestamp_seconds", "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
		"kubeproxy_sync_proxy_rules_endpoint_changes_total", "kubeproxy_sync_proxy_rules_service_changes_total",
		"kpo_agent_info", "kpo_sync_proxy_rules_failures_total"} {
		if _, ok := f[name]; !ok {
			t.Errorf("%s not served", name)
		}
	}
	if last := f["kubeproxy_sync_proxy_rules_last_timestamp_seconds"].GetMetric()[0].GetGauge().GetValue(); time.Since(time.Unix(int64(last), 0)) > time.Minute {
		t.Errorf("last sync timestamp %v is not now", last)
	}
	if n := histogramCount(f, programming); n != 0 {
		t.Errorf("%s recorded %d stale trigger times of the initial list", programming, n)
	}

	// A change after the start is measured.
	slice.Annotations[tracker.AnnotationLastChangeTriggerTime] = time.Now().Format(time.RFC3339Nano)
	slice.Endpoints = append(slice.Endpoints, discoveryv1.Endpoint{Addresses: []string{"10.244.1.6"}})
	must(t, c.Update(ctx, slice))
	apiserver.Eventually(t, 20*time.Second, func() error {
		var err error
		if f, err = scrape(metricsAddr); err != nil {
			return err
		}
		if n := histogramCount(f, programming); n != 1 {
			return fmt.Errorf("%s count %d, want 1", programming, n)
		}
		return nil
	})
	if sum := f[programming].GetMetric()[0].GetHistogram().GetSampleSum(); sum > 60 {
		t.Errorf("programming latency %vs: not this change's", sum)
	}
}

// TestPortHeldByKubeProxy: an agent whose port is taken (kube-proxy still
// running) stops with an error that says what to do.
func TestPortHeldByKubeProxy(t *testing.T) {
	held, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = held.Close() }()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	err = listenAndServe(ctx, held.Addr().String(), http.NewServeMux())
	if err == nil || !strings.Contains(portHint(err), "kube-proxy") {
		t.Errorf("error %v, hint %q", err, portHint(err))
	}
}
