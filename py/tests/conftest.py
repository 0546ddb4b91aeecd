"""Fixtures of the Python package's tests: a fresh store per test, and the built CLI binary
(scripts/test.sh sets CAIRN_BIN to the binary `cargo test` built)."""

import os
import shutil
import subprocess

import pytest

import cairn


@pytest.fixture
def store(tmp_path):
    return cairn.Store.init(tmp_path / "store")


@pytest.fixture(scope="session")
def cli_bin():
    path = os.environ.get("CAIRN_BIN") or shutil.which("cairn")
    assert path and os.path.exists(path), "set CAIRN_BIN to the built cairn binary"
    return path


@pytest.fixture
def cli(cli_bin):
    def run(store_path, *args, check=True):
        env = dict(os.environ, CAIRN_AUTHOR="test@cairn")
        env.pop("CAIRN_STORE", None)
        r = subprocess.run(
            [cli_bin, "--store", os.fspath(store_path), *map(os.fspath, args)],
            capture_output=True,
            env=env,
        )
        if check:
            assert r.returncode == 0, r.stderr.decode()
        return r

    return run
