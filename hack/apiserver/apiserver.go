// Package apiserver starts a real kube-apiserver and etcd for tests (through
// controller-runtime's envtest), with kpo's CRDs installed, and finds the
// Kubernetes binaries the project builds into bin/ (see hack/build-k8s.sh).
package apiserver

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
)

// K8sVersion is the Kubernetes release whose binaries the tests run: the
// Makefile's K8S_VERSION, required by hack/tools/go.mod (TestOneKubernetesVersion).
const K8sVersion = "v1.37.1"

// RepoRoot is the root of the kpo repository.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// BinDir is where the Kubernetes binaries are: $KPO_K8S_BIN, or bin/k8s-<version>.
func BinDir() string {
	if d := os.Getenv("KPO_K8S_BIN"); d != "" {
		return d
	}
	return filepath.Join(RepoRoot(), "bin", "k8s-"+K8sVersion)
}

// Binary is the path of one Kubernetes binary, or an error that says how to build it.
func Binary(name string) (string, error) {
	p := filepath.Join(BinDir(), name)
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("%s not found in %s: run 'make k8s-binaries' (builds it from the Go module proxy)", name, BinDir())
	}
	return p, nil
}

// Scheme has the built-in types and kpo's.
func Scheme() *k8sruntime.Scheme {
	s := k8sruntime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
		panic(err)
	}
	if err := kpov1.AddToScheme(s); err != nil {
		panic(err)
	}
	return s
}

// Env is a running API server.
type Env struct {
	*envtest.Environment
	Config *rest.Config
	Client client.Client
	// Kubeconfig is a file for kubectl and other processes.
	Kubeconfig string
}

// Start starts kube-apiserver and etcd with kpo's CRDs installed. Call Stop when done.
func Start() (*Env, error) {
	for _, b := range []string{"kube-apiserver", "etcd"} {
		if _, err := Binary(b); err != nil {
			return nil, err
		}
	}
	env := &envtest.Environment{
		BinaryAssetsDirectory: BinDir(),
		CRDDirectoryPaths:     []string{filepath.Join(RepoRoot(), "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
		Scheme:                Scheme(),
		// A loaded 2-core machine (go test builds other packages in parallel)
		// can take tens of seconds to bring kube-apiserver up.
		ControlPlaneStartTimeout: 2 * time.Minute,
		ControlPlaneStopTimeout:  time.Minute,
	}
	// The service ranges of the address plan (shared/ARCHITECTURE.md), dual-stack.
	env.ControlPlane.GetAPIServer().Configure().Set("service-cluster-ip-range", "10.96.0.0/16,fd10:96::/112")
	cfg, err := env.Start()
	if err != nil {
		return nil, fmt.Errorf("starting kube-apiserver and etcd: %w", err)
	}
	e := &Env{Environment: env, Config: cfg}
	e.Client, err = client.New(cfg, client.Options{Scheme: env.Scheme})
	if err != nil {
		_ = env.Stop()
		return nil, err
	}
	user, err := env.AddUser(envtest.User{Name: "kpo-test-admin", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		_ = env.Stop()
		return nil, err
	}
	kc, err := user.KubeConfig()
	if err != nil {
		_ = env.Stop()
		return nil, err
	}
	dir, err := os.MkdirTemp("", "kpo-envtest-")
	if err != nil {
		_ = env.Stop()
		return nil, err
	}
	e.Kubeconfig = filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(e.Kubeconfig, kc, 0o600); err != nil {
		_ = env.Stop()
		return nil, err
	}
	return e, nil
}

// Stop stops the API server and etcd and removes their files.
func (e *Env) Stop() error {
	_ = os.RemoveAll(filepath.Dir(e.Kubeconfig))
	return e.Environment.Stop()
}

// Kubectl runs the project-built kubectl against the API server.
func (e *Env) Kubectl(ctx context.Context, stdin []byte, args ...string) (string, error) {
	return Kubectl(ctx, e.Kubeconfig, stdin, args...)
}

// Kubectl runs the project-built kubectl with kubeconfig; it returns stdout,
// and an error with stderr if kubectl failed.
func Kubectl(ctx context.Context, kubeconfig string, stdin []byte, args ...string) (string, error) {
	bin, err := Binary("kubectl")
	if err != nil {
		return "", err
	}
	cmd := exec.CommandContext(ctx, bin, append([]string{"--kubeconfig", kubeconfig}, args...)...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("kubectl %v: %w: %s", args, err, errOut.String())
	}
	return out.String(), nil
}

// Eventually polls cond every 50ms until it returns nil or the deadline passes, and
// then fails the test with cond's last error.
func Eventually(t testing.TB, timeout time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not true after %v: %v", timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// StartControllerManager runs the project-built kube-controller-manager against the
// API server with only the named controllers (say "garbagecollector"), so that
// tests see the real garbage collector or DaemonSet controller at work. It is
// stopped when the test ends.
func (e *Env) StartControllerManager(t testing.TB, controllers ...string) {
	t.Helper()
	bin, err := Binary("kube-controller-manager")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var logs bytes.Buffer
	cmd := exec.CommandContext(ctx, bin,
		"--kubeconfig="+e.Kubeconfig,
		"--controllers="+strings.Join(controllers, ","),
		"--leader-elect=false",
		"--secure-port=0",
		"--use-service-account-credentials=false",
		"--concurrent-gc-syncs=5",
	)
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatalf("starting kube-controller-manager: %v", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cancel()
		<-done
		if t.Failed() {
			t.Logf("kube-controller-manager output:\n%s", tail(logs.String(), 4000))
		}
	})
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[len(s)-n:]
}
