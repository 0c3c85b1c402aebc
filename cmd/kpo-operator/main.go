// Command kpo-operator reconciles ProxyConfigurations into node-agent DaemonSets
// and rolls the agents' reports up into their status.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
	"kpo.dev/kpo/controllers"
	"kpo.dev/kpo/controllers/imagepolicy"
	"kpo.dev/kpo/version"
)

func main() {
	var (
		namespace   = flag.String("namespace", envOr("POD_NAMESPACE", "kpo-system"), "namespace of the agents' DaemonSets, ConfigMaps and ServiceAccounts")
		agentImage  = flag.String("agent-image", os.Getenv("AGENT_IMAGE"), "node-agent image used when a ProxyConfiguration names none")
		metricsAddr = flag.String("metrics-bind-address", ":8080", "address of the metrics endpoint (0 disables it)")
		probeAddr   = flag.String("health-probe-bind-address", ":8081", "address of /healthz and /readyz")
		leaderElect = flag.Bool("leader-elect", false, "elect a leader, so that only one replica reconciles")
		apiServer   = flag.String("agent-kube-apiserver", os.Getenv("KPO_AGENT_KUBE_APISERVER"),
			"host:port of the API server for the agents (default: discovered from the kubernetes Service's EndpointSlice, else --kube-apiserver)")
		ownAPIServer = flag.String("kube-apiserver", os.Getenv("KPO_KUBE_APISERVER"),
			"host:port of the API server for the operator itself (default: in-cluster; needed only while nothing serves the kubernetes Service)")
		imageAllow = flag.String("agent-image-allow", os.Getenv("KPO_AGENT_IMAGE_ALLOW"),
			"comma-separated images the agents may run besides --agent-image, which run privileged as root on every selected node: "+
				"sha256:<digest>, an exact reference (repo:tag or repo@sha256:...), a repository (any tag or digest), "+
				"or a fully qualified path prefix ending in / (docs/security.md)")
		podName = flag.String("pod-name", os.Getenv("POD_NAME"),
			"the operator's own pod, read once to pin --agent-image by the digest the operator runs (empty: no pinning)")
	)
	printVersion := flag.Bool("version", false, "print the version and exit")
	uninstallMode := flag.Bool("uninstall", false, "delete every ProxyConfiguration, wait until their agents have cleaned the nodes, and exit (the Helm chart's pre-delete hook)")
	uninstallTimeout := flag.Duration("uninstall-timeout", 5*time.Minute, "how long --uninstall waits")
	opts := zap.Options{}
	opts.BindFlags(flag.CommandLine)
	flag.Parse()
	if *printVersion {
		fmt.Println(version.String("kpo-operator"))
		return
	}
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&opts)))
	setupLog := ctrl.Log.WithName("setup")

	scheme := runtime.NewScheme()
	must(clientgoscheme.AddToScheme(scheme))
	must(kpov1.AddToScheme(scheme))

	restCfg, err := restConfig(*ownAPIServer)
	if err != nil {
		setupLog.Error(err, "the API server connection")
		os.Exit(1)
	}
	if *uninstallMode {
		if err := uninstall(ctrl.SetupSignalHandler(), setupLog, restCfg, scheme, *uninstallTimeout); err != nil {
			setupLog.Error(err, "uninstall")
			os.Exit(1)
		}
		return
	}
	mgr, err := ctrl.NewManager(restCfg, ctrl.Options{
		Scheme:                 scheme,
		Metrics:                metricsserver.Options{BindAddress: *metricsAddr},
		HealthProbeBindAddress: *probeAddr,
		LeaderElection:         *leaderElect,
		LeaderElectionID:       "kpo-operator.proxy.kpo.dev",
		Cache:                  controllers.CacheOptions(*namespace),
	})
	if err != nil {
		setupLog.Error(err, "creating manager")
		os.Exit(1)
	}
	apiHost, apiPort, err := agentAPIServer(context.Background(), setupLog, mgr.GetAPIReader(), *apiServer, *ownAPIServer)
	if err != nil {
		setupLog.Error(err, "--agent-kube-apiserver")
		os.Exit(1)
	}
	pinned := pinnedOwnImage(ctrl.LoggerInto(context.Background(), setupLog), mgr.GetAPIReader(), *namespace, *podName, *agentImage)
	policy, err := imagepolicy.New(*agentImage, pinned, splitList(*imageAllow))
	if err != nil {
		setupLog.Error(err, "the agent image policy")
		os.Exit(1)
	}
	if err := (&controllers.ProxyConfigurationReconciler{
		Client:            mgr.GetClient(),
		Scheme:            mgr.GetScheme(),
		Namespace:         *namespace,
		DefaultAgentImage: policy.Default(),
		ImagePolicy:       policy,
		APIServerHost:     apiHost,
		APIServerPort:     apiPort,
	}).SetupWithManager(mgr); err != nil {
		setupLog.Error(err, "setting up the controller")
		os.Exit(1)
	}
	must(mgr.AddHealthzCheck("healthz", healthz.Ping))
	must(mgr.AddReadyzCheck("readyz", healthz.Ping))

	setupLog.Info("starting", "version", version.Get(), "commit", version.Revision(), "namespace", *namespace, "agentImage", policy.Default(), "allowedAgentImages", policy.Entries())
	if err := mgr.Start(ctrl.SetupSignalHandler()); err != nil {
		setupLog.Error(err, "manager stopped")
		os.Exit(1)
	}
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

func must(err error) {
	if err != nil {
		panic(err)
	}
}
