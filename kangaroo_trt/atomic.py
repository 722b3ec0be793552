"""The atomic build's fences: a lock on the target, temporary directories named after their owner, the checks
before replacing anything, and the final swap. Used by ``kangaroo-export build`` and ``kangaroo-export engines``.

What an export never deletes:

* an existing ``out`` without ``--force``; with it, anything but an engine directory whose manifest this version
  reads and that holds only the files its manifest lists (never a symbolic link, nor the current directory or
  one holding it);
* a directory created at ``out`` while the export runs: the export holds a lock on ``out`` (``.OUT.lock`` beside
  it; a second export to the same ``out`` fails at once) and re-checks ``out`` right before the final rename.

Temporary directories (``.OUT.kangaroo-tmp-PID-*``) are removed on any failure, Ctrl-C and SIGTERM
(``cli/common.py`` raises SIGTERM as an exception); one left by a killed export (its PID gone) is swept by the next
export to the same ``out``. Files come out with the user's umask, like any other file they create.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from .errors import ConfigError, EngineDirError
from .interrupts import raise_if_interrupted
from .contract.manifest import MANIFEST, Manifest

TMP_TAG = "kangaroo-tmp"  # temporary directories: .<out name>.kangaroo-tmp-<pid>-<random>
# the longest hidden sibling's name around ``out``'s: a 7-digit pid (Linux's largest) and mkdtemp's 8 random characters
_HIDDEN = f"..{TMP_TAG}-{'9' * 7}-{'x' * 8}"


def check_name(out: Path) -> None:
    """Refuse an ``out`` whose name leaves no room for the hidden siblings named after it (the lock, temporary
    directories) within the file system's name limit: now, not after loading the model, and naming ``out``."""
    try:
        limit = os.pathconf(out.parent, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255  # every common Linux file system
    size, room = len(os.fsencode(out.name)), limit - len(_HIDDEN)
    if size > room:
        raise ConfigError(f"the name of {out} is {size} bytes long: at most {room} fit here (the file system allows "
                          f"{limit}, and the export writes hidden directories beside it named after it), choose a shorter one")


def temp_dir(out: Path, pid: int | None = None) -> Path:
    """A new hidden working directory beside ``out``, named after it and the process that owns it."""
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.{TMP_TAG}-{pid or os.getpid()}-", dir=out.parent))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def sweep_stale(out: Path, log: Callable[[str], None] = print) -> None:
    """Remove the temporary directories of builds to ``out`` whose process is gone (killed, SIGKILL, power cut)."""
    prefix = f".{out.name}.{TMP_TAG}-"
    if not out.parent.is_dir():
        return
    for path in out.parent.iterdir():
        pid = path.name[len(prefix):].split("-")[0] if path.name.startswith(prefix) else ""
        if pid.isdigit() and path.is_dir() and not path.is_symlink() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            log(f"removed {path.name}, left behind by an export that did not finish (process {pid})")


@contextmanager
def out_lock(out: Path) -> Iterator[None]:
    """Hold ``.OUT.lock`` beside ``out`` for the whole build; a second build (or ``kangaroo-export engines``) on the
    same directory fails at once instead of racing this one."""
    check_name(out)
    lock = out.parent / f".{out.name}.lock"
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigError(f"another export to {out} is running (it holds {lock}): wait for it to finish, "
                              "or choose another --out") from None
        try:
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)  # the previous holder removed the file after we opened it: lock the new one
    try:
        yield
    finally:
        try:
            os.unlink(lock)
        finally:
            os.close(fd)


def replaceable(out: Path, force: bool) -> bool:
    """Whether ``out`` exists (and may be replaced, with ``force``); raises if it must not be touched."""
    if out.is_symlink():
        raise ConfigError(f"{out} is a symbolic link: refusing to replace it or what it points to; pass another --out")
    if not out.exists():
        return False
    if not force:
        raise ConfigError(f"{out} already exists: choose another --out or pass --force to replace it")
    here = Path.cwd().resolve()
    if out.resolve() == here or out.resolve() in here.parents:
        raise ConfigError(f"--out {out} is the current directory or holds it: refusing to replace it; "
                          "run from another directory or choose another --out")
    try:
        manifest = Manifest.read(out)
    except EngineDirError:
        raise ConfigError(f"{out} is not an engine directory this kangaroo-trt wrote (no readable {MANIFEST}): "
                          "refusing to replace it, choose another --out") from None
    listed = {*manifest.files, MANIFEST}
    extra = [rel for p in sorted(out.rglob("*")) if (p.is_file() or p.is_symlink())
             and (rel := p.relative_to(out).as_posix()) not in listed]
    if extra:
        raise ConfigError(f"{out} holds {len(extra)} file(s) its manifest does not list (e.g. {', '.join(extra[:3])}): "
                          "refusing to replace it; move them out or choose another --out")
    return True


def apply_umask(root: Path) -> None:
    """mkdtemp makes 0700 directories: give the tree the modes any file the user creates gets (0666 / 0777 & ~umask)."""
    mask = os.umask(0)
    os.umask(mask)
    for path in [root, *root.rglob("*")]:
        if not path.is_symlink():
            path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


def swap_in(tmp: Path, out: Path, existed: bool, force: bool) -> None:
    """Rename the finished ``tmp`` to ``out``, re-checking ``out`` first: whatever appeared there meanwhile is kept."""
    raise_if_interrupted()  # never put an output in place after Ctrl-C / SIGTERM, even one a finalizer swallowed
    appeared = ConfigError(f"{out} appeared while the export ran: left it as it is and wrote nothing; "
                           "choose another --out (or remove it and export again)")
    if not existed:
        if out.exists() or out.is_symlink():
            raise appeared
        try:
            os.rename(tmp, out)  # fails on a non-empty directory that appeared since the check
        except OSError as err:
            raise appeared from err
        return
    replaceable(out, force)  # still an engine directory holding nothing else (nobody added files meanwhile)
    old = temp_dir(out)
    os.rename(out, old / "engine")
    try:
        os.rename(tmp, out)
    except OSError:
        os.rename(old / "engine", out)
        shutil.rmtree(old, ignore_errors=True)
        raise appeared from None
    shutil.rmtree(old, ignore_errors=True)
