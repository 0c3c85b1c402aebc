package cluster

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"kpo.dev/kpo/hack/apiserver"
	"kpo.dev/kpo/hack/netns"
	"kpo.dev/kpo/hack/procs"
)

// APIServerPort is the API server's port on the node network (LANIP4).
const APIServerPort = 6443

// controlPlane is etcd, kube-apiserver, kube-controller-manager and
// kube-scheduler, all running inside the LAN namespace: the API server listens
// on the node network at 198.51.100.254:6443 (where agents and pods reach it),
// etcd on the LAN namespace's own loopback (so no port of the host is taken).
type controlPlane struct {
	dir    string
	pki    *pki
	lan    *netns.LAN
	ledger *procs.Ledger
	procs  map[string]*procs.Proc
	// inLAN is the admin kubeconfig for processes in the LAN namespace.
	inLAN string
}

// component is one control-plane process: its binary and flags.
type component struct {
	name string
	args []string
}

func (cp *controlPlane) components() []component {
	p := cp.pki.path
	return []component{
		{"etcd", []string{
			"--name=kpo-local",
			"--data-dir=" + filepath.Join(cp.dir, "etcd"),
			"--listen-client-urls=http://127.0.0.1:2379",
			"--advertise-client-urls=http://127.0.0.1:2379",
			"--listen-peer-urls=http://127.0.0.1:2380",
			"--initial-advertise-peer-urls=http://127.0.0.1:2380",
			"--initial-cluster=kpo-local=http://127.0.0.1:2380",
			// A throw-away cluster: durability is not worth the fsync latency.
			"--unsafe-no-fsync",
			"--log-level=warn",
		}},
		{"kube-apiserver", []string{
			"--etcd-servers=http://127.0.0.1:2379",
			"--bind-address=0.0.0.0",
			fmt.Sprintf("--secure-port=%d", APIServerPort),
			// The kubernetes Service's endpoint: what kpo's agents proxy 10.96.0.1:443 to.
			"--advertise-address=" + netns.LANIP4,
			"--service-cluster-ip-range=10.96.0.0/16,fd10:96::/112",
			"--client-ca-file=" + p(caCert),
			"--tls-cert-file=" + p(serverCert),
			"--tls-private-key-file=" + p(serverKey),
			"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
			"--service-account-key-file=" + p(saPublicKey),
			"--service-account-signing-key-file=" + p(saSigningKey),
			"--authorization-mode=Node,RBAC",
			// The agents run privileged (they program the node's kernel).
			"--allow-privileged=true",
			// kubectl logs / exec / port-forward: the API server calls each
			// kubelet at the node's InternalIP (the nodes have no resolvable
			// host names), as the cluster admin (kubelet authorizes by webhook).
			"--kubelet-preferred-address-types=InternalIP",
			"--kubelet-client-certificate=" + p(adminCert),
			"--kubelet-client-key=" + p(adminKey),
			"--cert-dir=" + filepath.Join(cp.dir, "apiserver-certs"),
			"--v=1",
		}},
		{"kube-controller-manager", []string{
			"--kubeconfig=" + cp.inLAN,
			"--authentication-kubeconfig=" + cp.inLAN,
			"--authorization-kubeconfig=" + cp.inLAN,
			"--leader-elect=false",
			"--service-account-private-key-file=" + p(saSigningKey),
			// Published as the kube-root-ca.crt ConfigMap in every namespace: the CA
			// that pods' service-account volumes carry.
			"--root-ca-file=" + p(caCert),
			"--use-service-account-credentials=false",
			"--service-cluster-ip-range=10.96.0.0/16,fd10:96::/112",
			// The cluster sets each Node's podCIDRs from the address plan
			// (10.244.N.0/24, what the node's CNI configuration hands out): no
			// allocation by the controller manager.
			"--allocate-node-cidrs=false",
			// Keep node-lifecycle decisions quick and visible in a small cluster.
			"--node-monitor-grace-period=40s",
			"--v=1",
		}},
		{"kube-scheduler", []string{
			"--kubeconfig=" + cp.inLAN,
			"--authentication-kubeconfig=" + cp.inLAN,
			"--authorization-kubeconfig=" + cp.inLAN,
			"--leader-elect=false",
			"--v=1",
		}},
	}
}

// start runs every component in order, waiting for the API server to be ready
// (through hostConfig, the host-side view) before its clients start.
func (cp *controlPlane) start(ctx context.Context, hostConfig *rest.Config, progress func(string)) error {
	cp.procs = map[string]*procs.Proc{}
	for _, c := range cp.components() {
		if err := cp.startOne(c); err != nil {
			return err
		}
		if c.name == "kube-apiserver" {
			progress("waiting for kube-apiserver to be ready")
			if err := waitReady(ctx, hostConfig, cp.procs[c.name], 2*time.Minute); err != nil {
				return fmt.Errorf("%w (log: %s)", err, cp.logPath(c.name))
			}
		}
	}
	return nil
}

func (cp *controlPlane) logPath(name string) string {
	return filepath.Join(cp.dir, "logs", name+".log")
}

func (cp *controlPlane) startOne(c component) error {
	bin, err := apiserver.Binary(c.name)
	if err != nil {
		return err
	}
	p, err := procs.Start(cp.ledger, c.name, cp.lan.Command(bin, c.args...), cp.logPath(c.name))
	if err != nil {
		return err
	}
	cp.procs[c.name] = p
	return nil
}

// restart stops one component (SIGTERM, as a rolling upgrade would) and starts it again.
func (cp *controlPlane) restart(name string) error {
	for _, c := range cp.components() {
		if c.name == name {
			if p := cp.procs[name]; p != nil {
				p.Stop(30 * time.Second)
			}
			return cp.startOne(c)
		}
	}
	return fmt.Errorf("no control-plane component %q", name)
}

// stop stops the components in reverse order.
func (cp *controlPlane) stop() {
	comps := cp.components()
	for i := len(comps) - 1; i >= 0; i-- {
		if p := cp.procs[comps[i].name]; p != nil {
			p.Stop(10 * time.Second)
		}
	}
}

// waitReady polls the API server's /readyz until it answers ok.
func waitReady(ctx context.Context, cfg *rest.Config, proc *procs.Proc, timeout time.Duration) error {
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last error
	for {
		body, err := kube.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		if err == nil && string(body) == "ok" {
			return nil
		}
		last = err
		if proc.Exited() {
			return fmt.Errorf("kube-apiserver exited")
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("kube-apiserver not ready after %v: %v", timeout, last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// writeKubeconfig writes an admin kubeconfig for the API server at server.
func writeKubeconfig(path, server string, p *pki) error {
	return writeClientKubeconfig(path, server, p, p.path(adminCert), p.path(adminKey))
}

// writeClientKubeconfig writes a kubeconfig with a client certificate.
func writeClientKubeconfig(path, server string, p *pki, cert, key string) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["kpo-local"] = &clientcmdapi.Cluster{Server: server, CertificateAuthority: p.path(caCert)}
	cfg.AuthInfos["kpo-admin"] = &clientcmdapi.AuthInfo{ClientCertificate: cert, ClientKey: key}
	cfg.Contexts["kpo-local"] = &clientcmdapi.Context{Cluster: "kpo-local", AuthInfo: "kpo-admin"}
	cfg.CurrentContext = "kpo-local"
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return clientcmd.WriteToFile(*cfg, path)
}
