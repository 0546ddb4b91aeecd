#!/usr/bin/env bash
# The test command: sets up a fresh machine when needed, then runs every test (unit,
# integration, doc) in the one shared cargo profile.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
source scripts/env.sh
cargo test --all-targets "$@"
cargo test --doc "$@"
