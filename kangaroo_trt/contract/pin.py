"""Open an engine directory as one snapshot, even while an export replaces it.

Loaders open the files of an engine directory by path, and a path is looked up again at every open: while
``kangaroo-export build --force`` renames a new directory over the old one (``atomic.swap_in``), an open could
hash the first engine's files and then load the second's, or load a mix of both, each file matching its own
manifest but not each other (seen: 2 of 400 opens against real exports, most of them against a rename every 30 ms).

Two ways to close that gap: load from the bytes that were hashed, or check that the directory did not change.
Bytes cover only files this project reads itself: ONNX Runtime opens a graph's external weights
(``<graph>.onnx.data``) by path, so do the tokenizer library and torch, and keeping a second copy of every
weight in memory is no small cost. So the directory is checked instead: ``open_pinned`` resolves it once (a
symbolic link switched to another engine meanwhile changes nothing), holds descriptors on the directory and its
manifest for the whole load, so neither inode can be reused by a new directory, and after everything is
loaded checks that the path still names that directory and that manifest (st_dev + st_ino). An export never
edits the files of a finished directory in place: ``build --force`` renames a whole directory over it, and
``kangaroo-export engines`` replaces the manifest last (``os.replace``). Either changes what the path names,
so a load that overlapped one is detected, dropped and retried once; a second overlap is a one-line
``EngineDirError``. The cost: two ``open`` and four ``stat`` calls per open. (Files edited in place by hand are
caught by their sha256 only if the edit comes before the hash.)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, TypeVar

from ..errors import EngineDirError
from .manifest import MANIFEST

T = TypeVar("T")


def open_pinned(directory: Path, load: Callable[[Path], T], close: Callable[[T], None]) -> T:
    """``load(root)`` (``root``: ``directory`` resolved) as of one state of the directory; ``close`` drops a load
    that overlapped a replacement. An ``OSError`` from a directory that did not change becomes an EngineDirError."""
    for _ in range(2):
        pin = _Pin(Path(directory))
        try:
            try:
                loaded = load(pin.root)
            except Exception as err:  # a file gone or changed mid-swap fails in whatever library read it
                if pin.moved():
                    continue
                if isinstance(err, OSError):
                    raise EngineDirError(f"{directory}: cannot read {err.filename or 'a file'} ({err.strerror or err}): "
                                         "the engine directory is incomplete or unreadable, rebuild it") from err
                raise
            if not pin.moved():
                return loaded
            close(loaded)
        finally:
            pin.release()
    raise EngineDirError(f"{directory} was replaced while it was being opened, twice (an export with --force?): "
                         "open it again once the export has finished")


def _identity(stat: os.stat_result) -> tuple[int, int, int]:
    # st_ctime_ns too: a rename changes it, so a directory renamed away and back during the load (the same inode
    # at both ends) is caught as well wherever the clock is fine enough (Linux >= 6.13 stamps it per nanosecond)
    return stat.st_dev, stat.st_ino, stat.st_ctime_ns


class _Pin:
    """The directory and its manifest as they are now, held open so that neither inode can be reused."""

    def __init__(self, directory: Path) -> None:
        self.root = directory.resolve()
        self._held: dict[Path, int | None] = {}
        for path in (self.root, self.root / MANIFEST):
            try:
                self._held[path] = os.open(path, os.O_RDONLY)
            except OSError:  # missing (the load says so), or mid-swap: then it must still be missing at the end
                self._held[path] = None
        self._identities = {p: None if fd is None else _identity(os.fstat(fd)) for p, fd in self._held.items()}

    def moved(self) -> bool:
        """Whether the path names another directory or manifest than when the pin was taken."""
        for path, before in self._identities.items():
            try:
                now = _identity(os.stat(path))
            except OSError:
                now = None
            if now != before:
                return True
        return False

    def release(self) -> None:
        for fd in self._held.values():
            if fd is not None:
                os.close(fd)
        self._held = {}
