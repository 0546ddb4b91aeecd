"""The user-facing store: commits from memory, loads, tensor reads, history, gc."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import _cairn, _state, _tensors
from ._cairn import BadInputError, NotFoundError, RawHandle, RawStore

PathLike = str | os.PathLike


@dataclass(frozen=True)
class Commit:
    """One commit's record, as ``cairn log --json`` prints it."""

    id: str
    parents: list[str]
    message: str
    author: str
    time: str
    step: int | None = None
    epoch: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    run_id: str | None = None
    record: dict = field(default_factory=dict, repr=False)
    config: Any = None

    @classmethod
    def _of(cls, r: dict) -> Commit:
        return cls(
            id=r["id"],
            parents=list(r.get("parents") or []),
            message=r.get("message", ""),
            author=r.get("author", ""),
            time=r.get("time", ""),
            step=r.get("step"),
            epoch=r.get("epoch"),
            metrics=dict(r.get("metrics") or {}),
            params=dict(r.get("params") or {}),
            run_id=r.get("run_id"),
            config=r.get("config"),
            record=r,
        )


@dataclass(frozen=True)
class CommitResult:
    """What a commit wrote: its id, branch, parent and the store's counters."""

    id: str
    branch: str
    parent: str | None
    files: int
    logical_bytes: int
    stored_bytes_added: int
    new_chunks: int
    reused_chunks: int
    record: dict = field(default_factory=dict, repr=False)

    @classmethod
    def _of(cls, text: str) -> CommitResult:
        r = json.loads(text)
        return cls(
            id=r["commit"],
            branch=r["branch"],
            parent=r.get("parent"),
            files=r["files"],
            logical_bytes=r["logical_bytes"],
            stored_bytes_added=r["stored_bytes_added"],
            new_chunks=r["new_chunks"],
            reused_chunks=r["reused_chunks"],
            record=r,
        )


class CommitHandle:
    """A commit running in the background (:meth:`Store.commit_async`)."""

    def __init__(self, raw: RawHandle) -> None:
        self._raw = raw
        self._result: CommitResult | None = None

    def done(self) -> bool:
        """Whether the commit has finished."""
        return self._result is not None or self._raw.done()

    def result(self) -> CommitResult:
        """Wait for the commit (without holding the GIL) and return what it wrote; raises the
        commit's error if it failed."""
        if self._result is None:
            self._result = CommitResult._of(self._raw.wait())
        return self._result


def _files(files: Mapping[str, Any] | PathLike) -> list[tuple]:
    """The binding's input list for ``files``."""
    if isinstance(files, (str, os.PathLike)):
        if not os.path.isdir(files):
            raise BadInputError(f"{os.fspath(files)!r} is not a directory; pass a dict of files")
        return [("dir", "", os.fspath(files))]
    if not isinstance(files, Mapping):
        raise BadInputError("files must be a dict of name -> value, or a directory path")
    out: list[tuple] = []
    for name, value in files.items():
        if not isinstance(name, str):
            raise BadInputError(f"file name {name!r} is not a string")
        out.extend(_file(name, value))
    return out


def _tensor_list(name: str, tensors: Iterable[tuple[str, Any]]) -> list[tuple]:
    out = []
    for tname, t in tensors:
        dtype, shape, data = _tensors.to_bytes(t, f"{name}:{tname}")
        out.append((tname, dtype, shape, data))
    return out


def _file(name: str, value: Any) -> list[tuple]:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return [("bytes", name, bytes(value))]
    if isinstance(value, (str, os.PathLike)):
        return [("path", name, os.fspath(value))]
    if name.endswith(".safetensors"):
        if not _state.is_flat_tensor_dict(value):
            raise BadInputError(
                f"{name}: a .safetensors file takes a dict of name -> tensor; store nested state "
                f"under a name without the extension (e.g. {name.removesuffix('.safetensors')!r})"
            )
        return [("tensors", name, _tensor_list(name, value.items()), None)]
    if isinstance(value, (dict, list, tuple)) or _tensors.is_tensor(value):
        tensors, doc = _state.encode(value)
        text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        return [
            ("tensors", f"{name}.safetensors", _tensor_list(name, tensors), None),
            ("bytes", f"{name}.json", text),
        ]
    raise BadInputError(
        f"{name}: cannot commit a {type(value).__name__}; give bytes, a path, a dict of tensors "
        "or a nested state dict"
    )


def _options(
    message: str = "",
    *,
    step: int | None = None,
    epoch: float | None = None,
    metrics: Mapping[str, float] | None = None,
    params: Mapping[str, Any] | None = None,
    config: Any = None,
    run_id: str | None = None,
    dataset: PathLike | Mapping[str, PathLike] | None = None,
    dataset_fingerprint: str | Mapping[str, str] | None = None,
    git: str | None = None,
    git_repo: PathLike | None = None,
    branch: str | None = None,
    author: str | None = None,
    opaque: Iterable[str] | None = None,
    follow_symlinks: bool = False,
) -> dict:
    o: dict[str, Any] = {"message": message, "follow_symlinks": follow_symlinks}
    if step is not None:
        o["step"] = int(step)
    if epoch is not None:
        o["epoch"] = float(epoch)
    if metrics:
        o["metrics"] = {str(k): float(v) for k, v in metrics.items()}
    if params:
        o["params"] = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in params.items()}
    if config is not None:
        if isinstance(config, (str, os.PathLike)) and os.path.isfile(config):
            with open(config, encoding="utf-8") as f:
                config = json.load(f)
        o["config"] = json.dumps(config, sort_keys=True, separators=(",", ":"))
    if run_id is not None:
        o["run_id"] = str(run_id)
    if dataset is not None:
        if isinstance(dataset, Mapping):
            o["datasets"] = [(str(k), os.fspath(v)) for k, v in dataset.items()]
        else:
            p = os.fspath(dataset)
            o["datasets"] = [(os.path.basename(os.path.normpath(p)) or p, p)]
    if dataset_fingerprint is not None:
        if isinstance(dataset_fingerprint, Mapping):
            o["dataset_fingerprints"] = [(str(k), str(v)) for k, v in dataset_fingerprint.items()]
        else:
            o["dataset_fingerprints"] = [("dataset", str(dataset_fingerprint))]
    if git is not None:
        o["git"] = git
    if git_repo is not None:
        o["git_repo"] = os.fspath(git_repo)
    if branch is not None:
        o["branch"] = branch
    if author is not None:
        o["author"] = author
    if opaque:
        o["opaque"] = list(opaque)
    return o


class Store:
    """A cairn store. Open one with ``Store(path)``, create one with ``Store.init(path)``, or
    find one as the CLI does with ``Store.discover()``."""

    def __init__(self, path: PathLike | None = None, *, _raw: RawStore | None = None) -> None:
        if _raw is None:
            if path is None:
                raise BadInputError("Store(path): give the store's directory")
            _raw = RawStore.open(os.fspath(path))
        self._raw = _raw

    @classmethod
    def init(cls, path: PathLike) -> Store:
        """Create a store in ``path`` (a new or empty directory)."""
        return cls(_raw=RawStore.init(os.fspath(path)))

    @classmethod
    def discover(cls, start: PathLike | None = None) -> Store:
        """The store ``$CAIRN_STORE`` names, else ``.cairn`` in ``start`` (default: the current
        directory) or its nearest parent that has one."""
        return cls(_raw=RawStore.discover(os.fspath(start) if start is not None else None))

    @property
    def path(self) -> str:
        return os.fspath(self._raw.path)

    def __repr__(self) -> str:
        return f"cairn.Store({self.path!r})"

    # Writing

    def commit(self, files: Mapping[str, Any] | PathLike, message: str = "", **meta) -> CommitResult:
        """Commit ``files`` as one checkpoint and return what was written.

        ``files`` maps a file name to bytes, a path, a dict of tensors (``NAME.safetensors``)
        or a nested state dict (stored as ``NAME.safetensors`` + ``NAME.json``); or it is a
        directory to commit whole. Tensors are copied once, straight into the stored file; the
        GIL is released while cairn hashes, encodes and writes. ``meta``: ``step``, ``epoch``,
        ``metrics``, ``params``, ``config``, ``run_id``, ``dataset``, ``dataset_fingerprint``,
        ``git`` (``"auto"`` or a SHA), ``git_repo``, ``branch``, ``author``, ``opaque``,
        ``follow_symlinks``.
        """
        return CommitResult._of(self._raw.commit(_files(files), _options(message, **meta)))

    def commit_async(self, files: Mapping[str, Any], message: str = "", **meta) -> CommitHandle:
        """Copy ``files`` into cairn's buffers and commit them in the background. Returns once
        the copy is made: the caller may change its tensors right away. At most one commit runs
        at a time; a second call waits for the first to finish before copying."""
        if isinstance(files, (str, os.PathLike)):
            raise BadInputError("commit_async takes a dict of files; commit a directory with commit")
        return CommitHandle(self._raw.commit_async(_files(files), _options(message, **meta)))

    def tag(self, name: str, rev: str = "HEAD", *, move: bool = False) -> str:
        """Point tag ``name`` at ``rev``; an existing tag moves only with ``move=True``."""
        return self._raw.tag(name, rev, move)

    def gc(
        self,
        *,
        keep_last: int | None = None,
        keep_best: tuple[int, str, str] | list[tuple[int, str, str]] | None = None,
        keep_every: int | None = None,
        keep_within: str | None = None,
        branches: Iterable[str] | None = None,
        all: bool = False,
        dry_run: bool = False,
    ) -> dict:
        """Apply retention rules (a commit kept by any rule is kept) and reclaim the space of the
        others; ``dry_run=True`` only returns the plan. ``keep_best=(3, "val_loss", "min")``."""
        best = keep_best or []
        if isinstance(best, tuple):
            best = [best]
        return json.loads(
            self._raw.gc(
                keep_last, [(int(k), str(m), str(d)) for k, m, d in best], keep_every,
                keep_within, list(branches or []), all, dry_run,
            )
        )

    def gc_status(self, *, wait: bool = False, timeout: float = 3600.0) -> dict:
        """The last gc run on record (``last``: its state, trigger, policy, pruned commits,
        bytes freed, error) and whether one runs now (``running``), as ``cairn gc --status``.
        A commit with a stored retention policy runs it afterwards on a thread of its own;
        ``wait=True`` first waits (at most ``timeout`` seconds) until no gc runs or waits."""
        return json.loads(self._raw.gc_status(wait, timeout))

    # Reading

    def resolve(self, rev: str = "HEAD") -> str:
        """The full id of the commit ``rev`` names (``HEAD``, ``HEAD~2``, a branch, a tag,
        ``run@best``, an id prefix)."""
        return self._raw.resolve(rev)

    def log(
        self,
        rev: str | None = None,
        *,
        where: str | Iterable[str] | None = None,
        sort: str | None = None,
        limit: int | None = None,
        all: bool = False,
    ) -> list[Commit]:
        """History from ``rev`` (default HEAD), newest first; with ``where`` (``"val_loss <
        0.5"``, or a list, all of which must hold), ``sort`` (``"val_loss"``, ``"-step"``) or
        ``all=True``, a catalog query as ``cairn log --where``."""
        conds = [where] if isinstance(where, str) else list(where or [])
        return [Commit._of(r) for r in json.loads(self._raw.log(rev, conds, sort, limit, all))]

    def show(self, rev: str = "HEAD") -> dict:
        """The commit with its files and tensors (``cairn show --json``)."""
        return json.loads(self._raw.show(rev))

    def diff(self, a: str, b: str) -> dict:
        """What changed from ``a`` to ``b`` (``cairn diff --json``)."""
        return json.loads(self._raw.diff(a, b))

    def refs(self) -> dict:
        """``{"head": BRANCH, "branches": {name: id}, "tags": {name: id}}``."""
        return json.loads(self._raw.refs())

    def files(self, rev: str = "HEAD") -> list[str]:
        """The file names of ``rev``."""
        return [f["path"] for f in self.show(rev)["files"]]

    def read_bytes(self, rev: str, path: str) -> bytes:
        """The bytes of file ``path`` in ``rev``."""
        return self._raw.read_file(rev, path)

    def checkout(
        self, rev: str, dir: PathLike, *, force: bool = False, paranoid: bool = False
    ) -> dict:
        """Write every file of ``rev`` into ``dir``, byte for byte, as ``cairn checkout``: every
        chunk is checked by its BLAKE3 id and every file by its size; ``paranoid`` also reads
        each file back and checks its recorded SHA-256 (``cairn checkout --paranoid``)."""
        return json.loads(self._raw.checkout(rev, os.fspath(dir), force, paranoid))

    def add_remote(self, name: str, url: str) -> str:
        """Add remote ``name`` at ``url`` (``s3://BUCKET/PREFIX`` or ``file:///PATH``), as
        ``cairn remote add``; returns the URL as stored. S3 settings come from the ``AWS_*``
        variables and ``~/.aws`` files when a transfer runs, never from the store."""
        return self._raw.add_remote(name, url)

    def remotes(self) -> dict:
        """Every remote: ``{name: {"url", "refs": {full ref: [heads]}}}``."""
        return json.loads(self._raw.remotes())

    def push(
        self,
        remote: str = "origin",
        refs: Iterable[str] = (),
        *,
        all: bool = False,
        force: bool = False,
    ) -> dict:
        """Send ``refs`` (branches or tags; default the current branch) to ``remote``, only what
        it lacks, as ``cairn push --json``. Raises on a non-fast-forward unless ``force``."""
        return json.loads(self._raw.push(remote, list(refs), all, force))

    def fetch(self, remote: str = "origin") -> dict:
        """Read ``remote``'s refs, commits and trees (no tensor data), as ``cairn fetch --json``;
        ``REMOTE/BRANCH`` revisions then resolve."""
        return json.loads(self._raw.fetch(remote))

    def pull(self, remote: str = "origin", branch: str | None = None) -> dict:
        """Fetch, then fast-forward ``branch`` (default the current one) with its data, as
        ``cairn pull --json``."""
        return json.loads(self._raw.pull(remote, branch))

    @classmethod
    def clone(cls, url: str, path: PathLike, *, lazy: bool = False) -> Store:
        """A new store at ``path`` holding everything the remote at ``url`` holds, as
        ``cairn clone``; ``origin`` is configured. ``lazy=True`` fetches history only: tensors
        come from the remote on first read (``cairn clone --lazy``)."""
        _cairn.clone(url, os.fspath(path), lazy)
        return cls(path)

    def tensor(self, rev: str, spec: str, *, framework: str | None = None):
        """Tensor ``spec`` (``FILE:NAME``, or ``NAME`` when unique) of ``rev``; only its chunks
        are read. A torch tensor by default (numpy when torch is absent)."""
        fw = framework or _tensors.default_framework()
        file, (name, dtype, shape, buf) = self._raw.read_tensor(rev, spec)
        return _tensors.from_bytes(dtype, shape, buf, fw, f"{file}:{name}")

    def load(self, rev: str, name: str, *, framework: str | None = None):
        """What ``commit`` stored under ``name``: a dict of tensors for ``NAME.safetensors``, the
        nested state for a name stored as one (tuples, int keys and NaN as they were, tensors
        of the framework they were saved from unless ``framework`` is given), else the bytes."""
        files = set(self.files(rev))
        if name.endswith(".safetensors") and name in files:
            fw = framework or _tensors.default_framework()
            out = {}
            for tname, dtype, shape, buf in self._raw.read_tensors(rev, name, None):
                out[tname] = _tensors.from_bytes(dtype, shape, buf, fw, f"{name}:{tname}")
            return out
        if f"{name}.json" in files:
            doc = json.loads(self._raw.read_file(rev, f"{name}.json"))
            st = f"{name}.safetensors"
            bufs = {}
            if st in files:
                for tname, dtype, shape, buf in self._raw.read_tensors(rev, st, None):
                    bufs[tname] = (dtype, shape, buf)

            def tensor(tname: str, saved_fw: str | None):
                if tname not in bufs:
                    raise NotFoundError(f"{st} has no tensor {tname!r} that {name}.json names")
                dtype, shape, buf = bufs[tname]
                fw = framework or saved_fw or _tensors.default_framework()
                return _tensors.from_bytes(dtype, shape, buf, fw, f"{st}:{tname}")

            return _state.decode(doc, tensor)
        if name in files:
            return self._raw.read_file(rev, name)
        raise NotFoundError(f"{rev} has no file {name!r} (nor {name}.json)")
