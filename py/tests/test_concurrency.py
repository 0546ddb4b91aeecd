"""The GIL is released during a commit; commit_async copies at the call; a commit from memory
costs at most 1.2x the tensors' bytes of extra memory."""

import subprocess
import sys
import textwrap
import threading

import torch

import cairn


def test_another_thread_runs_during_a_commit(store):
    tensors = {f"t{i}": torch.randn(4 << 20) for i in range(8)}  # 128 MiB
    ticks = 0
    stop = threading.Event()
    started = threading.Event()

    def spin():
        nonlocal ticks
        started.set()
        while not stop.is_set():
            ticks += 1

    th = threading.Thread(target=spin)
    th.start()
    started.wait()
    before = ticks
    store.commit({"big.safetensors": tensors})
    during = ticks - before
    stop.set()
    th.join()
    # With the GIL held for the whole commit the other thread could not run at all.
    assert during > 1000, f"the other thread ran {during} iterations during the commit"


def test_commit_async_commits_the_values_at_the_call(store):
    w = torch.zeros(1 << 20)
    opt_state = {"step": torch.tensor(1.0), "m": torch.zeros(1000)}
    handles = []
    for step in range(1, 4):
        handles.append(store.commit_async({"w.safetensors": {"w": w}, "opt": opt_state}, step=step))
        # Training goes on at once, in place.
        w.add_(1.0)
        opt_state["step"].add_(1.0)
        opt_state["m"].mul_(2).add_(1)
    results = [h.result() for h in handles]
    assert all(h.done() for h in handles)
    for i, r in enumerate(results):
        got = store.load(r.id, "w.safetensors")["w"]
        assert bool((got == float(i)).all()), f"commit {i} holds {got[0]}"
        assert store.load(r.id, "opt")["step"].item() == float(i + 1)


def test_peak_memory_of_a_commit_from_memory(tmp_path):
    """In a fresh interpreter (so no other test's memory counts): the RSS peak of a commit of
    256 MiB of tensors, above the RSS with the tensors in memory, is at most 1.2x their bytes."""
    code = textwrap.dedent(
        f"""
        import torch, cairn, gc
        store = cairn.Store.init({str(tmp_path / 's')!r})
        store.commit({{"warm.bin": b"x"}})  # the library's own start-up memory
        tensors = {{f"t{{i}}": torch.randn(8 << 20) for i in range(8)}}  # 256 MiB
        nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
        gc.collect()
        def rss():
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) * 1024
        def hwm():
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024
        base = rss()
        # Reset the peak RSS (VmHWM) to the current RSS, so the peak read after the commit is
        # the commit's.
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before_peak = hwm()
        store.commit({{"model.safetensors": tensors}})
        peak = hwm()
        print(nbytes, base, peak, before_peak)
        """
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    nbytes, base, peak, before_peak = map(int, r.stdout.split())
    assert before_peak <= base + (16 << 20), "the peak was not reset to the baseline"
    extra = peak - base
    assert extra <= 1.2 * nbytes, f"commit peak {extra / nbytes:.2f}x the tensors' bytes"
