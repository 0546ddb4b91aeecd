"""The Hugging Face Trainer callback and the plain-PyTorch helpers, with the real frameworks on
a tiny GPT-2 built from a config (nothing downloaded)."""

import os
import subprocess
import sys

import pytest
import torch

import cairn
import cairn.torch


def test_import_cairn_needs_no_framework():
    code = (
        "import sys; import cairn, cairn.integrations; "
        "assert 'transformers' not in sys.modules and 'lightning' not in sys.modules, "
        "sorted(m for m in sys.modules if m.split('.')[0] in ('transformers', 'lightning'))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_plain_torch_save_and_load(store):
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    obj = {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 3}
    cairn.torch.save(obj, store, step=10, metrics={"val_loss": 0.5})
    back = cairn.torch.load(store, "HEAD")
    assert back["epoch"] == 3
    assert torch.equal(back["model"]["weight"], model.weight.detach())
    opt.load_state_dict(back["optimizer"])
    cairn.torch.save(model.state_dict(), store, name="weights")
    assert torch.equal(cairn.torch.load(store, "HEAD", "weights")["bias"], model.bias.detach())
    assert store.log()[1].step == 10


transformers = pytest.importorskip("transformers")


class Tokens(torch.utils.data.Dataset):
    def __init__(self, n=32, length=16, vocab=64):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randint(0, vocab, (n, length), generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"input_ids": self.x[i], "labels": self.x[i]}


def trainer(out, store=None, max_steps=6, stop_at=None, extra_args=None, **cb):
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments

    from cairn.integrations.transformers import CairnCallback

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(
        vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0
    ))
    args = TrainingArguments(
        output_dir=str(out), max_steps=max_steps, save_steps=2, logging_steps=1,
        per_device_train_batch_size=4, learning_rate=1e-3, seed=0, report_to=[],
        use_cpu=True, dataloader_num_workers=0, disable_tqdm=True,
        **{"save_total_limit": 2, **(extra_args or {})},
    )
    callbacks = []
    cairn_cb = None
    if store is not None:
        cairn_cb = CairnCallback(store, **cb)
        callbacks.append(cairn_cb)
    if stop_at is not None:
        class Stop(TrainerCallback):
            def on_save(self, args, state, control, **kw):
                if state.global_step >= stop_at:
                    control.should_training_stop = True

        callbacks.append(Stop())
    t = Trainer(model=model, args=args, train_dataset=Tokens(), eval_dataset=Tokens(8),
                callbacks=callbacks)
    return t, cairn_cb


def losses(t):
    return {h["step"]: h["loss"] for h in t.state.log_history if "loss" in h}


def test_trainer_commits_each_save_and_resumes_exactly(store, tmp_path):
    # The uninterrupted run.
    full, _ = trainer(tmp_path / "full")
    full.train()
    want = losses(full)
    # The same run with cairn, interrupted after the save at step 4, folders removed.
    t, cb = trainer(tmp_path / "run", store, stop_at=4, keep_local=False, run_id="gpt2-tiny")
    t.train()
    log = store.log()
    assert [c.step for c in log] == [4, 2]
    assert all(c.run_id == "gpt2-tiny" for c in log)
    assert log[0].metrics["loss"] == pytest.approx(want[4])
    assert log[0].config["learning_rate"] == 1e-3
    assert not [p for p in os.listdir(tmp_path / "run") if p.startswith("checkpoint-")]
    files = set(store.files("HEAD"))
    assert {"model.safetensors", "optimizer.pt", "trainer_state.json"} <= files
    # Resume from cairn in a fresh process-like setup: the next steps' losses are the
    # uninterrupted run's.
    from cairn.integrations.transformers import checkout_for_resume

    path = checkout_for_resume(store, "HEAD", tmp_path / "resume")
    t2, _ = trainer(tmp_path / "run2")
    t2.train(resume_from_checkpoint=path)
    got = losses(t2)
    assert got[5] == pytest.approx(want[5], rel=1e-6)
    assert got[6] == pytest.approx(want[6], rel=1e-6)


def test_trainer_retention_follows_save_total_limit(store, tmp_path):
    t, _ = trainer(tmp_path / "run", store, max_steps=8)
    t.train()
    steps = [c.step for c in store.log()]
    assert steps == [8, 6, 4, 2]  # history stays
    # save_total_limit=2: the data of steps 2 and 4 was released.
    with pytest.raises(cairn.PrunedError):
        store.load(store.log()[3].id, "model.safetensors")
    assert store.load("HEAD", "model.safetensors")


lightning = pytest.importorskip("lightning")


def lightning_fit(tmp_path, io, max_epochs, ckpt_path=None, scores=(0.5, 0.3, 0.4, 0.2, 0.6, 0.1)):
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)

        def training_step(self, batch, _):
            x, y = batch
            return torch.nn.functional.mse_loss(self.layer(x), y)

        def validation_step(self, batch, _):
            # A fixed score per epoch, so the top k is known.
            self.log("val_loss", scores[self.current_epoch])

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-2, betas=(0.9, 0.99))

    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 4, generator=g)
    data = torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True))
    loader = torch.utils.data.DataLoader(data, batch_size=8)
    torch.manual_seed(0)
    model = Tiny()
    trainer = L.Trainer(
        max_epochs=max_epochs, plugins=[io], logger=False, enable_progress_bar=False,
        enable_model_summary=False, accelerator="cpu", default_root_dir=tmp_path,
        callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val_loss", mode="min", save_top_k=2)],
    )
    trainer.fit(model, loader, loader, ckpt_path=ckpt_path)
    return trainer, model


def test_lightning_top_k_is_cairn_retention_and_resumes(store, tmp_path):
    from cairn.integrations.lightning import CairnCheckpointIO

    io = CairnCheckpointIO(store, monitor="val_loss", mode="min", save_top_k=2, run_id="lit")
    trainer, model = lightning_fit(tmp_path, io, max_epochs=5)
    log = store.log()
    # Epochs 0-3 entered the top 2 when they ended (epoch 4's 0.6 did not): 4 saves, 4 commits.
    assert [c.epoch for c in log] == [3.0, 2.0, 1.0, 0.0]
    assert [c.metrics["val_loss"] for c in log] == pytest.approx([0.2, 0.4, 0.3, 0.5])
    assert not (tmp_path / "ckpt").exists() or not os.listdir(tmp_path / "ckpt")
    # Exactly the two best keep their data.
    kept = sorted(c.metrics["val_loss"] for c in log if _loadable(store, c.id))
    assert kept == pytest.approx([0.2, 0.3])
    ck = store.load("HEAD", "checkpoint")
    assert ck["epoch"] == 3 and torch.equal(
        ck["state_dict"]["layer.weight"], store.load(log[0].id, "checkpoint")["state_dict"]["layer.weight"]
    )
    # Resume from a revision: training goes on from epoch 4 with the saved weights.
    io2 = CairnCheckpointIO(store, monitor="val_loss", mode="min", save_top_k=2)
    trainer2, _ = lightning_fit(tmp_path / "again", io2, max_epochs=6, ckpt_path="HEAD")
    assert trainer2.current_epoch == 6
    # Epoch 5 scored 0.1, the best: it was saved as a new commit.
    assert store.log()[0].metrics["val_loss"] == pytest.approx(0.1)


def test_trainer_best_model_metric_is_kept_too(store, tmp_path):
    t, _ = trainer(
        tmp_path / "run", store, max_steps=8,
        extra_args={"save_total_limit": 1, "eval_strategy": "steps", "eval_steps": 2,
                    "metric_for_best_model": "loss", "greater_is_better": False},
    )
    t.train()
    log = store.log()
    assert [c.step for c in log] == [8, 6, 4, 2]
    best = min(log, key=lambda c: c.metrics["eval_loss"])
    kept = {c.id for c in log if _loadable(store, c.id, "model.safetensors")}
    assert kept == {log[0].id, best.id}


def _loadable(store, rev, name="checkpoint"):
    try:
        store.load(rev, name)
        return True
    except cairn.PrunedError:
        return False
