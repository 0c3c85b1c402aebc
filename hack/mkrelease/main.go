// Command mkrelease is `make release` and `make chart`: it writes
// dist/install.yaml (the operator pinned by the digest `make images` wrote)
// and the generated parts of charts/kpo (package hack/release).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"kpo.dev/kpo/hack/release"
)

func main() {
	o := release.Options{}
	flag.StringVar(&o.Repo, "repo", ".", "the repository root")
	flag.StringVar(&o.Kubectl, "kubectl", "kubectl", "kubectl (its kustomize renders config/)")
	flag.StringVar(&o.Version, "version", "dev", "the release's version")
	flag.StringVar(&o.Image, "image", "kpo", "the image's repository (the operator is pinned as <image>@<digest>)")
	digests := flag.String("digests", "bin/images/digests.txt", "the digests `make images` wrote")
	out := flag.String("out", "dist", "where install.yaml goes")
	chart := flag.String("chart", "charts/kpo", "the Helm chart whose generated files are written")
	chartOnly := flag.Bool("chart-only", false, "write only the chart's generated files")
	flag.Parse()
	if err := run(context.Background(), o, *digests, *out, *chart, *chartOnly); err != nil {
		fmt.Fprintln(os.Stderr, "mkrelease:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, o release.Options, digests, out, chart string, chartOnly bool) error {
	files, err := release.ChartFiles(ctx, o.Repo, o.Kubectl)
	if err != nil {
		return err
	}
	if err := release.WriteChart(chart, files); err != nil {
		return err
	}
	fmt.Printf("%s: %d generated files\n", chart, len(files))
	if chartOnly {
		return nil
	}
	if o.Digest, err = release.ImageDigest(digests, "kpo"); err != nil {
		return err
	}
	install, err := release.InstallYAML(ctx, o)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	path := filepath.Join(out, "install.yaml")
	if err := os.WriteFile(path, install, 0o644); err != nil {
		return err
	}
	fmt.Printf("%s: kpo %s, operator %s\n", path, o.Version, o.ImageRef())
	// The chart as released: its values name the image by this digest.
	dst := filepath.Join(out, "chart", "kpo")
	if err := release.CopyChart(chart, dst, o.Image, o.Digest); err != nil {
		return err
	}
	fmt.Printf("%s: the chart with image %s\n", dst, o.ImageRef())
	return nil
}
