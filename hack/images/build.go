package images

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"kpo.dev/kpo/version"
)

// Options says where to build.
type Options struct {
	// Out receives one OCI layout per image (Out/<name>), the package lists
	// and digests.txt. Out/.cache keeps the private apt roots and the binaries.
	Out string
	// Repo is the repository root (the Go packages are built from there).
	Repo   string
	Arches []string
	// RefreshPackages fetches Debian's package lists again (newer versions,
	// other digests); otherwise the first build's lists are kept.
	RefreshPackages bool
	Progress        func(string)
	// Version and Commit are stamped into the Go binaries (package version)
	// and the images' labels; empty: "dev" and no revision label.
	Version, Commit string
}

// Build builds the images and writes their layouts.
func Build(ctx context.Context, specs []Spec, opts Options) ([]Result, error) {
	if opts.Progress == nil {
		opts.Progress = func(string) {}
	}
	if len(opts.Arches) == 0 {
		opts.Arches = Arches
	}
	// apt-get takes its directories relative to its own root: absolute paths.
	out, err := filepath.Abs(opts.Out)
	if err != nil {
		return nil, err
	}
	opts.Out = out
	var results []Result
	for _, s := range specs {
		r, err := buildOne(ctx, s, opts)
		if err != nil {
			return nil, fmt.Errorf("image %s: %w", s.Name, err)
		}
		opts.Progress(r.Summary())
		results = append(results, r)
	}
	var summary strings.Builder
	for _, r := range results {
		summary.WriteString(r.Summary() + "\n")
	}
	return results, os.WriteFile(filepath.Join(opts.Out, "digests.txt"), []byte(summary.String()), 0o644)
}

func buildOne(ctx context.Context, s Spec, opts Options) (Result, error) {
	res := Result{Spec: s, Manifests: map[string]string{}, Packages: map[string][]Package{}}
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	for _, arch := range opts.Arches {
		img, pkgs, err := buildImage(ctx, s, arch, opts)
		if err != nil {
			return res, fmt.Errorf("%s: %w", arch, err)
		}
		d, err := img.Digest()
		if err != nil {
			return res, err
		}
		res.Manifests[arch], res.Packages[arch] = d.String(), pkgs
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{
			Platform: &v1.Platform{OS: "linux", Architecture: arch}}})
		if len(pkgs) > 0 {
			if err := writePackages(filepath.Join(opts.Out, fmt.Sprintf("%s.packages-%s.txt", s.Name, arch)), pkgs); err != nil {
				return res, err
			}
		}
	}
	d, err := idx.Digest()
	if err != nil {
		return res, err
	}
	res.Digest = d.String()
	// Written next to the old layout and then moved over it, so that a reader
	// (a cluster starting) never sees a half-written one.
	dir := LayoutDir(opts.Out, s)
	tmp := fmt.Sprintf("%s.new-%d", dir, os.Getpid())
	if err := os.RemoveAll(tmp); err != nil {
		return res, err
	}
	p, err := layout.Write(tmp, empty.Index)
	if err != nil {
		return res, err
	}
	// Both names: containerd's importer reads the first, OCI tools the second.
	if err := p.AppendIndex(idx, layout.WithAnnotations(map[string]string{
		"io.containerd.image.name":          s.FullRef(),
		"org.opencontainers.image.ref.name": s.Ref(),
	})); err != nil {
		return res, err
	}
	old := fmt.Sprintf("%s.old-%d", dir, os.Getpid())
	if err := os.Rename(dir, old); err != nil && !os.IsNotExist(err) {
		return res, err
	}
	if err := os.Rename(tmp, dir); err != nil {
		return res, err
	}
	return res, os.RemoveAll(old)
}

// buildImage builds one architecture's image: a layer of Debian packages
// (when the spec has any) and a layer of binaries.
func buildImage(ctx context.Context, s Spec, arch string, opts Options) (v1.Image, []Package, error) {
	var layers []v1.Layer
	var pkgs []Package
	if len(s.Debs) > 0 {
		apt, err := newAptRoot(filepath.Join(opts.Out, ".cache", "apt-"+arch), arch)
		if err != nil {
			return nil, nil, err
		}
		opts.Progress(fmt.Sprintf("%s (%s): resolving and fetching Debian packages %v", s.Name, arch, s.Debs))
		if pkgs, err = apt.fetch(ctx, s.Debs, opts.RefreshPackages); err != nil {
			return nil, nil, err
		}
		t := newTree()
		for _, d := range usrMerged {
			t.dir("usr/"+d, 0o755)
			t.symlink(d, "usr/"+d)
		}
		for _, p := range pkgs {
			if err := t.addDeb(ctx, p.file); err != nil {
				return nil, nil, err
			}
		}
		for name, target := range s.Links {
			t.symlink(name, target)
		}
		l, err := layer(t)
		if err != nil {
			return nil, nil, err
		}
		layers = append(layers, l)
	}
	t := newTree()
	for _, d := range s.Dirs {
		t.dir(d, 0o755)
	}
	if s.Dirs != nil {
		t.dir("tmp", 0o1777)
	}
	for _, b := range s.Binaries {
		bin, err := goBuild(ctx, opts, arch, b.Package)
		if err != nil {
			return nil, nil, err
		}
		if err := t.addFile(b.Path, bin, 0o755); err != nil {
			return nil, nil, err
		}
	}
	l, err := layer(t)
	if err != nil {
		return nil, nil, err
	}
	layers = append(layers, l)

	img, err := mutate.AppendLayers(mutate.MediaType(empty.Image, types.OCIManifestSchema1), layers...)
	if err != nil {
		return nil, nil, err
	}
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, nil, err
	}
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture = "linux", arch
	cfg.Created = v1.Time{Time: epoch}
	cfg.Config.Entrypoint = s.Entrypoint
	cfg.Config.User = s.User
	cfg.Config.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	cfg.Config.Labels = labels(s, opts)
	img, err = mutate.ConfigFile(img, cfg)
	return img, pkgs, err
}

// labels are the image's OCI annotations as config labels: what it is, its
// version and source revision (what `crane config` or `ctr images inspect`
// show of a running image).
func labels(s Spec, opts Options) map[string]string {
	l := map[string]string{
		"org.opencontainers.image.title":    s.Name,
		"org.opencontainers.image.version":  "dev",
		"org.opencontainers.image.licenses": "Apache-2.0",
	}
	if opts.Version != "" {
		l["org.opencontainers.image.version"] = opts.Version
	}
	if opts.Commit != "" {
		l["org.opencontainers.image.revision"] = opts.Commit
	}
	return l
}

func layer(t *tree) (v1.Layer, error) {
	data, err := t.tar()
	if err != nil {
		return nil, err
	}
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(data)), nil
	}, tarball.WithMediaType(types.OCILayer))
}

// goBuild builds a static binary for linux/arch (trimmed paths, no symbol
// table: reproducible and small) and returns its path.
func goBuild(ctx context.Context, opts Options, arch, pkg string) (string, error) {
	out := filepath.Join(opts.Out, ".cache", "bin-"+arch, filepath.Base(pkg))
	ldflags := "-s -w"
	if opts.Version != "" {
		ldflags += " " + version.LDFlags(opts.Version, opts.Commit)
	}
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags="+ldflags, "-o", out, pkg)
	cmd.Dir = opts.Repo
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+arch)
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s (%s): %w: %s", pkg, arch, err, b)
	}
	return out, nil
}

func writePackages(path string, pkgs []Package) error {
	var b strings.Builder
	for _, p := range pkgs {
		fmt.Fprintf(&b, "%s %s %s\n", p.Name, p.Version, p.Arch)
	}
	return os.WriteFile(path, []byte(b.String()), 0o644)
}
