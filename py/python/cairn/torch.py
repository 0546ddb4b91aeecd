"""For training loops that call ``torch.save(obj, path)`` and ``torch.load(path)`` today:

    import cairn.torch
    cairn.torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 3},
                     store, step=step, metrics={"val_loss": loss})
    ckpt = cairn.torch.load(store, "HEAD")
    model.load_state_dict(ckpt["model"]); opt.load_state_dict(ckpt["optimizer"])

The object is stored in the nested-state layout (docs/python.md): its tensors in
``NAME.safetensors`` (deduplicated and delta-coded against the previous commit), the rest in
``NAME.json``, so it comes back with its exact types. A flat dict of tensors is stored as
``NAME.safetensors`` alone.
"""

from __future__ import annotations

from typing import Any

from ._state import is_flat_tensor_dict
from ._store import CommitResult, Store

__all__ = ["load", "save"]


def save(obj: Any, store: Store, name: str = "checkpoint", message: str = "", **meta) -> CommitResult:
    """Commit ``obj`` as ``name`` (one commit); ``meta`` as :meth:`cairn.Store.commit`."""
    if is_flat_tensor_dict(obj):
        return store.commit({f"{name}.safetensors": obj}, message, **meta)
    return store.commit({name: obj}, message, **meta)


def load(store: Store, rev: str = "HEAD", name: str = "checkpoint", *, framework: str | None = None):
    """The object :func:`save` stored as ``name`` in ``rev``."""
    files = set(store.files(rev))
    if f"{name}.json" not in files and f"{name}.safetensors" in files:
        return store.load(rev, f"{name}.safetensors", framework=framework)
    return store.load(rev, name, framework=framework)
