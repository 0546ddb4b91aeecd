"""Write the seed corpus of the torchzip_parse fuzz target: small, real torch.save and
torch.jit.save outputs (a few KB each, so the fuzzer's mutations reach every structure).

Run once, by hand, with the virtualenv the set-up script creates (it has torch):

    ~/.cache/cairn-venv/bin/python fuzz/seeds/make_torchzip_seeds.py

The files are committed in fuzz/seeds/torchzip_parse/; scripts/fuzz.sh copies them, with the
small fixtures of tests/fixtures/torch, into the working corpus before each run. The `run1-*`
files beside them are the minimized corpus of the first long run (50M inputs, 2026-12-04;
docs/reliability.md), kept as seeds so every later run starts from the coverage it reached.
"""

import io
import os

import torch
from torch import nn

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torchzip_parse")


def save(name, obj, **kw):
    path = os.path.join(OUT, name)
    torch.save(obj, path, **kw)


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(0)
    # One tensor of each dtype torch.save writes, tiny.
    dtypes = {
        "f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16,
        "f64": torch.float64, "i64": torch.int64, "i32": torch.int32, "i16": torch.int16,
        "i8": torch.int8, "u8": torch.uint8, "bool": torch.bool,
    }
    sd = {k: torch.arange(6).reshape(2, 3).to(d) for k, d in dtypes.items()}
    save("dtypes.pt", sd)
    # Views: a transpose, two slices of one storage, a 0-dim scalar, an empty tensor.
    base = torch.arange(12, dtype=torch.float32)
    save("views.pt", {
        "t": base.reshape(3, 4).t(), "head": base[:5], "tail": base[5:],
        "scalar": torch.tensor(1.5), "empty": torch.empty(0, 3),
    })
    # A tiny model's state dict, and AdamW's state after two steps (two parameter groups).
    model = nn.Sequential(nn.Linear(3, 2), nn.LayerNorm(2))
    save("tiny_model.pt", model.state_dict())
    opt = torch.optim.AdamW([
        {"params": [model[0].weight], "weight_decay": 0.01},
        {"params": [model[0].bias, model[1].weight, model[1].bias], "weight_decay": 0.0},
    ], lr=1e-3)
    for _ in range(2):
        model(torch.randn(4, 3)).sum().backward()
        opt.step()
    save("optimizer.pt", opt.state_dict())
    # A Lightning-style checkpoint dict: nested containers, strings, floats, None.
    save("lightning.ckpt", {
        "epoch": 1, "global_step": 10, "pytorch-lightning_version": "2.6.0",
        "state_dict": model.state_dict(), "optimizer_states": [opt.state_dict()],
        "lr_schedulers": [{"last_epoch": 1, "_step_count": 2}], "hparams": {"lr": 1e-3},
        "loops": None, "metrics": (0.5, float("inf"), float("nan")),
    })
    # Protocol 4, and the legacy (non-zip) format, which the reader rejects.
    save("protocol4.pt", {"w": torch.ones(2)}, pickle_protocol=4)
    save("legacy.pt", {"w": torch.ones(2)}, _use_new_zipfile_serialization=False)
    # TorchScript: data.pkl and constants.pkl, deflated code/ entries.
    scripted = torch.jit.script(nn.Linear(2, 2))
    buf = io.BytesIO()
    torch.jit.save(scripted, buf)
    with open(os.path.join(OUT, "script.jit"), "wb") as f:
        f.write(buf.getvalue())
    for name in sorted(os.listdir(OUT)):
        print(name, os.path.getsize(os.path.join(OUT, name)))


if __name__ == "__main__":
    main()
