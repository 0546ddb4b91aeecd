"""Tensors of torch, numpy and JAX to and from the bytes cairn stores.

A tensor goes in as ``(dtype, shape, bytes)``: ``bytes`` is a zero-copy uint8 view of the
tensor's memory, little-endian and row-major (safetensors' layout), and ``dtype`` one of the
safetensors names (``F32``, ``BF16``, ``F8_E4M3``, ...). A GPU tensor is copied to host by its
framework first; a non-contiguous one is made contiguous (a copy). A tensor comes out as a view
of the buffer cairn filled, with no further copy.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from ._cairn import BadInputError

# safetensors dtype name -> torch dtype attribute name.
_TORCH = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8",
    "U64": "uint64", "U32": "uint32", "U16": "uint16", "U8": "uint8", "BOOL": "bool",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
}
# safetensors dtype name -> numpy dtype name (ml_dtypes names for the ones numpy lacks).
_NUMPY = {
    "F64": "float64", "F32": "float32", "F16": "float16", "I64": "int64", "I32": "int32",
    "I16": "int16", "I8": "int8", "U64": "uint64", "U32": "uint32", "U16": "uint16",
    "U8": "uint8", "BOOL": "bool",
}
_ML_DTYPES = {"BF16": "bfloat16", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}

FRAMEWORKS = ("torch", "numpy", "jax")


def framework_of(x: Any) -> str | None:
    """``torch``, ``numpy`` or ``jax`` when ``x`` is a tensor of that framework, else None."""
    if isinstance(x, np.ndarray):
        return "numpy"
    mod = type(x).__module__ or ""
    if mod.startswith("torch") and "torch" in sys.modules:
        import torch

        if isinstance(x, torch.Tensor):
            return "torch"
    if mod.startswith(("jax", "jaxlib")) and "jax" in sys.modules:
        import jax

        if isinstance(x, jax.Array):
            return "jax"
    return None


def is_tensor(x: Any) -> bool:
    return framework_of(x) is not None


def _torch_dtype_name(t) -> str:
    import torch

    for name, attr in _TORCH.items():
        if getattr(torch, attr, None) == t.dtype:
            return name
    raise BadInputError(f"torch dtype {t.dtype} has no safetensors equivalent")


def _numpy_dtype_name(a: np.ndarray) -> str:
    dt = a.dtype
    for name, np_name in _NUMPY.items():
        if dt == np.dtype(np_name):
            return name
    for name, ml_name in _ML_DTYPES.items():
        if dt.name == ml_name:
            return name
    raise BadInputError(f"numpy dtype {dt} has no safetensors equivalent")


def to_bytes(x: Any, where: str) -> tuple[str, list[int], np.ndarray]:
    """``(dtype, shape, uint8 view)`` of tensor ``x``; ``where`` names it in errors."""
    fw = framework_of(x)
    if fw == "torch":
        import torch

        t = x.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        if t.is_sparse or t.layout != torch.strided:
            raise BadInputError(f"{where}: sparse tensors are not supported")
        if t.is_complex():
            raise BadInputError(f"{where}: complex tensors are not supported")
        name = _torch_dtype_name(t)
        shape = list(t.shape)
        flat = t.contiguous().reshape(-1)
        if flat.numel() == 0:
            return name, shape, np.empty(0, dtype=np.uint8)
        # A uint8 view of the same memory, then numpy's view of that: no copy.
        return name, shape, flat.view(torch.uint8).numpy()
    if fw == "jax":
        x = np.asarray(x)
        fw = "numpy"
    if fw == "numpy":
        a = x
        if a.dtype.byteorder == ">" or (a.dtype.byteorder == "=" and sys.byteorder == "big"):
            a = a.astype(a.dtype.newbyteorder("<"))
        name = _numpy_dtype_name(a)
        shape = list(a.shape)
        a = np.ascontiguousarray(a).reshape(-1)
        return name, shape, a.view(np.uint8)
    raise BadInputError(f"{where}: {type(x).__name__} is not a torch, numpy or JAX tensor")


def from_bytes(dtype: str, shape: list[int], buf: np.ndarray, framework: str, where: str):
    """A tensor of ``framework`` viewing ``buf`` (uint8) as ``dtype`` and ``shape``."""
    if framework == "torch":
        import torch

        attr = _TORCH.get(dtype)
        tdt = getattr(torch, attr, None) if attr else None
        if tdt is None:
            raise BadInputError(f"{where}: dtype {dtype} has no torch equivalent")
        t = torch.from_numpy(buf)
        if buf.size == 0:
            return torch.empty(shape, dtype=tdt)
        return t.view(tdt).reshape(shape)
    if framework in ("numpy", "jax"):
        if dtype in _NUMPY:
            ndt = np.dtype(_NUMPY[dtype])
        elif dtype in _ML_DTYPES:
            try:
                import ml_dtypes
            except ImportError:
                raise BadInputError(
                    f"{where}: numpy has no {dtype}; install ml_dtypes or load with "
                    'framework="torch"'
                ) from None
            ndt = np.dtype(getattr(ml_dtypes, _ML_DTYPES[dtype]))
        else:
            raise BadInputError(f"{where}: dtype {dtype} has no numpy equivalent")
        a = buf.view(ndt).reshape(shape)
        if framework == "jax":
            import jax.numpy as jnp

            return jnp.asarray(a)
        return a
    raise BadInputError(f"framework {framework!r}: expected one of {', '.join(FRAMEWORKS)}")


def default_framework() -> str:
    """torch when it is installed, else numpy."""
    try:
        import torch  # noqa: F401

        return "torch"
    except ImportError:
        return "numpy"
