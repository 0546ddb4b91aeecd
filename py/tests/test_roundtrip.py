"""Exact round trips: model and optimizer state dicts of every float width, nested state with
tuples, int keys, NaN and inf, numpy and JAX arrays, single-tensor reads."""

import collections
import math

import numpy as np
import pytest
import torch
from torch import nn

import cairn


def same(a, b, path="root"):
    """Exact equality of structure, types and tensor bits (NaN equals NaN)."""
    assert type(a) is type(b), f"{path}: {type(a)} != {type(b)}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, f"{path}: {a.dtype}{a.shape} != {b.dtype}{b.shape}"
        assert torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8)) if a.numel() else True, path
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape, path
        assert a.tobytes() == b.tobytes(), path
    elif isinstance(a, dict):
        assert list(a.keys()) == list(b.keys()), f"{path}: keys {list(a)} != {list(b)}"
        for k in a:
            assert type(k) is type(list(b.keys())[list(a.keys()).index(k)])
            same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            same(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b), path
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def trained(dtype):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(50, 16), nn.Linear(16, 8), nn.LayerNorm(8)).to(dtype)
    decay = [p for n, p in model.named_parameters() if not n.endswith("bias")]
    rest = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": rest, "weight_decay": 0.0}],
        lr=3e-4, betas=(0.9, 0.999), eps=float("1e-8"),
    )
    for _ in range(3):
        x = torch.randint(0, 50, (4, 5))
        model(x).float().sum().backward()
        opt.step()
        opt.zero_grad()
    return model, opt


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_model_and_optimizer_state_round_trip_exactly(store, dtype):
    model, opt = trained(dtype)
    sd, osd = model.state_dict(), opt.state_dict()
    store.commit({"model.safetensors": sd, "optimizer": osd}, "step 3", step=3)
    got = store.load("HEAD", "model.safetensors")
    same(dict(sd), got)
    got_opt = store.load("HEAD", "optimizer")
    same(osd, got_opt)
    # Optimizer state keeps tuples (betas) and integer parameter ids.
    assert got_opt["param_groups"][0]["betas"] == (0.9, 0.999)
    assert all(type(k) is int for k in got_opt["state"])
    # And torch accepts it.
    model2, opt2 = trained(dtype)
    model2.load_state_dict(got)
    opt2.load_state_dict(got_opt)
    same(opt2.state_dict(), osd)


def test_nested_state_keeps_types_nan_inf_and_order(store):
    state = collections.OrderedDict(
        [
            ("epoch", 3),
            ("big", 2**80),
            ("lr", 0.1),
            ("nan", float("nan")),
            ("inf", float("inf")),
            ("ninf", float("-inf")),
            ("flag", True),
            ("none", None),
            ("name", "run-ü"),
            ("raw", b"\x00\xff"),
            ("tuple", (1, (2.5, "x"), [])),
            ((1, 2), "tuple key"),
            (7, {"nested": torch.arange(6).reshape(2, 3)}),
            ("size", torch.Size([2, 3])),
            ("dtype", torch.bfloat16),
            ("scalar", torch.tensor(1.5)),
            ("empty", torch.empty(0, 4)),
            ("np", np.arange(5, dtype=np.int16)),
            ("rng", torch.get_rng_state()),
        ]
    )
    store.commit({"trainer": state})
    same(state, store.load("HEAD", "trainer"))
    assert set(store.files()) == {"trainer.json", "trainer.safetensors"}


def test_fp8_bool_and_integer_tensors_round_trip(store):
    t = {
        "e4m3": torch.randn(16).to(torch.float8_e4m3fn),
        "e5m2": torch.randn(16).to(torch.float8_e5m2),
        "mask": torch.rand(10) > 0.5,
        "i64": torch.arange(-5, 5),
        "u8": torch.arange(256, dtype=torch.uint8),
    }
    store.commit({"t.safetensors": t})
    same(t, store.load("HEAD", "t.safetensors"))


def test_numpy_and_jax_arrays(store):
    import jax.numpy as jnp
    import ml_dtypes

    a = {
        "f32": np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32),
        "bf16": np.arange(8, dtype=np.float32).astype(ml_dtypes.bfloat16),
        "big_endian": np.arange(4, dtype=">i4"),
    }
    store.commit({"np.safetensors": a, "jax.safetensors": {"w": jnp.ones((2, 2), dtype=jnp.bfloat16)}})
    got = store.load("HEAD", "np.safetensors", framework="numpy")
    assert got["f32"].tobytes() == a["f32"].tobytes()
    assert got["bf16"].dtype == ml_dtypes.bfloat16 and got["bf16"].tobytes() == a["bf16"].tobytes()
    assert got["big_endian"].tolist() == [0, 1, 2, 3] and got["big_endian"].dtype == np.int32
    w = store.load("HEAD", "jax.safetensors", framework="jax")["w"]
    assert w.dtype == jnp.bfloat16 and bool((w == 1).all())
    # torch by default; bf16 stays bf16.
    assert store.load("HEAD", "jax.safetensors")["w"].dtype == torch.bfloat16


def test_one_tensor_read_alone_and_bytes_and_paths(store, tmp_path):
    p = tmp_path / "cfg.json"
    p.write_bytes(b'{"a": 1}')
    w = torch.randn(64, 32)
    store.commit({"m.safetensors": {"w": w, "b": torch.zeros(3)}, "cfg.json": p, "n.txt": b"hello"})
    assert torch.equal(store.tensor("HEAD", "m.safetensors:w"), w)
    assert store.tensor("HEAD", "w", framework="numpy").tobytes() == w.numpy().tobytes()
    assert store.load("HEAD", "cfg.json") == b'{"a": 1}'
    assert store.read_bytes("HEAD", "n.txt") == b"hello"
