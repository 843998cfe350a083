#!/usr/bin/env bash
# Builds our kernel a second time from a clean cache, in another directory,
# and compares its bytes with the kernel `dstack image build` cached (itself
# built from a clean cache the first time): the kernel's reproducibility
# check. A key already checked on this machine is not rebuilt (the marker
# `<key>.reproducible` is written only after a byte-for-byte match).
#
#   reproducible/tests/kernel-twice.sh [--force]
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/dstack-rs/target}
cache="$HOME/.cache/dstack-rs/kernel"
cargo build -q --manifest-path "$repo/Cargo.toml" -p dstack-reproducible --example kernel
kernel="$CARGO_TARGET_DIR/debug/examples/kernel"

first="$("$kernel" --cache "$cache")"   # prints: <key> <bzImage path>
key="${first%% *}"
if [ -f "$cache/$key.reproducible" ] && [ "${1:-}" != --force ]; then
  echo "kernel $key: reproducibility already verified on this machine ($cache/$key.reproducible)"
  exit 0
fi
work=$(mktemp -d /tmp/dstack-kernel-twice.XXXXXX)
trap 'rm -rf "$work"' EXIT
second="$("$kernel" --cache "$work/elsewhere/cache")"
a="${first#* }"; b="${second#* }"
if cmp "$a" "$b"; then
  sha256sum "$a" | cut -d' ' -f1 > "$cache/$key.reproducible"
  echo "kernel reproducible: $key bzImage sha256 $(cat "$cache/$key.reproducible")"
else
  echo "kernel NOT reproducible: $a and $b differ" >&2
  exit 1
fi
