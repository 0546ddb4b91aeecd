"""The Hugging Face ``Trainer`` commits every checkpoint it saves into cairn.

    from cairn.integrations.transformers import CairnCallback, checkout_for_resume
    store = cairn.Store.init("runs/.cairn")
    trainer = Trainer(..., callbacks=[CairnCallback(store, run_id="r42", keep_local=False)])
    trainer.train()
    # later, or after a crash:
    trainer.train(resume_from_checkpoint=checkout_for_resume(store, "HEAD", "resume/"))

On each save (``on_save`` fires once ``checkpoint-N/`` is written and old ones rotated) the
folder is committed whole, with the step, the epoch, the latest logged and evaluation metrics,
the run id, and the training arguments as config. With ``keep_local=False`` the folder is removed
once committed, so the disk holds at most one checkpoint. ``save_total_limit``,
``metric_for_best_model`` and ``greater_is_better`` become cairn's retention: after each commit
a gc keeps the last ``save_total_limit`` commits of the branch and the best one by the metric
(as the Trainer keeps its best checkpoint), and reclaims the space of the others.
"""

from __future__ import annotations

import math
import os
import shutil
from typing import Any

from transformers import TrainerCallback

from .._store import CommitResult, Store

__all__ = ["CairnCallback", "checkout_for_resume"]


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


class CairnCallback(TrainerCallback):
    """Commit each checkpoint the ``Trainer`` saves.

    ``store``: the :class:`cairn.Store`. ``branch``: the branch to commit to (default: the
    store's current branch). ``run_id``: recorded on every commit (default: the output
    directory's name). ``keep_local``: keep ``checkpoint-N/`` after committing it (default True).
    ``retention``: apply ``save_total_limit`` and the best-model metric as cairn's retention
    after each commit (default True; only when ``save_total_limit`` is set).
    """

    def __init__(
        self,
        store: Store,
        *,
        branch: str | None = None,
        run_id: str | None = None,
        keep_local: bool = True,
        retention: bool = True,
        message: str = "checkpoint-{step}",
    ) -> None:
        self.store = store
        self.branch = branch
        self.run_id = run_id
        self.keep_local = keep_local
        self.retention = retention
        self.message = message
        self.metrics: dict[str, float] = {}
        self.commits: list[CommitResult] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        for k, v in (logs or {}).items():
            n = _number(v)
            if n is not None:
                self.metrics[k] = n

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self.on_log(args, state, control, logs=metrics)

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if not os.path.isdir(folder):
            return
        config = {k: v for k, v in args.to_sanitized_dict().items() if _jsonable(v)}
        c = self.store.commit(
            folder,
            self.message.format(step=state.global_step),
            step=int(state.global_step),
            epoch=float(state.epoch) if state.epoch is not None else None,
            metrics=dict(self.metrics),
            config=config,
            run_id=self.run_id or os.path.basename(os.path.normpath(args.output_dir)),
            branch=self.branch,
        )
        self.commits.append(c)
        if not self.keep_local:
            shutil.rmtree(folder, ignore_errors=True)
        if self.retention and args.save_total_limit:
            best = None
            if args.metric_for_best_model:
                m = args.metric_for_best_model
                if not m.startswith("eval_"):
                    m = f"eval_{m}"
                best = (1, m, "max" if args.greater_is_better else "min")
            self.store.gc(
                keep_last=int(args.save_total_limit),
                keep_best=best,
                branches=[c.branch],
            )


def _jsonable(v: Any) -> bool:
    import json

    try:
        json.dumps(v)
        return True
    except (TypeError, ValueError):
        return False


def checkout_for_resume(store: Store, rev: str, dir: str | os.PathLike) -> str:
    """Check ``rev`` out into ``dir`` (made empty first) as a ``checkpoint-N`` folder the
    ``Trainer`` resumes from, and return its path: pass it as ``resume_from_checkpoint``."""
    step = store.log(rev, limit=1)[0].step
    path = os.path.join(os.fspath(dir), f"checkpoint-{step if step is not None else 0}")
    if os.path.exists(path):
        shutil.rmtree(path)
    os.makedirs(path)
    store.checkout(rev, path, force=True)
    return path
