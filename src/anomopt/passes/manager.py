"""The pass manager: checks requirements, runs a pipeline, measures drift after every pass, and refuses
a pass whose drift breaks the tolerance, naming the pass and by how much."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from anomopt.errors import DriftError, PipelineError
from anomopt.graph import ModelGraph
from anomopt.passes.base import ALL, Pass, PassContext, Tolerance
from anomopt.passes.drift import Drift, measure_drift


@dataclass
class PassRecord:
    """What one pass did."""

    name: str
    options: dict[str, Any]
    seconds: float
    drift: dict[str, float] | None
    tolerance: dict[str, float]
    properties: list[str]
    notes: dict[str, Any] = field(default_factory=dict)
    drift_note: str | None = None  # why ``drift`` is None (the pass leaves outputs as they are, no held batch)


@dataclass
class PipelineReport:
    """Per-pass records of one pipeline run."""

    records: list[PassRecord] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"passes": [asdict(r) for r in self.records]}

    def table(self) -> str:
        """A fixed-width text table: pass, seconds, score and map drift each beside its tolerance, rank
        correlation; ``n/a`` with the reason where no drift was measured."""
        lines = [
            f"{'pass':24s} {'seconds':>8s}  {'score drift':>11s} {'tolerance':>10s}  "
            f"{'map drift':>10s} {'tolerance':>10s}  {'rank corr':>9s}"
        ]
        for r in self.records:
            if r.drift is None:
                why = r.drift_note or "not measured"
                lines.append(f"{r.name:24s} {r.seconds:8.2f}  {'n/a':>11s} {'':10s}  {'n/a':>10s} {'':10s}  "
                             f"{'':9s}  ({why})")
                continue
            d = r.drift
            lines.append(
                f"{r.name:24s} {r.seconds:8.2f}  {d['score']:11.3g} {_tol(r.tolerance, 'max_score_drift'):>10s}  "
                f"{d['map']:10.3g} {_tol(r.tolerance, 'max_map_drift'):>10s}  {d['score_rank_corr']:9.4f}"
            )
        return "\n".join(lines)


def _tol(tolerance: dict[str, float], key: str) -> str:
    value = tolerance.get(key)
    return "none" if value is None or not np.isfinite(value) else f"<= {value:.2g}"


def _held_outputs(graph: ModelGraph, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    return graph.predict(images)


class PassManager:
    """Runs passes in order on a :class:`ModelGraph`."""

    def __init__(self, passes: list[Pass]) -> None:
        self.passes = list(passes)

    def check(self, properties: set[str]) -> None:
        """Statically check that every pass's requirements will be met; raises before anything runs."""
        props = set(properties)
        for i, p in enumerate(self.passes):
            missing = p.requires - props
            if missing:
                raise PipelineError(
                    f"pass #{i + 1} {p.name!r} requires {sorted(missing)}, which no earlier pass provides; "
                    f"add the pass that provides it before {p.name!r}"
                )
            clash = p.forbids & props
            if clash:
                raise PipelineError(f"pass #{i + 1} {p.name!r} cannot run once the graph is {sorted(clash)}")
            props = _after(props, p)
        for p in self.passes:
            p.check_pipeline(self.passes)

    def run(self, graph: ModelGraph, ctx: PassContext) -> tuple[ModelGraph, PipelineReport]:
        """Run every pass; raise :class:`DriftError` when one breaks its tolerance."""
        self.check(graph.properties)
        report = PipelineReport()
        held = ctx.held_images
        ref = _held_outputs(graph, held) if held is not None else None
        n = len(self.passes)
        for i, p in enumerate(self.passes, 1):
            ctx.log(f"pass {i}/{n} {p.name}: start")
            ctx.notes = {}
            t0 = time.perf_counter()
            graph = p.run(graph, ctx)
            seconds = time.perf_counter() - t0
            graph.properties = _after(graph.properties, p)
            tol: Tolerance = ctx.tolerance.merged(p.tolerance_override)
            drift: Drift | None = None
            drift_note: str | None = None
            if not p.changes_outputs:
                drift_note = p.no_drift_reason
            elif ref is None or held is None:
                drift_note = "no held batch of normal images to measure it on"
            else:
                drift = measure_drift(*_held_outputs(graph, held), *ref)
            ctx.log(f"pass {i}/{n} {p.name}: done in {seconds:.1f}s, " + _drift_text(drift, drift_note, tol))
            notes, ctx.notes = ctx.notes, {}
            report.records.append(
                PassRecord(
                    name=p.name,
                    options={k: _jsonable(v) for k, v in p.given_options.items()},
                    seconds=seconds,
                    drift=drift.to_dict() if drift else None,
                    tolerance={k: v for k, v in asdict(tol).items() if np.isfinite(v)},
                    properties=sorted(graph.properties),
                    notes=notes,
                    drift_note=drift_note,
                )
            )
            if drift is not None:
                _enforce(p.name, drift, tol)
        return graph, report


def _drift_text(drift: Drift | None, note: str | None, tol: Tolerance) -> str:
    if drift is None:
        return f"drift n/a ({note})"

    def limit(x: float) -> str:
        return f"<= {x:.2g}" if np.isfinite(x) else "no limit"

    return (
        f"score drift {drift.score:.3g} ({limit(tol.max_score_drift)}), "
        f"map drift {drift.map:.3g} ({limit(tol.max_map_drift)})"
    )


def _after(props: set[str], p: Pass) -> set[str]:
    kept = set(props) if p.preserves == ALL else props & set(p.preserves)
    return kept | set(p.provides)


def _enforce(name: str, drift: Drift, tol: Tolerance) -> None:
    if not np.isfinite(drift.score) or drift.score > tol.max_score_drift:
        raise DriftError(
            f"pass {name!r} moved image scores by {drift.score:.4g} (relative L2) on the held batch, "
            f"over its tolerance {tol.max_score_drift:.4g} (by {drift.score - tol.max_score_drift:.4g})"
        )
    if not np.isfinite(drift.map) or drift.map > tol.max_map_drift:
        raise DriftError(
            f"pass {name!r} moved anomaly maps by {drift.map:.4g} (relative L2) on the held batch, "
            f"over its tolerance {tol.max_map_drift:.4g} (by {drift.map - tol.max_map_drift:.4g})"
        )


def _jsonable(v: Any) -> Any:
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    return repr(v)
