"""One small progress helper for long work: timestamped lines and bars on stderr, silent when disabled.

The pass manager and the passes report through it (``ctx.log(...)``, ``ctx.bar(...)`` on a
:class:`~anomopt.passes.PassContext`), so ``optimize(progress=False)`` / ``--quiet`` silence everything
at once and nothing writes to stdout, which stays free for results.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from tqdm.auto import tqdm


class Progress:
    """Prints ``[  12.3s] message`` lines (seconds since creation) and makes tqdm bars, both on ``stream``
    (stderr by default); does nothing when ``enabled`` is False."""

    def __init__(self, enabled: bool = True, stream: TextIO | None = None) -> None:
        self.enabled = bool(enabled)
        self.stream = stream
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        """Seconds since this helper was created."""
        return time.perf_counter() - self.start

    def log(self, message: str) -> None:
        """Print one progress line (several lines are indented under the first)."""
        if not self.enabled:
            return
        stream = self.stream or sys.stderr
        head = f"[{self.elapsed():7.1f}s] "
        lines = str(message).splitlines() or [""]
        text = head + lines[0] + "".join("\n" + " " * len(head) + line for line in lines[1:])
        tqdm.write(text, file=stream)  # keeps an open bar intact
        stream.flush()

    def bar(self, total: int | None, desc: str, unit: str = "it") -> Any:
        """A tqdm bar on the same stream (disabled, so free, when progress is off); close it when done."""
        return tqdm(
            total=total, desc=desc, unit=unit, disable=not self.enabled, leave=False, file=self.stream or sys.stderr
        )
