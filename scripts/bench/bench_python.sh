#!/usr/bin/env bash
# The Python package's benchmark (scripts/bench/bench_python.py): builds and installs the package
# into the virtualenv, then runs it. scripts/bench/bench_python.sh [MIB]
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/env.sh
source scripts/python_env.sh
export PYO3_PYTHON="$CAIRN_VENV/bin/python" PATH="$CAIRN_VENV/bin:$PATH"
cargo build --all-targets --quiet
"$CAIRN_VENV/bin/python" -m pip install --disable-pip-version-check --no-build-isolation \
  --no-deps --force-reinstall -q ./py
CAIRN_BIN="$CARGO_TARGET_DIR/debug/cairn" "$CAIRN_VENV/bin/python" scripts/bench/bench_python.py "$@"
