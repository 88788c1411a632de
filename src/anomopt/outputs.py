"""Output folders that never eat a user's files, never mix two runs, and never leave litter.

Every command that writes a folder goes through :func:`prepare_output_dir` *before* its long work starts:

- ``--out`` must be a folder that can be written (not a file, not read-only): checked with a real probe;
- a non-empty folder is only reused or replaced when anomopt made it (an artifact with ``meta.json``, an
  earlier ``predict`` output, a training run, a demo run, a synthetic data set); anything else needs
  ``overwrite=True`` (``--overwrite``);
- a folder that is replaced whole never holds one of the command's inputs (the checkpoint, the data) nor
  the current working folder, even with ``overwrite``;
- an exclusive lock (``fcntl.flock``, released by the kernel when the process dies, so it never goes stale)
  keeps two runs out of the same folder; the second one gets an error naming the holder's pid;
- hidden ``.tmp`` / ``.old`` leftovers of a killed earlier run of the same folder are cleaned (or, for an
  interrupted folder swap, the previous folder is put back).

Temporary work folders in the system temp folder (``anomopt-*``) carry an owner file; :func:`work_dir`
removes its folder on success and on failure, and :func:`sweep_stale_work_dirs` removes the ones whose
owner process is gone (a killed run). Folders and files are created with the user's umask (0755 / 0644
under the usual umask 022), never owner-only.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from anomopt.errors import ConfigError, OutputError

try:  # POSIX; on other systems the lock is a no-op
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "KINDS",
    "REPLACED_KINDS",
    "OutputDir",
    "check_output_file",
    "check_writable_dir",
    "dir_mode",
    "file_mode",
    "folder_kind",
    "lock_folder",
    "prepare_output_dir",
    "signals_deferred",
    "sweep_stale_work_dirs",
    "work_dir",
]

#: What anomopt writes, and how each is recognized (see :func:`folder_kind`).
KINDS = ("artifact", "predictions", "train", "demo", "synthetic")
#: Kinds whose folder is replaced whole by a new run (the others are updated in place).
REPLACED_KINDS = ("artifact", "predictions")
PREDICTIONS_FORMAT = "anomopt-predictions"
TRAIN_FORMAT = "anomopt-train"
OWNER_FILE = ".anomopt-owner"
LOCK_NAME = ".anomopt.lock"
_TRAIN_FILES = ("model.ckpt", "train.json")
# What `anomopt demo` writes into its folder, and the files that show a folder is (part of) a demo run.
_DEMO_ENTRIES = {"data", "work", "report", "artifact-int8", "artifact-fp32", "summary.json", "stfpm-unified.ckpt"}
_DEMO_MARKS = ("summary.json", "stfpm-unified.ckpt", "data/synthetic.json")
_MKTEMP = r"[a-z0-9_]{8}"  # tempfile's random part


# ------------------------------------------------------------------------------------------- permissions


def current_umask() -> int:
    """The process umask (read without changing it where /proc allows)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def dir_mode() -> int:
    """Mode of a new folder under the current umask (0o755 with umask 022)."""
    return 0o777 & ~current_umask()


def file_mode() -> int:
    """Mode of a new file under the current umask (0o644 with umask 022)."""
    return 0o666 & ~current_umask()


# ------------------------------------------------------------------------------------------- writability


def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists() and not p.is_symlink():
        if p.parent == p:
            break
        p = p.parent
    return p


def check_writable_dir(path: str | os.PathLike[str], flag: str = "--out") -> Path:
    """Fail early, with one line, unless ``path`` is (or can be created as) a writable folder.

    Probes by creating a file, since permission bits do not tell the whole story (read-only mounts, ACLs).
    Returns the absolute path.
    """
    target = Path(os.path.abspath(path))
    existing = _nearest_existing(target)
    if existing.exists() and not existing.is_dir():
        if existing == target:
            raise ConfigError(f"{target}: {flag} is a file, not a folder; choose a folder path")
        raise ConfigError(f"{target}: {flag} cannot be created: {existing} is a file, not a folder")
    if not existing.exists():
        raise ConfigError(f"{target}: {flag} cannot be created ({existing} is a broken link)")
    try:
        fd, probe = tempfile.mkstemp(prefix=".anomopt-write-test.", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        what = "is not writable" if existing == target else f"cannot be created in {existing}"
        raise OutputError(
            f"{target}: {flag} {what} ({err.strerror or err}); choose a folder you can write to"
        ) from None
    return target


def check_output_file(path: str | os.PathLike[str], flag: str = "--json") -> Path:
    """Fail early unless ``path`` can be written as a file (not a folder, its folder writable)."""
    target = Path(os.path.abspath(path))
    if target.is_dir():
        raise ConfigError(f"{target}: {flag} is a folder; give a file path, e.g. {target / 'metrics.json'}")
    check_writable_dir(target.parent, flag=f"{flag} folder")
    return target


# ------------------------------------------------------------------------------------------------ locks

_HELD: dict[str, list] = {}  # lock file -> [fd, count]: re-entrant within one process
_HELD_GUARD = threading.Lock()


def _holder(lockfile: Path) -> str:
    with contextlib.suppress(OSError, ValueError):
        text = lockfile.read_text().strip()
        if text:
            return f"pid {int(text.split()[0])}"
    return "pid unknown"


@contextlib.contextmanager
def lock_folder(lockfile: str | os.PathLike[str], target: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive lock on ``target`` through ``lockfile`` (created, removed on release).

    The kernel drops the lock when the process dies, so a killed run never blocks the next one. Raises
    :class:`~anomopt.errors.OutputError` naming the holder's pid when another process holds it.
    """
    if fcntl is None:  # pragma: no cover
        yield
        return
    key = os.path.abspath(lockfile)
    with _HELD_GUARD:
        if key in _HELD:
            _HELD[key][1] += 1
            reentered = True
        else:
            reentered = False
    if not reentered:
        fd = _acquire(Path(key), Path(target))
        with _HELD_GUARD:
            _HELD[key] = [fd, 1]
    try:
        yield
    finally:
        with _HELD_GUARD:
            entry = _HELD[key]
            entry[1] -= 1
            last = entry[1] == 0
            if last:
                del _HELD[key]
        if last:
            with contextlib.suppress(OSError):
                os.unlink(key)
            fcntl.flock(entry[0], fcntl.LOCK_UN)
            os.close(entry[0])


def _acquire(lockfile: Path, target: Path) -> int:
    for _ in range(100):
        try:
            fd = os.open(lockfile, os.O_RDWR | os.O_CREAT, file_mode())
        except OSError as err:
            raise OutputError(f"{target}: cannot create the lock file {lockfile} ({err.strerror or err})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise OutputError(
                f"{target}: another anomopt run ({_holder(lockfile)}) is writing this folder; wait for it to "
                "finish or choose another --out"
            ) from None
        # The holder that released it may have unlinked the file before we locked it: retry on the new one.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(lockfile))
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)
    raise OutputError(f"{target}: could not take the lock {lockfile}")  # pragma: no cover


# ----------------------------------------------------------------------------------------- recognition


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


_OWN_INSIDE = rf"\.anomopt\.lock|\.anomopt-owner|\.anomopt-write-test\..*|\..+\.{_MKTEMP}\.tmp|\..+\.(?:old|lock)"


def _visible_entries(folder: Path) -> list[Path]:
    """Entries of ``folder`` other than the hidden lock / probe / temp files anomopt itself leaves there."""
    return [p for p in folder.iterdir() if not re.fullmatch(_OWN_INSIDE, p.name)]


def folder_kind(folder: str | os.PathLike[str]) -> str | None:
    """Which anomopt output ``folder`` holds (one of :data:`KINDS`), ``"empty"``, or None (not anomopt's)."""
    f = Path(folder)
    entries = _visible_entries(f)
    if not entries:
        return "empty"
    meta = _read_json(f / "meta.json")
    if isinstance(meta, dict) and meta.get("format") == "anomopt-artifact":
        return "artifact"
    preds = _read_json(f / "predictions.json")
    if isinstance(preds, dict) and preds.get("format") == PREDICTIONS_FORMAT:
        return "predictions"
    names = {p.name for p in entries}
    if names <= _DEMO_ENTRIES and any((f / m).is_file() for m in _DEMO_MARKS):
        return "demo"
    if (f / "synthetic.json").is_file():
        return "synthetic"
    train = _read_json(f / "train.json")
    if isinstance(train, dict) and (train.get("format") == TRAIN_FORMAT or {"model", "runs"} <= set(train)):
        return "train"
    if train_checkpoints(f):
        return "train"
    return None


def train_checkpoints(folder: str | os.PathLike[str]) -> list[Path]:
    """``model.ckpt`` files of a training run folder (unified: top level; one-class: one per category)."""
    f = Path(folder)
    if not f.is_dir():
        return []
    found = [f / "model.ckpt"] if (f / "model.ckpt").is_file() else []
    with contextlib.suppress(OSError):
        found += sorted(p / "model.ckpt" for p in f.iterdir() if p.is_dir() and (p / "model.ckpt").is_file())
    return found


_NAMES = {
    "artifact": "an anomopt artifact (meta.json)",
    "predictions": "an earlier `anomopt predict` output",
    "train": "a training run",
    "demo": "a demo run",
    "synthetic": "a synthetic data set",
}


# --------------------------------------------------------------------------------------------- cleanup


def _sweep_replaced(target: Path) -> None:
    """Under the lock: clean the hidden leftovers of a killed folder swap of ``target``."""
    parent, name = target.parent, target.name
    if not parent.is_dir():
        return
    old = parent / f".{name}.old"
    if old.is_dir() and not target.exists():
        os.replace(old, target)  # killed between the two renames: put the previous folder back
    for p in parent.iterdir():
        if p.name == old.name or re.fullmatch(rf"\.{re.escape(name)}\.{_MKTEMP}\.tmp", p.name):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    p.unlink()


def _sweep_train(folder: Path) -> None:
    """Under the lock: remove the hidden temp files of checkpoint / summary writes a killed run left."""
    pattern = rf"\.(?:{'|'.join(map(re.escape, _TRAIN_FILES))})\.{_MKTEMP}\.tmp"
    dirs = [folder] + [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
    for d in dirs:
        for p in d.iterdir():
            if p.is_file() and re.fullmatch(pattern, p.name):
                with contextlib.suppress(OSError):
                    p.unlink()


# ---------------------------------------------------------------------------------------------- prepare


@dataclass
class OutputDir:
    """What :func:`prepare_output_dir` found and holds."""

    path: Path
    kind: str
    found: str | None  # what the folder held before: a kind, "empty", "missing" or None (foreign files)
    checkpoints: list[Path] = field(default_factory=list)


def _contains(outer: Path, inner: Path) -> bool:
    return inner == outer or outer in inner.parents


@contextlib.contextmanager
def prepare_output_dir(
    path: str | os.PathLike[str],
    kind: str,
    *,
    overwrite: bool = False,
    inputs: Iterable[str | os.PathLike[str] | None] = (),
    flag: str = "--out",
    lock: bool = True,
) -> Iterator[OutputDir]:
    """Check, lock and clean the output folder ``path`` for a run writing ``kind``; yields :class:`OutputDir`.

    Call it before the long work, and keep it open while writing. Kinds in :data:`REPLACED_KINDS` are
    replaced whole at the end (see :func:`anomopt.io.atomic_dir`): the folder is created by that swap, so
    only its parent is created here. Other kinds create the folder now.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown output kind {kind!r}")
    target = check_writable_dir(path, flag)
    replaced = kind in REPLACED_KINDS
    if replaced:
        cwd = Path.cwd().resolve()
        real = target.resolve()
        if _contains(real, cwd):
            raise ConfigError(
                f"{target}: {flag} is the current folder or holds it; anomopt replaces this folder whole, "
                f"so give a new sub-folder, e.g. {flag} {Path(path) / kind}"
            )
        for item in inputs:
            if item is None:
                continue
            inp = Path(os.path.abspath(item)).resolve()
            if _contains(real, inp):
                raise ConfigError(
                    f"{target}: {flag} holds the input {inp}; replacing the folder would delete it, "
                    "so choose another folder"
                )
    made = target.parent if replaced else target
    created = [d for d in (made, *made.parents) if not d.exists()]  # removed again if the run fails early
    made.mkdir(parents=True, exist_ok=True)
    lockfile = made / (f".{target.name}.lock" if replaced else LOCK_NAME)
    try:
        with lock_folder(lockfile, target) if lock else contextlib.nullcontext():
            yield from _checked(target, kind, replaced, overwrite, flag, lock)
    except BaseException:
        for d in created:  # innermost first; stops at the first folder that is not empty
            try:
                d.rmdir()
            except OSError:
                break
        raise


def _checked(
    target: Path, kind: str, replaced: bool, overwrite: bool, flag: str, lock: bool
) -> Iterator[OutputDir]:
    """Under the lock: clean leftovers, then refuse a folder that may not be written."""
    if lock:
        if replaced:
            _sweep_replaced(target)
        elif kind == "train":
            _sweep_train(target)
    found = folder_kind(target) if target.exists() else "missing"
    if found not in ("missing", "empty", kind) and not overwrite:
        detail = f"it holds {_NAMES[found]}" if found else "it is not an anomopt output"
        raise ConfigError(
            f"{target}: {flag} folder is not empty and {detail}; refusing to "
            f"{'replace' if replaced else 'write into'} it (choose an empty or new folder, or pass --overwrite)"
        )
    yield OutputDir(target, kind, found, train_checkpoints(target) if kind == "train" else [])


# ------------------------------------------------------------------------------------------ work folders


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def make_work_dir(prefix: str) -> Path:
    """A fresh ``<tmp>/<prefix>*`` folder with an owner file naming this process."""
    d = Path(tempfile.mkdtemp(prefix=prefix))
    (d / OWNER_FILE).write_text(f"{os.getpid()}\n")
    return d


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT / SIGTERM back inside the block; a signal that came meanwhile is delivered at its end.

    Wrap the creation of something that must be cleaned up together with recording it, inside the ``try``
    whose ``finally`` cleans it: then no signal can land between the two.
    """
    mask = getattr(signal, "pthread_sigmask", None)
    if mask is None:  # pragma: no cover - Windows
        yield
        return
    held = {signal.SIGINT, signal.SIGTERM}
    previous = mask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        mask(signal.SIG_SETMASK, previous)


@contextlib.contextmanager
def work_dir(prefix: str) -> Iterator[Path]:
    """A temporary work folder in the system temp folder, removed on success, on failure and on a signal."""
    d = None
    try:
        with signals_deferred():
            d = make_work_dir(prefix)
        yield d
    finally:
        if d is not None:
            shutil.rmtree(d, ignore_errors=True)


def sweep_stale_work_dirs(root: str | os.PathLike[str] | None = None) -> list[Path]:
    """Remove ``anomopt-*`` work folders (with an owner file) whose owner process is gone; returns them."""
    base = Path(root or tempfile.gettempdir())
    removed: list[Path] = []
    try:
        entries = list(base.iterdir())
    except OSError:
        return removed
    uid = os.getuid() if hasattr(os, "getuid") else None
    for d in entries:
        if not d.name.startswith("anomopt-") or d.is_symlink() or not d.is_dir():
            continue
        owner = d / OWNER_FILE
        try:
            if uid is not None and d.stat().st_uid != uid:
                continue
            pid = int(owner.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        if pid != os.getpid() and not _pid_alive(pid):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    return removed
