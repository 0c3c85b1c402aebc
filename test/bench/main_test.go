package bench

import (
	"flag"
	"fmt"
	"os"
	"testing"
	"time"

	"kpo.dev/kpo/hack/apiserver"
	"kpo.dev/kpo/test/testnet"
)

var (
	api      *apiserver.Env
	agentBin string
	// kubeProxyBin is upstream kube-proxy, built by the project (make k8s-binaries).
	kubeProxyBin string
)

// TestMain starts the one API server every measurement shares, and only when the
// benchmarks can run (root, not -short, -bench given): they skip themselves
// otherwise.
func TestMain(m *testing.M) {
	os.Exit(func() int {
		// Without -bench only TestRegenerateReport can run: it needs no API
		// server, and `go test ./...` should not pay for starting one.
		flag.Parse() // for testing.Short and -test.bench
		if os.Geteuid() != 0 || testing.Short() || flag.Lookup("test.bench").Value.String() == "" {
			return m.Run()
		}
		var err error
		var stop func()
		if api, agentBin, kubeProxyBin, stop, err = testnet.StartWithKubeProxy(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer stop()
		t0 := time.Now()
		code := m.Run()
		// The report is written once, from everything measured in this run, so
		// that one command produces one consistent document.
		if os.Getenv("KPO_BENCH_WRITE") == "1" && len(results) > 0 {
			if err := writeReport(results, churns, vmReport, time.Since(t0)); err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
		}
		return code
	}())
}
