"""PyTorch Lightning saves, loads and removes checkpoints in cairn, from the checkpoint dict in
memory (no files).

    from cairn.integrations.lightning import CairnCheckpointIO
    store = cairn.Store.init("runs/.cairn")
    io = CairnCheckpointIO(store, monitor="val_loss", mode="min", save_top_k=2, run_id="r42")
    trainer = L.Trainer(plugins=[io], callbacks=[ModelCheckpoint(monitor="val_loss", save_top_k=2)])
    trainer.fit(model)
    trainer.fit(model, ckpt_path="HEAD")        # resume from a revision (or a path saved before)

Each save is one commit of the checkpoint dict in the nested-state layout (docs/python.md):
``checkpoint.safetensors`` (the model's and optimizers' tensors, deduplicated and delta-coded
against the previous save) and ``checkpoint.json`` (everything else, exact types), with the
global step, the epoch, the monitored value as a metric, and the path Lightning chose as the
param ``lightning_path``. ``ModelCheckpoint`` keeps its semantics: when it removes a checkpoint
that fell out of its top k, cairn's retention does the pruning: a gc keeps the ``save_top_k``
best commits of the branch by ``monitor`` (gc also always keeps the branch's head, the newest
save, which a resume needs), and reclaims the others' space. ``load_checkpoint`` takes a cairn revision (``HEAD``, a commit id, a tag,
``run@best``) or a path this plugin saved.
"""

from __future__ import annotations

import os
from typing import Any

from lightning.pytorch.plugins.io import CheckpointIO

from .._cairn import NotFoundError
from .._store import Store

__all__ = ["CairnCheckpointIO"]

NAME = "checkpoint"


class CairnCheckpointIO(CheckpointIO):
    """A Lightning ``CheckpointIO`` that commits to a :class:`cairn.Store`.

    ``monitor``, ``mode`` (``"min"`` or ``"max"``) and ``save_top_k``: the retention applied when
    Lightning removes a checkpoint (give the same values as your ``ModelCheckpoint``); without
    ``monitor``, removing keeps the newest ``save_top_k`` commits. ``branch``: where to commit
    (default: the store's current branch). ``run_id``: recorded on every commit.
    """

    def __init__(
        self,
        store: Store,
        *,
        monitor: str | None = None,
        mode: str = "min",
        save_top_k: int = 1,
        branch: str | None = None,
        run_id: str | None = None,
    ) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', not {mode!r}")
        self.store = store
        self.monitor = monitor
        self.mode = mode
        self.save_top_k = save_top_k
        self.branch = branch
        self.run_id = run_id

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        path = os.fspath(path)
        metrics = {}
        score = _monitored(checkpoint)
        if self.monitor and score is not None:
            metrics[self.monitor] = score
        self.store.commit(
            {NAME: checkpoint},
            os.path.basename(path),
            step=int(checkpoint.get("global_step", 0)),
            epoch=float(checkpoint.get("epoch", 0)),
            metrics=metrics,
            params={"lightning_path": path},
            run_id=self.run_id,
            branch=self.branch,
        )

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict[str, Any]:
        return self.store.load(self._rev(os.fspath(path)), NAME)

    def remove_checkpoint(self, path) -> None:
        # The commit stays in history; its data goes when no retention rule keeps it.
        best = (self.save_top_k, self.monitor, self.mode) if self.monitor else None
        self.store.gc(
            keep_last=None if best else max(self.save_top_k, 1),
            keep_best=best,
            branches=[self.branch] if self.branch else None,
        )

    def _rev(self, path: str) -> str:
        for c in self.store.log(all=True):
            if c.params.get("lightning_path") == path:
                return c.id
        try:
            return self.store.resolve(path)
        except NotFoundError:
            raise NotFoundError(
                f"{path!r} is neither a checkpoint this plugin saved nor a cairn revision"
            ) from None


def _monitored(checkpoint: dict[str, Any]) -> float | None:
    """The value ModelCheckpoint monitored when it asked for this save."""
    for key, state in (checkpoint.get("callbacks") or {}).items():
        if "ModelCheckpoint" in str(key) and isinstance(state, dict):
            v = state.get("current_score")
            if v is not None:
                try:
                    return float(v)
                except (TypeError, ValueError):
                    return None
    return None
