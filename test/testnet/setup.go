package testnet

import (
	"os"

	"kpo.dev/kpo/hack/apiserver"
)

// Start is the TestMain set-up of the real-process test packages: a real API
// server and a freshly built kpo-agent ($KPO_AGENT_BIN overrides the build).
// stop tears both down.
func Start() (api *apiserver.Env, agentBin string, stop func(), err error) {
	api, err = apiserver.Start()
	if err != nil {
		return nil, "", nil, err
	}
	dir, err := os.MkdirTemp("", "kpo-agent-")
	if err != nil {
		_ = api.Stop()
		return nil, "", nil, err
	}
	stop = func() {
		_ = os.RemoveAll(dir)
		_ = api.Stop()
	}
	if agentBin, err = BuildAgent(dir); err != nil {
		stop()
		return nil, "", nil, err
	}
	return api, agentBin, stop, nil
}

// StartWithKubeProxy is Start for the packages that also run upstream
// kube-proxy (benchmarks, conformance): it fails early when the binary is
// missing, with the command that builds it.
func StartWithKubeProxy() (api *apiserver.Env, agentBin, kubeProxyBin string, stop func(), err error) {
	if kubeProxyBin, err = apiserver.Binary("kube-proxy"); err != nil {
		return nil, "", "", nil, err
	}
	api, agentBin, stop, err = Start()
	return api, agentBin, kubeProxyBin, stop, err
}
