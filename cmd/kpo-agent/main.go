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
	"kpo.dev/kpo/version"
)

// flags are kpo-agent's command line.
type flags struct {
	configFile, kubeconfig, nodeName string
	healthzAddr, metricsAddr         string
	lockFile                         string
	cleanup, printVersion            bool
}

func main() {
	var f flags
	flag.StringVar(&f.configFile, "config", "/etc/kpo/config.yaml", "agent configuration file (rendered by the operator)")
	flag.StringVar(&f.kubeconfig, "kubeconfig", "", "kubeconfig file; empty means in-cluster configuration")
	flag.StringVar(&f.nodeName, "node-name", os.Getenv("NODE_NAME"), "name of this node (default $NODE_NAME)")
	flag.StringVar(&f.healthzAddr, "healthz-bind-address", "", "override the address of /healthz and /livez (default :<healthzPort>)")
	flag.StringVar(&f.metricsAddr, "metrics-bind-address", "", "override the address of /metrics (default 127.0.0.1:<metricsPort>)")
	flag.StringVar(&f.lockFile, "lock-file", agent.DefaultLockFile,
		"this node's agent lock: a second agent (or --cleanup) waits until the holder exits or hands the node over")
	flag.BoolVar(&f.cleanup, "cleanup", false, "remove every kpo rule of every mode from this node and exit")
	flag.BoolVar(&f.printVersion, "version", false, "print the version and exit")
	klog.InitFlags(nil)
	flag.Parse()
	if f.printVersion {
		fmt.Println(version.String("kpo-agent"))
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, f); err != nil {
		klog.ErrorS(err, "kpo-agent failed")
		klog.Flush()
		os.Exit(1)
	}
}

func run(ctx context.Context, f flags) error {
	agent.StartCPUProfile()
	data, err := os.ReadFile(f.configFile)
	if err != nil && !f.cleanup {
		return err
	}
	cfg := &kpov1.AgentConfiguration{Mode: kpov1.ModeIPTables}
	if err == nil {
		// Parsing validates with the CRD's rules: a file the API server would
		// have refused stops the agent here, naming the fields.
		if cfg, err = kpov1.ParseAgentConfiguration(data); err != nil {
			return fmt.Errorf("%s: %w", f.configFile, err)
		}
	}
	if !f.cleanup && f.nodeName == "" {
		return fmt.Errorf("no node name: set --node-name or NODE_NAME")
	}
	// Nothing touches the node before the lock is held: not the sysctls, not
	// the ports, not the rules.
	owner := fmt.Sprintf("configuration %q generation %d", cfg.ConfigurationName, cfg.ConfigurationGeneration)
	if f.cleanup {
		owner = "kpo-agent --cleanup"
	}
	lock, err := agent.AcquireHostLock(ctx, f.lockFile, owner)
	if err != nil {
		return err
	}
	defer lock.Release()
	factories := map[kpov1.Mode]func() (backend.Backend, error){}
	for m, mk := range backends.All(cfg) {
		factories[m] = mk
	}
	if f.cleanup {
		// For operators and node repair: every mode, each on its own; the
		// error names what the kernel still holds.
		if err := agent.CleanupAll(ctx, factories, agent.KernelLeftovers); err != nil {
			return err
		}
		klog.InfoS("removed every kpo rule of every mode")
		return nil
	}
	restCfg, err := clientcmd.BuildConfigFromFlags("", f.kubeconfig)
	if err != nil {
		return err
	}
	restCfg.UserAgent = "kpo-agent/" + agent.Version
	kube, err := kubernetes.NewForConfig(agent.ListWatchConfig(restCfg))
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
	a, err := agent.New(agent.Options{
		Config: cfg, NodeName: f.nodeName, Kube: kube, Client: c, Backends: factories,
		ConntrackCleaner:   conntrack.Cleaner{},
		ConntrackSysctls:   &conntrackSysctls,
		HealthzBindAddress: f.healthzAddr, MetricsBindAddress: f.metricsAddr,
		HostLock: lock, Leftovers: agent.KernelLeftovers, NothingToRemove: agent.NothingToRemove,
	})
	if err != nil {
		return err
	}
	klog.InfoS("starting kpo-agent", "node", f.nodeName, "mode", cfg.Mode, "configuration", cfg.ConfigurationName,
		"generation", cfg.ConfigurationGeneration, "version", agent.Version, "lock", lock.Path())
	return a.Run(ctx)
}
