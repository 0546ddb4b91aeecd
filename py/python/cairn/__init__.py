"""cairn: a content-addressed versioning store for machine-learning checkpoints.

    import cairn, torch
    store = cairn.Store.init("runs/.cairn")
    c = store.commit({"model.safetensors": model.state_dict(),
                      "optimizer": optimizer.state_dict()},
                     message="step 500", step=500, metrics={"val_loss": 0.41})
    sd = store.load("HEAD", "model.safetensors")
    optimizer.load_state_dict(store.load("HEAD", "optimizer"))

The Rust crate is the implementation; this package is a thin binding (docs/python.md).
"""

from ._cairn import (
    BadInputError,
    CorruptError,
    Error,
    NotFoundError,
    PrunedError,
    __version__,
)
from ._store import Commit, CommitHandle, CommitResult, Store

__all__ = [
    "BadInputError",
    "Commit",
    "CommitHandle",
    "CommitResult",
    "CorruptError",
    "Error",
    "NotFoundError",
    "PrunedError",
    "Store",
    "__version__",
]
