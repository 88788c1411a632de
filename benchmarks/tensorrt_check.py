"""Build real TensorRT engines from anomopt's xavier_nx artifacts on a GPU machine and check them.

For each artifact (built here from a checkpoint, or found under ``--artifacts``):

- ``int8-explicit``: our QDQ ONNX (``xavier_nx-int8``), explicit quantization;
- ``int8-modelopt``: ModelOpt's QDQ ONNX (``xavier_nx-int8-modelopt``), explicit quantization;
- ``int8-implicit``: the FP32 ONNX + ``calib.cache`` (``--trt-quantization implicit``);
- ``fp16``: the FP32 ONNX with ``--fp16`` (``xavier_nx-fp16``);
- ``torch-trt-fp16`` / ``torch-trt-int8``: the torch-tensorrt bundle (``--variant torch_tensorrt``) compiled
  by its own ``build_torch_trt.py`` (INT8: ModelOpt quantizers), checked the same way (no INT8 layer check);

it checks: the build succeeds; every quantized conv (a Conv fed by an activation DequantizeLinear, or every
conv named in the calibration cache) runs in INT8 (the engine inspector's layer input formats); the scores
on the test images have Spearman >= 0.99 with ONNX Runtime's on the same ONNX and image AUROC within 0.5
points; batch-1 latency (median of ``--iters`` runs), labelled with the GPU's name (a data-centre GPU is
not a Jetson: the numbers say nothing about Xavier NX latency).

    python benchmarks/tensorrt_check.py --install --checkpoint /work/models/stfpm-realdev/model.ckpt \\
        --data ../shared/data/realdev --work /tmp/trt-check
    python benchmarks/tensorrt_check.py --dry-run --artifacts /tmp/trt-check/artifacts   # the plan, no GPU

``--install`` pip-installs tensorrt, torch-tensorrt and nvidia-modelopt (``--wheels DIR`` installs them from
a local folder with --no-index, for machines without registry access). Nothing but ``--install`` and the
engine work needs a GPU; argument parsing, discovery, the plan and the comparison maths are tested on CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import results_writer as rw  # noqa: E402

REALDEV = HERE.parent.parent / "shared" / "data" / "realdev"
MODES = ("int8-explicit", "int8-modelopt", "int8-implicit", "fp16", "torch-trt-fp16", "torch-trt-int8")
SPEARMAN_MIN = 0.99
AUROC_TOLERANCE_POINTS = 0.5
PACKAGES = ("tensorrt", "torch-tensorrt", "nvidia-modelopt", "requests", "huggingface_hub")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="build the four xavier_nx artifacts from this checkpoint first")
    src.add_argument("--artifacts", help="a folder holding artifact folders (meta.json) made by anomopt export")
    p.add_argument("--data", default=str(REALDEV), help="MVTec-layout root: train calibrates, test checks")
    p.add_argument("--work", default="/tmp/anomopt-trt-check", help="artifacts, engines and results go here")
    p.add_argument("--modes", default=",".join(MODES), help=f"comma list of {', '.join(MODES)}")
    p.add_argument("--max-test-per-category", type=int, default=100)
    p.add_argument("--calib-samples", type=int, default=64)
    p.add_argument("--iters", type=int, default=200, help="timed batch-1 runs")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--workspace-mib", type=int, default=2048)
    p.add_argument("--install", action="store_true", help="pip install tensorrt, torch-tensorrt, nvidia-modelopt")
    p.add_argument("--wheels", default=None, help="with --install: a local wheel folder (--no-index)")
    p.add_argument("--dry-run", action="store_true", help="print the plan; import no TensorRT, need no GPU")
    rw.add_args(p)
    args = p.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad:
        p.error(f"--modes: unknown {', '.join(bad)}; choose from {', '.join(MODES)}")
    args.modes = modes
    if args.wheels and not args.install:
        p.error("--wheels needs --install")
    return args


# ------------------------------------------------------------------------------------------ discovery


@dataclass
class Job:
    """One engine to build and check."""

    mode: str
    artifact: str
    onnx: str
    calib_cache: str | None = None
    image_size: int = 256
    quantized_convs: list[str] = field(default_factory=list)


def artifact_mode(meta: dict[str, Any]) -> str | None:
    """The check mode of an artifact's meta.json (None when it is not a Jetson INT8/FP16 artifact)."""
    if meta.get("runtime") != "tensorrt":
        return None
    precision = meta.get("precision")
    if "build_torch_trt.py" in (meta.get("files") or {}):
        return f"torch-trt-{precision}" if precision in ("fp16", "int8") else None
    if precision == "fp16":
        return "fp16"
    if precision != "int8":
        return None
    quantization = str((meta.get("tensorrt") or {}).get("quantization") or "")
    if quantization.startswith("implicit"):
        return "int8-implicit"
    if (meta.get("quant") or {}).get("backend") == "modelopt":
        return "int8-modelopt"
    return "int8-explicit"


def quantized_convs(onnx_path: str | os.PathLike[str], calib_cache: str | os.PathLike[str] | None = None) -> list[str]:
    """Conv nodes that must run in INT8: explicit = fed by an activation DequantizeLinear; implicit =
    whose input tensor has a range in the calibration cache."""
    import onnx

    proto = onnx.load(str(onnx_path), load_external_data=False)
    inits = {t.name for t in proto.graph.initializer}
    producers = {o: n for n in proto.graph.node for o in n.output}
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    if calib_cache is not None:
        from anomopt.targets.tensorrt import read_calibration_cache

        _, scales = read_calibration_cache(calib_cache)
        return [n.name for n in convs if n.input[0] in scales and n.name.startswith("/student/")]
    out = []
    for n in convs:
        dq = producers.get(n.input[0])
        if dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] not in inits:
            out.append(n.name)
    return out


def discover(root: str | os.PathLike[str], modes: list[str]) -> list[Job]:
    """Jobs for the artifact folders (any depth) under ``root`` whose mode is in ``modes``."""
    jobs = []
    for meta_path in sorted(Path(root).rglob("meta.json")):
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        mode = artifact_mode(meta)
        if mode is None or mode not in modes:
            continue
        folder = meta_path.parent
        cache = folder / "calib.cache" if mode == "int8-implicit" else None
        onnx_path = folder / "model.onnx"
        if not onnx_path.is_file() or (cache is not None and not cache.is_file()):
            raise SystemExit(f"{folder}: artifact is missing model.onnx or calib.cache; re-export it")
        convs = quantized_convs(onnx_path, cache) if mode.startswith("int8") else []  # torch-trt: no inspector
        jobs.append(Job(mode, str(folder), str(onnx_path), str(cache) if cache else None,
                        int(meta.get("image_size", 256)), convs))
    return jobs


def build_artifacts(args: argparse.Namespace) -> Path:
    """Export the four xavier_nx artifacts of ``--checkpoint`` into WORK/artifacts (CPU work)."""
    from anomopt.cli.main import main as cli

    root = Path(args.work) / "artifacts"
    specs = {
        "int8-explicit": ["--bits", "8"],
        "int8-modelopt": ["--bits", "8", "--quantizer", "modelopt"],
        "int8-implicit": ["--bits", "8", "--trt-quantization", "implicit"],
        "fp16": ["--bits", "16"],
        "torch-trt-fp16": ["--bits", "16", "--variant", "torch_tensorrt"],
        "torch-trt-int8": ["--bits", "8", "--variant", "torch_tensorrt"],
    }
    for mode in args.modes:
        out = root / mode
        if (out / "meta.json").is_file():
            continue
        argv = ["export", args.checkpoint, "--target", "xavier_nx", *specs[mode], "--calib-data", args.data,
                "--calib-samples", str(args.calib_samples), "--out", str(out), "--quiet"]
        print("anomopt " + " ".join(argv), flush=True)
        if cli(argv) != 0:
            raise SystemExit(f"anomopt export failed for {mode}")
    return root


def plan(jobs: list[Job], args: argparse.Namespace) -> list[dict[str, Any]]:
    """What the run would do, per job (the --dry-run output)."""
    from anomopt.targets.tensorrt import trtexec_command

    out = []
    for j in jobs:
        if j.mode.startswith("torch-trt"):
            out.append({**asdict(j), "quantized_convs": 0,
                        "command": f"python3 {Path(j.artifact) / 'build_torch_trt.py'} --out "
                                   f"{Path(args.work) / 'engines' / (j.mode + '.ep')}",
                        "checks": ["compile", f"Spearman >= {SPEARMAN_MIN} vs ONNX Runtime",
                                   f"|image AUROC - ORT| <= {AUROC_TOLERANCE_POINTS} pts", "batch-1 latency"]})
            continue
        precision = "fp16" if j.mode == "fp16" else "int8"
        cmd = trtexec_command(j.onnx, str(Path(args.work) / "engines" / f"{j.mode}.engine"), precision,
                              image_size=j.image_size, calib_cache=j.calib_cache, workspace_mib=args.workspace_mib)
        out.append({**asdict(j), "quantized_convs": len(j.quantized_convs), "trtexec_equivalent": " ".join(cmd),
                    "checks": ["build", *(["every quantized conv in INT8"] if precision == "int8" else []),
                               f"Spearman >= {SPEARMAN_MIN} vs ONNX Runtime",
                               f"|image AUROC - ORT| <= {AUROC_TOLERANCE_POINTS} pts", "batch-1 latency"]})
    return out


# ------------------------------------------------------------------------------------ comparison maths


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    from scipy.stats import spearmanr

    a, b = np.asarray(a, float).ravel(), np.asarray(b, float).ravel()
    if a.shape != b.shape or a.size < 3:
        raise ValueError(f"spearman needs two score vectors of the same length >= 3, got {a.shape} and {b.shape}")
    return float(spearmanr(a, b).statistic)


def parity(ort_scores: np.ndarray, trt_scores: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Spearman of the engine's scores with ONNX Runtime's, both image AUROCs and the pass/fail verdict."""
    from sklearn.metrics import roc_auc_score

    rho = spearman(ort_scores, trt_scores)
    auc_ort = float(roc_auc_score(labels, ort_scores))
    auc_trt = float(roc_auc_score(labels, trt_scores))
    delta = 100.0 * (auc_trt - auc_ort)
    return {"spearman": rho, "auroc_ort": auc_ort, "auroc_trt": auc_trt, "auroc_delta_points": delta,
            "ok": bool(rho >= SPEARMAN_MIN and abs(delta) <= AUROC_TOLERANCE_POINTS)}


def int8_layers(inspector_json: str | dict[str, Any]) -> dict[str, bool]:
    """Engine layer name -> whether it reads INT8 inputs, from the engine inspector's JSON
    (``ProfilingVerbosity.DETAILED``: each layer lists ``Inputs`` with a ``Format/Datatype``)."""
    data = json.loads(inspector_json) if isinstance(inspector_json, str) else inspector_json
    out = {}
    for layer in data.get("Layers", []):
        if isinstance(layer, str):  # non-detailed verbosity: names only
            out[layer] = False
            continue
        fmts = " ".join(str(i.get("Format/Datatype", "")) for i in layer.get("Inputs", []))
        out[str(layer.get("Name", ""))] = "int8" in fmts.lower()
    return out


def int8_conv_coverage(layers: dict[str, bool], convs: list[str]) -> dict[str, Any]:
    """Which quantized ONNX convs run inside an INT8 engine layer (TensorRT names fused layers after the
    ONNX nodes they hold, joined with ' + ')."""
    missing, not_int8 = [], []
    for conv in convs:
        hits = [is_int8 for name, is_int8 in layers.items() if re.search(rf"(^|[ +\[]){re.escape(conv)}($|[ +\]])",
                                                                         name)]
        if not hits:
            missing.append(conv)
        elif not any(hits):
            not_int8.append(conv)
    return {"convs": len(convs), "int8": len(convs) - len(missing) - len(not_int8), "not_int8": not_int8,
            "not_found": missing, "ok": not missing and not not_int8}


# ------------------------------------------------------------------------------------- the GPU part


def install_command(args: argparse.Namespace) -> list[str]:
    """pip install of the GPU packages, constrained by the repository's pins (torch stays 2.14.1: pip picks
    the torch-tensorrt built for it, or fails saying none is)."""
    cmd = [sys.executable, "-m", "pip", "install", "-c", str(HERE.parent / "constraints.txt"), *PACKAGES]
    if args.wheels:
        cmd[4:4] = ["--no-index", "--find-links", args.wheels]
    return cmd


def install(args: argparse.Namespace) -> None:
    cmd = install_command(args)
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def build(job: Job, args: argparse.Namespace) -> tuple[Any, str, float]:  # pragma: no cover - needs a GPU
    """Build the serialized engine with the TensorRT API (detailed profiling for the inspector)."""
    import tensorrt as trt

    from anomopt.targets.tensorrt import _cache_calibrator

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(job.onnx).read_bytes()):
        raise RuntimeError("; ".join(str(parser.get_error(i)) for i in range(parser.num_errors)))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, args.workspace_mib << 20)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if job.mode == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    else:
        config.set_flag(trt.BuilderFlag.INT8)
        if job.calib_cache:
            config.int8_calibrator = _cache_calibrator(trt, Path(job.calib_cache))
    profile = builder.create_optimization_profile()
    shape = (1, 3, job.image_size, job.image_size)
    profile.set_shape(network.get_input(0).name, shape, shape, shape)
    config.add_optimization_profile(profile)
    if job.calib_cache:
        config.set_calibration_profile(profile)
    t0 = time.perf_counter()
    blob = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - t0
    if blob is None:
        raise RuntimeError("build_serialized_network returned None")
    engine = trt.Runtime(logger).deserialize_cuda_engine(blob)
    engine_dir = Path(args.work) / "engines"
    engine_dir.mkdir(parents=True, exist_ok=True)
    (engine_dir / f"{job.mode}.engine").write_bytes(bytes(blob))
    info = engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON)
    return engine, info, seconds


class EngineRunner:  # pragma: no cover - needs a GPU
    """Batch-1 execution of an engine with torch CUDA buffers."""

    def __init__(self, engine: Any, image_size: int) -> None:
        import tensorrt as trt
        import torch

        self.torch = torch
        self.context = engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        self.buffers: dict[str, Any] = {}
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                self.context.set_input_shape(name, (1, 3, image_size, image_size))
                self.input = name
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            shape = tuple(self.context.get_tensor_shape(name))
            self.buffers[name] = torch.empty(shape, dtype=torch.float32, device="cuda")
            self.context.set_tensor_address(name, self.buffers[name].data_ptr())

    def __call__(self, image: np.ndarray) -> float:
        self.buffers[self.input].copy_(self.torch.from_numpy(image[None]).cuda())
        self.context.execute_async_v3(self.stream.cuda_stream)
        self.stream.synchronize()
        return float(self.buffers["score"].reshape(-1)[0].cpu())


def compile_torch_trt(job: Job, args: argparse.Namespace) -> tuple[Any, float]:  # pragma: no cover - GPU
    """Run the bundle's build_torch_trt.py; returns a batch-1 scorer over the saved module and the seconds."""
    import torch
    import torch_tensorrt  # noqa: F401  (registers the ops a saved torch-tensorrt program holds)

    out = Path(args.work) / "engines" / f"{job.mode}.ep"
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, str(Path(job.artifact) / "build_torch_trt.py"), "--out", str(out)],
                          capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"build_torch_trt.py exited {done.returncode}: {done.stderr.strip()[-300:]}")
    module = torch.export.load(str(out)).module()

    def scorer(image: np.ndarray) -> float:
        with torch.no_grad():
            score = module(torch.from_numpy(image[None]).cuda())[0]
        torch.cuda.synchronize()
        return float(score.reshape(-1)[0].cpu())

    return scorer, seconds


def run_job(job: Job, images: np.ndarray, labels: np.ndarray, args: argparse.Namespace,
            gpu: str) -> dict[str, Any]:  # pragma: no cover - needs a GPU
    from anomopt.runtime.predictor import make_session

    row: dict[str, Any] = {"mode": job.mode, "artifact": job.artifact, "gpu": gpu}
    if job.mode.startswith("torch-trt"):
        try:
            runner, seconds = compile_torch_trt(job, args)
        except Exception as err:  # torch-tensorrt raises many types
            return {**row, "build_ok": False, "error": f"{type(err).__name__}: {str(err)[:300]}"}
        row.update(build_ok=True, build_seconds=seconds)
    else:
        try:
            engine, info, seconds = build(job, args)
        except Exception as err:  # TensorRT raises many types
            return {**row, "build_ok": False, "error": f"{type(err).__name__}: {str(err)[:300]}"}
        row.update(build_ok=True, build_seconds=seconds)
        if job.mode.startswith("int8"):
            row["int8"] = int8_conv_coverage(int8_layers(info), job.quantized_convs)
        runner = EngineRunner(engine, job.image_size)
    sess = make_session(job.onnx, threads=4, spinning=False)
    ort_scores = np.concatenate([sess.run(None, {"images": images[i : i + 8]})[0] for i in range(0, len(images), 8)])
    trt_scores = np.array([runner(x) for x in images])
    row["parity"] = parity(ort_scores, trt_scores, labels)
    for _ in range(args.warmup):
        runner(images[0])
    times = []
    for i in range(args.iters):
        t0 = time.perf_counter()
        runner(images[i % len(images)])
        times.append((time.perf_counter() - t0) * 1e3)
    row["latency_ms_p50"] = statistics.median(times)
    return row


def table(rows: list[dict[str, Any]]) -> str:
    head = "| mode | build | INT8 convs | Spearman vs ORT | image AUROC TRT / ORT | batch-1 ms (p50) | GPU |"
    lines = [head, "|---|---|---|---|---|---|---|"]
    for r in rows:
        if not r.get("build_ok"):
            lines.append(f"| {r['mode']} | FAILED: {r.get('error', '')} | | | | | {r['gpu']} |")
            continue
        i8 = r.get("int8")
        conv = f"{i8['int8']}/{i8['convs']}" + ("" if i8["ok"] else " (NOT all)") if i8 else "n/a"
        p = r["parity"]
        lines.append(f"| {r['mode']} | ok ({r['build_seconds']:.0f} s) | {conv} | {p['spearman']:.4f} | "
                     f"{p['auroc_trt']:.4f} / {p['auroc_ort']:.4f} | {r['latency_ms_p50']:.2f} | {r['gpu']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.install and not args.dry_run:
        install(args)
    root = Path(args.artifacts) if args.artifacts else None
    if root is None:
        if args.dry_run:
            pip = " ".join(install_command(args)) if args.install else None
            print(json.dumps({"dry_run": True, "would_install": pip,
                              "would_build_artifacts_from": args.checkpoint, "modes": args.modes,
                              "into": str(Path(args.work) / "artifacts"), "calib_data": args.data}, indent=2))
            return 0
        root = build_artifacts(args)
    jobs = discover(root, args.modes)
    if not jobs:
        print(f"no xavier_nx / orin INT8 or FP16 artifacts under {root}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(json.dumps({"dry_run": True, "jobs": plan(jobs, args)}, indent=2))
        return 0
    import torch  # pragma: no cover - the GPU part

    if not torch.cuda.is_available():
        print("no CUDA device visible: run with --dry-run here, the real check on a GPU machine", file=sys.stderr)
        return 2
    from anomopt.data import load_mvtec
    from anomopt.inference import stack_images

    gpu = torch.cuda.get_device_name(0)
    run = rw.RunInfo.start(__file__, f"torch {torch.get_num_threads()} (CPU side); GPU {gpu}", argv)
    size = jobs[0].image_size
    sys.path.insert(0, str(HERE))
    from grid_common import per_category_subset

    test = per_category_subset(load_mvtec(args.data, "all", split="test", image_size=size),
                               args.max_test_per_category, seed=0)
    images = stack_images(test, limit=None).numpy().astype(np.float32)
    labels = np.array([int(test[i]["label"]) for i in range(len(test))])
    rows = [run_job(j, images, labels, args, gpu) for j in jobs]
    text = table(rows)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    (Path(args.work) / "tensorrt_check.json").write_text(json.dumps(rows, indent=2, default=str) + "\n")
    rw.publish(args, "tensorrt", "TensorRT check on a GPU (not a Jetson)", "benchmarks/tensorrt_check.py",
               f"- GPU: {gpu}; work folder {args.work}\n\n{text}", run, part=re.sub(r"[^\w.-]+", "-", gpu).strip("-"))
    ok = all(r.get("build_ok") and r["parity"]["ok"] and (r.get("int8") or {"ok": True})["ok"] for r in rows)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
