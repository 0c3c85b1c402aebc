package cluster

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	ggcrlayout "github.com/google/go-containerregistry/pkg/v1/layout"

	"kpo.dev/kpo/hack/apiserver"
	"kpo.dev/kpo/hack/images"
	"kpo.dev/kpo/hack/kubenode"
)

// defaultWait bounds the cluster's own waits (API server start-up).
const defaultWait = time.Minute

// ContainerdVersion is the containerd the nodes run (built by `make
// containerd` into bin/containerd-<version>; the Makefile pins the same).
const ContainerdVersion = "v2.4.2"

// ImagesDir is where `make images` writes the images' OCI layouts.
func ImagesDir() string { return Repo(filepath.Join("bin", "images")) }

// nodeImages are the images every node imports: what config/default deploys
// (kpo), the demo app and the sandbox image.
var nodeImages = []images.Spec{images.Kpo, images.Echo, images.Pause}

// imageArchives packs each image's OCI layout (from dir, as `make images`
// wrote it) into a tar archive under out, which is what `ctr images import`
// reads. It says which image is missing and how to build it.
func imageArchives(dir, out string) ([]kubenode.Image, error) {
	if err := os.MkdirAll(out, 0o755); err != nil {
		return nil, err
	}
	var archives []kubenode.Image
	for _, s := range nodeImages {
		layout := images.LayoutDir(dir, s)
		if _, err := os.Stat(filepath.Join(layout, "index.json")); err != nil {
			return nil, fmt.Errorf("image %s not built in %s: run 'make images'", s.Ref(), dir)
		}
		archive := filepath.Join(out, s.Name+".tar")
		if err := tarDir(layout, archive); err != nil {
			return nil, fmt.Errorf("packing %s: %w", layout, err)
		}
		idx, err := ggcrlayout.ImageIndexFromPath(layout)
		if err != nil {
			return nil, err
		}
		m, err := idx.IndexManifest()
		if err != nil || len(m.Manifests) != 1 {
			return nil, fmt.Errorf("%s: want one image index in index.json (%v)", layout, err)
		}
		archives = append(archives, kubenode.Image{Archive: archive, Ref: s.FullRef(),
			Digest: "docker.io/library/" + s.Name + "@" + m.Manifests[0].Digest.String()})
	}
	return archives, nil
}

// tarDir writes dir's regular files and directories into a tar archive.
func tarDir(dir, archive string) (err error) {
	f, err := os.Create(archive)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, f.Close()) }()
	tw := tar.NewWriter(f)
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil || rel == "." {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		h, err := tar.FileInfoHeader(info, "")
		if err != nil {
			return err
		}
		h.Name = filepath.ToSlash(rel)
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		src, err := os.Open(p)
		if err != nil {
			return err
		}
		defer func() { _ = src.Close() }()
		_, err = io.Copy(tw, src)
		return err
	})
	return errors.Join(err, tw.Close())
}

// Kubectl runs the project-built kubectl against the cluster.
func (c *Cluster) Kubectl(ctx context.Context, stdin []byte, args ...string) (string, error) {
	return apiserver.Kubectl(ctx, c.Kubeconfig, stdin, args...)
}
