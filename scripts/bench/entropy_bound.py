#!/usr/bin/env python3
"""How far from its bound is cairn's float codec on one checkpoint step?

    python3 scripts/bench/entropy_bound.py PARENT_DIR CHILD_DIR

Reads the float32 tensors of every `*.safetensors` file in CHILD_DIR and the same-named tensors
of PARENT_DIR, cuts each into the 1 MiB chunks cairn stores, and for each chunk computes, in
bits, the order-0 (memoryless) entropy of:

- planes:       the four byte planes of the elements, sign rotated to bit 0 (cairn's standalone
                encoding, with each plane's own byte histogram): what a Huffman coder per plane
                can reach at best;
- delta planes: the same of the zigzagged difference in the float's integer order against the
                parent's chunk (cairn's delta encoding);

It prints, per tensor kind (weights, exp_avg, exp_avg_sq; embedding rows and the rest), the raw
bytes and each bound as a ratio raw / bound (per chunk the better of planes and delta planes,
as cairn chooses), plus the whole step, to hold against what `cairn commit --json` reports as
`stored_bytes_added` for CHILD_DIR committed on top of PARENT_DIR. Memoryless bounds ignore
context between elements; they say what a better entropy coder of the same transforms could
gain, not what a model of the optimizer could.
"""
import argparse
import collections
import os
import sys

import numpy as np
from safetensors.numpy import load_file

CHUNK = 1 << 20


def ordered(x):
    """IEEE f32 bit patterns (uint32) mapped to integers in the float's order."""
    neg = (x >> 31).astype(bool)
    return np.where(neg, ~x, x | np.uint32(0x80000000)).astype(np.uint32)


def plane_bits(words):
    """Sum over the 4 byte planes of n * H(plane) in bits."""
    total = 0.0
    n = words.size
    for k in range(4):
        plane = ((words >> np.uint32(8 * k)) & np.uint32(0xFF)).astype(np.uint8)
        counts = np.bincount(plane, minlength=256)
        p = counts[counts > 0] / n
        total += -(counts[counts > 0] * np.log2(p)).sum()
    return total


def kind_of(name):
    if name.endswith("exp_avg_sq"):
        k = "exp_avg_sq"
    elif name.endswith("exp_avg"):
        k = "exp_avg"
    else:
        k = "weights"
    where = "embedding" if "embed_tokens" in name else "other"
    return f"{k} ({where})"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("parent")
    ap.add_argument("child")
    a = ap.parse_args()
    acc = collections.defaultdict(lambda: np.zeros(4))  # raw, planes, delta planes, best
    for fname in sorted(os.listdir(a.child)):
        if not fname.endswith(".safetensors"):
            continue
        child = load_file(os.path.join(a.child, fname))
        parent_path = os.path.join(a.parent, fname)
        parent = load_file(parent_path) if os.path.exists(parent_path) else {}
        for name, arr in child.items():
            if arr.dtype != np.float32:
                continue
            x = np.ascontiguousarray(arr).reshape(-1).view(np.uint32)
            b = parent.get(name)
            b = None if b is None or b.shape != arr.shape or b.dtype != arr.dtype else \
                np.ascontiguousarray(b).reshape(-1).view(np.uint32)
            per = CHUNK // 4
            for s in range(0, x.size, per):
                c = x[s:s + per]
                rot = ((c << np.uint32(1)) | (c >> np.uint32(31))).astype(np.uint32)
                pb = plane_bits(rot)
                if b is not None:
                    d = (ordered(c) - ordered(b[s:s + per])).astype(np.uint32)
                    z = ((d << np.uint32(1)) ^ (d.view(np.int32) >> 31).view(np.uint32)).astype(np.uint32)
                    db = plane_bits(z)
                else:
                    db = float("inf")
                acc[f"{fname}: {kind_of(name)}"] += [c.size * 32, pb, db, min(pb, db)]
    tot = np.zeros(4)
    print(f"{'tensors':<48} {'raw MB':>8} {'planes':>7} {'delta pl.':>9} {'best':>7}")
    for k in sorted(acc):
        v = acc[k]
        tot += np.where(np.isinf(v), 0, v)
        print(f"{k:<48} {v[0] / 8e6:8.1f} " + " ".join(
            f"{(v[0] / v[i]) if np.isfinite(v[i]) else float('nan'):>{w}.2f}x"
            for i, w in ((1, 6), (2, 8), (3, 6))))
    print(f"{'whole step':<48} {tot[0] / 8e6:8.1f} {tot[0] / tot[1]:6.2f}x {'':>9} {tot[0] / tot[3]:6.2f}x")
    print(f"bound (best of planes / delta planes): {tot[3] / 8e6:.1f} MB for {tot[0] / 8e6:.1f} MB")


if __name__ == "__main__":
    sys.exit(main())
