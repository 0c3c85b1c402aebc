#!/usr/bin/env bash
# Builds the kernel and the base initramfs of kpo's VM tests (see
# docs/ipvs-vm-tests.md):
#
#   hack/vm/build.sh OUTDIR [TEST_BINARY]
#
# OUTDIR gets vmlinuz and base.cpio.gz. The kernel is Debian's stock one (it has
# IPVS, this machine's kernel does not), downloaded once into OUTDIR/cache.
# With TEST_BINARY, OUTDIR/initramfs.cpio.gz is also written: the base plus the
# binary as /kpo-vm-test, bootable by hack/vm/run.sh. The Go test (test/vm)
# appends its own binary instead, as a second cpio archive.
#
# Installs nothing: the caller provides (apt) qemu-system-x86 busybox-static
# kmod cpio xz-utils, plus iproute2 util-linux iptables ipset nftables, whose
# binaries are copied into the VM with their libraries.
set -euo pipefail

OUT=${1:?usage: $0 OUTDIR [TEST_BINARY]}
TESTBIN=${2:-}
mkdir -p "$OUT/cache"
OUT=$(cd "$OUT" && pwd)
CACHE=$OUT/cache

# Modules the backend and its companion rules need, by name or alias; their
# dependencies (nf_conntrack, nf_defrag_*, libcrc32c...) come from modprobe.
MODULES=(
	# Every scheduler the CR offers that this kernel has: twos came with 6.2,
	# and TestSchedulers checks that its absence is reported.
	ip_vs ip_vs_rr ip_vs_wrr ip_vs_lc ip_vs_wlc ip_vs_lblc ip_vs_lblcr ip_vs_sh ip_vs_dh
	ip_vs_sed ip_vs_nq ip_vs_mh ip_vs_fo ip_vs_ovf
	nf_conntrack nf_nat dummy veth
	# netlink.NewHandleAt (hack/netns) opens NETLINK_XFRM and NETLINK_NETFILTER sockets.
	xfrm_user nfnetlink
	ip_set ip_set_hash_ip ip_set_hash_ipport ip_set_hash_ipportip ip_set_hash_ipportnet ip_set_hash_net
	x_tables ip_tables iptable_nat iptable_filter iptable_mangle ip6_tables ip6table_nat ip6table_filter ip6table_mangle
	xt_set xt_MASQUERADE xt_mark xt_conntrack xt_comment xt_addrtype xt_multiport xt_tcpudp
	nf_reject_ipv4 ipt_REJECT nf_reject_ipv6 ip6t_REJECT
	# iptables-nft (the companion rules through nf_tables): the nat chain type,
	# nft_compat for the xtables matches and targets it keeps (set, MASQUERADE,
	# REJECT, MARK...), and the native expressions it may translate to.
	nf_tables nft_compat nft_chain_nat nft_ct nft_nat nft_masq
	nft_reject nft_reject_inet nft_reject_ipv4 nft_reject_ipv6
	# The host-port filter's health-check port set (KPO-IPVS-FILTER).
	ip_set_bitmap_port
	# The agent's other modes, for the mode-switch tests: the iptables mode's
	# matches and targets, the nftables mode's expressions (nft), conntrack
	# over netlink (stale UDP flows).
	xt_statistic xt_recent xt_nat nf_conntrack_netlink
	nft_numgen nft_fib nft_fib_inet nft_fib_ipv4 nft_fib_ipv6
	# test/testnet's node network is a bridge; the VM reaches the host's API
	# server through qemu's user network on an emulated e1000.
	bridge e1000
)

# --- kernel: the package linux-image-amd64 currently depends on -------------
pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
[ -n "$pkg" ] || { echo "cannot resolve linux-image-amd64's kernel package (apt-get update?)" >&2; exit 1; }
kver=${pkg#linux-image-}
KROOT=$CACHE/$kver
if [ ! -f "$KROOT/.done" ]; then
	echo "build.sh: fetching $pkg" >&2
	rm -rf "$KROOT" && mkdir -p "$KROOT"
	(cd "$CACHE" && rm -f "$pkg"_*.deb && apt-get download "$pkg" >&2)
	deb=$(ls "$CACHE/$pkg"_*.deb | head -1)
	# Only the kernel image and the module directories that can hold what
	# MODULES needs: the whole tree is ~400 MB.
	dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$KROOT" --wildcards \
		'./boot/vmlinuz-*' "./lib/modules/$kver/modules.*" \
		"./lib/modules/$kver/kernel/net/*" "./lib/modules/$kver/kernel/lib/*" \
		"./lib/modules/$kver/kernel/crypto/*" "./lib/modules/$kver/kernel/drivers/net/*"
	rm -f "$deb"
	# Debian generates modules.dep in postinst: do it over the partial tree.
	depmod -b "$KROOT" "$kver"
	touch "$KROOT/.done"
fi
cp "$KROOT/boot/vmlinuz-$kver" "$OUT/vmlinuz"

# --- initramfs ---------------------------------------------------------------
ROOT=$(mktemp -d)
trap 'rm -rf "$ROOT"' EXIT
mkdir -p "$ROOT"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,run,tmp,etc,lib/modules/"$kver"}
# hack/netns bind-mounts namespaces under /var/run/netns.
mkdir -p "$ROOT/var" && ln -s ../run "$ROOT/var/run"

cp /bin/busybox "$ROOT/bin/busybox"
# Applets as symlinks; the host binaries copied below take precedence (PATH).
for a in sh mount umount mkdir cat echo ls poweroff modprobe insmod lsmod sleep sync dmesg ip nsenter; do
	ln -sf busybox "$ROOT/bin/$a"
done

# copy_bin copies a host binary and the shared libraries ldd reports, at the
# same paths, so that the dynamically linked tools run unchanged in the VM.
copy_bin() {
	local src=$1 dst=$2
	mkdir -p "$ROOT$(dirname "$dst")"
	cp -L "$src" "$ROOT$dst"
	ldd "$src" 2>/dev/null | grep -o '/[^ ]*' | while read -r lib; do
		[ -e "$ROOT$lib" ] && continue
		mkdir -p "$ROOT$(dirname "$lib")"
		cp -L "$lib" "$ROOT$lib"
	done
}
# iproute2 and util-linux: hack/netns runs "ip route add ...", "ip link set ...
# arp off" and "nsenter --net=...". Busybox has both applets, the real ones are
# what CI and developers use.
copy_bin "$(command -v ip)" /usr/sbin/ip
copy_bin "$(command -v nsenter)" /usr/bin/nsenter
copy_bin "$(command -v ipset)" /usr/sbin/ipset
# The nftables mode (knftables runs "nft"), for the mode-switch tests.
copy_bin "$(command -v nft)" /usr/sbin/nft
# Both iptables flavours. The backend runs "iptables"/"ip6tables", which are
# legacy here (it needs only the x_tables modules); the -legacy and -nft names
# exist too, and test/vm/inside's TestCompanionRules points "iptables" at
# either through PATH. The multi-binaries dispatch on their name.
copy_bin "$(readlink -f /usr/sbin/xtables-legacy-multi)" /usr/sbin/xtables-legacy-multi
copy_bin "$(readlink -f /usr/sbin/xtables-nft-multi)" /usr/sbin/xtables-nft-multi
for fam in iptables ip6tables; do
	for s in "" -restore -save; do
		ln -sf xtables-legacy-multi "$ROOT/usr/sbin/$fam$s"
		ln -sf xtables-legacy-multi "$ROOT/usr/sbin/$fam-legacy$s"
		ln -sf xtables-nft-multi "$ROOT/usr/sbin/$fam-nft$s"
	done
done
xtlib=/usr/lib/x86_64-linux-gnu/xtables
mkdir -p "$ROOT$xtlib" && cp -a "$xtlib"/. "$ROOT$xtlib"/
for so in "$xtlib"/*.so; do
	ldd "$so" 2>/dev/null | grep -o '/[^ ]*' | while read -r lib; do
		[ -e "$ROOT$lib" ] || { mkdir -p "$ROOT$(dirname "$lib")" && cp -L "$lib" "$ROOT$lib"; }
	done
done
cp /etc/protocols /etc/services "$ROOT/etc/" 2>/dev/null || true
# Keep the copied ld.so reachable at the path the binaries ask for.
[ -e "$ROOT/lib64/ld-linux-x86-64.so.2" ] || { mkdir -p "$ROOT/lib64" && cp -L /lib64/ld-linux-x86-64.so.2 "$ROOT/lib64/"; }

# Modules: resolve names, aliases, dependencies and soft dependencies (libcrc32c
# needs crc32c_generic first) with the host's kmod over the extracted tree.
# /init insmods the resulting ordered list: busybox modprobe ignores softdeps.
# Any .ko.xz is decompressed, since busybox cannot read xz (this kernel
# package ships plain .ko, others compress).
: >"$ROOT/modules.list"
for m in "${MODULES[@]}"; do
	deps=$(modprobe -d "$KROOT" -S "$kver" --show-depends "$m" 2>/dev/null) || {
		echo "build.sh: module $m not found in $kver" >&2
		exit 1
	}
	awk '$1 == "insmod" {print $2}' <<<"$deps" | while read -r ko; do
		rel=${ko#"$KROOT"}
		rel=${rel%.xz}
		grep -qxF "$rel" "$ROOT/modules.list" && continue
		echo "$rel" >>"$ROOT/modules.list"
		mkdir -p "$(dirname "$ROOT$rel")"
		case $ko in
		*.xz) xz -dc "$ko" >"$ROOT$rel" ;;
		*) cp "$ko" "$ROOT$rel" ;;
		esac
	done
done
cp "$KROOT/lib/modules/$kver"/modules.{order,builtin,builtin.modinfo} "$ROOT/lib/modules/$kver/" 2>/dev/null || true
depmod -b "$ROOT" "$kver"

install -m 0755 "$(dirname "$0")/init" "$ROOT/init"

(cd "$ROOT" && find . -print0 | cpio --null -o -H newc --quiet) | gzip -1 >"$OUT/base.cpio.gz"
echo "$kver" >"$OUT/kernel-version"
echo "build.sh: $OUT/vmlinuz ($kver), $OUT/base.cpio.gz ($(du -h "$OUT/base.cpio.gz" | cut -f1))" >&2

if [ -n "$TESTBIN" ]; then
	T=$(mktemp -d)
	cp "$TESTBIN" "$T/kpo-vm-test"
	chmod 0755 "$T/kpo-vm-test"
	(cd "$T" && echo kpo-vm-test | cpio -o -H newc --quiet) | gzip -1 >"$T/test.cpio.gz"
	# The kernel unpacks concatenated archives in order, later files on top.
	cat "$OUT/base.cpio.gz" "$T/test.cpio.gz" >"$OUT/initramfs.cpio.gz"
	rm -rf "$T"
	echo "build.sh: $OUT/initramfs.cpio.gz" >&2
fi
