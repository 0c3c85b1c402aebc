package soak

import (
	"flag"
	"fmt"
	"os"
	"testing"

	"kpo.dev/kpo/hack/apiserver"
	"kpo.dev/kpo/test/testnet"
)

var (
	api      *apiserver.Env
	agentBin string
)

// TestMain starts the API server and builds kpo-agent when the soak can run
// (root, not -short); the unit tests of the package need neither.
func TestMain(m *testing.M) {
	os.Exit(func() int {
		flag.Parse() // for testing.Short and -test.run
		if os.Geteuid() != 0 || testing.Short() {
			return m.Run() // TestSoak skips itself with the reason
		}
		var err error
		var stop func()
		if api, agentBin, stop, err = testnet.Start(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer stop()
		return m.Run()
	}())
}
