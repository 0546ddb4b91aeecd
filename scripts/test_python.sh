#!/usr/bin/env bash
# Build the Python package (py/, maturin, the workspace's dev profile and target directory),
# install it into the virtualenv, and run its tests (py/tests) with pytest against the CLI binary
# `cargo test` built. Fails when the wheel build compiles RocksDB again: it must link the
# librocksdb-sys the Rust tests built (see py/Cargo.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
source scripts/python_env.sh
export PYO3_PYTHON="$CAIRN_VENV/bin/python"
export PATH="$CAIRN_VENV/bin:$PATH"

# The binary the CLI interoperability tests run; built by `cargo test --all-targets`.
cargo build --all-targets --quiet
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
if ! "$CAIRN_VENV/bin/python" -m pip install --disable-pip-version-check --no-build-isolation \
    --no-deps --force-reinstall -v ./py >"$log" 2>&1; then
  tail -n 60 "$log" >&2
  echo "test_python: building the Python package failed" >&2
  exit 1
fi
if grep -qE "Compiling (librocksdb-sys|bindgen) " "$log"; then
  grep -E "Compiling (librocksdb-sys|bindgen) " "$log" >&2
  echo "test_python: the wheel build compiled RocksDB (or its bindgen) again instead of sharing the test build's; see py/Cargo.toml" >&2
  exit 1
fi
CAIRN_BIN="$CARGO_TARGET_DIR/debug/cairn" "$CAIRN_VENV/bin/python" -m pytest -q py/tests "$@"
