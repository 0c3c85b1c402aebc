// Command kpo-agent is kpo's node agent: one per node, it programs iptables,
// nftables or IPVS rules for the node's Services and reports what it runs.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
	"kpo.dev/kpo/nodeagent/agent"
	"kpo.dev/kpo/nodeagent/backend"
	"kpo.dev/kpo/nodeagent/backends"
	"kpo.dev/kpo/nodeagent/conntrack"
	"kpo.dev/kpo/nodeagent/sysctl"
)

func main() {
	var (
		configFile  = flag.String("config", "/etc/kpo/config.yaml", "agent configuration file (rendered by the operator)")
		kubeconfig  = flag.String("kubeconfig", "", "kubeconfig file; empty means in-cluster configuration")
		nodeName    = flag.String("node-name", os.Getenv("NODE_NAME"), "name of this node (default $NODE_NAME)")
		healthzAddr = flag.String("healthz-bind-address", "", "override the address of /healthz and /livez (default :<healthzPort>)")
		metricsAddr = flag.String("metrics-bind-address", "", "override the address of /metrics (default 127.0.0.1:<metricsPort>)")
		cleanup     = flag.Bool("cleanup", false, "remove every kpo rule of every mode from this node and exit")
	)
	klog.InitFlags(nil)
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *configFile, *kubeconfig, *nodeName, *healthzAddr, *metricsAddr, *cleanup); err != nil {
		klog.ErrorS(err, "kpo-agent failed")
		klog.Flush()
		os.Exit(1)
	}
}

func run(ctx context.Context, configFile, kubeconfig, nodeName, healthzAddr, metricsAddr string, cleanup bool) error {
	data, err := os.ReadFile(configFile)
	if err != nil && !cleanup {
		return err
	}
	cfg := &kpov1.AgentConfiguration{Mode: kpov1.ModeIPTables}
	if err == nil {
		// Parsing validates with the CRD's rules: a file the API server would
		// have refused stops the agent here, naming the fields.
		if cfg, err = kpov1.ParseAgentConfiguration(data); err != nil {
			return fmt.Errorf("%s: %w", configFile, err)
		}
	}
	if cleanup {
		return cleanupAll(ctx, cfg)
	}
	if nodeName == "" {
		return fmt.Errorf("no node name: set --node-name or NODE_NAME")
	}
	restCfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return err
	}
	restCfg.UserAgent = "kpo-agent/" + agent.Version
	kube, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		return err
	}
	scheme := kubernetesScheme()
	// With watch: the agent watches its ProxyConfiguration for deletion.
	c, err := client.NewWithWatch(restCfg, client.Options{Scheme: scheme})
	if err != nil {
		return err
	}
	// spec.conntrack, as kube-proxy applies it before its first sync; what
	// could not be set is reported, not fatal (see package sysctl).
	conntrackSysctls := sysctl.ApplyConntrack(ctx, &cfg.Conntrack, sysctl.NumCPU(), sysctl.Host)
	factories := map[kpov1.Mode]func() (backend.Backend, error){}
	for m, f := range backends.All(cfg) {
		factories[m] = f
	}
	a, err := agent.New(agent.Options{
		Config: cfg, NodeName: nodeName, Kube: kube, Client: c, Backends: factories,
		ConntrackCleaner:   conntrack.Cleaner{},
		ConntrackSysctls:   &conntrackSysctls,
		HealthzBindAddress: healthzAddr, MetricsBindAddress: metricsAddr,
	})
	if err != nil {
		return err
	}
	klog.InfoS("starting kpo-agent", "node", nodeName, "mode", cfg.Mode, "configuration", cfg.ConfigurationName,
		"generation", cfg.ConfigurationGeneration, "version", agent.Version)
	return a.Run(ctx)
}

// cleanupAll removes the rules of every mode: for operators and node repair.
func cleanupAll(ctx context.Context, cfg *kpov1.AgentConfiguration) error {
	var failed []string
	for mode, mk := range backends.All(cfg) {
		b, err := mk()
		if err == nil {
			err = b.Cleanup(ctx)
		}
		if err != nil {
			klog.ErrorS(err, "cleanup failed", "mode", mode)
			failed = append(failed, string(mode))
			continue
		}
		klog.InfoS("removed kpo rules", "mode", mode)
	}
	if len(failed) > 0 {
		return fmt.Errorf("cleanup failed for %v", failed)
	}
	return nil
}
