"""The one writer of ``benchmarks/RESULTS.md``: every benchmark script replaces its own section in place.

RESULTS.md holds one current section per benchmark, between marker comments::

    <!-- section: latency script: benchmarks/latency.py -->
    ## Latency, CPU
    (optional notes that stay while parts are replaced)
    <!-- part: stfpm,rd -->
    ### STFPM, RD
    - command: `...`
    - run: date UTC, CPU model, logical CPUs, threads, load average at the start and at the end
    (the script's body: settings, tables)
    <!-- /part -->
    <!-- /section -->

A section without parts holds the header and body directly. :func:`write_section` replaces a section (or
one part of it) in place, leaves every other byte of the file as it was, creates a missing section at the
end, regenerates the index at the top (between ``<!-- index -->`` and ``<!-- /index -->``), writes the file
atomically under a lock, and appends whatever it replaced to ``benchmarks/history/<section>.md`` so no
measured number is lost. A part is named by a comma list of items (models, data sets, ...); writing it
also replaces the parts whose items are all among its own (a run over ``stfpm,rd,us`` supersedes
``stfpm,rd`` and ``us``).

Every script takes the same two flags (:func:`add_args`): ``--results PATH`` and ``--no-write``
(``--no-append`` is kept as a hidden alias). Standard library and ``anomopt.errors`` only, so tests
import it cheaply.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import fcntl
import hashlib
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from anomopt.errors import ConfigError, DataError

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "RESULTS.md"
HISTORY = "history"  # folder beside RESULTS.md that keeps replaced sections

INDEX_START, INDEX_END = "<!-- index -->", "<!-- /index -->"
SECTION_END, PART_END = "<!-- /section -->", "<!-- /part -->"
_SECTION_RE = re.compile(r"^<!-- section: (?P<key>[\w.-]+) script: (?P<script>\S+) -->$", re.M)
_PART_RE = re.compile(r"^<!-- part: (?P<key>[^>\s]+) -->$", re.M)
_KEY_RE = re.compile(r"^[\w.-]+$")
_PREAMBLE = """# Benchmark results

Only measured numbers. One current section per benchmark, each replaced in place by the script named in
the index (through `benchmarks/results_writer.py`); what a run replaces is appended to
`benchmarks/history/<section>.md`, and the lab log before this layout is in `benchmarks/history/`.
"""


# --------------------------------------------------------------------------------------- the run header


def cpu_model() -> str:
    """The CPU model name, from ``lscpu`` or ``/proc/cpuinfo`` (the platform's word when neither says)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    for line in out.splitlines():
        if line.lower().startswith("model name"):
            return line.split(":", 1)[1].strip()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def load_average() -> tuple[float, float, float]:
    """The 1/5/15-minute load average (NaN where the platform has none)."""
    try:
        one, five, fifteen = os.getloadavg()
    except (AttributeError, OSError):
        return (float("nan"),) * 3
    return (one, five, fifteen)


def utc_now() -> str:
    """Now, as ``YYYY-MM-DD HH:MM UTC``."""
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def command_line(script: str | os.PathLike[str], argv: Sequence[str] | None = None) -> str:
    """The command as one types it in the repository root (``argv`` defaults to this process's)."""
    path = Path(script).resolve()
    rel = os.path.relpath(path, REPO) if path.is_relative_to(REPO) else str(path)
    args = list(sys.argv[1:] if argv is None else argv)
    return "PYTHONPATH=src .venv/bin/python " + shlex.join([rel, *args])


def _fmt_load(load: Sequence[float]) -> str:
    return ", ".join(f"{x:.2f}" for x in load)


@dataclass
class RunInfo:
    """What ran where: the header of every section or part. Take it with :meth:`start` before the work
    (the load average at the start); :func:`write_section` records the load at the end."""

    command: str
    date: str
    cpu: str
    logical_cpus: int
    threads: str
    load_start: tuple[float, ...]
    load_end: tuple[float, ...] | None = None
    notes: list[str] = field(default_factory=list)

    @classmethod
    def start(cls, script: str | os.PathLike[str], threads: str | int,
              argv: Sequence[str] | None = None) -> RunInfo:
        """Record the command, the date, the machine and the load now."""
        return cls(command_line(script, argv), utc_now(), cpu_model(), os.cpu_count() or 0, str(threads),
                   load_average())

    def finish(self) -> RunInfo:
        """Record the load average at the end (once)."""
        if self.load_end is None:
            self.load_end = load_average()
        return self

    def header(self) -> str:
        """The header lines, markdown."""
        end = f", {_fmt_load(self.load_end)} at the end" if self.load_end is not None else ""
        lines = [f"- command: `{self.command}`",
                 f"- run: {self.date}; {self.cpu}, {self.logical_cpus} logical CPUs; threads: {self.threads}; "
                 f"load average {_fmt_load(self.load_start)} at the start{end}"]
        return "\n".join(lines + [f"- {n}" for n in self.notes])


# ------------------------------------------------------------------------------------------- arguments


def add_args(parser: argparse.ArgumentParser, default: str | os.PathLike[str] = RESULTS) -> None:
    """``--results PATH`` and ``--no-write`` (with ``--no-append`` as a hidden alias), one spelling for all."""
    parser.add_argument("--results", default=str(default),
                        help="the RESULTS.md whose section this run replaces (default: benchmarks/RESULTS.md)")
    parser.add_argument("--no-write", dest="no_write", action="store_true",
                        help="print the section only; do not touch RESULTS.md")
    parser.add_argument("--no-append", dest="no_write", action="store_true", help=argparse.SUPPRESS)


# --------------------------------------------------------------------------------------------- parsing


@dataclass
class Block:
    """A marked span of the file: ``text[start:end]`` from its opening marker through its closing one."""

    key: str
    start: int
    end: int
    script: str = ""


def _closing(text: str, opening_end: int, limit: int, closer: str, what: str, path: Path) -> int:
    """End of the block whose opening marker ends at ``opening_end``: its closer must come before ``limit``
    (the next block's opening marker), so a lost closer never swallows the next block."""
    at = text.find(closer, opening_end, limit)
    if at < 0:
        raise DataError(f"{path}: {what} has no closing {closer} before the next marker; restore it")
    return at + len(closer)


def _blocks(text: str, pattern: re.Pattern[str], start: int, end: int, closer: str, what: str,
            path: Path) -> list[Block]:
    found = list(pattern.finditer(text, start, end))
    out = []
    for i, m in enumerate(found):
        limit = found[i + 1].start() if i + 1 < len(found) else end
        out.append(Block(m["key"], m.start(), _closing(text, m.end(), limit, closer, f"{what} {m['key']}", path),
                         m.groupdict().get("script") or ""))
    return out


def sections(text: str, path: Path = RESULTS) -> list[Block]:
    """The marked sections of a RESULTS.md text, in file order."""
    return _blocks(text, _SECTION_RE, 0, len(text), SECTION_END, "section", path)


def parts(text: str, section: Block, path: Path = RESULTS) -> list[Block]:
    """The marked parts inside one section."""
    return _blocks(text, _PART_RE, section.start, section.end, PART_END, "part", path)


def _title(text: str, block: Block) -> str:
    m = re.search(r"^#{2,3} (.+)$", text[block.start:block.end], re.M)
    return m[1].strip() if m else block.key


def slug(title: str) -> str:
    """The anchor GitHub gives a heading."""
    s = re.sub(r"[^\w\- ]", "", title.strip().lower())
    return s.replace(" ", "-")


def index(text: str, path: Path = RESULTS) -> str:
    """The index block: each section, the script that writes it and its parts."""
    rows = ["| section | written by | parts |", "|---|---|---|"]
    for s in sections(text, path):
        title = _title(text, s)
        names = ", ".join(p.key for p in parts(text, s, path)) or "-"
        rows.append(f"| [{title}](#{slug(title)}) | `{s.script}` | {names} |")
    return "\n".join([INDEX_START, *rows, INDEX_END])


def _with_index(text: str, path: Path) -> str:
    new = index(text, path)
    i, j = text.find(INDEX_START), text.find(INDEX_END)
    if i >= 0 and j > i:
        return text[:i] + new + text[j + len(INDEX_END):]
    first = _SECTION_RE.search(text)
    at = first.start() if first else len(text)
    return text[:at].rstrip("\n") + "\n\n" + new + "\n\n" + text[at:].lstrip("\n")


# --------------------------------------------------------------------------------------------- writing


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialize read-modify-write of one results file across processes (lock file in the temp dir)."""
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:16]
    with open(Path(tempfile.gettempdir()) / f"anomopt-results-{digest}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o644)  # mkstemp makes it 0600
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _archive(path: Path, key: str, old: list[str], run: RunInfo) -> Path:
    """Append replaced blocks to ``history/<key>.md`` beside ``path``."""
    target = path.parent / HISTORY / f"{key}.md"
    previous = target.read_text(encoding="utf-8") if target.is_file() else (
        f"# History of the `{key}` section of {path.name}\n\nEach entry: what a run replaced, oldest first.\n")
    entry = f"\n## Replaced {run.date} by `{run.command}`\n\n" + "\n\n".join(b.strip("\n") for b in old) + "\n"
    _write_atomic(target, previous.rstrip("\n") + "\n" + entry)
    return target


def _part_items(key: str) -> set[str]:
    return {x for x in key.split(",") if x}


def write_section(key: str, title: str, script: str, body: str, run: RunInfo, *,
                  part: Sequence[str] | str | None = None, part_title: str | None = None,
                  path: str | os.PathLike[str] = RESULTS) -> Path | None:
    """Replace section ``key`` (or its ``part``) of ``path`` with ``run``'s header and ``body``.

    Creates the file, the section or the part when missing; leaves the rest of the file byte-identical
    except the index; appends what it replaced to ``history/<key>.md`` and returns that file's path (None
    when nothing was replaced)."""
    path = Path(path)
    if not _KEY_RE.match(key):
        raise ConfigError(f"section key {key!r}: use letters, digits, '.', '_' or '-'")
    part_key = ",".join(part) if part is not None and not isinstance(part, str) else part
    if part_key is not None and (not part_key or not re.match(r"^[^>\s]+$", part_key)):
        raise ConfigError(f"part {part_key!r}: a comma list of names without spaces")
    run.finish()
    content = f"{run.header()}\n\n{body.strip(chr(10))}\n"
    if part_key is not None:
        new_part = f"<!-- part: {part_key} -->\n### {part_title or part_key.replace(',', ', ')}\n\n{content}{PART_END}"
    head = f"<!-- section: {key} script: {script} -->\n## {title}\n\n"
    with _locked(path):
        text = path.read_text(encoding="utf-8") if path.is_file() else _PREAMBLE
        found = [s for s in sections(text, path) if s.key == key]
        replaced: list[str] = []
        if not found:
            inner = new_part if part_key is not None else content.rstrip("\n")
            text = text.rstrip("\n") + "\n\n" + head + inner + "\n" + SECTION_END + "\n"
        elif part_key is None:
            s = found[0]
            replaced.append(text[s.start:s.end])
            text = text[:s.start] + head + content + SECTION_END + text[s.end:]
        else:
            s = found[0]
            items = _part_items(part_key)
            hits = [p for p in parts(text, s, path) if _part_items(p.key) <= items]
            if not hits:
                at = s.end - len(SECTION_END)
                text = text[:at].rstrip("\n") + "\n\n" + new_part + "\n" + text[at:]
            else:
                for p in reversed(hits):  # back to front: earlier offsets stay valid
                    replaced.insert(0, text[p.start:p.end])
                    if p is hits[0]:
                        text = text[:p.start] + new_part + text[p.end:]
                    else:
                        rest = text[p.end:].lstrip("\n")
                        gap = "\n" if rest.startswith(SECTION_END) else "\n\n"
                        text = text[:p.start].rstrip("\n") + gap + rest
        text = _with_index(text, path)
        archived = _archive(path, key, replaced, run) if replaced else None  # first: nothing is ever lost
        _write_atomic(path, text)
        return archived


def publish(args: argparse.Namespace, key: str, title: str, script: str, body: str, run: RunInfo, *,
            part: Sequence[str] | str | None = None, part_title: str | None = None) -> str:
    """What every script does with its section: print it, and unless ``--no-write`` replace it in
    ``--results`` (:func:`write_section`). Returns the printed text."""
    run.finish()
    text = f"{run.header()}\n\n{body.strip(chr(10))}\n"
    print(text, flush=True)
    if not getattr(args, "no_write", False):
        archived = write_section(key, title, script, body, run, part=part, part_title=part_title,
                                 path=args.results)
        where = f"; the replaced text went to {archived}" if archived else ""
        print(f"wrote section {key}{'/' + (part if isinstance(part, str) else ','.join(part)) if part else ''} "
              f"of {args.results}{where}", file=sys.stderr, flush=True)
    return text
