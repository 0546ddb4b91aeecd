#!/usr/bin/env bash
# Side-by-side benchmark: cairn against cp + sync, zstd -3 per file, restic and borg on generated
# checkpoint series (docs/benchmarks.md, "Side-by-side series").
#
#   scripts/bench/bench.sh [--scale small|default] [--out DIR] [--tools 'cairn,cp+sync,...']
#                          [--keep] [--series 'finetune-fp32,...'] [--delta-depth K]
#                          [--delta-base root|parent]
#
# The cairn binary is $CAIRN_BIN, else $CARGO_TARGET_DIR/debug/cairn (built if missing), else
# `cairn` on PATH. Installs the peers (restic, borgbackup, zstd, GNU time) and numpy when missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/env.sh

need_apt=()
command -v restic >/dev/null || need_apt+=(restic)
command -v borg >/dev/null || need_apt+=(borgbackup)
command -v zstd >/dev/null || need_apt+=(zstd)
[[ -x /usr/bin/time ]] || need_apt+=(time)
command -v python3 >/dev/null || need_apt+=(python3 python3-pip)
if ((${#need_apt[@]})); then
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
if ! python3 -c 'import numpy, safetensors' >/dev/null 2>&1; then
  python3 -m pip install --quiet --disable-pip-version-check numpy safetensors
fi

if [[ -z "${CAIRN_BIN:-}" ]]; then
  if [[ -x "$CARGO_TARGET_DIR/debug/cairn" ]]; then
    CAIRN_BIN="$CARGO_TARGET_DIR/debug/cairn"
  elif command -v cairn >/dev/null; then
    CAIRN_BIN="$(command -v cairn)"
  else
    cargo build --quiet --bin cairn
    CAIRN_BIN="$CARGO_TARGET_DIR/debug/cairn"
  fi
fi

# The library-level tensor read (benches/read.rs in its --store mode), next to the CLI's: the
# bench binary built in the shared dev profile, at the path cargo reports for it. Without it
# (a failed build) the run goes on and reports the CLI's read only.
if [[ -z "${CAIRN_BENCH_READ:-}" ]] && command -v cargo >/dev/null; then
  if read_bin="$(cargo bench --quiet --profile dev --no-run --bench read --message-format=json |
    python3 -c 'import json, sys
for m in map(json.loads, sys.stdin):
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "read" and m.get("executable"):
        print(m["executable"])')" && [[ -n "$read_bin" ]]; then
    export CAIRN_BENCH_READ="$read_bin"
  fi
fi

args=("$@")
has_out=0
for a in "${args[@]}"; do [[ "$a" == --out || "$a" == --out=* ]] && has_out=1; done
if ((!has_out)); then
  args+=(--out "$(mktemp -d /tmp/cairn-bench.XXXXXX)/run")
fi
echo "== cairn: $CAIRN_BIN"
echo "== uptime at start: $(uptime)"
python3 scripts/bench/bench_sidebyside.py --cairn "$CAIRN_BIN" "${args[@]}"
echo "== uptime at end: $(uptime)"
