"""The nested-state layout: a state dict that is not a flat ``{name: tensor}`` map (an
optimizer's, a scheduler's, a training loop's) is stored as two files,

- ``NAME.safetensors``: its tensors, named by their path in the structure (``state.0.exp_avg``),
  so dedup and delta coding against the previous commit apply tensor by tensor;
- ``NAME.json``: everything else, in a typed encoding that keeps what JSON loses: tuples, integer
  and other non-string keys, ``OrderedDict``, NaN and infinities, exact floats, bytes.

The encoding is documented byte for byte in docs/python.md ("The nested-state layout"); in short,
``NAME.json`` is ``{"format": "cairn.state", "version": 1, "root": NODE}`` where a NODE is one of

    {"type": "none"} | {"type": "bool", "value": true}
    {"type": "int", "value": 3}                  (any size)
    {"type": "float", "value": "0.1"}            (Python's repr: exact; "nan", "inf", "-inf")
    {"type": "str", "value": "..."} | {"type": "bytes", "value": "<base64>"}
    {"type": "list" | "tuple", "items": [NODE, ...]}
    {"type": "dict" | "OrderedDict", "items": [[KEY NODE, VALUE NODE], ...]}
    {"type": "tensor", "name": "<tensor name in NAME.safetensors>", "framework": "torch"}
    {"type": "torch.dtype", "value": "float32"} | {"type": "torch.Size", "items": [...]}
"""

from __future__ import annotations

import base64
import collections
import re
from typing import Any

from ._cairn import BadInputError
from ._tensors import framework_of

FORMAT = "cairn.state"
VERSION = 1


def is_flat_tensor_dict(obj: Any) -> bool:
    """A mapping of string names to tensors (what a safetensors file holds)."""
    return (
        isinstance(obj, dict)
        and len(obj) > 0
        and all(isinstance(k, str) for k in obj)
        and all(framework_of(v) is not None for v in obj.values())
    )


class _Encoder:
    def __init__(self) -> None:
        self.tensors: list[tuple[str, Any]] = []
        self.names: set[str] = set()

    def tensor_name(self, path: list[str]) -> str:
        base = ".".join(path) or "tensor"
        base = re.sub(r"[\x00-\x1f]", "_", base)
        name, n = base, 1
        while name in self.names:
            n += 1
            name = f"{base}#{n}"
        self.names.add(name)
        return name

    def node(self, x: Any, path: list[str], depth: int = 0) -> dict:
        if depth > 200:
            raise BadInputError(f"{'.'.join(path)}: nested deeper than 200 levels")
        fw = framework_of(x)
        if fw is not None:
            name = self.tensor_name(path)
            self.tensors.append((name, x))
            return {"type": "tensor", "name": name, "framework": fw}
        if x is None:
            return {"type": "none"}
        if isinstance(x, bool):
            return {"type": "bool", "value": x}
        if isinstance(x, int):
            return {"type": "int", "value": int(x)}
        if isinstance(x, float):
            return {"type": "float", "value": repr(float(x))}
        if isinstance(x, str):
            return {"type": "str", "value": x}
        if isinstance(x, (bytes, bytearray)):
            return {"type": "bytes", "value": base64.b64encode(bytes(x)).decode("ascii")}
        tname = type(x).__module__ + "." + type(x).__qualname__
        if tname == "torch.Size":
            return {"type": "torch.Size", "items": [self.node(d, path, depth + 1) for d in x]}
        if tname == "torch.dtype":
            return {"type": "torch.dtype", "value": str(x).removeprefix("torch.")}
        if type(x) in (list, tuple):
            return {
                "type": type(x).__name__,
                "items": [self.node(v, path + [str(i)], depth + 1) for i, v in enumerate(x)],
            }
        if type(x) in (dict, collections.OrderedDict):
            items = []
            for k, v in x.items():
                key = self.node(k, path + ["<key>"], depth + 1)
                if key["type"] == "tensor":
                    raise BadInputError(f"{'.'.join(path)}: a tensor as a dict key")
                items.append([key, self.node(v, path + [str(k)], depth + 1)])
            kind = "OrderedDict" if type(x) is collections.OrderedDict else "dict"
            return {"type": kind, "items": items}
        if isinstance(x, dict):
            # A dict subclass (Lightning's AttributeDict, ...) is stored as a plain dict.
            return self.node(dict(x), path, depth)
        if type(x).__module__ == "numpy" and hasattr(x, "item") and getattr(x, "shape", None) == ():
            # A numpy scalar (np.float64, np.int64, ...) is stored as the Python number.
            return self.node(x.item(), path, depth)
        where = ".".join(path) or "the state"
        raise BadInputError(
            f"{where}: cannot store a {tname} in a nested state (tensors, dicts, lists, tuples, "
            "str, int, float, bool, None, bytes, torch.Size and torch.dtype can be stored)"
        )


def encode(obj: Any) -> tuple[list[tuple[str, Any]], dict]:
    """The tensors of ``obj`` (name, tensor) in traversal order, and its JSON document."""
    e = _Encoder()
    root = e.node(obj, [])
    return e.tensors, {"format": FORMAT, "version": VERSION, "root": root}


def decode(doc: dict, tensor: Any) -> Any:
    """Rebuild the object of ``doc``; ``tensor(name, framework)`` gives each tensor."""
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise BadInputError("not a cairn.state document")
    if doc.get("version") != VERSION:
        raise BadInputError(
            f"cairn.state version {doc.get('version')!r} is newer than this cairn reads ({VERSION})"
        )
    return _node(doc.get("root"), tensor)


def _node(n: Any, tensor: Any) -> Any:
    if not isinstance(n, dict) or "type" not in n:
        raise BadInputError(f"malformed cairn.state node: {n!r:.80}")
    t = n["type"]
    if t == "none":
        return None
    if t == "bool":
        return bool(n["value"])
    if t == "int":
        return int(n["value"])
    if t == "float":
        return float(n["value"])
    if t == "str":
        return str(n["value"])
    if t == "bytes":
        return base64.b64decode(n["value"])
    if t == "list":
        return [_node(i, tensor) for i in n["items"]]
    if t == "tuple":
        return tuple(_node(i, tensor) for i in n["items"])
    if t in ("dict", "OrderedDict"):
        d = collections.OrderedDict() if t == "OrderedDict" else {}
        for k, v in n["items"]:
            d[_node(k, tensor)] = _node(v, tensor)
        return d
    if t == "tensor":
        return tensor(n["name"], n.get("framework"))
    if t == "torch.Size":
        import torch

        return torch.Size([_node(i, tensor) for i in n["items"]])
    if t == "torch.dtype":
        import torch

        dt = getattr(torch, n["value"], None)
        if not isinstance(dt, torch.dtype):
            raise BadInputError(f"unknown torch dtype {n['value']!r}")
        return dt
    raise BadInputError(f"unknown cairn.state node type {t!r}")

