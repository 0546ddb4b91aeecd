#!/usr/bin/env bash
# The test command: sets up a fresh machine when needed, fuzzes the safetensors parser for
# 60 s (CAIRN_FUZZ_SECONDS; 0 skips it), then runs every test (unit, integration, doc) in the
# one shared cargo profile.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
source scripts/env.sh
warn_first_build
fuzz_seconds="${CAIRN_FUZZ_SECONDS:-60}"
if [[ "$fuzz_seconds" != 0 ]]; then
  scripts/fuzz.sh "$fuzz_seconds"
fi
cargo test --all-targets "$@"
cargo test --doc "$@"
