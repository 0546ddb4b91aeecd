#!/usr/bin/env bash
# Two concurrent commits against one: wall time of committing two different checkpoints at
# once (two processes, two branches, one store) over the wall time of committing one of them
# alone, each on a fresh store. Medians of ROUNDS runs; sizes in MiB of f32 weights per
# checkpoint. The ratio is what issue 5 asks about ("well under twice one commit's time").
#   scripts/bench/bench_concurrent.sh [MIB=256] [ROUNDS=5]
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/env.sh
cargo build --quiet --bin cairn
CAIRN="$CARGO_TARGET_DIR/debug/cairn"
MIB="${1:-256}"
ROUNDS="${2:-5}"
WORK="$(mktemp -d /tmp/cairn-bench-concurrent.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
export CAIRN_AUTHOR=bench
# Two checkpoints of N(0, 0.02) float32 weights (different seeds), as safetensors.
python3 - "$WORK" "$MIB" <<'PY'
import json, struct, sys, numpy as np
work, mib = sys.argv[1], int(sys.argv[2])
for i in range(2):
    n = mib * (1 << 20) // 4
    a = np.random.default_rng(i).normal(0, 0.02, n).astype("<f4")
    h = json.dumps({"w": {"dtype": "F32", "shape": [n], "data_offsets": [0, a.nbytes]}}).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    import os
    os.makedirs(f"{work}/ck{i}", exist_ok=True)
    with open(f"{work}/ck{i}/model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        a.tofile(f)
PY
now() { date +%s.%N; }
one=() two=()
for r in $(seq "$ROUNDS"); do
  rm -rf "$WORK/s1" "$WORK/s2"
  "$CAIRN" --store "$WORK/s1" init >/dev/null
  "$CAIRN" --store "$WORK/s2" init >/dev/null
  sync
  t0=$(now)
  "$CAIRN" --store "$WORK/s1" commit "$WORK/ck0" >/dev/null
  t1=$(now)
  "$CAIRN" --store "$WORK/s2" commit --branch a "$WORK/ck0" >/dev/null &
  p1=$!
  "$CAIRN" --store "$WORK/s2" commit --branch b "$WORK/ck1" >/dev/null &
  p2=$!
  wait "$p1" "$p2"
  t2=$(now)
  one+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')")
  two+=("$(awk -v a="$t1" -v b="$t2" 'BEGIN { printf "%.3f", b - a }')")
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
m1=$(median "${one[@]}")
m2=$(median "${two[@]}")
echo "machine: $(nproc) cores, $(uptime | sed 's/.*load/load/'), $(date -u +%F)"
echo "one commit of $MIB MiB: median ${m1} s over $ROUNDS runs (${one[*]})"
echo "two concurrent commits of $MIB MiB each: median ${m2} s (${two[*]})"
echo "ratio two/one: $(awk -v a="$m1" -v b="$m2" 'BEGIN { printf "%.2f", b / a }')"
