#!/usr/bin/env bash
# Fuzz the safetensors parser for SECONDS (default 60): scripts/fuzz.sh SECONDS
#
# cargo-fuzz needs nightly-only rustc flags (-Zsanitizer=address); RUSTC_BOOTSTRAP=1 lets the
# stable toolchain accept them. The corpus is seeded from the committed fixtures: the malformed
# corpus and the files the reference package wrote. Exits non-zero when the fuzzer finds a crash
# (a panic, a failed invariant, an allocation over 64 MiB or RSS over 1 GiB); the input that caused
# it is left in fuzz/artifacts/safetensors_parse/.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-60}"
case "$seconds" in
  ''|*[!0-9]*) echo "usage: $0 SECONDS" >&2; exit 2 ;;
esac

if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi

export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="${CAIRN_FUZZ_TARGET_DIR:-$HOME/.cache/cairn-fuzz-target}"
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"

corpus=fuzz/corpus/safetensors_parse
mkdir -p "$corpus"
cp tests/fixtures/malformed_safetensors/*.safetensors tests/fixtures/safetensors/*.safetensors "$corpus/"

cd fuzz
cargo fuzz run safetensors_parse "../$corpus" -- \
  -max_total_time="$seconds" -max_len=4096 -malloc_limit_mb=64 -rss_limit_mb=1024 -print_final_stats=1
