#!/usr/bin/env bash
# The main job: a short real training run (a small MLP trained with Adam), committed checkpoint
# by checkpoint into an embedded store, then log, diff, stats and a verified checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
source scripts/env.sh
warn_first_build
cargo build --quiet --bin cairn --example train
CAIRN="$CARGO_TARGET_DIR/debug/cairn"
WORK="${DEMO_DIR:-$(mktemp -d /tmp/cairn-demo.XXXXXX)}"
mkdir -p "$WORK"
export CAIRN_STORE="$WORK/store"
export CAIRN_AUTHOR="demo@cairn"
echo "== work dir: $WORK"
"$CAIRN" init
"$CARGO_TARGET_DIR/debug/examples/train" "$WORK/run" --checkpoints 5 --steps-per-checkpoint 20
# Step, epoch and metrics come from each folder's trainer_state.json.
for ck in $(ls -d "$WORK"/run/checkpoint-* | sort -V); do
  "$CAIRN" commit "$ck" -m "checkpoint ${ck##*/}" --param lr=3e-3 --config "$ck/config.json" \
    --dataset-fingerprint "train=synthetic-v1" --run-id demo --verify
done
echo "== cairn log"
"$CAIRN" log
echo "== cairn diff HEAD~1 HEAD"
"$CAIRN" diff HEAD~1 HEAD
echo "== cairn show HEAD"
"$CAIRN" show HEAD | head -30
echo "== cairn log --where 'eval_loss < 3.3' --sort eval_loss"
"$CAIRN" log --where 'eval_loss < 3.3' --sort eval_loss
echo "== cairn stats"
"$CAIRN" stats
echo "== cairn gc --keep-last 2 --keep-best 1:eval_loss:min --dry-run"
"$CAIRN" gc --keep-last 2 --keep-best 1:eval_loss:min --dry-run
echo "== plain copies of the checkpoints: $(du -sb "$WORK/run" | cut -f1) bytes; store on disk: $(du -sb "$WORK/store" | cut -f1) bytes"
echo "== cairn checkout HEAD~2 (verified) and compare with the original files"
first=$(ls -d "$WORK"/run/checkpoint-* | sort -V | tail -3 | head -1)
"$CAIRN" checkout HEAD~2 "$WORK/restored"
diff -r "$first" "$WORK/restored" && echo "byte-identical: $first"
"$CAIRN" tensor HEAD model.safetensors:layer1.weight -o "$WORK/layer1.npy"
python3 -c "import numpy,sys; a=numpy.load(sys.argv[1]); print('numpy reads layer1.weight', a.shape, a.dtype)" "$WORK/layer1.npy"
echo "== cairn fsck --read-data"
"$CAIRN" fsck --read-data
