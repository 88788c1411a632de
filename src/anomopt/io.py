"""Atomic file writes: a crash never leaves a half-written artifact where a later run would load it.

Files and folders get the modes the user's umask gives (0644 / 0755 under umask 022), never owner-only.
A write that fails (a read-only folder, a full disk) raises :class:`~anomopt.errors.OutputError` naming the
path, and leaves the previous file or folder in place.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from anomopt.errors import OutputError
from anomopt.outputs import dir_mode, file_mode

# Failures of writing (not of reading an input) that the body of a write may hit.
_WRITE_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def _write_error(target: Path, err: OSError) -> OutputError:
    return OutputError(f"{target}: cannot write ({err.strerror or err}); check the folder's permissions and free space")


@contextmanager
def _body_write_errors(target: Path) -> Iterator[None]:
    """What the caller's writing hits (permissions, a full disk) becomes one OutputError naming ``target``;
    other errors (e.g. reading an input) pass through unchanged."""
    try:
        yield
    except OSError as err:
        if isinstance(err, OutputError) or err.errno not in _WRITE_ERRNOS:
            raise
        raise _write_error(target, err) from None


def _commit(target: Path, move: Any) -> None:
    """Run the final rename(s) ``move()``; any failure there is an OutputError naming ``target``."""
    try:
        move()
    except OSError as err:
        raise _write_error(target, err) from None


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success move it over ``path`` in one rename."""
    target = Path(path)
    if target.is_dir():
        raise OutputError(f"{target}: is a folder; give a file path")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as err:
        raise _write_error(target, err) from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with _body_write_errors(target):
            yield tmp
        _commit(target, lambda: _move_file(tmp, target))
    finally:
        if tmp.exists():
            tmp.unlink()


def _move_file(tmp: Path, target: Path) -> None:
    if tmp.exists():
        tmp.chmod(file_mode())  # mkstemp makes files owner-only; outputs are meant to be shared
    os.replace(tmp, target)


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


@contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it replaces ``path`` whole.

    A reader never sees a half-filled folder: either the old one or the complete new one. The caller
    decides whether ``path`` may be replaced (see :func:`anomopt.outputs.prepare_output_dir`).
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    except OSError as err:
        raise _write_error(target, err) from None
    try:
        with _body_write_errors(target):
            yield tmp
        _commit(target, lambda: _swap_dir(tmp, target))
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _swap_dir(tmp: Path, target: Path) -> None:
    """Put the finished folder ``tmp`` at ``target``, the previous one (if any) moved aside and removed."""
    tmp.chmod(dir_mode())  # mkdtemp makes the folder owner-only
    if not (target.exists() or target.is_symlink()):
        os.replace(tmp, target)
        return
    old = target.with_name(f".{target.name}.old")
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old)
    elif old.exists() or old.is_symlink():
        old.unlink()
    os.replace(target, old)
    os.replace(tmp, target)
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink()
