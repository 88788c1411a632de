"""``anomopt profile``: measure the CPU cost model (conv latency in FP32 and INT8 per shape) on this machine."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from anomopt.errors import ConfigError
from anomopt.outputs import check_output_file, work_dir

__all__ = ["model_conv_shapes", "register", "run_profile"]


def register(subparsers: Any) -> None:
    """Add the ``profile`` command."""
    p = subparsers.add_parser(
        "profile",
        help="measure the CPU cost model (per conv shape: FP32 vs INT8 latency, Q/DQ cost) on this machine",
        description=(
            "Time every conv shape of the given models (or of the shipped cost model) as a one-conv ONNX Runtime "
            "model in FP32 and in INT8 QDQ (U8S8, per-channel weights), plus the per-element cost of Quantize/"
            "DequantizeLinear, and write the JSON cost model that the latency_aware_precision pass reads "
            "(its cost_model option). The file records the CPU model, threads and ONNX Runtime version."
        ),
    )
    p.add_argument("--out", required=True, metavar="FILE", help="where to write the cost model (JSON)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--checkpoint", action="append", default=[], metavar="FILE",
                   help="take the conv shapes of this checkpoint's FP32 ONNX graph (repeatable)")
    p.add_argument("--models", default=None,
                   help="comma-separated model names (stfpm,rd,us) on the default backbone whose shapes to take")
    p.add_argument("--image-sizes", default="256", help="comma-separated input sizes for --models (default: 256)")
    p.add_argument("--probe-only", action="store_true",
                   help="time every shape as a one-conv model only (default with --models / --checkpoint: time "
                   "each conv inside the model's own FP32 and all-INT8 graphs with ONNX Runtime's profiler)")
    p.add_argument("--runs", type=int, default=30, help="in-graph profiled runs per round (default: 30)")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads (default: 2)")
    p.add_argument("--budget", type=float, default=0.15, help="seconds per timing loop (default: 0.15)")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds, best kept (default: 2)")
    p.set_defaults(func=run_profile)


def model_conv_shapes(model: Any, image_size: int | None = None, in_graph: dict | None = None,
                      threads: int = 2, runs: int = 30, rounds: int = 2) -> list[Any]:
    """The conv shapes of ``model``'s FP32 ONNX graph (exported to a temporary folder); with ``in_graph`` (a
    dict), also time each conv in context (:func:`anomopt.cost.ingraph.profile_in_graph`) into it."""
    import onnx

    from anomopt.cost.measure import conv_shapes_of_onnx
    from anomopt.targets.onnx_export import export_onnx

    with work_dir("anomopt-profile-") as tmp:
        exp = export_onnx(model, Path(tmp) / "model.onnx", image_size=image_size)
        if in_graph is not None:
            from anomopt.cost.ingraph import profile_in_graph

            for shape, entry in profile_in_graph(exp.path, exp.image_size, threads, runs, rounds).items():
                in_graph.setdefault(shape, entry)
        return list(conv_shapes_of_onnx(onnx.load(str(exp.path))).values())


def run_profile(args: argparse.Namespace) -> int:
    """``anomopt profile``: measure and write the cost model; returns the exit code."""
    from anomopt.cost.measure import measure_cost_model
    from anomopt.cost.model import load_cost_model

    if args.threads <= 0 or args.budget <= 0 or args.rounds <= 0 or args.runs <= 0:
        raise ConfigError("--threads, --budget, --rounds and --runs must be positive")
    out = check_output_file(args.out, "--out")  # before minutes of measuring, not after
    if out.exists() and not args.overwrite:
        raise ConfigError(f"{out}: --out exists; pass --overwrite to replace it, or choose another file")
    shapes: list[Any] = []
    in_graph: dict | None = None if args.probe_only else {}
    graph_opts = {"in_graph": in_graph, "threads": args.threads, "runs": args.runs, "rounds": args.rounds}
    for ckpt in args.checkpoint:
        from anomopt.checkpoint import load_checkpoint

        model, _ = load_checkpoint(ckpt)
        print(f"profile: {ckpt}", file=sys.stderr)
        shapes += model_conv_shapes(model, **graph_opts)
    if args.models:
        from anomopt.models import build_model

        try:
            sizes = [int(s) for s in str(args.image_sizes).split(",") if s.strip()]
        except ValueError:
            raise ConfigError(f"--image-sizes: comma-separated integers, not {args.image_sizes!r}") from None
        for name in [m.strip() for m in args.models.split(",") if m.strip()]:
            for size in sizes:
                print(f"profile: {name} at {size} px", file=sys.stderr)
                shapes += model_conv_shapes(build_model(name, image_size=size), size, **graph_opts)
    if not shapes:
        shapes = list(load_cost_model().convs)  # re-measure the shipped shapes on this CPU
    unique = sorted(set(shapes))
    print(f"profile: {len(unique)} conv shapes, {args.threads} threads", file=sys.stderr)
    model = measure_cost_model(unique, threads=args.threads, budget_s=args.budget, rounds=args.rounds,
                               log=lambda m: print(m, file=sys.stderr), in_graph=in_graph or None)
    argv = " ".join(sys.argv[1:]) if sys.argv and "profile" in sys.argv else "profile"
    model.meta["command"] = f"anomopt {argv[argv.find('profile'):]}"
    model.save(args.out)
    faster = sum(1 for v in model.convs.values() if v["int8"] < v["fp32"])
    print(f"wrote {args.out}: {len(model.convs)} shapes, INT8 faster on {faster}; Q {model.quantize_ns_per_elem:.3f} "
          f"ns/elem, DQ {model.dequantize_ns_per_elem:.3f} ns/elem (with layout changes)")
    return 0
