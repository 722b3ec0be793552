"""Output paths a user names (``--out``): checked before any work is done, so a long run never fails at its end."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import InputError


def writable_dir(path: Path, what: str = "--out") -> Path:
    """Create ``path`` (and its parents) if needed; a path under a file, or one this user cannot write, is an
    ``InputError`` naming the culprit."""
    path = Path(os.path.abspath(path))
    probe = path
    while not probe.exists() and not probe.is_symlink():
        probe = probe.parent
    if not probe.is_dir():
        raise InputError(f"{what} {path}: {probe} is not a directory: choose another path")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise InputError(f"{what} {path}: Permission denied: this user cannot write in {probe}: choose another path")
    path.mkdir(parents=True, exist_ok=True)
    return path
