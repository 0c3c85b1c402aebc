package cluster

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"kpo.dev/kpo/hack/noderuntime"
	"kpo.dev/kpo/test/apiserver"
)

// defaultWait bounds the cluster's own waits (API server start-up).
const defaultWait = time.Minute

// The local cluster's images: what config/ deploys ("kpo": the operator and
// the agent, as in the Dockerfile) and the demo app ("kpo-echo").
const (
	ImageKpo  = "kpo"
	ImageEcho = "kpo-echo"
)

// BuildImages builds the binaries standing in for the images into out, as
// the node runtime expects them: out/kpo/{kpo-operator,kpo-agent} (the
// Dockerfile's layout) and out/kpo-echo/echo.
func BuildImages(ctx context.Context, out string) (noderuntime.Images, error) {
	builds := []struct{ image, bin, pkg string }{
		{ImageKpo, "kpo-operator", "./cmd/kpo-operator"},
		{ImageKpo, "kpo-agent", "./cmd/kpo-agent"},
		{ImageEcho, "echo", "./hack/echoserver"},
	}
	for _, b := range builds {
		dir := filepath.Join(out, b.image)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, err
		}
		cmd := exec.CommandContext(ctx, "go", "build", "-o", filepath.Join(dir, b.bin), b.pkg)
		cmd.Dir = apiserver.RepoRoot()
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Run(); err != nil {
			return nil, fmt.Errorf("go build %s: %w: %s", b.pkg, err, stderr.String())
		}
	}
	return noderuntime.Images{
		ImageKpo:  {Dir: filepath.Join(out, ImageKpo), Entrypoint: []string{"/kpo-operator"}},
		ImageEcho: {Dir: filepath.Join(out, ImageEcho), Entrypoint: []string{"/echo"}},
	}, nil
}

// Kubectl runs the project-built kubectl against the cluster.
func (c *Cluster) Kubectl(ctx context.Context, stdin []byte, args ...string) (string, error) {
	return apiserver.Kubectl(ctx, c.Kubeconfig, stdin, args...)
}
