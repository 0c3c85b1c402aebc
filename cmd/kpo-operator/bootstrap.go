package main

import (
	"context"
	"fmt"
	"net"

	"github.com/go-logr/logr"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"kpo.dev/kpo/controllers/apiserveraddr"
)

// restConfig is the operator's connection: in-cluster (the kubernetes
// Service's ClusterIP, which kube-proxy or kpo's agent on this node serves),
// or the API server's own address when one is given (--kube-apiserver: needed
// only while nothing serves that ClusterIP, a cluster with neither kube-proxy
// nor kpo yet). The in-cluster token and CA stay; only the host changes.
func restConfig(apiServer string) (*rest.Config, error) {
	if apiServer == "" {
		return ctrl.GetConfig()
	}
	if _, _, err := net.SplitHostPort(apiServer); err != nil {
		return nil, fmt.Errorf("--kube-apiserver must be host:port: %w", err)
	}
	cfg, err := rest.InClusterConfig()
	if err != nil {
		return nil, err
	}
	cfg.Host = "https://" + apiServer
	return cfg, nil
}

// agentAPIServer is the API server address the agents get, in this order:
// --agent-kube-apiserver; discovered from the kubernetes Service's
// EndpointSlice (package apiserveraddr: the addresses the API servers
// advertise themselves); --kube-apiserver, the operator's own. Empty when none
// is known: the agents then use the in-cluster ClusterIP, which works only
// while another proxy serves it; the log says so.
func agentAPIServer(ctx context.Context, log logr.Logger, r client.Reader, agentFlag, ownFlag string) (host, port string, err error) {
	if agentFlag != "" {
		return splitAddress(agentFlag)
	}
	host, port, err = apiserveraddr.Discover(ctx, r)
	if err == nil {
		log.Info("discovered the API server's address for the agents", "address", net.JoinHostPort(host, port),
			"from", apiserveraddr.Namespace+"/"+apiserveraddr.SliceName)
		return host, port, nil
	}
	if ownFlag != "" {
		log.Info("the API server's address for the agents is the operator's own (--kube-apiserver)", "address", ownFlag, "discovery", err.Error())
		return splitAddress(ownFlag)
	}
	log.Error(err, "the API server's own address is unknown: the agents reach it by the kubernetes Service's ClusterIP, "+
		"which nothing serves on a node without kube-proxy until kpo's agent runs there; set --agent-kube-apiserver")
	return "", "", nil
}

func splitAddress(addr string) (host, port string, err error) {
	if host, port, err = net.SplitHostPort(addr); err != nil {
		return "", "", fmt.Errorf("%q must be host:port: %w", addr, err)
	}
	return host, port, nil
}
