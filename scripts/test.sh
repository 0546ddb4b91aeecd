#!/usr/bin/env bash
# The test command: sets up a fresh machine when needed, checks formatting and lints (rustfmt,
# clippy with warnings as errors), fuzzes the safetensors parser for 60 s (CAIRN_FUZZ_SECONDS;
# 0 skips it), then runs every test (unit, integration, doc) in the one shared cargo profile, then
# builds the Python package into its virtualenv and runs its tests (scripts/test_python.sh).
# tests/layering.rs, among them, checks the import graph: no cycle, no upward import.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
source scripts/env.sh
warn_first_build
cargo fmt --all --check
fuzz_seconds="${CAIRN_FUZZ_SECONDS:-60}"
if [[ "$fuzz_seconds" != 0 ]]; then
  scripts/fuzz.sh "$fuzz_seconds"
fi
cargo clippy --all-targets "$@" -- -D warnings
cargo clippy -p cairn-py --all-targets -- -D warnings
cargo test --all-targets "$@"
cargo test --doc "$@"
scripts/test_python.sh
