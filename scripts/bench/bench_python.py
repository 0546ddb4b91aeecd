"""The Python package against what PyTorch users do today (docs/benchmarks.md, "Python").

    scripts/bench/bench_python.sh [MIB]      # builds the package into the virtualenv, then runs this

A state dict of MIB MiB (default 512; f32 and bf16 tensors of 1 to 16 MiB, random normal, as
fresh weights are) is saved and loaded each way, ROUNDS times (default 5), and the medians are
printed as a table, with ratios against `torch.save`:

- save: `store.commit({"model.safetensors": sd})` into a new store (durable: cairn fsyncs its
  packs and index before returning); `torch.save(sd, f)` + `cairn commit DIR` (the CLI, the way
  users reach cairn without the package); `torch.save` alone and `safetensors.torch.save_file`
  alone (neither fsyncs: page cache only);
- the next save after a training step that changed 1 tensor in 8 (the common case in a run):
  `store.commit` again, against `torch.save` again;
- load (page cache warm): `store.load(...)`, `torch.load(f)`, `safetensors.torch.load_file(f)`;
- the stall of `store.commit_async` (until the training loop may go on) against a plain copy of
  the same tensors into buffers allocated before (a memcpy), both warm, and the background
  commit's time to finish.

`safetensors.torch.load_file` maps the file and copies nothing until a tensor is used, so its
time is not a load of the bytes; `torch.load` and `store.load` return tensors in memory.
"""

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import safetensors.torch
import torch

import cairn


def state_dict(mib: int) -> dict:
    torch.manual_seed(0)
    sd, total, i = {}, 0, 0
    sizes = [1, 2, 4, 8, 16]
    while total < mib << 20:
        n = sizes[i % len(sizes)] << 20
        dtype = torch.bfloat16 if i % 3 == 2 else torch.float32
        t = torch.randn(n // (2 if dtype == torch.bfloat16 else 4)).to(dtype)
        sd[f"layer{i}.weight"] = t
        total += n
        i += 1
    return sd


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    mib = int(sys.argv[1]) if len(sys.argv) > 1 else 512
    rounds = int(os.environ.get("ROUNDS", "5"))
    cli = os.environ["CAIRN_BIN"]
    root = tempfile.mkdtemp(prefix="cairn-bench-py-", dir=os.environ.get("BENCH_DIR"))
    sd = state_dict(mib)
    nbytes = sum(t.numel() * t.element_size() for t in sd.values())
    res: dict[str, list[float]] = {}

    def add(name, secs):
        res.setdefault(name, []).append(secs)

    for r in range(rounds):
        d = os.path.join(root, f"r{r}")
        os.makedirs(d)
        store = cairn.Store.init(os.path.join(d, "store"))
        add("cairn commit from memory", timed(lambda: store.commit({"model.safetensors": sd})))
        ck = os.path.join(d, "ck")
        os.makedirs(ck)
        pt = os.path.join(ck, "model.pt")

        def save_and_cli():
            torch.save(sd, pt)
            subprocess.run([cli, "--store", os.path.join(d, "cli-store"), "init"], check=True,
                           capture_output=True)
            subprocess.run([cli, "--store", os.path.join(d, "cli-store"), "commit", ck],
                           check=True, capture_output=True)

        add("torch.save + cairn commit DIR", timed(save_and_cli))
        add("torch.save", timed(lambda: torch.save(sd, pt)))
        st = os.path.join(d, "model.safetensors")
        add("safetensors save_file", timed(lambda: safetensors.torch.save_file(sd, st)))
        # One training step later: 1 tensor in 8 changed.
        keys = list(sd)
        step = dict(sd)
        for k in keys[::8]:
            step[k] = sd[k] + 1
        add("cairn commit, next step", timed(lambda: store.commit({"model.safetensors": step})))
        add("torch.save, next step", timed(lambda: torch.save(step, pt)))
        # Loads, page cache warm.
        store.load("HEAD", "model.safetensors")
        add("cairn load", timed(lambda: store.load("HEAD", "model.safetensors")))
        add("torch.load", timed(lambda: torch.load(pt, weights_only=True)))
        add("safetensors load_file", timed(lambda: safetensors.torch.load_file(st)))
        # The async stall against a plain copy into buffers already allocated (a memcpy), both
        # warm: the committer keeps its buffers between commits, so the first call, which
        # allocates them, is left out.
        bufs = {k: torch.empty_like(t) for k, t in sd.items()}
        for k, t in sd.items():
            bufs[k].copy_(t)

        def memcpy():
            for k, t in sd.items():
                bufs[k].copy_(t)

        add("memcpy of the tensors", timed(memcpy))
        store.commit_async({"model.safetensors": sd}).result()
        h = None

        def start():
            nonlocal h
            h = store.commit_async({"model.safetensors": step})

        add("commit_async stall", timed(start))
        add("commit_async to finish", timed(lambda: h.result()))
        shutil.rmtree(d)

    base = statistics.median(res["torch.save"])
    print(f"state dict: {len(sd)} tensors, {nbytes / 2**20:.0f} MiB; {rounds} rounds; medians")
    print(f"{'operation':34} {'seconds':>8} {'MiB/s':>8} {'vs torch.save':>14}")
    for name, xs in res.items():
        m = statistics.median(xs)
        print(f"{name:34} {m:8.3f} {nbytes / 2**20 / m:8.0f} {m / base:13.2f}x")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
