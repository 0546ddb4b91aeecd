#!/usr/bin/env python3
"""Side-by-side benchmark: cairn against cp + sync, zstd -3 per file, restic and borg.

Generates checkpoint series shaped like Hugging Face Trainer output folders
(model.safetensors, optimizer.safetensors with Adam's exp_avg / exp_avg_sq, trainer_state.json)
by running the Adam recurrence on synthetic gradients, then stores every series with every tool
and measures, per tool:

  * commit: wall time of storing each checkpoint in order, each store followed by an fsync of
    every file and directory of the tool's repository (logical bytes / seconds = GB/s,
    1 GB = 1e9 bytes); "cp+sync" is `cp -r` plus that fsync;
  * restore: wall time of getting the LAST checkpoint back into a fresh directory, then the
    same fsync of what was written, the median of three restores (for cairn: `cairn checkout`,
    which verifies every hash; the last checkpoint is the deepest in its delta chain);
  * stored bytes: `du -sb` (apparent size) of the tool's repository or copy directory, also
    `du -sB1` (allocated) in the JSON; logical / stored is the ratio reported;
  * peak RSS: GNU time's %M of each command, maximum over the series;
  * for cairn only: the time to read one 64 MiB tensor (`cairn tensor`, warm, median of 5),
    the share of frozen tensors deduplicated, and `cairn stats --json`.

Every restored checkpoint is compared with the original by SHA-256 of every file; a mismatch
aborts the run. The page cache is warm for every tool (inputs are read once before each tool
runs; nothing drops caches): what is compared is CPU and write cost, not cold reads.
"""

import argparse
import datetime
import hashlib
import json
import os
import platform
import shutil
import statistics
import struct
import subprocess
import sys
import time

import numpy as np

# --------------------------------------------------------------------------------------------
# Generator parameters. Fixed per scale, so runs compare across commits; docs/benchmarks.md
# prints the default table.
# --------------------------------------------------------------------------------------------

SCALES = {
    # vocab x d_model = 32768 x 512 float32 = 64 MiB: the embedding and the (untied) lm_head are
    # the 64 MiB tensors the tensor-read timing reads.
    "default": dict(vocab=32768, d_model=512, layers=4, mlp_mult=4, checkpoints=4,
                    steps_between=20, dense_warmup_steps=20),
    # For development: 8 MiB embeddings, about 70 MB per checkpoint.
    "small": dict(vocab=8192, d_model=256, layers=2, mlp_mult=4, checkpoints=4,
                  steps_between=5, dense_warmup_steps=5),
}

COMMON = dict(
    seed=20261127,
    betas=(0.9, 0.999),
    eps=1e-8,
    finetune_lr=1e-4,          # Adam, no weight decay (Hugging Face Trainer's default)
    finetune_row_fraction=0.05,  # embedding rows receiving gradients per checkpoint interval
    zipf_offset=100.0,         # row weights 1 / (rank + offset); ranks a random permutation
    pretrain_lr=1e-3,          # AdamW, decoupled weight decay below
    pretrain_weight_decay=0.1,
    grad_drift=0.3,            # share of each gradient that is a fixed per-tensor direction
    init_std=0.02,
)


def param_shapes(p):
    """Transformer-shaped parameters in PyTorch Linear layout [out, in], Llama-style names.

    Untied lm_head: with a tied head every embedding row would receive gradients through the
    output softmax, and the sparse-rows fine-tune would not exist.
    """
    V, d, L, f = p["vocab"], p["d_model"], p["layers"], p["mlp_mult"] * p["d_model"]
    shapes = {"model.embed_tokens.weight": (V, d)}
    for i in range(L):
        pre = f"model.layers.{i}."
        shapes[pre + "input_layernorm.weight"] = (d,)
        shapes[pre + "input_layernorm.bias"] = (d,)
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            shapes[pre + f"self_attn.{proj}.weight"] = (d, d)
        shapes[pre + "post_attention_layernorm.weight"] = (d,)
        shapes[pre + "post_attention_layernorm.bias"] = (d,)
        shapes[pre + "mlp.up_proj.weight"] = (f, d)
        shapes[pre + "mlp.down_proj.weight"] = (d, f)
    shapes["model.norm.weight"] = (d,)
    shapes["model.norm.bias"] = (d,)
    shapes["lm_head.weight"] = (V, d)
    return shapes


def init_params(shapes, rng, std):
    """A stand-in for pretrained weights: N(0, std) matrices, norms 1 + N(0, 0.05), biases
    N(0, std). Output projections scaled by 1/sqrt(2 * layers) as in GPT-2's init."""
    layers = 1 + max(int(n.split(".")[2]) for n in shapes if n.startswith("model.layers."))
    params = {}
    for name, shape in shapes.items():
        if name.endswith("layernorm.weight") or name == "model.norm.weight":
            a = 1.0 + 0.05 * rng.standard_normal(shape, dtype=np.float32)
        elif name.endswith(".bias"):
            a = std * rng.standard_normal(shape, dtype=np.float32)
        else:
            a = std * rng.standard_normal(shape, dtype=np.float32)
            if name.endswith("o_proj.weight") or name.endswith("down_proj.weight"):
                a *= 1.0 / np.sqrt(2 * layers)
        params[name] = a.astype(np.float32)
    return params


# --------------------------------------------------------------------------------------------
# safetensors writer (8-byte little-endian header length, JSON header padded with spaces to a
# multiple of 8, then the tensors' little-endian bytes back to back in the header's order).
# --------------------------------------------------------------------------------------------

def f32_to_bf16_bits(a):
    """bf16 = the upper 16 bits of f32, rounded to nearest, ties to even (no NaNs here)."""
    u = a.astype(np.float32, copy=False).view(np.uint32)
    rounding = ((u >> 16) & 1) + np.uint32(0x7FFF)
    return ((u + rounding) >> 16).astype(np.uint16)


def write_safetensors(path, tensors, dtype="F32"):
    """tensors: list of (name, float32 array). dtype F32 or BF16 for all of them."""
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name, a in tensors:
        raw = f32_to_bf16_bits(a) if dtype == "BF16" else a.astype("<f4", copy=False)
        header[name] = {"dtype": dtype, "shape": list(a.shape),
                        "data_offsets": [offset, offset + raw.nbytes]}
        blobs.append(raw)
        offset += raw.nbytes
    hjson = json.dumps(header, separators=(",", ":")).encode()
    hjson += b" " * (-len(hjson) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hjson)))
        f.write(hjson)
        for raw in blobs:
            raw.tofile(f)


# --------------------------------------------------------------------------------------------
# Training: the Adam recurrence (PyTorch's Adam / AdamW, raw moments stored as PyTorch does).
# --------------------------------------------------------------------------------------------

class Trainer:
    """Holds weights, Adam moments and the gradient model of one run.

    Gradient model, per trainable tensor and step:
        g = scale_t * (drift * D_t + sqrt(1 - drift^2) * N(0, 1))
    with D_t a fixed unit-variance direction per tensor and scale_t = 1e-3 * 10^U(-1, 1) per
    tensor (norm parameters 10x larger). For a sparse embedding, rows outside the interval's
    touched set get g = 0 exactly, so rows never touched keep m = v = 0 and do not move.
    """

    def __init__(self, params, trainable, rng, lr, weight_decay, betas, eps, drift):
        self.p, self.trainable, self.rng = params, list(trainable), rng
        self.lr, self.wd, (self.b1, self.b2), self.eps, self.drift = lr, weight_decay, betas, eps, drift
        self.m = {n: np.zeros_like(params[n]) for n in self.trainable}
        self.v = {n: np.zeros_like(params[n]) for n in self.trainable}
        self.dir = {n: rng.standard_normal(params[n].shape, dtype=np.float32) for n in self.trainable}
        self.scale = {}
        for n in self.trainable:
            s = 1e-3 * 10.0 ** rng.uniform(-1, 1)
            self.scale[n] = np.float32(s * (10.0 if params[n].ndim == 1 else 1.0))
        self.t = 0
        self.sparse_rows = {}  # tensor name -> row indices receiving gradients, or absent = dense

    def grad(self, n):
        a, s, k = self.p[n], self.scale[n], np.float32(np.sqrt(1 - self.drift ** 2))
        rows = self.sparse_rows.get(n)
        if rows is None:
            g = self.rng.standard_normal(a.shape, dtype=np.float32)
            g *= k
            g += np.float32(self.drift) * self.dir[n]
            g *= s
            return g
        g = np.zeros_like(a)
        noise = self.rng.standard_normal((len(rows), a.shape[1]), dtype=np.float32)
        g[rows] = s * (k * noise + np.float32(self.drift) * self.dir[n][rows])
        return g

    def step(self):
        self.t += 1
        b1, b2 = np.float32(self.b1), np.float32(self.b2)
        bc1, bc2 = 1 - self.b1 ** self.t, 1 - self.b2 ** self.t
        for n in self.trainable:
            g = self.grad(n)
            m, v, p = self.m[n], self.v[n], self.p[n]
            m *= b1
            m += (1 - b1) * g
            g *= g
            v *= b2
            v += (1 - b2) * g
            if self.wd:
                p *= np.float32(1 - self.lr * self.wd)
            # p -= lr * (m / bc1) / (sqrt(v / bc2) + eps)
            denom = np.sqrt(v / np.float32(bc2))
            denom += np.float32(self.eps)
            upd = m / denom
            upd *= np.float32(self.lr / bc1)
            p -= upd


def write_checkpoint(path, trainer, names, step, lr, weights_dtype, loss):
    os.makedirs(path)
    write_safetensors(os.path.join(path, "model.safetensors"),
                      [(n, trainer.p[n]) for n in names], weights_dtype)
    opt = []
    for n in trainer.trainable:
        opt.append((f"state.{n}.exp_avg", trainer.m[n]))
        opt.append((f"state.{n}.exp_avg_sq", trainer.v[n]))
    write_safetensors(os.path.join(path, "optimizer.safetensors"), opt, "F32")
    state = {"global_step": step, "epoch": round(step / 1000.0, 4), "best_metric": None,
             "log_history": [{"step": step, "loss": round(loss, 6), "learning_rate": lr}],
             "optimizer_step_count": trainer.t}
    with open(os.path.join(path, "trainer_state.json"), "w") as f:
        json.dump(state, f, indent=2)


def touched_rows(rng, vocab, fraction, offset, ranks):
    """fraction * vocab distinct rows, drawn with probability 1 / (rank + offset)."""
    w = 1.0 / (ranks + offset)
    return np.sort(rng.choice(vocab, size=int(fraction * vocab), replace=False, p=w / w.sum()))


def generate(scale, root, only=None):
    """Writes every series under root (or those in `only`, a set of names: the two fine-tunes
    are generated together, as one run saved two ways); returns {series: {dirs, frozen tensor
    names, ...}}."""
    p = dict(SCALES[scale], **COMMON)
    shapes = param_shapes(p)
    names = list(shapes)
    n_ckpt, spacing = p["checkpoints"], p["steps_between"]
    series = {}

    def loss_at(step):
        return 2.0 + 1.5 * np.exp(-step / 500.0)

    # Fine-tune (fp32 weights and the same run saved with bf16 weights): pretrained weights,
    # moments from zero, a Zipf-drawn 5% of embedding rows per interval.
    rng = np.random.default_rng(p["seed"])
    base = init_params(shapes, rng, p["init_std"])
    ranks = rng.permutation(p["vocab"]).astype(np.float64)
    tr = Trainer({n: a.copy() for n, a in base.items()}, names, rng, p["finetune_lr"], 0.0,
                 p["betas"], p["eps"], p["grad_drift"])
    fp32, bf16 = [], []
    for c in range(1, n_ckpt + 1):
        tr.sparse_rows["model.embed_tokens.weight"] = touched_rows(
            rng, p["vocab"], p["finetune_row_fraction"], p["zipf_offset"], ranks)
        for _ in range(spacing):
            tr.step()
        step = c * spacing
        for dtype, out in (("F32", fp32), ("BF16", bf16)):
            d = os.path.join(root, f"finetune-{dtype.lower()}", f"checkpoint-{step}")
            write_checkpoint(d, tr, names, step, p["finetune_lr"], dtype, loss_at(step))
            out.append(d)
    series["finetune-fp32"] = dict(dirs=fp32, frozen=[])
    series["finetune-bf16"] = dict(dirs=bf16, frozen=[])
    del tr
    if only is not None and not ({"frozen-finetune", "dense-pretrain"} & set(only)):
        return series, p

    # Frozen-layers fine-tune: embeddings and the first half of the layers get no gradients and
    # are not in the optimizer (requires_grad=False), so their bytes never change.
    rng = np.random.default_rng(p["seed"] + 1)
    half = p["layers"] // 2
    frozen = [n for n in names if n == "model.embed_tokens.weight"
              or any(n.startswith(f"model.layers.{i}.") for i in range(half))]
    tr = Trainer({n: a.copy() for n, a in base.items()}, [n for n in names if n not in frozen],
                 rng, p["finetune_lr"], 0.0, p["betas"], p["eps"], p["grad_drift"])
    dirs = []
    for c in range(1, n_ckpt + 1):
        for _ in range(spacing):
            tr.step()
        step = c * spacing
        d = os.path.join(root, "frozen-finetune", f"checkpoint-{step}")
        write_checkpoint(d, tr, names, step, p["finetune_lr"], "F32", loss_at(step))
        dirs.append(d)
    series["frozen-finetune"] = dict(dirs=dirs, frozen=frozen)
    del tr, base

    # Dense pretraining-like: fresh init, AdamW lr 1e-3, every weight (all embedding rows too)
    # moves every step; warmup steps before the first checkpoint so the moments are not fresh.
    rng = np.random.default_rng(p["seed"] + 2)
    tr = Trainer(init_params(shapes, rng, p["init_std"]), names, rng, p["pretrain_lr"],
                 p["pretrain_weight_decay"], p["betas"], p["eps"], p["grad_drift"])
    for _ in range(p["dense_warmup_steps"]):
        tr.step()
    dirs = []
    for c in range(1, n_ckpt + 1):
        for _ in range(spacing):
            tr.step()
        step = p["dense_warmup_steps"] + c * spacing
        d = os.path.join(root, "dense-pretrain", f"checkpoint-{step}")
        write_checkpoint(d, tr, names, step, p["pretrain_lr"], "F32", loss_at(step))
        dirs.append(d)
    series["dense-pretrain"] = dict(dirs=dirs, frozen=[])
    del tr
    return series, p


# --------------------------------------------------------------------------------------------
# Measurement helpers
# --------------------------------------------------------------------------------------------

def run(cmd, cwd=None, env=None, capture=False):
    """Runs cmd under GNU time; returns (wall seconds, peak RSS in KiB, stdout)."""
    global LAST_CPU
    rss_file = os.path.join(RUN_TMP, "rss")
    full = ["/usr/bin/time", "-f", "%M %U %S", "-o", rss_file] + cmd
    t0 = time.perf_counter()
    r = subprocess.run(full, cwd=cwd, env=env, stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
                       stderr=subprocess.PIPE)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"FAILED ({r.returncode}): {' '.join(cmd)}\n{r.stderr.decode(errors='replace')}")
    with open(rss_file) as f:
        rss, user, system = f.read().strip().splitlines()[-1].split()
    LAST_CPU = float(user) + float(system)
    return wall, int(rss), (r.stdout.decode() if capture else "")


LAST_CPU = 0.0  # user + system seconds of the last command `run` ran


def fsync_tree(path):
    """fsyncs every file and directory under path (the tool's repository, copy or restore
    target), so each store and restore is timed up to durable on disk. Per file rather than a
    global `sync`: the machine is shared, and `sync` would also wait for other processes' dirty
    pages. For tools that fsync themselves (cairn, restic, borg) this costs only the syscalls."""
    t0 = time.perf_counter()
    for root, dirs, fs in os.walk(path):
        for name in fs:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return time.perf_counter() - t0


def files_of(d):
    out = []
    for root, _, fs in os.walk(d):
        for f in fs:
            out.append(os.path.relpath(os.path.join(root, f), d))
    return sorted(out)


def logical_bytes(d):
    return sum(os.path.getsize(os.path.join(d, f)) for f in files_of(d))


def sha256_tree(d):
    out = {}
    for f in files_of(d):
        h = hashlib.sha256()
        with open(os.path.join(d, f), "rb") as fh:
            while chunk := fh.read(1 << 22):
                h.update(chunk)
        out[f] = h.hexdigest()
    return out


def warm(dirs):
    """Reads the inputs once so every tool starts with them page-cached."""
    for d in dirs:
        for f in files_of(d):
            with open(os.path.join(d, f), "rb") as fh:
                while fh.read(1 << 24):
                    pass


def du(path):
    apparent = int(subprocess.run(["du", "-sb", path], capture_output=True, text=True, check=True).stdout.split()[0])
    allocated = int(subprocess.run(["du", "-sB1", path], capture_output=True, text=True, check=True).stdout.split()[0])
    return apparent, allocated


# --------------------------------------------------------------------------------------------
# The tools. Each: init(), store(i, ckpt_dir) -> (wall, rss), restore(i, dest) -> (wall, rss),
# repo (the path whose size is the stored size).
# --------------------------------------------------------------------------------------------

class CpSync:
    name = "cp+sync"

    def __init__(self, work):
        self.repo = os.path.join(work, "copies")

    def init(self):
        os.makedirs(self.repo)

    def store(self, i, src):
        return run(["cp", "-r", src, os.path.join(self.repo, f"ck{i}")])[:2]

    def restore(self, i, dest):
        return run(["cp", "-r", os.path.join(self.repo, f"ck{i}"), dest])[:2]


class ZstdPerFile:
    """zstd -3 with -T2 (both cores, as cairn uses both), one .zst per file."""
    name = "zstd -3"

    def __init__(self, work):
        self.repo = os.path.join(work, "zstd")

    def init(self):
        os.makedirs(self.repo)

    def store(self, i, src):
        wall = rss = 0
        for f in files_of(src):
            out = os.path.join(self.repo, f"ck{i}", f + ".zst")
            os.makedirs(os.path.dirname(out), exist_ok=True)
            w, r, _ = run(["zstd", "-3", "-T2", "-q", os.path.join(src, f), "-o", out])
            wall, rss = wall + w, max(rss, r)
        return wall, rss

    def restore(self, i, dest):
        wall = rss = 0
        base = os.path.join(self.repo, f"ck{i}")
        for f in files_of(base):
            out = os.path.join(dest, f[:-4])
            os.makedirs(os.path.dirname(out), exist_ok=True)
            w, r, _ = run(["zstd", "-d", "-q", os.path.join(base, f), "-o", out])
            wall, rss = wall + w, max(rss, r)
        return wall, rss


class Restic:
    """restic 0.14 defaults: repository v2, compression auto (zstd), no parent snapshot
    (each checkpoint is a new path), so every checkpoint is read and chunked in full."""
    name = "restic"

    def __init__(self, work):
        self.repo = os.path.join(work, "restic-repo")
        self.env = dict(os.environ, RESTIC_PASSWORD_FILE=os.path.join(work, "restic-pw"),
                        RESTIC_CACHE_DIR=os.path.join(work, "restic-cache"))
        self.pw = self.env["RESTIC_PASSWORD_FILE"]
        self.snaps = {}

    def init(self):
        with open(self.pw, "w") as f:
            f.write("bench\n")
        run(["restic", "-r", self.repo, "init", "-q"], env=self.env)

    def store(self, i, src):
        wall, rss, out = run(["restic", "-r", self.repo, "backup", ".", "--json", "-q", "--host", "bench"],
                             cwd=src, env=self.env, capture=True)
        self.snaps[i] = json.loads(out.strip().splitlines()[-1])["snapshot_id"]
        return wall, rss

    def restore(self, i, dest):
        return run(["restic", "-r", self.repo, "restore", self.snaps[i], "--target", dest, "-q"],
                   env=self.env)[:2]


class Borg:
    """borg 1.2 defaults: buzhash chunker (2 MiB average), lz4 compression, no encryption."""
    name = "borg"

    def __init__(self, work):
        self.repo = os.path.join(work, "borg-repo")
        self.env = dict(os.environ, BORG_BASE_DIR=os.path.join(work, "borg-base"),
                        BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK="yes",
                        BORG_RELOCATED_REPO_ACCESS_IS_OK="yes")

    def init(self):
        run(["borg", "init", "--encryption=none", self.repo], env=self.env)

    def store(self, i, src):
        return run(["borg", "create", f"{self.repo}::ck{i}", "."], cwd=src, env=self.env)[:2]

    def restore(self, i, dest):
        os.makedirs(dest)
        return run(["borg", "extract", f"{self.repo}::ck{i}"], cwd=dest, env=self.env)[:2]


class Cairn:
    name = "cairn"

    def __init__(self, work, binary, delta_depth=None, delta_base=None):
        self.repo = os.path.join(work, "cairn-store")
        self.bin = binary
        self.depth_args = ["--delta-depth", str(delta_depth)] if delta_depth else []
        self.depth_args += ["--delta-base", delta_base] if delta_base else []
        self.env = dict(os.environ, CAIRN_STORE=self.repo, CAIRN_AUTHOR="bench@cairn")
        self.commits = {}

    def init(self):
        run([self.bin, "init"], env=self.env)

    def store(self, i, src):
        wall, rss, out = run([self.bin, "commit", src, "-m", f"ck{i}", "--json", *self.depth_args],
                            env=self.env, capture=True)
        self.commits[i] = json.loads(out)
        return wall, rss

    def restore(self, i, dest):
        return run([self.bin, "checkout", self.commits[i]["commit"], dest], env=self.env)[:2]

    def json(self, *args):
        return json.loads(run([self.bin, *args, "--json"], env=self.env, capture=True)[2])


# --------------------------------------------------------------------------------------------
# One series through one tool
# --------------------------------------------------------------------------------------------

def bench_tool(tool, dirs, digests, work, unchanged_dir=None):
    """Stores dirs in order, restores the last one, checks it by SHA-256."""
    warm(dirs)
    tool.init()
    per_ckpt, rss_commit = [], 0
    for i, d in enumerate(dirs, 1):
        wall, rss = tool.store(i, d)
        wall += fsync_tree(tool.repo)
        per_ckpt.append(wall)
        rss_commit = max(rss_commit, rss)
    res = dict(commit_s=per_ckpt, rss_commit_kib=rss_commit)
    # Stored size of the series alone, before the extra unchanged commit below.
    res["stored_apparent"], res["stored_allocated"] = du(tool.repo)
    if unchanged_dir is not None:
        # The last checkpoint again, as a fresh copy (new inodes; mtimes set to now, after
        # every commit of the series): content-level dedup only, no metadata shortcut.
        for root, _, fs in os.walk(unchanged_dir):
            for name in fs:
                os.utime(os.path.join(root, name))
        warm([unchanged_dir])
        wall, rss = tool.store(len(dirs) + 1, unchanged_dir)
        res["unchanged_s"] = wall + fsync_tree(tool.repo)
        res["rss_unchanged_kib"] = rss
        res["stored_apparent_with_unchanged"] = du(tool.repo)[0]
    # Three restores, each into a new directory, each checked by SHA-256; the median counts
    # (the shared disk's write speed varies from one second to the next).
    dest = os.path.join(work, "restore-" + tool.name.replace(" ", "").replace("+", ""))
    walls, rss_max = [], 0
    for _ in range(RESTORES):
        wall, rss = tool.restore(len(dirs), dest)
        walls.append(wall + fsync_tree(dest))
        rss_max = max(rss_max, rss)
        got = sha256_tree(dest)
        if got != digests[-1]:
            sys.exit(f"RESTORE MISMATCH for {tool.name}: {dest} differs from {dirs[-1]}")
        shutil.rmtree(dest)
    res["restore_s"], res["rss_restore_kib"] = statistics.median(walls), rss_max
    res["restore_s_all"] = [round(w, 3) for w in walls]
    res["restore_verified_sha256"] = True
    return res


RESTORES = 3


def paired(tool, dirs, digests, work, rounds, paranoid, base_bin=None):
    """cairn against cp + sync on the same work, alternated (cp, cairn, cp, cairn, ...) with a
    `sync` before each run, as the shared disk's speed swings within minutes: commit of the
    first checkpoint into a fresh store (all new data) and checkout of the last one. Per run
    the wall time up to durable and the CPU seconds (user + sys, which the disk does not move)
    per GiB; per cairn run the ratio to the cp + sync run just before it. With `paranoid`, also
    `checkout --paranoid`; with `base_bin`, the same commands of that binary (the starting
    commit) in the same rounds."""
    first, last = dirs[0], dirs[-1]
    gib = {"commit": logical_bytes(first) / 2**30, "checkout": logical_bytes(last) / 2**30}
    ops = [("commit", "commit", tool.bin, [])]
    if base_bin:
        ops.append(("commit_base", "commit", base_bin, []))
    ops.append(("checkout", "checkout", tool.bin, []))
    if paranoid:
        ops.append(("checkout_paranoid", "checkout", tool.bin, ["--paranoid"]))
    if base_bin:
        ops.append(("checkout_base", "checkout", base_bin, []))
    rows = {key: [] for key, _, _, _ in ops}
    scratch = os.path.join(work, "paired")
    store = os.path.join(work, "paired-store")
    for r in range(rounds):
        warm([first, last])
        for key, kind, binary, flags in ops:
            src = first if kind == "commit" else last
            subprocess.run(["sync"], check=True)
            wall, _, _ = run(["cp", "-r", src, scratch])
            cp = (wall + fsync_tree(scratch), LAST_CPU / gib[kind])
            shutil.rmtree(scratch)
            if kind == "commit":
                env = dict(tool.env, CAIRN_STORE=store)
                run([binary, "init"], env=env)
                subprocess.run(["sync"], check=True)
                wall, _, _ = run([binary, "commit", src, "-m", "ck1", *tool.depth_args], env=env)
                rows[key].append((wall + fsync_tree(store), LAST_CPU / gib[kind]) + cp)
                shutil.rmtree(store)
            else:
                subprocess.run(["sync"], check=True)
                wall, _, _ = run([binary, "checkout", tool.commits[len(dirs)]["commit"], scratch, *flags],
                                 env=tool.env)
                rows[key].append((wall + fsync_tree(scratch), LAST_CPU / gib[kind]) + cp)
                if sha256_tree(scratch) != digests[-1]:
                    sys.exit(f"RESTORE MISMATCH for {binary} checkout {' '.join(flags)}: {scratch}")
                shutil.rmtree(scratch)
        print(f"   round {r + 1}: " + "; ".join(
            f"{k} {v[-1][0]:.2f} s {v[-1][1]:.2f} CPU s/GiB (cp {v[-1][2]:.2f} s {v[-1][3]:.2f})"
            for k, v in rows.items()), flush=True)
    med = statistics.median
    out = dict(rounds=rounds, gib_first=gib["commit"], gib_last=gib["checkout"], raw=rows)
    for key, v in rows.items():
        out[key] = dict(seconds=med(x[0] for x in v), cp_seconds=med(x[2] for x in v),
                        vs_cp=med(x[2] / x[0] for x in v),
                        cpu_s_per_gib=med(x[1] for x in v), cp_cpu_s_per_gib=med(x[3] for x in v))
    for key in ("commit", "checkout"):
        if key + "_base" in rows:
            out[key]["cpu_vs_base"] = med(n[1] / b[1] for n, b in zip(rows[key], rows[key + "_base"]))
    return out


def paired_markdown(series_name, p):
    lines = [f"Paired with cp + sync ({p['rounds']} rounds, alternated, `sync` before each; medians):", "",
             "| operation | cairn s | cp + sync s | cairn speed / cp + sync (median of rounds) "
             "| cairn CPU s per GiB (user + sys) | cp CPU s per GiB | CPU / starting commit's |",
             "|---|---|---|---|---|---|---|"]
    names = {"commit": f"commit of the 1st checkpoint ({p['gib_first']:.2f} GiB, all new)",
             "commit_base": "the same, starting commit's binary",
             "checkout": f"checkout of the last ({p['gib_last']:.2f} GiB, depth K)",
             "checkout_paranoid": "checkout --paranoid of the last",
             "checkout_base": "checkout, starting commit's binary (SHA-256 on the path)"}
    for k, name in names.items():
        if k in p:
            v = p[k]
            lines.append(f"| {name} | {v['seconds']:.2f} | {v['cp_seconds']:.2f} | {v['vs_cp']:.2f}x "
                         f"| {v['cpu_s_per_gib']:.2f} | {v['cp_cpu_s_per_gib']:.2f} | "
                         + (f"{v['cpu_vs_base']:.2f}x" if "cpu_vs_base" in v else "") + " |")
    return "\n".join(lines)


def cairn_extras(tool, sinfo, dirs, work):
    """cairn-only figures: tensor reads at the last checkpoint, frozen dedup, stats."""
    ex = {"stats": tool.json("stats"), "commits": [tool.commits[i] for i in sorted(tool.commits)]}
    last = tool.commits[len(dirs)]["commit"]
    reads = {}
    for tname in ("model.embed_tokens.weight", "lm_head.weight"):
        out = os.path.join(work, "tensor.safetensors")
        cmd = [tool.bin, "tensor", last, f"model.safetensors:{tname}", "-o", out]
        run(cmd, env=tool.env)  # warm-up read, not counted
        times = []
        for _ in range(5):
            os.remove(out)
            times.append(run(cmd, env=tool.env)[0])
        reads[tname] = dict(bytes=os.path.getsize(out), ms_median=1000 * statistics.median(times),
                            ms_all=[round(1000 * t, 1) for t in times])
        os.remove(out)
        # The same tensor through the library, in one process (no start-up, no output file):
        # the read bench's --store mode (benches/read.rs), when $CAIRN_BENCH_READ names its
        # binary (scripts/bench/bench.sh sets it).
        lib = os.environ.get("CAIRN_BENCH_READ")
        if lib and os.path.exists(lib):
            r = subprocess.run([lib, "--store", tool.repo, last, f"model.safetensors:{tname}", "9"],
                               capture_output=True, text=True, env=tool.env)
            if r.returncode != 0:
                sys.exit(f"FAILED: {lib}\n{r.stderr}")
            reads[tname]["library"] = json.loads(r.stdout.strip().splitlines()[-1])
    ex["tensor_read"] = reads
    if sinfo["frozen"]:
        frozen, total, unchanged = set(sinfo["frozen"]), 0, 0
        for i in range(2, len(dirs) + 1):
            diff = tool.json("diff", tool.commits[i - 1]["commit"], tool.commits[i]["commit"])
            for f in diff["files"]:
                if f["path"] != "model.safetensors":
                    continue
                for t in f["tensors"]:
                    if t["name"] in frozen:
                        total += 1
                        unchanged += t["status"] == "unchanged"
        ex["frozen_tensors_compared"] = total
        ex["frozen_tensors_deduplicated"] = unchanged
        ex["frozen_dedup_pct"] = 100.0 * unchanged / total if total else None
        # Cross-check from the commit counters: the frozen tensors' bytes must not be among the
        # new chunk bytes of commits 2..N.
        ex["frozen_new_chunk_bytes_upper_bound_check"] = [
            dict(commit=i, new_chunk_bytes=tool.commits[i]["new_chunk_bytes"],
                 logical_bytes=tool.commits[i]["logical_bytes"]) for i in range(2, len(dirs) + 1)]
    return ex


def gbps(nbytes, seconds):
    return nbytes / seconds / 1e9 if seconds > 0 else float("inf")


def summarize(series_name, logical, per_ckpt_logical, results):
    rows = []
    for tname, r in results.items():
        rows.append(dict(
            tool=tname,
            stored_mb=r["stored_apparent"] / 1e6,
            ratio=logical / r["stored_apparent"],
            commit_gbps=gbps(logical, sum(r["commit_s"])),
            first_commit_gbps=gbps(per_ckpt_logical[0], r["commit_s"][0]),
            restore_gbps=gbps(per_ckpt_logical[-1], r["restore_s"]),
            rss_commit_mb=r["rss_commit_kib"] / 1024,
            rss_restore_mb=r["rss_restore_kib"] / 1024,
            unchanged_gbps=gbps(per_ckpt_logical[-1], r["unchanged_s"]) if "unchanged_s" in r else None,
        ))
    return rows


def markdown(series_name, logical, rows):
    c = next(r for r in rows if r["tool"] == "cairn")
    lines = [f"#### {series_name}: {logical / 1e6:.0f} MB logical",
             "",
             "| tool | stored MB | logical/stored | commit GB/s (series) | commit GB/s (1st ckpt, all new) "
             "| restore GB/s (last ckpt) | peak RSS MB commit / restore | cairn/peer: ratio, commit, restore |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        rel = "-" if r is c else (f"{c['ratio'] / r['ratio']:.2f}x, {c['commit_gbps'] / r['commit_gbps']:.2f}x, "
                                 f"{c['restore_gbps'] / r['restore_gbps']:.2f}x")
        lines.append(f"| {r['tool']} | {r['stored_mb']:.1f} | {r['ratio']:.2f}x | {r['commit_gbps']:.3f} "
                     f"| {r['first_commit_gbps']:.3f} | {r['restore_gbps']:.3f} "
                     f"| {r['rss_commit_mb']:.0f} / {r['rss_restore_mb']:.0f} | {rel} |")
    if any(r["unchanged_gbps"] is not None for r in rows):
        lines += ["", "Last checkpoint stored again as a fresh copy (unchanged tensors):", "",
                  "| tool | GB/s |", "|---|---|"]
        lines += [f"| {r['tool']} | {r['unchanged_gbps']:.3f} |" for r in rows if r["unchanged_gbps"] is not None]
    return "\n".join(lines)


def targets(results, k=4):
    """The performance issue's targets, each with the measured value and met / not met."""
    rows = {s: {r["tool"]: r for r in v["rows"]} for s, v in results.items()}
    out = []

    def add(name, value, ok):
        out.append(f"| {name} | {value} | {'met' if ok else 'NOT met'} |")

    for s in ("finetune-fp32", "finetune-bf16"):
        if s in rows:
            c = rows[s]["cairn"]["ratio"]
            add(f"{s}: logical/stored >= 2.5x", f"{c:.2f}x", c >= 2.5)
            if "borg" in rows[s]:
                b = rows[s]["borg"]["ratio"]
                add(f"{s}: >= 1.5x better than borg", f"{c / b:.2f}x (borg {b:.2f}x)", c / b >= 1.5)
    if "dense-pretrain" in rows:
        c = rows["dense-pretrain"]["cairn"]["ratio"]
        b = rows["dense-pretrain"].get("borg", {}).get("ratio")
        add("dense-pretrain: logical/stored >= 1.25x", f"{c:.2f}x" + (f" (borg {b:.2f}x)" if b else ""), c >= 1.25)
    if "frozen-finetune" in results:
        pct = results["frozen-finetune"]["cairn"].get("frozen_dedup_pct")
        add("frozen-finetune: frozen tensors deduplicated = 100%", f"{pct:.1f}%", pct == 100.0)

    def summed(tool, key_s, key_b):
        secs = sum(results[s]["tools"][tool][key_s] if key_s == "restore_s" else results[s]["tools"][tool]["commit_s"][0]
                   for s in results)
        nbytes = sum(results[s]["per_checkpoint_logical"][key_b] for s in results)
        return nbytes / secs / 1e9

    if all("cp+sync" in rows[s] for s in rows):
        c, cp = summed("cairn", "commit_s", 0), summed("cp+sync", "commit_s", 0)
        add("commit of new data (1st checkpoint of every series) >= 0.8x cp+sync",
            f"{c / cp:.2f}x ({c:.3f} vs {cp:.3f} GB/s)", c / cp >= 0.8)
        c, cp = summed("cairn", "restore_s", -1), summed("cp+sync", "restore_s", -1)
        add(f"checkout of the last checkpoint (depth K={k}, verified) >= 0.8x cp+sync",
            f"{c / cp:.2f}x ({c:.3f} vs {cp:.3f} GB/s)", c / cp >= 0.8)
    for s in results:
        p = results[s]["cairn"].get("paired")
        if p:
            v = p["commit"]
            add(f"{s}: commit of new data >= 0.8x cp+sync (paired rounds)",
                f"{v['vs_cp']:.2f}x; {v['cpu_s_per_gib']:.2f} CPU s/GiB", v["vs_cp"] >= 0.8)
            v = p["checkout"]
            add(f"{s}: checkout, default verification, >= 0.8x cp+sync (paired rounds)",
                f"{v['vs_cp']:.2f}x; {v['cpu_s_per_gib']:.2f} CPU s/GiB", v["vs_cp"] >= 0.8)
    for s, v in rows.items():
        if v["cairn"]["unchanged_gbps"] is not None:
            u = v["cairn"]["unchanged_gbps"]
            add("commit of unchanged tensors >= 3 GB/s", f"{u:.2f} GB/s", u >= 3.0)
    for s in ("finetune-fp32", "dense-pretrain"):
        if s in results:
            for t, r in results[s]["cairn"]["tensor_read"].items():
                # 64 MiB at default scale; smaller at --scale small, and the label says so.
                name = f"{s}: one 64 MiB tensor (here {t}, {r['bytes'] / 2**20:.0f} MiB) at depth K={k} <= 30 ms warm"
                lib = r.get("library")
                if lib:
                    add(name + " (library)",
                        f"{lib['reused_ms']:.0f} ms into a reused buffer, {lib['fresh_ms']:.0f} ms into a "
                        f"fresh one (delta depth {lib['depth']}, chains of {lib.get('chain', lib['depth'] + 1)} chunks); "
                        f"`cairn tensor` to a file {r['ms_median']:.0f} ms",
                        lib["reused_ms"] <= 30)
                else:
                    add(name, f"{r['ms_median']:.0f} ms", r["ms_median"] <= 30)
    return "\n".join(["| target | measured | |", "|---|---|---|"] + out)


def uptime():
    return open("/proc/loadavg").read().split()[:3]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", choices=sorted(SCALES), default="default")
    ap.add_argument("--out", required=True, help="work and result directory (must not exist)")
    ap.add_argument("--cairn", default=os.environ.get("CAIRN_BIN", "cairn"), help="cairn binary")
    ap.add_argument("--tools", default="cairn,cp+sync,zstd -3,restic,borg",
                    help="comma-separated subset of tools (cairn must be included)")
    ap.add_argument("--keep", action="store_true", help="keep generated series and repositories (about 39 GB at default scale)")
    ap.add_argument("--delta-depth", type=int, default=None, metavar="K",
                    help="pass `--delta-depth K` to every cairn commit (default: cairn's own, 4)")
    ap.add_argument("--delta-base", choices=["root", "parent"], default=None,
                    help="pass `--delta-base` to every cairn commit (default: cairn's own, root)")
    ap.add_argument("--series", default=None,
                    help="comma-separated subset of series to store (all are generated)")
    ap.add_argument("--paired-rounds", type=int, default=5, metavar="N",
                    help="rounds of cairn alternated with cp + sync (commit of new data, checkout); 0: none")
    ap.add_argument("--cairn-base", default=os.environ.get("CAIRN_BASE_BIN"), metavar="BIN",
                    help="another cairn binary (say, the starting commit's) run in the same paired rounds")
    args = ap.parse_args()
    paranoid = "--paranoid" in subprocess.run([args.cairn, "checkout", "--help"], capture_output=True,
                                              text=True).stdout

    global RUN_TMP
    os.makedirs(args.out)
    RUN_TMP = args.out
    started = datetime.datetime.now(datetime.timezone.utc)
    meta = dict(started=started.isoformat(), load_start=uptime(), scale=args.scale,
                host=platform.node(), kernel=platform.release(), cpus=os.cpu_count(),
                cairn=subprocess.run([args.cairn, "--version"], capture_output=True, text=True).stdout.strip(),
                tools={t: subprocess.run(c, capture_output=True, text=True).stdout.strip().splitlines()[0]
                       for t, c in (("zstd", ["zstd", "--version"]), ("restic", ["restic", "version"]),
                                    ("borg", ["borg", "--version"]))})
    print(f"== {meta}", flush=True)

    t0 = time.perf_counter()
    gen_root = os.path.join(args.out, "series")
    series, params = generate(args.scale, gen_root)
    meta["generate_s"] = time.perf_counter() - t0
    meta["params"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in params.items()}
    print(f"== generated in {meta['generate_s']:.0f} s", flush=True)

    wanted = [t.strip() for t in args.tools.split(",")]
    results, report = {}, []
    only = [x.strip() for x in args.series.split(",")] if args.series else None
    meta["delta_depth"] = args.delta_depth or 4
    meta["delta_base"] = args.delta_base or "root"
    for sname, sinfo in series.items():
        dirs = sinfo["dirs"]
        if only and sname not in only:
            if not args.keep:
                shutil.rmtree(os.path.dirname(dirs[0]))
            continue
        per_ckpt = [logical_bytes(d) for d in dirs]
        digests = [sha256_tree(d) for d in dirs]
        unchanged = None
        if sname == "finetune-fp32":
            unchanged = os.path.join(args.out, "unchanged-copy")
            subprocess.run(["cp", "-r", dirs[-1], unchanged], check=True)
        work = os.path.join(args.out, "work-" + sname)
        tools = [Cairn(work, args.cairn, args.delta_depth, args.delta_base), CpSync(work), ZstdPerFile(work), Restic(work), Borg(work)]
        tools = [t for t in tools if t.name in wanted]
        os.makedirs(work)
        res, extras = {}, None
        for tool in tools:
            print(f"-- {sname}: {tool.name}", flush=True)
            res[tool.name] = bench_tool(tool, dirs, digests, work, unchanged)
            if tool.name == "cairn":
                extras = cairn_extras(tool, sinfo, dirs, work)
                if args.paired_rounds:
                    print(f"-- {sname}: cairn and cp + sync paired", flush=True)
                    extras["paired"] = paired(tool, dirs, digests, work, args.paired_rounds, paranoid,
                                              args.cairn_base)
            if not args.keep:
                shutil.rmtree(tool.repo)
        rows = summarize(sname, sum(per_ckpt), per_ckpt, res)
        md = markdown(sname, sum(per_ckpt), rows)
        print(md, flush=True)
        tr = extras["tensor_read"]
        cairn_md = "; ".join(f"`cairn tensor` {n} ({v['bytes'] / 2**20:.0f} MiB file): {v['ms_median']:.0f} ms"
                             + (f" (library: {v['library']['reused_ms']:.0f} ms into a reused buffer, "
                                f"{v['library']['fresh_ms']:.0f} ms fresh)" if v.get("library") else "")
                             for n, v in tr.items())
        if sinfo["frozen"]:
            cairn_md += (f"; frozen tensors deduplicated: {extras['frozen_tensors_deduplicated']}"
                         f"/{extras['frozen_tensors_compared']} ({extras['frozen_dedup_pct']:.0f}%)")
        st = extras["stats"]
        cairn_md += (f"; cairn stats: dedup {st['dedup_ratio']:.2f}x, compression "
                     f"{st['compression_ratio']:.2f}x, total (logical/pack bytes) {st['total_ratio']:.2f}x")
        if extras.get("paired"):
            cairn_md += "\n\n" + paired_markdown(sname, extras["paired"])
        print(cairn_md, flush=True)
        report.append(md + "\n\n" + cairn_md)
        results[sname] = dict(logical_bytes=sum(per_ckpt), per_checkpoint_logical=per_ckpt,
                              tools=res, rows=rows, cairn=extras)
        if unchanged and not args.keep:
            shutil.rmtree(unchanged)
        if not args.keep:
            shutil.rmtree(work)
            shutil.rmtree(os.path.dirname(dirs[0]))

    tmd = targets(results, args.delta_depth or 4)
    print(tmd, flush=True)
    report.append("#### Targets\n\n" + tmd)
    meta["load_end"] = uptime()
    meta["total_s"] = time.perf_counter() - t0
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(dict(meta=meta, series=results), f, indent=1)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write("\n\n".join(report) + "\n")
    print(f"== load average start {meta['load_start']} end {meta['load_end']}; total {meta['total_s']:.0f} s")
    print(f"== results: {args.out}/results.json, {args.out}/results.md")


RUN_TMP = "/tmp"

if __name__ == "__main__":
    main()
