# Sourced by the scripts: one cargo profile (dev, optimized; see Cargo.toml) and a target dir
# outside the clone, so RocksDB's C++ build (~11 min) is paid once per machine, not per clone.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/cairn-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
