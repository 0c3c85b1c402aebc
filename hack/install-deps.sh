#!/usr/bin/env bash
# Installs the Debian packages that the demo and the tests need, if any is
# missing (a no-op on a machine that has them all):
#   iptables, nftables, ipset, conntrack: the node agent drives the real kernel;
#   iproute2: network namespaces; util-linux: nsenter, unshare, setpriv;
#   runc, containernetworking-plugins: the local cluster's nodes (kubelet and
#   containerd, built by make, run pods with them); dpkg-deb, apt-get: make
#   images resolves and unpacks the agent's userland from Debian's packages;
#   qemu-system-x86, busybox-static, kmod, cpio, xz-utils: the IPVS tests boot
#   Debian's stock kernel (which has IPVS) under qemu.
set -euo pipefail

need=()
for pair in iptables:iptables nft:nftables ipset:ipset conntrack:conntrack ip:iproute2 \
	nsenter:util-linux setpriv:util-linux make:make git:git \
	qemu-system-x86_64:qemu-system-x86 busybox:busybox-static depmod:kmod cpio:cpio xz:xz-utils \
	runc:runc /usr/lib/cni/bridge:containernetworking-plugins dpkg-deb:dpkg apt-get:apt; do
	[ -x "${pair%%:*}" ] || command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
done
[ -e /bin/busybox ] || [ -e /usr/bin/busybox ] || need+=(busybox-static)
if [ ${#need[@]} -eq 0 ]; then
	exit 0
fi
mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
echo "== installing: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
