#!/usr/bin/env bash
# Builds containerd, its runc shim and ctr from the Go module proxy into the
# directory given as $1 (the local cluster's container runtime; runc itself is
# Debian's, installed by hack/install-deps.sh). Debian bookworm's containerd
# (1.6) lacks the CRI RuntimeConfig call that kubelet 1.38 will require, and
# Debian's crun 1.8 refuses containerd 2's OCI spec version: hence this build.
#
# Static (CGO off) and without the btrfs, devmapper and zfs snapshotters (the
# local nodes use overlayfs). Binaries that exist are kept; a cold build takes
# about 1.5 minutes on a 2-core machine.
set -euo pipefail

out=${1:?usage: build-containerd.sh OUTDIR VERSION}
version=${2:?usage: build-containerd.sh OUTDIR VERSION}
mkdir -p "$out"
out=$(cd "$out" && pwd)
missing=0
for b in containerd containerd-shim-runc-v2 ctr; do
	[ -x "$out/$b" ] || missing=1
done
[ $missing -eq 0 ] && exit 0
echo ">> building containerd $version into $out; the first build takes about 1.5 minutes" >&2
start=$SECONDS
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mod=github.com/containerd/containerd/v2
GOBIN=$tmp CGO_ENABLED=0 go install -trimpath -tags "no_btrfs no_devmapper no_zfs" \
	-ldflags "-X $mod/version.Version=$version" \
	"$mod/cmd/containerd@$version" "$mod/cmd/containerd-shim-runc-v2@$version" "$mod/cmd/ctr@$version"
mv "$tmp"/* "$out/"
echo ">> built containerd $version in $((SECONDS - start))s" >&2
