#!/usr/bin/env bash
# Push and clone to SeaweedFS on loopback beside restic's S3 backend (docs/benchmarks.md,
# "Remotes on SeaweedFS"). Installs restic, numpy and the servers (scripts/setup.sh) if missing.
#   scripts/bench/bench_remote.sh [--scale small|default] [--rounds N] [--series a,b] [--out DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/env.sh
command -v restic >/dev/null || { SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO=sudo; $SUDO apt-get install -y -qq restic >/dev/null; }
[[ -x "$HOME/.cache/cairn-s3/venv/bin/weed" ]] || scripts/setup.sh
python3 -c 'import numpy' 2>/dev/null || python3 -m pip install --quiet numpy
[[ -n "${CAIRN_BIN:-}" ]] || { cargo build --quiet; export CAIRN_BIN="$CARGO_TARGET_DIR/debug/cairn"; }
exec python3 scripts/bench/bench_remote.py "$@"
