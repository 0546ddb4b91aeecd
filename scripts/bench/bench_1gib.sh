#!/usr/bin/env bash
# One 1 GiB checkpoint against cp + sync, interleaved so every ratio comes from one run:
# 16 float32 tensors 4096 x 4096 drawn from N(0, 0.02) (numpy, seed 0), page-cached. Each round
# times, on a fresh store: cp -r + sync, commit (new data), commit again (unchanged, so every
# chunk deduplicates and every file's SHA-256 comes from the parent), the same bytes as a fresh
# copy (a rewritten file: new inode, new mtime), and a verified checkout.
# Prints each round and the medians.   scripts/bench/bench_1gib.sh [ROUNDS=5]
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/env.sh
cargo build --quiet --bin cairn
CAIRN="${CAIRN_BIN:-$CARGO_TARGET_DIR/debug/cairn}"
ROUNDS="${1:-5}"
WORK="$(mktemp -d /tmp/cairn-bench-1gib.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
python3 - "$WORK/ck" <<'PY'
import json, os, struct, sys, numpy as np
d = sys.argv[1]; os.makedirs(d, exist_ok=True)
rng = np.random.default_rng(0); hdr = {}; off = 0; arrs = []
for i in range(16):
    a = rng.normal(0, 0.02, 4096 * 4096).astype("<f4"); arrs.append(a)
    hdr[f"t{i}"] = {"dtype": "F32", "shape": [4096, 4096], "data_offsets": [off, off + a.nbytes]}
    off += a.nbytes
h = json.dumps(hdr).encode(); h += b" " * ((8 - len(h) % 8) % 8)
with open(f"{d}/model.safetensors", "wb") as f:
    f.write(struct.pack("<Q", len(h)) + h)
    for a in arrs: a.tofile(f)
PY
cat "$WORK/ck/model.safetensors" > /dev/null
t() { local s e; s=$(date +%s.%N); "$@" > /dev/null; e=$(date +%s.%N); awk -v a="$s" -v b="$e" 'BEGIN { printf "%.3f", b - a }'; }
cp_=() new=() same=() fresh=() out=()
for r in $(seq "$ROUNDS"); do
  rm -rf "$WORK/s" "$WORK/cp" "$WORK/out"
  "$CAIRN" --store "$WORK/s" init > /dev/null
  sync
  cp_+=("$(t bash -c "cp -r '$WORK/ck' '$WORK/cp' && sync")")
  new+=("$(t "$CAIRN" --store "$WORK/s" commit "$WORK/ck")")
  same+=("$(t "$CAIRN" --store "$WORK/s" commit "$WORK/ck")")
  rm -rf "$WORK/ck2" && cp -r "$WORK/ck" "$WORK/ck2" && sync
  fresh+=("$(t "$CAIRN" --store "$WORK/s" commit "$WORK/ck2")")
  out+=("$(t "$CAIRN" --store "$WORK/s" checkout HEAD "$WORK/out")")
  cmp "$WORK/ck/model.safetensors" "$WORK/out/model.safetensors"
  echo "round $r: cp+sync ${cp_[-1]} s, commit ${new[-1]} s, unchanged ${same[-1]} s, rewritten ${fresh[-1]} s, checkout ${out[-1]} s"
done
median() { printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END { print (NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2) }'; }
mc=$(median "${cp_[@]}"); mn=$(median "${new[@]}"); ms=$(median "${same[@]}"); mf=$(median "${fresh[@]}"); mo=$(median "${out[@]}")
echo "machine: $(nproc) cores, $(date -u +%F), $(uptime | sed 's/.*load/load/')"
awk -v c="$mc" -v n="$mn" -v s="$ms" -v f="$mf" -v o="$mo" 'BEGIN {
  printf "medians: cp+sync %.2f s; commit %.2f s (%.2fx the speed of cp+sync); unchanged %.2f s (%.2f GB/s); rewritten unchanged %.2f s (%.2f GB/s); checkout %.2f s (%.2fx)\n", c, n, c / n, s, 1.073741824 / s, f, 1.073741824 / f, o, c / o }'
