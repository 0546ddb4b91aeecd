"""Type stubs of the extension module cairn._cairn (py/src/lib.rs). Users call the API of the
``cairn`` package (cairn.Store); this module is its thin binding to the Rust library. Records
cross as JSON text: the documents the CLI's ``--json`` prints."""

from os import PathLike

import numpy as np
import numpy.typing as npt

__version__: str
DTYPES: list[str]

class Error(Exception):
    """An error from cairn; the message is the library's."""

class NotFoundError(Error):
    """A revision, branch, tag, file, tensor or store that does not exist."""

class PrunedError(Error):
    """Data that gc deleted: a pruned commit, or a file released from a slimmed commit."""

class CorruptError(Error):
    """The store holds damaged or missing data."""

class BadInputError(Error):
    """Input that breaks a rule: a malformed file, path, name, revision, query, policy or tensor."""

# One input file: ("bytes", rel, data) | ("path", rel, path) | ("dir", "", path)
# | ("tensors", rel, [(name, dtype, shape, uint8 array)], metadata or None)
FileSpec = tuple

class RawHandle:
    def done(self) -> bool: ...
    def wait(self) -> str: ...

class RawStore:
    @staticmethod
    def init(path: str | PathLike[str]) -> RawStore: ...
    @staticmethod
    def open(path: str | PathLike[str]) -> RawStore: ...
    @staticmethod
    def discover(start: str | None = None, explicit: str | None = None) -> RawStore: ...
    @property
    def path(self) -> str: ...
    def commit(self, files: list[FileSpec], opts: dict) -> str: ...
    def commit_async(self, files: list[FileSpec], opts: dict) -> RawHandle: ...
    def resolve(self, rev: str) -> str: ...
    def log(
        self,
        rev: str | None = None,
        conds: list[str] = ...,
        sort: str | None = None,
        limit: int | None = None,
        all: bool = False,
    ) -> str: ...
    def show(self, rev: str) -> str: ...
    def read_file(self, rev: str, path: str) -> bytes: ...
    def read_tensors(
        self, rev: str, path: str, names: list[str] | None = None
    ) -> list[tuple[str, str, list[int], npt.NDArray[np.uint8]]]: ...
    def read_tensor(
        self, rev: str, spec: str
    ) -> tuple[str, tuple[str, str, list[int], npt.NDArray[np.uint8]]]: ...
    def checkout(self, rev: str, dir: str, force: bool = False, paranoid: bool = False) -> str: ...
    def add_remote(self, name: str, url: str) -> str: ...
    def remotes(self) -> str: ...
    def push(self, remote: str, refs: list[str], all: bool = False, force: bool = False) -> str: ...
    def fetch(self, remote: str) -> str: ...
    def pull(self, remote: str, branch: str | None = None) -> str: ...
    def diff(self, a: str, b: str) -> str: ...
    def gc(
        self,
        keep_last: int | None = None,
        keep_best: list[tuple[int, str, str]] = ...,
        keep_every: int | None = None,
        keep_within: str | None = None,
        branches: list[str] = ...,
        all: bool = False,
        dry_run: bool = False,
    ) -> str: ...
    def tag(self, name: str, rev: str, move_: bool = False) -> str: ...
    def refs(self) -> str: ...

def clone(url: str, path: str, lazy: bool = False) -> str: ...
