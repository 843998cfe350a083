# dstack-rs: every entry point users and CI run.
#   make demo   - the main job: build the OS image, start a local registry and
#                 the supervisor, deploy examples/hello in a CVM, reach it
#   make test   - format, lint, unit tests, end-to-end VM tests, kernel and
#                 image reproducibility, fuzz smoke run
SHELL := /bin/bash
export CARGO_TARGET_DIR ?= $(HOME)/.cache/dstack-rs/target
export DSTACK_IMAGES_DIR ?= $(HOME)/.cache/dstack-rs/images
FUZZ_TARGET_DIR ?= $(HOME)/.cache/dstack-rs/fuzz-target
FUZZ_SECONDS ?= 20
MUSL := x86_64-unknown-linux-musl
TESTDATA ?= $(shell scripts/find-testdata)
BIN := $(CARGO_TARGET_DIR)/debug
# dstack-init is built with the size-tuned `guest` profile (Cargo.toml).
INIT := $(CARGO_TARGET_DIR)/$(MUSL)/guest/dstack-init

.PHONY: demo quote-demo test lint unit e2e e2e-sdk fuzz deps build image bench kernel-twice rebuild-check yocto-check

deps:
	scripts/install-deps

build:
	cargo build --locked -p dstack-cli -p dstack-supervisor -p dstack-kms -p dstack-gateway -p dstack-e2e --bins
	# dstack-init exactly as `dstack image rebuild-check` builds it: the
	# pinned toolchain, build paths mapped away, static libseccomp for musl
	# (scripts/build-init and scripts/build-libseccomp say why).
	scripts/build-init >/dev/null
	# The KMS's and the gateway's own images (kms/image.json,
	# gateway/image.json); a separate build so features unified with them
	# never change the measured init binary.
	cargo build --locked -p dstack-kms -p dstack-gateway --release --target $(MUSL)

# The OS image, rebuilt when dstack-init changes (same inputs give the same bytes).
image: build
	$(BIN)/dstack image build --init $(INIT) --out $(DSTACK_IMAGES_DIR) --allow-superseded

demo: deps image
	scripts/demo "$(BIN)" "$(DSTACK_IMAGES_DIR)"

quote-demo: build
	scripts/quote-demo "$(BIN)/dstack" "$(TESTDATA)"

lint:
	cargo fmt --all -- --check
	contracts/build --check
	cargo clippy --workspace --all-targets --locked -- -D warnings

unit:
	DSTACK_TESTDATA="$(TESTDATA)" cargo nextest run --workspace --exclude dstack-e2e --locked --no-fail-fast

e2e: image
	scripts/registry start
	DSTACK_TESTDATA="$(TESTDATA)" cargo nextest run -p dstack-e2e --locked --no-fail-fast --test-threads 2

# Only the official SDKs in CVMs (examples/python-sdk, examples/js-sdk; part of e2e).
e2e-sdk: image
	scripts/registry start
	cargo nextest run -p dstack-e2e --locked --no-fail-fast --test-threads 2 --test guest_api

fuzz:
	cd fuzz && for target in quote_parse ccel_parse event_log_json attestation_decode; do \
	  CARGO_TARGET_DIR=$(FUZZ_TARGET_DIR) cargo +nightly fuzz run $$target -- \
	    -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 || exit 1; \
	done

# Our kernel built a second time from a clean cache must match the first byte for byte.
kernel-twice: image
	reproducible/tests/kernel-twice.sh

# The image built twice more from this tree, in two directories as two
# users (dstack-init's dependencies from the warm target dir, the cached
# kernel): every output byte must match, and match the image `make image`
# built. `dstack image rebuild-check --full` is the complete check.
rebuild-check: image
	$(BIN)/dstack image rebuild-check --allow-superseded \
	  --against $(DSTACK_IMAGES_DIR)/dstack-$$($(BIN)/dstack --version | cut -d' ' -f2)

# The Yocto layer: parsed, linted, expanded, its task graph and an offline
# unpack of our recipes checked (yocto/check, with the image's cached .debs
# and a seal round trip against the built image); yocto/check-negative
# shows that a busybox in the image, a stale or missing crate checksum,
# drifted kernel fragments and a parse error each fail it.
yocto-check: image
	yocto/check
	yocto/check-negative

bench: image
	bench/image/run
	bench/boot/run
	bench/disk/run
	bench/gateway/run

test: deps lint unit e2e kernel-twice rebuild-check yocto-check fuzz
