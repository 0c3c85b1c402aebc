package apiserver

import (
	"os"
	"path/filepath"
	"regexp"
	"testing"
)

// TestOneKubernetesVersion: the Kubernetes release is named in two places,
// the Makefile's K8S_VERSION (what `make k8s-binaries` builds into
// bin/k8s-<version>) and K8sVersion (where the tests look for the
// binaries), and the tools module that builds them requires it: all three
// must agree.
func TestOneKubernetesVersion(t *testing.T) {
	for _, c := range []struct{ file, pattern string }{
		{"Makefile", `(?m)^K8S_VERSION \?= (v\S+)$`},
		{"hack/tools/go.mod", `(?m)^\s*k8s\.io/kubernetes (v\S+)`},
	} {
		data, err := os.ReadFile(filepath.Join(RepoRoot(), c.file))
		if err != nil {
			t.Fatal(err)
		}
		m := regexp.MustCompile(c.pattern).FindSubmatch(data)
		if m == nil {
			t.Errorf("%s: no Kubernetes version found (%s)", c.file, c.pattern)
			continue
		}
		if string(m[1]) != K8sVersion {
			t.Errorf("%s names %s, K8sVersion is %s", c.file, m[1], K8sVersion)
		}
	}
}
