#!/usr/bin/env bash
# Boots the VM of hack/vm/build.sh by hand (the Go test test/vm does the same):
#
#   hack/vm/build.sh bin/vm path/to/test-binary && hack/vm/run.sh bin/vm [TIMEOUT]
#
# Exits 0 when the console shows "KPO-VM-RESULT: PASS".
set -euo pipefail
OUT=${1:?usage: $0 OUTDIR [TIMEOUT]}
TIMEOUT=${2:-300}
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# TCG: there is no usable KVM on these machines.
timeout "$TIMEOUT" qemu-system-x86_64 -accel tcg,thread=multi -cpu max -smp 2 -m 768 \
	-nographic -nodefaults -serial stdio -no-reboot \
	-kernel "$OUT/vmlinuz" -initrd "$OUT/initramfs.cpio.gz" \
	-append 'console=ttyS0 panic=-1 quiet loglevel=4' | tee "$log" || true
grep -q '^KPO-VM-RESULT: PASS' "$log"
