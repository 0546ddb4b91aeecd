"""History, queries, diff, gc, tags, errors, and the CLI reading what Python wrote (and back)."""

import json
import subprocess

import numpy as np
import pytest
import safetensors.numpy
import safetensors.torch
import torch

import cairn


def commit_steps(store, n=4):
    ids = []
    for step in range(n):
        sd = {"w": torch.full((8,), float(step)), "fixed": torch.ones(1000)}
        ids.append(store.commit({"model.safetensors": sd}, f"step {step}", step=step,
                                metrics={"val_loss": [0.9, 0.3, 0.5, 0.4][step % 4]},
                                run_id="r1", params={"lr": 3e-4}, config={"layers": 2}).id)
    return ids


def test_log_query_sort_diff_tag(store):
    ids = commit_steps(store)
    log = store.log()
    assert [c.id for c in log] == ids[::-1]
    assert log[0].step == 3 and log[0].run_id == "r1" and log[0].config == {"layers": 2}
    assert log[0].params == {"lr": "0.0003"}
    best = store.log(where="val_loss < 0.45", sort="val_loss")
    assert [c.metrics["val_loss"] for c in best] == [0.3, 0.4]
    assert store.resolve("HEAD~3") == ids[0]
    d = store.diff("HEAD~1", "HEAD")
    assert json.dumps(d)  # a plain JSON document
    assert store.tag("production", "HEAD~1") == ids[2]
    with pytest.raises(cairn.Error, match="already exists"):
        store.tag("production", "HEAD")
    assert store.tag("production", "HEAD", move=True) == ids[3]
    assert store.refs()["tags"] == {"production": ids[3]}


def test_gc_plan_then_run(store):
    commit_steps(store, 5)
    plan = store.gc(keep_last=2, keep_best=(1, "val_loss", "min"), dry_run=True)
    assert plan["dry_run"] is True
    kept = [c for c in plan["plan"]["commits"] if c["decision"] != "prune"]
    assert len(store.log()) == 5
    out = store.gc(keep_last=2, keep_best=(1, "val_loss", "min"))
    assert out["dry_run"] is False
    # A pruned commit's data is gone: reading it is a PrunedError.
    pruned = [c["id"] for c in plan["plan"]["commits"] if c["decision"] == "prune"]
    assert pruned and len(kept) == 3
    with pytest.raises(cairn.PrunedError):
        store.load(pruned[0], "model.safetensors")


def test_errors_are_cairn_exceptions_with_the_library_message(store, tmp_path):
    with pytest.raises(cairn.NotFoundError):
        store.resolve("HEAD")
    store.commit({"a.bin": b"x"})
    with pytest.raises(cairn.NotFoundError, match="nope"):
        store.resolve("nope")
    with pytest.raises(cairn.NotFoundError):
        store.load("HEAD", "missing.safetensors")
    with pytest.raises(cairn.BadInputError, match="val_loss"):
        store.commit({"a.bin": b"x"}, metrics={"val_loss": float("nan")})
    with pytest.raises(cairn.BadInputError, match="dict of name -> tensor"):
        store.commit({"m.safetensors": {"w": 1}})
    with pytest.raises(cairn.BadInputError, match="cannot store a"):
        store.commit({"state": {"f": object()}})
    with pytest.raises(cairn.BadInputError):
        store.commit({"../escape": b"x"})
    with pytest.raises(cairn.NotFoundError):
        cairn.Store(tmp_path / "no-store-here")
    assert issubclass(cairn.BadInputError, cairn.Error) and issubclass(cairn.Error, Exception)
    assert len(store.log()) == 1  # nothing half-written


def test_python_commit_reads_back_identically_through_the_cli(store, cli, tmp_path):
    w = torch.randn(32, 16).to(torch.bfloat16)
    store.commit({"model.safetensors": {"w": w, "b": torch.arange(4.0)}}, "from python", step=7)
    out = tmp_path / "out"
    cli(store.path, "checkout", "HEAD", out)
    loaded = safetensors.torch.load_file(out / "model.safetensors")
    assert torch.equal(loaded["w"].view(torch.uint16), w.view(torch.uint16))
    r = cli(store.path, "log", "--json")
    assert json.loads(r.stdout)[0]["step"] == 7
    npy = tmp_path / "b.npy"
    cli(store.path, "tensor", "HEAD", "model.safetensors:b", "-o", npy)
    assert np.load(npy).tolist() == [0.0, 1.0, 2.0, 3.0]


def test_cli_commit_reads_back_identically_through_python(store, cli, tmp_path):
    ck = tmp_path / "ck"
    ck.mkdir()
    arrays = {"emb": np.random.default_rng(1).standard_normal((10, 4)).astype(np.float16)}
    safetensors.numpy.save_file(arrays, ck / "model.safetensors")
    (ck / "notes.txt").write_text("cli")
    cli(store.path, "commit", ck, "-m", "from cli")
    got = store.load("HEAD", "model.safetensors", framework="numpy")
    assert got["emb"].tobytes() == arrays["emb"].tobytes()
    assert store.load("HEAD", "notes.txt") == b"cli"
    assert store.log()[0].message == "from cli"
    # A directory commit from Python is the CLI's commit DIR.
    c = store.commit(ck, "dir from python")
    assert c.files == 2
    out = tmp_path / "out"
    store.checkout("HEAD", out)
    assert (out / "model.safetensors").read_bytes() == (ck / "model.safetensors").read_bytes()


def test_push_clone_pull_through_a_remote(store, tmp_path):
    """The remote operations from Python: push to a file:// remote, clone elsewhere, a second
    commit pulled across, tensors equal; a non-fast-forward raises."""
    w = np.arange(1000, dtype=np.float32)
    store.commit({"model.safetensors": {"w": w}}, "one")
    url = f"file://{tmp_path / 'bucket'}"
    assert store.add_remote("origin", url) == url
    out = store.push()
    assert out["refs"][0]["status"] == "updated" and out["chunks"] >= 1
    copy = cairn.Store.clone(url, tmp_path / "copy")
    assert copy.resolve("HEAD") == store.resolve("HEAD")
    store.commit({"model.safetensors": {"w": w * 2}}, "two")
    store.push()
    assert copy.pull()["status"] == "fast-forward"
    got = copy.tensor("HEAD", "model.safetensors:w", framework="numpy")
    assert (got == w * 2).all()
    assert copy.fetch()["refs"]["refs/heads/main"] == [store.resolve("HEAD")]
    assert copy.remotes()["origin"]["url"] == url
    store.commit({"model.safetensors": {"w": w * 3}}, "three")
    copy.commit({"model.safetensors": {"w": w * 4}}, "four")
    store.push()
    with pytest.raises(cairn.Error, match="non-fast-forward"):
        copy.push()


def test_lazy_clone_reads_tensors_on_demand(store, tmp_path):
    """A lazy clone from Python: history at once, a tensor fetched on first read, equal."""
    w = np.arange(300_000, dtype=np.float32)
    store.commit({"model.safetensors": {"w": w, "b": np.ones(10, dtype=np.float32)}}, "one")
    url = f"file://{tmp_path / 'bucket'}"
    store.add_remote("origin", url)
    store.push()
    lazy = cairn.Store.clone(url, tmp_path / "lazy", lazy=True)
    assert [c.id for c in lazy.log()] == [c.id for c in store.log()]
    got = lazy.tensor("HEAD", "model.safetensors:w", framework="numpy")
    assert (got == w).all()


def test_a_stored_policy_runs_after_commits_off_their_path(store, cli):
    # `cairn retention set` stores the policy; each commit then starts it in the background
    # (a thread of this process), and gc_status reports the run.
    cli(store.path, "retention", "set", "keep-last 2")
    ids = commit_steps(store, 4)
    st = store.gc_status(wait=True)
    assert st["running"] is False
    last = st["last"]
    assert last["state"] == "finished" and last["policy"] == "keep-last 2", st
    assert last["trigger"].startswith("policy after commit on "), st
    for pruned in ids[:2]:
        with pytest.raises(cairn.PrunedError):
            store.load(pruned, "model.safetensors")
    assert store.load(ids[-1], "model.safetensors")["w"][0] == 3.0
    # The async path too: its commits hand the policy to a thread of the committer.
    handles = [store.commit_async({"model.safetensors": {"w": torch.full((8,), 10.0 + i)}},
                                  f"async {i}") for i in range(3)]
    async_ids = [h.result().id for h in handles]
    st = store.gc_status(wait=True)
    assert st["last"]["state"] == "finished", st
    with pytest.raises(cairn.PrunedError):
        store.load(async_ids[0], "model.safetensors")
