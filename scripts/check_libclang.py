#!/usr/bin/env python3
"""Exit 0 when a libclang that bindgen can use is loadable, 1 otherwise.

RocksDB's bindings are generated at build time by bindgen, which (with the `runtime` feature
cairn uses) has clang-sys dlopen a libclang and resolve its C API. This check does the same:
it searches the directories and file names clang-sys searches, loads each candidate with
ctypes and asks for `clang_createIndex`. A file name alone proves nothing: Debian images ship
`libclang-cpp.so.14` (the C++ API, no `clang_createIndex`), which matches a `grep libclang`.

Prints the library it loaded (or every candidate it rejected, and why) on stderr.
"""
import ctypes
import glob
import os
import subprocess
import sys

# clang-sys (build/common.rs, build/dynamic.rs): these directories on Linux, after
# $LIBCLANG_PATH and `llvm-config --libdir`.
DIRECTORIES = [
    "/usr/local/llvm*/lib*",
    "/usr/local/lib*/*/*",
    "/usr/local/lib*/*",
    "/usr/local/lib*",
    "/usr/lib*/*/*",
    "/usr/lib*/*",
    "/usr/lib*",
]
FILES = ["libclang.so", "libclang-*.so", "libclang.so.*", "libclang-*.so.*"]


def directories():
    env = os.environ.get("LIBCLANG_PATH")
    if env:
        if os.path.isfile(env):
            yield os.path.dirname(env)
        else:
            yield env
    try:
        out = subprocess.run(["llvm-config", "--libdir"], capture_output=True, text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            yield out.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    for pattern in DIRECTORIES:
        yield from sorted(glob.glob(pattern))


def candidates():
    seen = set()
    for d in directories():
        if not os.path.isdir(d):
            continue
        for name in FILES:
            for path in sorted(glob.glob(os.path.join(d, name))):
                real = os.path.realpath(path)
                if real not in seen and os.path.isfile(real):
                    seen.add(real)
                    yield path


def main():
    rejected = []
    for path in candidates():
        try:
            lib = ctypes.CDLL(path)
        except OSError as e:
            rejected.append(f"{path}: does not load ({e})")
            continue
        if not hasattr(lib, "clang_createIndex"):
            rejected.append(f"{path}: loads, but has no clang_createIndex (not the C API)")
            continue
        print(f"libclang: {path} loads and resolves clang_createIndex", file=sys.stderr)
        return 0
    print("libclang: no loadable libclang with clang_createIndex", file=sys.stderr)
    for r in rejected:
        print(f"  rejected {r}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
