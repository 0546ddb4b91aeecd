#!/usr/bin/env bash
# Fuzz the readers of untrusted files for SECONDS each (default 60):
#   scripts/fuzz.sh [SECONDS [TARGET...]]
# Targets (default: all): safetensors_parse (the safetensors header parser) and torchzip_parse
# (the torch.save / TorchScript zip reader and its pickle interpreter).
#
# cargo-fuzz needs nightly-only rustc flags (-Zsanitizer=address); RUSTC_BOOTSTRAP=1 lets the
# stable toolchain accept them. Each corpus is seeded from committed files: the malformed corpus
# and the files the reference package wrote for safetensors; small real torch.save and
# torch.jit.save outputs (fuzz/seeds/torchzip_parse/) and the small torch fixtures for the zip
# reader. Exits non-zero when the fuzzer finds a crash (a panic, a failed invariant, an allocation
# over 64 MiB or RSS over 1 GiB); the input that caused it is left in fuzz/artifacts/TARGET/.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-60}"
case "$seconds" in
  ''|*[!0-9]*) echo "usage: $0 [SECONDS [TARGET...]]" >&2; exit 2 ;;
esac
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(safetensors_parse torchzip_parse)

if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi

export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="${CAIRN_FUZZ_TARGET_DIR:-$HOME/.cache/cairn-fuzz-target}"
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"

for target in "${targets[@]}"; do
  corpus="fuzz/corpus/$target"
  mkdir -p "$corpus"
  case "$target" in
    safetensors_parse)
      cp tests/fixtures/malformed_safetensors/*.safetensors tests/fixtures/safetensors/*.safetensors "$corpus/"
      max_len=4096 ;;
    torchzip_parse)
      cp fuzz/seeds/torchzip_parse/* tests/fixtures/torch/state_dict.pt \
        tests/fixtures/torch/state_dict_zip64.pt "$corpus/"
      max_len=16384 ;;
    *) echo "$0: unknown target $target" >&2; exit 2 ;;
  esac
  (cd fuzz && cargo fuzz run "$target" "../$corpus" -- \
    -max_total_time="$seconds" -max_len="$max_len" -malloc_limit_mb=64 -rss_limit_mb=1024 \
    -print_final_stats=1)
done
