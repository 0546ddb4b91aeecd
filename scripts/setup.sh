#!/usr/bin/env bash
# Installs what building and testing cairn needs on a fresh Debian machine, when missing:
# libclang (RocksDB's bindings are generated at build time) and the Python packages the
# interoperability tests use. Safe to run again.
set -euo pipefail
need_apt=()
if ! ls /usr/lib/llvm-*/lib/libclang.so* >/dev/null 2>&1 && ! ldconfig -p 2>/dev/null | grep -q libclang; then
  need_apt+=(libclang-dev)
fi
command -v git >/dev/null || need_apt+=(git)
command -v strace >/dev/null || need_apt+=(strace)
command -v mkfs.ext4 >/dev/null || need_apt+=(e2fsprogs)
command -v python3 >/dev/null || need_apt+=(python3 python3-pip)
if ((${#need_apt[@]})); then
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
if ! python3 -c 'import safetensors, numpy' >/dev/null 2>&1; then
  python3 -m pip install --quiet --disable-pip-version-check safetensors numpy
fi
