// Command mkimages is `make images`: kpo's images (hack/images) as OCI
// layouts under bin/images, for linux/amd64 and linux/arm64, with their
// digests (bin/images/digests.txt) and the Debian package versions of the
// agent's userland (bin/images/<image>.packages-<arch>.txt). No container
// engine is needed.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"kpo.dev/kpo/hack/images"
)

func main() {
	out := flag.String("out", "bin/images", "output directory")
	arches := flag.String("arch", strings.Join(images.Arches, ","), "architectures (comma-separated)")
	refresh := flag.Bool("refresh-packages", false, "fetch Debian's package lists again (newer versions, new digests)")
	repo := flag.String("repo", ".", "the repository root (the Go packages are built from there)")
	ver := flag.String("version", "", "version stamped into the binaries and the images' labels (empty: dev)")
	commit := flag.String("commit", "", "source revision stamped with -version")
	flag.Parse()
	start := time.Now()
	results, err := images.Build(context.Background(), images.All, images.Options{
		Out: *out, Repo: *repo, Arches: strings.Split(*arches, ","), RefreshPackages: *refresh,
		Version: *ver, Commit: *commit,
		Progress: func(msg string) { fmt.Printf("[%5.1fs] %s\n", time.Since(start).Seconds(), msg) },
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "mkimages:", err)
		os.Exit(1)
	}
	fmt.Printf("%d images in %s (%.0fs); digests: %s/digests.txt\n", len(results), *out, time.Since(start).Seconds(), *out)
}
