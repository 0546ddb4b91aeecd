# Sourced by the scripts: one cargo profile (dev, optimized; see Cargo.toml) and a target dir
# outside the clone, so RocksDB's C++ build (~11 min) is paid once per machine, not per clone.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/cairn-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

# Says on stderr, before a build, when it will compile RocksDB's C++ (the first build on a
# machine): the librocksdb-sys build script leaves librocksdb.a in its out dir once done.
warn_first_build() {
  if ! compgen -G "$CARGO_TARGET_DIR/debug/build/librocksdb-sys-*/out/librocksdb.a" >/dev/null; then
    echo "cairn: first build on this machine: compiling RocksDB's C++ takes about 11-15 minutes on 2 cores (once; later builds reuse $CARGO_TARGET_DIR)" >&2
  fi
}
