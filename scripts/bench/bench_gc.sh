#!/usr/bin/env bash
# Retention beside training (docs/benchmarks.md, "gc beside commits"): commit time of the
# fine-tune series with and without a stored policy, and the wait of a small commit started
# during a large repack; alternated rounds, medians.
#
#   scripts/bench/bench_gc.sh [--out DIR] [--rounds N] [--pause S] [--delays MS,MS] [--scale small]
#
# The cairn binary is $CAIRN_BIN, else $CARGO_TARGET_DIR/debug/cairn (built if missing);
# $CAIRN_BASE_BIN, when set, is run in the same rounds (say, the starting commit's binary).
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/env.sh
if ! python3 -c 'import numpy' >/dev/null 2>&1; then
  python3 -m pip install --quiet --disable-pip-version-check numpy
fi
if [[ -z "${CAIRN_BIN:-}" ]]; then
  cargo build --quiet --bin cairn
  CAIRN_BIN="$CARGO_TARGET_DIR/debug/cairn"
fi
export CAIRN_BIN
args=("$@")
has_out=0
for a in "${args[@]}"; do [[ "$a" == --out || "$a" == --out=* ]] && has_out=1; done
if ((!has_out)); then
  args+=(--out "$(mktemp -d /tmp/cairn-bench-gc.XXXXXX)/run")
fi
echo "== machine: $(nproc) cores, $(date -u +%FT%TZ), $(uptime | sed 's/.*load/load/')"
python3 scripts/bench/bench_gc.py "${args[@]}"
