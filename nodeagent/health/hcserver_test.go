package health

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"testing"

	"kpo.dev/kpo/nodeagent/model"
	"kpo.dev/kpo/nodeagent/model/modeltest"
)

// freePort is a TCP port nothing listens on at 127.0.0.1 right now.
func freePort(t *testing.T) int32 {
	t.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = l.Close() }()
	return int32(l.Addr().(*net.TCPAddr).Port)
}

func get(t *testing.T, url string) (int, string, error) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer func() { _ = resp.Body.Close() }()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), nil
}

// TestCheckServers: a healthCheckNodePort answers kube-proxy's body, 200
// with local endpoints on a healthy proxy, 503 without local endpoints or
// when the proxy is unhealthy, and closes when its Service goes.
func TestCheckServers(t *testing.T) {
	healthy := true
	s := NewCheckServers(func() bool { return healthy })
	t.Cleanup(s.CloseAll)
	port := freePort(t)
	url := fmt.Sprintf("http://127.0.0.1:%d/", port)
	sp := modeltest.ServicePort("ns", "web", "10.96.0.10", 80)
	sp.HealthCheckNodePort, sp.LocalEndpointCount = port, 2
	node := model.NodeInfo{NodePortIPs: map[model.Family][]netip.Addr{model.IPv4: {netip.MustParseAddr("127.0.0.1")}}}
	s.Update(modeltest.Snapshot(node, sp))

	code, body, err := get(t, url)
	want := "{\n\t\"service\": {\n\t\t\"namespace\": \"ns\",\n\t\t\"name\": \"web\"\n\t},\n\t\"localEndpoints\": 2,\n\t\"serviceProxyHealthy\": true\n}"
	if err != nil || code != http.StatusOK || body != want {
		t.Errorf("with local endpoints: %d %q %v, want 200 %q", code, body, err, want)
	}
	healthy = false
	if code, _, err := get(t, url); err != nil || code != http.StatusServiceUnavailable {
		t.Errorf("unhealthy proxy: %d %v, want 503", code, err)
	}
	healthy = true
	none := *sp
	none.LocalEndpointCount = 0
	s.Update(modeltest.Snapshot(node, &none))
	if code, _, err := get(t, url); err != nil || code != http.StatusServiceUnavailable {
		t.Errorf("no local endpoints: %d %v, want 503", code, err)
	}
	s.Update(modeltest.Snapshot(node))
	if _, _, err := get(t, url); err == nil {
		t.Errorf("the Service is gone, its health check still answers")
	}
}
