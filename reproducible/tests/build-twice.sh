#!/usr/bin/env bash
# Builds the OS image twice, into two fresh directories, and compares every
# byte: the reproducibility check of `dstack image build`.
#
#   reproducible/tests/build-twice.sh INIT_BINARY [--dev]
#
# INIT_BINARY is a static dstack-init (any static binary will do for this
# check). Downloads go to the shared .deb cache, $HOME/.cache/dstack-rs/debs.
set -euo pipefail
init=${1:?usage: build-twice.sh INIT_BINARY [--dev]}
shift
repo=$(cd "$(dirname "$0")/../.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/dstack-rs/target}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cargo build -q --manifest-path "$repo/Cargo.toml" -p dstack-reproducible --example build
build="$CARGO_TARGET_DIR/debug/examples/build"
"$build" --init "$init" --out "$work/a" --name image --allow-superseded "$@"
"$build" --init "$init" --out "$work/b" --name image --allow-superseded "$@"

status=0
for f in "$work"/a/image/*; do
  name=$(basename "$f")
  if ! cmp "$f" "$work/b/image/$name"; then
    status=1
  fi
done
# Neither side may have a file the other lacks.
diff <(cd "$work/a/image" && ls) <(cd "$work/b/image" && ls) || status=1
if [ "$status" -eq 0 ]; then
  echo "reproducible: digest $(cat "$work/a/image/digest.txt")"
else
  echo "NOT reproducible" >&2
fi
exit "$status"
