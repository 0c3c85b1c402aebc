package controllers

import (
	"context"
	"flag"
	"fmt"
	"os"
	"testing"
	"time"

	"go.uber.org/zap/zapcore"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"kpo.dev/kpo/controllers/imagepolicy"
	"kpo.dev/kpo/hack/apiserver"
)

const (
	testNamespace  = "kpo-system"
	testAgentImage = "registry.example/kpo:test"
	// testApprovedImages is the suite operator's --agent-image-allow entry.
	testApprovedImages = "registry.example/approved/"
	// wait bounds every poll of the operator's work.
	wait = 20 * time.Second
)

var (
	env     *apiserver.Env
	k8s     client.Client
	testCtx context.Context
)

// TestMain runs the operator's envtest suites against one real kube-apiserver and
// etcd, with the operator's manager running as it does in a cluster.
func TestMain(m *testing.M) {
	os.Exit(runSuite(m))
}

func runSuite(m *testing.M) int {
	flag.Parse()
	if testing.Short() {
		// Unit tests (render, status) run; the envtest tests skip themselves.
		return m.Run()
	}
	// Before anything logs: controller-runtime drops the logs of a process that
	// logged before SetLogger.
	ctrl.SetLogger(zap.New(zap.UseDevMode(true), zap.WriteTo(os.Stderr), zap.Level(zapLevel()), zap.StacktraceLevel(zapcore.DPanicLevel)))
	var err error
	env, err = apiserver.Start()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer func() { _ = env.Stop() }()
	k8s = env.Client

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	testCtx = ctx
	if err := k8s.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: testNamespace}}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}

	mgr, err := ctrl.NewManager(env.Config, ctrl.Options{
		Scheme:                 env.Scheme,
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
		Cache:                  CacheOptions(testNamespace),
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	policy, err := imagepolicy.New(testAgentImage, "", []string{testApprovedImages})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := (&ProxyConfigurationReconciler{
		Client: mgr.GetClient(), Scheme: mgr.GetScheme(),
		Namespace: testNamespace, DefaultAgentImage: testAgentImage, ImagePolicy: policy,
	}).SetupWithManager(mgr); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	mgrDone := make(chan error, 1)
	go func() { mgrDone <- mgr.Start(ctx) }()

	code := m.Run()
	cancel()
	if err := <-mgrDone; err != nil {
		fmt.Fprintln(os.Stderr, "manager:", err)
	}
	return code
}

// zapLevel keeps the operator quiet unless KPO_TEST_VERBOSE is set.
func zapLevel() zapcore.Level {
	if os.Getenv("KPO_TEST_VERBOSE") != "" {
		return -1
	}
	return 2
}

func needAPIServer(t *testing.T) {
	t.Helper()
	if env == nil {
		t.Skip("needs kube-apiserver and etcd; not run with -short")
	}
}
