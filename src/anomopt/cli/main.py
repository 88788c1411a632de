"""Entry point of the ``anomopt`` command: builds the parser from every command module."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import signal
import sys
from collections.abc import Sequence

from anomopt import __version__
from anomopt.errors import AnomoptError

# Each module defines ``register(subparsers)`` that adds its command(s) and sets ``func``.
COMMAND_MODULES = [
    "anomopt.cli.data_cmd",
    "anomopt.cli.train_cmd",
    "anomopt.cli.optimize_cmd",
    "anomopt.cli.export_cmd",
    "anomopt.cli.predict_cmd",
    "anomopt.cli.demo_cmd",
]


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, with ``--help`` on every command."""
    parser = argparse.ArgumentParser(
        prog="anomopt",
        description="Optimize unified knowledge-distillation anomaly detectors for CPUs and Jetson.",
    )
    parser.add_argument("--version", action="version", version=f"anomopt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that ``finally`` blocks clean temp files and release locks."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; user errors print one line on stderr and exit with status 2.

    SIGINT exits with 130 and SIGTERM with 143, after the command's cleanup ran (temp folders removed,
    locks released; complete checkpoints and artifacts stay, half-written files never replace them).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    previous = None
    with contextlib.suppress(ValueError):  # only the main thread may set handlers
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return int(args.func(args) or 0)
    except AnomoptError as err:
        print(f"anomopt: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("anomopt: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("anomopt: terminated", file=sys.stderr)
        return 143
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
