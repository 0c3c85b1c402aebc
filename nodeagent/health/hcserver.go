package health

import (
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"time"

	"k8s.io/klog/v2"

	"kpo.dev/kpo/nodeagent/model"
)

// CheckServers serve the healthCheckNodePorts of Services with
// externalTrafficPolicy Local, as kube-proxy v1.37 does
// (pkg/proxy/healthcheck/service_health.go): one server per IP family (kube-proxy
// runs one proxier per family), on that family's NodePort addresses (every
// address when nodePortAddresses leaves the family open), answering with the
// Service's local endpoints in that family and whether the proxy is healthy:
// 200 when it has local endpoints and is healthy, 503 otherwise, so that load
// balancers send traffic only to nodes that can serve it without a second hop.
type CheckServers struct {
	mu      sync.Mutex
	servers map[hcKey]*hcServer
	// healthy is the proxy's health (/livez).
	healthy func() bool
}

type hcKey struct {
	family model.Family
	port   int32
}

type hcServer struct {
	// servers, one per listening address, close with their connections
	// (as kube-proxy's http.Server.Close): a load balancer's kept-alive
	// connection must not go on reading a removed Service's answer.
	servers []*http.Server
	addrs   []string
	healthy func() bool
	mu      sync.Mutex
	service model.ServicePortName
	local   int
}

// NewCheckServers are the servers of a proxy whose health healthy says.
func NewCheckServers(healthy func() bool) *CheckServers {
	return &CheckServers{servers: map[hcKey]*hcServer{}, healthy: healthy}
}

func (s *hcServer) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	s.mu.Lock()
	svc, local := s.service, s.local
	s.mu.Unlock()
	healthy := s.healthy()
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("X-Load-Balancing-Endpoint-Weight", strconv.Itoa(local))
	if local != 0 && healthy {
		w.WriteHeader(http.StatusOK)
	} else {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	// kube-proxy's body, byte for byte.
	_, _ = fmt.Fprintf(w, "{\n\t\"service\": {\n\t\t\"namespace\": %q,\n\t\t\"name\": %q\n\t},\n\t\"localEndpoints\": %d,\n\t\"serviceProxyHealthy\": %v\n}",
		svc.Namespace, svc.Name, local, healthy)
}

// listenAddrs are where a family's health check servers listen: its NodePort
// addresses, or every address of the family.
func listenAddrs(node model.NodeInfo, f model.Family) []string {
	ips, explicit := node.NodePortIPs[f]
	if !explicit || ips == nil {
		if f == model.IPv6 {
			return []string{"::"}
		}
		return []string{"0.0.0.0"}
	}
	out := make([]string, 0, len(ips))
	for _, ip := range ips {
		out = append(out, ip.String())
	}
	return out
}

// Update opens, updates and closes servers to match the snapshot.
func (h *CheckServers) Update(snap *model.Snapshot) {
	want := map[hcKey]*model.ServicePort{}
	for _, sp := range snap.Services {
		if sp.HealthCheckNodePort == 0 {
			continue
		}
		// A Service's ports share its health check: count its endpoints once.
		k := hcKey{sp.Key.Family, sp.HealthCheckNodePort}
		if prev, ok := want[k]; !ok || sp.LocalEndpointCount > prev.LocalEndpointCount {
			want[k] = sp
		}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for k, srv := range h.servers {
		if _, ok := want[k]; !ok || !slices.Equal(srv.addrs, listenAddrs(snap.Node, k.family)) {
			srv.close()
			delete(h.servers, k)
		}
	}
	for k, sp := range want {
		srv := h.servers[k]
		if srv == nil {
			srv = h.open(k, listenAddrs(snap.Node, k.family), sp.Key.ServicePortName)
			if srv == nil {
				continue
			}
			h.servers[k] = srv
		}
		srv.mu.Lock()
		srv.service, srv.local = sp.Key.ServicePortName, sp.LocalEndpointCount
		srv.mu.Unlock()
	}
}

func (h *CheckServers) open(k hcKey, addrs []string, svc model.ServicePortName) *hcServer {
	network := "tcp4"
	if k.family == model.IPv6 {
		network = "tcp6"
	}
	srv := &hcServer{addrs: addrs, healthy: h.healthy}
	for _, a := range addrs {
		ip, _ := netip.ParseAddr(a)
		l, err := net.Listen(network, netip.AddrPortFrom(ip, uint16(k.port)).String())
		if err != nil {
			klog.Background().Error(err, "opening health check node port", "port", k.port, "service", svc)
			srv.close()
			return nil
		}
		hs := &http.Server{Handler: srv, ReadHeaderTimeout: 5 * time.Second}
		srv.servers = append(srv.servers, hs)
		go func() { _ = hs.Serve(l) }()
	}
	return srv
}

func (s *hcServer) close() {
	for _, hs := range s.servers {
		_ = hs.Close()
	}
}

// CloseAll closes every server.
func (h *CheckServers) CloseAll() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for k, srv := range h.servers {
		srv.close()
		delete(h.servers, k)
	}
}
