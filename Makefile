# dstack-rs: every entry point users and CI run.
#   make demo   - the main job (today: verify the sample TDX quote, then a
#                 simulated-TEE quote round trip)
#   make test   - format, lint, unit/integration tests, fuzz smoke run
SHELL := /bin/bash
export CARGO_TARGET_DIR ?= $(HOME)/.cache/dstack-rs/target
FUZZ_TARGET_DIR ?= $(HOME)/.cache/dstack-rs/fuzz-target
FUZZ_SECONDS ?= 20
TESTDATA ?= $(shell scripts/find-testdata)
DSTACK := $(CARGO_TARGET_DIR)/debug/dstack

.PHONY: demo test lint unit fuzz deps build

deps:
	scripts/install-deps

build:
	cargo build -p dstack-cli

demo: build
	scripts/demo "$(DSTACK)" "$(TESTDATA)"

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --locked -- -D warnings

unit:
	DSTACK_TESTDATA="$(TESTDATA)" cargo nextest run --workspace --locked --no-fail-fast

fuzz:
	cd fuzz && for target in quote_parse ccel_parse event_log_json; do \
	  CARGO_TARGET_DIR=$(FUZZ_TARGET_DIR) cargo +nightly fuzz run $$target -- \
	    -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 || exit 1; \
	done

test: lint unit fuzz
