"""Publish the Uninformed Students study (``us_study.py`` and ``us_quant_check.py`` JSON lines) as the
``us-study`` section of RESULTS.md: one row per run, validation (pasted defects) and test numbers.

    PYTHONPATH=src python benchmarks/us_report.py --study us_study.jsonl --quant us_quant.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import results_writer as rw  # noqa: E402


def _f(v: float | None) -> str:
    return "n/a" if v is None or v != v else f"{v:.3f}"


def study_table(rows: list[dict]) -> str:
    head = ["data", "px", "run", "options", "epochs", "seed", "train imgs", "train s", "val image", "val pixel",
            "test image", "test pixel", "AUPRO", "FR@thr", "escape@thr", "F1@thr", "test per category (image / pixel)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        v, t = r["val"]["mean"], r["test"]["mean"]
        cats = "; ".join(f"{c} {_f(m.get('image_auroc'))} / {_f(m.get('pixel_auroc'))}"
                         for c, m in r["test"].items() if c != "mean" and "image_auroc" in m) or "not recorded"
        opts = {k: x for k, x in r["extra"].items() if k != "teacher"}
        if r.get("score_options"):
            opts["rescored"] = r["score_options"]
        loaded = r.get("loaded")
        decision = ("n/a",) * 3 if loaded else (_f(t.get("false_reject_rate")), _f(t.get("escape_rate")),
                                                  _f(t.get("f1_at_threshold")))
        lines.append("| " + " | ".join([
            r["dataset"], str(r["image_size"]), r["name"], f"`{json.dumps(opts)}`", "" if loaded else str(r["epochs"]),
            str(r["seed"]),
            str(r["train_images"]), "rescored" if loaded else f"{r['train_seconds']:.0f}",
            _f(v["image_auroc"]), _f(v["pixel_auroc"]), _f(t["image_auroc"]), _f(t["pixel_auroc"]),
            _f(t.get("aupro")), *decision, cats]) + " |")
        for key, sub in r.items():
            if key.startswith("variance_weight="):
                lines.append("| " + " | ".join([
                    r["dataset"], str(r["image_size"]), f"{r['name']}, {key}", "(same model, rescored)", "",
                    str(r["seed"]), "", "", _f(sub["val"]["image_auroc"]), _f(sub["val"]["pixel_auroc"]),
                    _f(sub["test"]["image_auroc"]), _f(sub["test"]["pixel_auroc"]), _f(sub["test"].get("aupro")),
                    "n/a", "n/a", "n/a", ""]) + " |")
    return "\n".join(lines)


def quant_table(rows: list[dict]) -> str:
    head = ["data", "model", "pipeline", "image AUROC", "pixel AUROC", "AUPRO", "seconds",
            "per category (image / pixel)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        m = r["mean"]
        cats = "; ".join(f"{c} {_f(v['image_auroc'])} / {_f(v['pixel_auroc'])}" for c, v in r["per_category"].items())
        lines.append("| " + " | ".join([r["dataset"], Path(r["model"]).name, r["pipeline"], _f(m["image_auroc"]),
                                        _f(m["pixel_auroc"]), _f(m["aupro"]), f"{r['seconds']:.0f}", cats]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--study", required=True)
    p.add_argument("--quant", default=None)
    p.add_argument("--notes", default="", help="markdown placed before the tables (@FILE: read it from FILE)")
    p.add_argument("--part", default=None, help="write the runs as this part of the section (e.g. bars-256px) "
                   "instead of replacing the section")
    rw.add_args(p)
    args = p.parse_args(argv)
    run = rw.RunInfo.start(__file__, 1, argv)
    study = [json.loads(line) for line in Path(args.study).read_text().splitlines() if line.strip()]
    notes = Path(args.notes[1:]).read_text() if args.notes.startswith("@") else args.notes
    body = [notes.strip(), "", "**Runs** (val = validation normals + one pasted-defect copy each; test = the test "
            "split; FR / escape / F1 at the shipped z:3 threshold fitted on validation normals)", "",
            study_table(study)]
    if args.quant:
        quant = [json.loads(line) for line in Path(args.quant).read_text().splitlines() if line.strip()]
        body += ["", "**INT8** (shipped pipelines through optimize(), ONNX Runtime artifact on the test split)", "",
                 quant_table(quant)]
    rw.publish(args, "us-study", "Uninformed Students: recipe study", "benchmarks/us_report.py", "\n".join(body), run,
               part=args.part)


if __name__ == "__main__":
    main()
