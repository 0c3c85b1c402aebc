package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
	"kpo.dev/kpo/controllers/apiserveraddr"
)

// uninstall is `kpo-operator --uninstall`, the Helm chart's pre-delete hook:
// it deletes every ProxyConfiguration and waits until they are gone, that is
// until their agents have removed the nodes' rules (the operator's finalizer,
// bounded per configuration), so that the operator is removed only after
// that, as `make undeploy` orders it. It fails, and with it the uninstall,
// when they do not go in time (the operator not running, say).
//
// Once the configurations go, so do kpo's rules for the kubernetes Service's
// ClusterIP (unless kube-proxy is back): the hook reads the API server's own
// address first (the kubernetes EndpointSlice) and waits through it.
func uninstall(ctx context.Context, log logr.Logger, cfg *rest.Config, scheme *runtime.Scheme, timeout time.Duration) error {
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		return err
	}
	if host, port, err := apiserveraddr.Discover(ctx, c); err == nil {
		direct := rest.CopyConfig(cfg)
		direct.Host = "https://" + net.JoinHostPort(host, port)
		if dc, err := client.New(direct, client.Options{Scheme: scheme}); err == nil {
			c = dc
			log.Info("using the API server's own address", "address", direct.Host)
		}
	} else {
		log.Error(err, "the API server's own address is unknown; waiting through the current one")
	}
	if err := c.DeleteAllOf(ctx, &kpov1.ProxyConfiguration{}); err != nil {
		return fmt.Errorf("deleting the ProxyConfigurations: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		var list kpov1.ProxyConfigurationList
		err := c.List(ctx, &list)
		if err == nil && len(list.Items) == 0 {
			log.Info("every ProxyConfiguration is gone: the nodes' kpo rules are removed or handed over")
			return nil
		}
		if err == nil {
			log.Info("waiting for the ProxyConfigurations' agents to remove their rules", "left", len(list.Items))
		}
		select {
		case <-ctx.Done():
			return errors.Join(fmt.Errorf("ProxyConfigurations still there after %v: is the operator running? "+
				"(kubectl get proxyconfig -o yaml says what they wait for)", timeout), err)
		case <-time.After(2 * time.Second):
		}
	}
}
