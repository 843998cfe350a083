#!/usr/bin/env bash
# Boots a freshly built image under QEMU (TCG) with the test PID1 in
# tests/boot-init: it loads every module in the image's load-order, formats
# and mounts a virtio disk with the image's mke2fs, prints "init ok" and
# powers off. Fails on "init FAILED", an unresolved module symbol, a panic,
# or a timeout. Prints the wall time from QEMU start to power-off.
#
#   [QEMU_CPU=max] [QEMU_EXTRA=...] reproducible/tests/boot-test.sh [--dev]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/dstack-rs/target}
init_target=$HOME/.cache/dstack-rs/boot-init-target
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

rustup target add x86_64-unknown-linux-musl >/dev/null 2>&1 || true
CARGO_TARGET_DIR=$init_target cargo build -q --release \
  --manifest-path "$here/boot-init/Cargo.toml" --target x86_64-unknown-linux-musl
init=$init_target/x86_64-unknown-linux-musl/release/boot-init

cargo build -q --manifest-path "$repo/Cargo.toml" -p dstack-reproducible --example build
"$CARGO_TARGET_DIR/debug/examples/build" --init "$init" --out "$work" --name image "$@" >/dev/null
img=$work/image
cmdline=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["cmdline"])' "$img/metadata.json")
truncate -s 64M "$work/disk.raw"

start=$(date +%s.%N)
# RDRAND lets the guest's CRNG seed at boot; QEMU's default TCG CPU lacks
# it, and then every getrandom(GRND_NONBLOCK) user waits (mke2fs: ~4 s).
timeout 180 qemu-system-x86_64 -accel tcg -cpu "${QEMU_CPU:-qemu64,+rdrand}" -m 512 -smp 1 -nographic -no-reboot \
  -kernel "$img/bzImage" -initrd "$img/$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["initrd"])' "$img/metadata.json")" -append "$cmdline" \
  -drive file="$work/disk.raw",format=raw,if=virtio \
  -netdev user,id=n0 -device virtio-net-pci,netdev=n0 ${QEMU_EXTRA:-} >"$work/serial.log" </dev/null
end=$(date +%s.%N)

tr -d '\r' <"$work/serial.log"
awk -v s="$start" -v e="$end" 'BEGIN { printf "boot to power-off: %.2f s wall\n", e - s }'
if grep -q -E 'Unknown symbol|Kernel panic|init FAILED' "$work/serial.log" \
   || ! grep -q '^init ok' <(tr -d '\r' <"$work/serial.log"); then
  echo "BOOT TEST FAILED" >&2
  exit 1
fi
echo "boot test passed"
