"""Atomic file writes: a crash mid-write never leaves a half-written file behind."""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it over ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:  # name the file the caller asked for, not our temporary one
        raise type(e)(e.errno, e.strerror, str(path)) from None
    os.close(fd)
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the result ordinary permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


TEMP_DIR_SUFFIX = ".pgn-partial"  # a folder being written next to where it will be published


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty folder next to ``path``; on success it replaces ``path`` as one unit.

    Readers see the previous folder or the new one, never a mix: on Linux the two are swapped with one
    ``renameat2(RENAME_EXCHANGE)`` (elsewhere, where a folder cannot be swapped, the old one is moved aside
    first). The folder gets ordinary permissions (0755 under the usual umask; ``mkdtemp`` makes 0700, which
    a server running as another user cannot read). A kill at any point leaves ``path`` whole, and the
    partial folder it leaves behind is removed by the next write to ``path`` (:func:`remove_partial_dirs`).
    """
    import shutil

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_partial_dirs(path)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_DIR_SUFFIX))
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        if path.is_dir() and not path.is_symlink() and _exchange(tmp, path):
            pass  # tmp now holds the previous folder
        else:
            if path.exists() or path.is_symlink():
                old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_DIR_SUFFIX))
                os.replace(path, old / "old")
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        remove_partial_dirs(path)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two folders atomically (Linux ``renameat2`` with ``RENAME_EXCHANGE``); False where unsupported."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    return False  # e.g. a file system without the flag: the fallback moves the old folder aside


def remove_partial_dirs(path: str | os.PathLike) -> list[Path]:
    """Remove what an interrupted :func:`atomic_dir` of ``path`` left next to it; returns what was removed."""
    import shutil

    path = Path(path)
    if not path.parent.is_dir():
        return []
    gone = []
    for leftover in path.parent.glob(f".{path.name}.*{TEMP_DIR_SUFFIX}"):
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
            gone.append(leftover)
    return gone


def write_json(path: str | os.PathLike, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


LOCK_FILE = ".pgn.lock"


@contextmanager
def run_lock(directory: str | os.PathLike) -> Iterator[Path]:
    """Hold an exclusive OS lock on ``directory`` (created if needed) for one writer at a time.

    The lock is ``fcntl.flock`` on ``directory/.pgn.lock``: the kernel releases it when the
    holder exits, however it exits, so a lock left by a killed process never blocks. A second
    writer fails at once with a PGNError naming the process that holds the lock.
    """
    import fcntl

    from .errors import PGNError

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            raise PGNError(f"{directory} is in use by process {holder} (another pgn run writes there); wait for it "
                           "to finish or choose another run directory") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the lock


RUN_MARKER = ".pgn-run"  # written into every run directory pgn creates: pgn writes only into what it owns


def os_error_line(e: OSError) -> str:
    """One line for an OS error, naming the file and what to do: the CLI's single place for them."""
    import errno

    where = f" writing {e.filename}" if getattr(e, "filename", None) else ""
    hints = {
        errno.ENOSPC: f"no space left on the device{where}; free disk space or choose a directory on another disk",
        errno.EDQUOT: f"disk quota exceeded{where}; free space or choose another directory",
        errno.EROFS: f"read-only file system{where}; choose a writable directory",
        errno.EACCES: f"permission denied{where}; choose a directory you may write to, or fix its permissions",
        errno.EPERM: f"operation not permitted{where}; choose a directory you may write to",
        errno.ENOENT: f"no such file or directory: {e.filename}; check the path",
        errno.ENOTDIR: f"not a directory: {e.filename}; check the path",
        errno.EISDIR: f"{e.filename} is a directory; name a file",
        # mkdir of a folder where a file of that name is (``-o some-file/out.png``)
        errno.EEXIST: (f"{e.filename} is a file, not a folder; choose another place to write into"
                       if e.filename and os.path.isfile(e.filename) else f"{e.strerror or e}{where}"),
    }
    return hints.get(e.errno, f"{e.strerror or e}{where}")


def save_tensors(obj, path: str | os.PathLike) -> None:
    """``torch.save`` whose failure to write says so (torch's C++ stream reports a full disk as
    'basic_ios::clear: iostream error', naming neither the disk nor the file)."""
    import errno
    import shutil

    import torch

    try:
        torch.save(obj, path)
    except RuntimeError as e:
        if "iostream" not in str(e) and "write" not in str(e).lower():
            raise
        free = shutil.disk_usage(Path(path).parent).free
        code = errno.ENOSPC if free < 64 * 2**20 else errno.EIO
        raise OSError(code, os.strerror(code), str(path)) from e


def save_safetensors(tensors: dict, path: str | os.PathLike, metadata: dict | None = None) -> None:
    """``safetensors.torch.save_file`` whose I/O failures are OSErrors (it raises its own error type,
    with the OS error number only in the message)."""
    import re

    from safetensors import SafetensorError
    from safetensors.torch import save_file

    try:
        save_file(tensors, str(path), metadata=metadata)
    except SafetensorError as e:
        code = re.search(r"os error (\d+)", str(e))
        if code is None:
            raise
        raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(path)) from e


def check_owned(directory: str | os.PathLike) -> None:
    """Refuse a run directory that pgn did not write: a file, or a folder holding someone else's files.

    A new or empty directory is fine; so is one with pgn's marker, or a run written before the marker
    existed (its config.json holds pgn's ``adapter`` and ``train`` sections). Nothing is touched here.
    """
    import json

    from .errors import PGNError

    directory = Path(directory)
    if not directory.exists():
        return
    if not directory.is_dir():
        raise PGNError(f"{directory} is a file, not a run directory; choose a directory for the run")
    if (directory / RUN_MARKER).is_file():
        return
    entries = sorted(p.name for p in directory.iterdir() if p.name != LOCK_FILE)
    if not entries:
        return
    try:
        config = json.loads((directory / "config.json").read_text())
        if isinstance(config, dict) and {"adapter", "train"} <= set(config):
            return  # a run from before the marker
    except (OSError, ValueError):
        pass
    shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
    raise PGNError(f"{directory} already holds files pgn did not write ({shown}); choose a new or empty run "
                   "directory (pgn never writes into, or cleans, a folder it does not own)")


def mark_owned(directory: str | os.PathLike) -> None:
    """Write the marker that makes ``directory`` a pgn run directory (idempotent)."""
    path = Path(directory) / RUN_MARKER
    if not path.is_file():
        path.write_text("written by pgn: a run directory\n")


def check_not_in_use(directory: str | os.PathLike) -> None:
    """Fail at once if another process holds ``directory``'s run lock (before minutes of start-up, not after)."""
    import fcntl

    from .errors import PGNError

    path = Path(directory) / LOCK_FILE
    if not path.is_file():
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            raise PGNError(f"{directory} is in use by process {holder} (another pgn run writes there); wait for it "
                           "to finish or choose another run directory") from None
    finally:
        os.close(fd)


def remove_stale_temp_files(directory: str | os.PathLike) -> list[Path]:
    """Delete ``.<name>.*.tmp`` files that :func:`atomic_path` left when a process was killed mid-write.

    Call it only while holding :func:`run_lock` on ``directory``: then no live writer owns them.
    """
    directory = Path(directory)
    stale = [p for p in directory.glob(".*.tmp") if p.is_file()] if directory.is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return stale
