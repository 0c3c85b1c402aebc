package conformance

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/go-logr/logr"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
	"kpo.dev/kpo/hack/apiserver"
	"kpo.dev/kpo/hack/netns"
	"kpo.dev/kpo/test/testnet"
)

var (
	api          *apiserver.Env
	agentBin     string
	kubeProxyBin string
)

func TestMain(m *testing.M) {
	// API warnings (deprecated fields the cases use on purpose) would print
	// a stack trace for want of a logger.
	ctrllog.SetLogger(logr.Discard())
	os.Exit(func() int {
		flag.Parse() // for testing.Short
		if os.Geteuid() != 0 || testing.Short() {
			return m.Run() // the tests skip themselves with the reason
		}
		var err error
		var stop func()
		if api, agentBin, kubeProxyBin, stop, err = testnet.StartWithKubeProxy(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer stop()
		return m.Run()
	}())
}

// modes are the modes compared ($KPO_CONFORMANCE_MODES, comma-separated).
func modes() []kpov1.Mode {
	v := os.Getenv("KPO_CONFORMANCE_MODES")
	if v == "" {
		return []kpov1.Mode{kpov1.ModeNFTables, kpov1.ModeIPTables}
	}
	var out []kpov1.Mode
	for _, m := range strings.Split(v, ",") {
		out = append(out, kpov1.Mode(strings.TrimSpace(m)))
	}
	return out
}

func newSuite(t *testing.T) *Suite {
	t.Helper()
	netns.Skip(t)
	w := NewWorld(t, api, agentBin)
	return &Suite{World: w, API: api, Ref: &kubeProxy{bin: kubeProxyBin}, Kpo: &kpoAgent{bin: agentBin}}
}

// summaryFile collects the closing lines of every run (bin/conformance.log),
// which `make test` and `make conformance` print at the end.
var summaryMu sync.Mutex

func record(t *testing.T, r *Result) {
	t.Helper()
	line := r.Summary()
	fmt.Println(line)
	summaryMu.Lock()
	defer summaryMu.Unlock()
	path := filepath.Join(apiserver.RepoRoot(), "bin", "conformance.log")
	if f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644); err == nil {
		_, _ = fmt.Fprintln(f, line)
		_ = f.Close()
	}
	if len(r.Diffs) > 0 || len(r.Explain.Wrong) > 0 {
		t.Errorf("%s\n%s", line, r.Report())
	} else if len(r.Unstable) > 0 || len(r.Accepted) > 0 {
		t.Logf("%s", r.Report())
	}
}
