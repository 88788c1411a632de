"""Time formulations of the FP32 head (per-scale distances, upsampling, combination, blur, max) in ONNX Runtime.

Each variant is a torch module over the teacher and student features of the EfficientNet-Lite0 taps
(random features of the shapes STFPM / RD produce at ``--image-size``), exported to ONNX and timed in
interleaved rounds at ``--threads`` threads; every variant's map is compared with the reference head's.

    PYTHONPATH=src .venv/bin/python benchmarks/head_variants.py [--image-size 256] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import results_writer as rw  # noqa: E402
from anomopt.bench import cpu_info  # noqa: E402
from anomopt.cost.measure import _median_us, session  # noqa: E402
from anomopt.models.base import MapHead  # noqa: E402
from anomopt.models.head import LeanMapHead, cosine_distance, stfpm_distance  # noqa: E402


def stfpm_ref(t, s):
    return [0.5 * (F.normalize(ti, dim=1) - F.normalize(si, dim=1)).pow(2).sum(dim=1, keepdim=True)
            for ti, si in zip(t, s, strict=True)]


def rd_ref(t, s):
    return [1.0 - F.cosine_similarity(ti, si, dim=1, eps=1e-6).unsqueeze(1) for ti, si in zip(t, s, strict=True)]


class Head(nn.Module):
    def __init__(self, dist, head) -> None:
        super().__init__()
        self.dist = dist
        self.head = head

    def forward(self, t0, t1, t2, s0, s1, s2):
        return self.head(self.dist([t0, t1, t2], [s0, s1, s2]))


def variants(size: int) -> dict[str, nn.Module]:
    return {
        "stfpm: reference": Head(stfpm_ref, MapHead(size, "product")),
        "stfpm: fused distance": Head(stfpm_distance, MapHead(size, "product")),
        "stfpm: fused distance + lean head": Head(stfpm_distance, LeanMapHead(size, "product")),
        "rd: reference": Head(rd_ref, MapHead(size, "sum")),
        "rd: fused distance": Head(cosine_distance, MapHead(size, "sum")),
        "rd: fused distance + lean head (blur folded into upsampling)": Head(cosine_distance, LeanMapHead(size, "sum")),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--budget", type=float, default=0.3, help="seconds per timing loop (wall clock)")
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu",
                        help="cpu (default): the process's CPU time per run, which other load on a shared machine "
                        "does not inflate; wall: the median wall time")
    parser.add_argument("--iters", type=int, default=30, help="runs per round with --clock cpu")
    rw.add_args(parser)
    args = parser.parse_args(argv)
    run = rw.RunInfo.start(__file__, args.threads, argv)
    out: list[str] = []
    torch.manual_seed(0)
    size = args.image_size
    chans = (24, 40, 112)  # EfficientNet-Lite0's taps at strides 4, 8, 16
    feats = [torch.randn(1, c, size // st, size // st) for c, st in zip(chans, (4, 8, 16), strict=True)]
    studs = [f + 0.3 * torch.randn_like(f) for f in feats]
    inputs = feats + studs
    names = [f"{r}{i}" for r in "ts" for i in range(3)]
    feed = {n: x.numpy() for n, x in zip(names, inputs, strict=True)}
    sessions, refs, outs = {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, module in variants(size).items():
            path = Path(tmp) / "head.onnx"
            with torch.no_grad():
                torch.onnx.export(module.eval(), tuple(inputs), str(path), dynamo=False, opset_version=17,
                                  input_names=names, output_names=["score", "map"])
            sessions[label] = session(path.read_bytes(), args.threads)
            outs[label] = sessions[label].run(None, feed)[1]
            with torch.no_grad():
                refs[label] = module(*inputs)[1].numpy()
    best = {k: float("inf") for k in sessions}
    info = cpu_info()
    for _ in range(args.rounds):
        for label, sess in sessions.items():
            if args.clock == "wall":
                best[label] = min(best[label], _median_us(lambda s=sess: s.run(None, feed), args.budget))
                continue
            for _ in range(3):
                sess.run(None, feed)
            t0 = time.process_time()
            for _ in range(args.iters):
                sess.run(None, feed)
            best[label] = min(best[label], (time.process_time() - t0) / args.iters * 1e6)
    out.append(f"- head variants, {size} px, {args.threads} threads, {info['model']}, load {info['loadavg']} "
          f"-> {cpu_info()['loadavg']}; best of {args.rounds} interleaved rounds of "
               + (f"{args.iters} runs, process CPU time per run" if args.clock == "cpu" else "median wall time"))
    out.append(f"| variant | {args.clock} us | vs reference | max rel. diff of the map vs the reference (ONNX) |")
    out.append("|---|---:|---:|---:|")
    for label in sessions:
        model = label.split(":")[0]
        ref = outs[f"{model}: reference"]
        diff = float(np.abs(outs[label] - ref).max() / np.abs(ref).max())
        ratio = best[f"{model}: reference"] / best[label]
        out.append(f"| {label} | {best[label]:.0f} | {ratio:.2f}x | {diff:.1e} |")
    rw.publish(args, "head", "FP32 head formulations in ONNX Runtime", "benchmarks/head_variants.py",
               "\n".join(out), run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
