#!/usr/bin/env bash
# Builds the Kubernetes binaries the tests and the demo run (kube-apiserver, etcd,
# kubectl, kube-controller-manager, kube-scheduler, kube-proxy, kubelet) from the Go module
# proxy through the tools module in hack/tools, into the directory given as $1.
#
# Binaries that exist are kept, so later runs cost nothing. A cold build takes
# about 7-10 minutes on a 2-core machine.
set -euo pipefail

out=${1:?usage: build-k8s.sh OUTDIR [binary...]}
shift
wanted=("$@")
if [ ${#wanted[@]} -eq 0 ]; then
	wanted=(kube-apiserver etcd kubectl kube-controller-manager kube-scheduler kube-proxy kubelet)
fi

declare -A pkg=(
	[kube-apiserver]=k8s.io/kubernetes/cmd/kube-apiserver
	[kube-controller-manager]=k8s.io/kubernetes/cmd/kube-controller-manager
	[kube-scheduler]=k8s.io/kubernetes/cmd/kube-scheduler
	[kube-proxy]=k8s.io/kubernetes/cmd/kube-proxy
	[kubectl]=k8s.io/kubernetes/cmd/kubectl
	[kubelet]=k8s.io/kubernetes/cmd/kubelet
	[etcd]=go.etcd.io/etcd/server/v3
)

mkdir -p "$out"
out=$(cd "$out" && pwd) # absolute: the build runs in hack/tools
cd "$(dirname "$0")/tools"
for b in "${wanted[@]}"; do
	if [ -x "$out/$b" ]; then
		continue
	fi
	echo ">> building $b (${pkg[$b]}) into $out; the first build takes minutes" >&2
	start=$SECONDS
	ldflags=""
	if [[ ${pkg[$b]} == k8s.io/* ]]; then
		# Stamp the release, as Kubernetes' own build does; unstamped binaries say
		# v0.0.0-master, which kubectl's version-skew checks and humans misread.
		v=$(go list -m -f '{{.Version}}' k8s.io/kubernetes)
		minor=${v#v1.}
		minor=${minor%%.*}
		ldflags="-X k8s.io/component-base/version.gitVersion=$v -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
	fi
	go build -ldflags "$ldflags" -o "$out/$b.tmp" "${pkg[$b]}"
	mv "$out/$b.tmp" "$out/$b"
	echo ">> built $b in $((SECONDS - start))s" >&2
done
